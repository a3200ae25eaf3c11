// __half and __nv_bfloat16 for the CPU emulation of CUDA (tests/cuda_emu/cuda_emu.h). The
// conversions are written here from the IEEE definitions (f16 through the compiler's _Float16),
// independently of common/half.h, so the emulated kernels do not share a rounding bug with the
// reference backend.
#ifndef CMOE_TESTS_CUDA_EMU_HALF_TYPES_H_
#define CMOE_TESTS_CUDA_EMU_HALF_TYPES_H_

#include <bit>
#include <cmath>
#include <cstdint>

struct __half {
  uint16_t bits;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

inline __half __ushort_as_half(unsigned short b) { return {b}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short b) { return {b}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline float __half2float(__half h) { return static_cast<float>(std::bit_cast<_Float16>(h.bits)); }
inline __half __float2half_rn(float f) {
  return {std::bit_cast<uint16_t>(static_cast<_Float16>(f))};  // IEEE round to nearest even
}
inline __half __float2half(float f) { return __float2half_rn(f); }

inline float __bfloat162float(__nv_bfloat16 b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b.bits) << 16);
}
// Round to nearest even on the 16 dropped bits; NaN stays a (quiet) NaN.
inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return {static_cast<uint16_t>((u >> 16) | 0x40u)};
  const uint32_t low = u & 0xffffu;
  uint32_t high = u >> 16;
  if (low > 0x8000u || (low == 0x8000u && (high & 1u) != 0)) ++high;
  return {static_cast<uint16_t>(high)};
}
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

#endif  // CMOE_TESTS_CUDA_EMU_HALF_TYPES_H_
