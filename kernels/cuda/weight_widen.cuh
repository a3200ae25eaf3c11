// Widening F32 / F16 / BF16 weight elements to f32 in device code: the one home of the bit
// manipulation shared by the kernels that read weights (embedding.cu, rms_norm.cu, gemv.cu,
// grouped_gemv.cu). Each kernel keeps its own loads (vector width, __ldg or evict-first hints):
// it loads WeightBits<W> per element, WeightBits4<W> per 4 elements, a uint4 per 16 bytes or W
// itself, and these helpers turn what it loaded into f32. Every widening is exact. W is the
// element type the kernels are instantiated for: float, __half or __nv_bfloat16. Device code only.
//
//   const WeightBits<W>* row = ...;
//   const float w0 = WeightTraits<W>::Widen(__ldg(row + i));
//   float wf[16 / sizeof(W)];
//   WidenVector16<W>(__ldcs(reinterpret_cast<const uint4*>(row) + c), wf);
#ifndef CMOE_KERNELS_CUDA_WEIGHT_WIDEN_CUH_
#define CMOE_KERNELS_CUDA_WEIGHT_WIDEN_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace cmoe::kernels::cuda {

// W's raw bits (Bits: one element, Bits4: four consecutive elements) and Widen(Bits) -> f32.
template <class W>
struct WeightTraits;

template <>
struct WeightTraits<float> {
  using Bits = uint32_t;  // one element
  using Bits4 = uint4;    // four consecutive elements (16 bytes)
  static __device__ __forceinline__ float Widen(uint32_t b) { return __uint_as_float(b); }
};

template <>
struct WeightTraits<__half> {
  using Bits = uint16_t;
  using Bits4 = uint2;  // 8 bytes
  static __device__ __forceinline__ float Widen(uint16_t b) {
    return __half2float(__ushort_as_half(b));
  }
};

template <>
struct WeightTraits<__nv_bfloat16> {
  using Bits = uint16_t;
  using Bits4 = uint2;  // 8 bytes
  static __device__ __forceinline__ float Widen(uint16_t b) {
    return __uint_as_float(static_cast<uint32_t>(b) << 16);
  }
};

template <class W>
using WeightBits = typename WeightTraits<W>::Bits;
template <class W>
using WeightBits4 = typename WeightTraits<W>::Bits4;

// One element loaded in its own type, for a kernel that reads `const W*` rather than bits.
__device__ __forceinline__ float WidenWeight(float v) { return v; }
__device__ __forceinline__ float WidenWeight(__half v) { return __half2float(v); }
__device__ __forceinline__ float WidenWeight(__nv_bfloat16 v) { return __bfloat162float(v); }

// The two 16-bit elements of a 32-bit word, the one at the lower address first.
template <class W>
__device__ __forceinline__ float2 WidenPair(uint32_t word) {
  static_assert(sizeof(W) == 2, "16-bit weights only");
  if constexpr (std::is_same_v<W, __nv_bfloat16>) {
    return make_float2(__uint_as_float(word << 16), __uint_as_float(word & 0xffff0000u));
  } else {
    using Tr = WeightTraits<W>;
    return make_float2(Tr::Widen(static_cast<uint16_t>(word & 0xffffu)),
                       Tr::Widen(static_cast<uint16_t>(word >> 16)));
  }
}

// Four consecutive elements loaded as one WeightBits4<W>, in memory order. By value: a reference
// into global memory would let the compiler split the kernel's one vector load.
template <class W>
__device__ __forceinline__ float4 WidenVector4(WeightBits4<W> v) {
  if constexpr (sizeof(W) == 4) {
    return make_float4(__uint_as_float(v.x), __uint_as_float(v.y), __uint_as_float(v.z),
                       __uint_as_float(v.w));
  } else {
    const float2 lo = WidenPair<W>(v.x);
    const float2 hi = WidenPair<W>(v.y);
    return make_float4(lo.x, lo.y, hi.x, hi.y);
  }
}

// A 16-byte vector: f[0 .. 16 / sizeof(W)) (4 f32 or 8 f16 / bf16 elements) in memory order.
template <class W>
__device__ __forceinline__ void WidenVector16(const uint4& q, float* f) {
  const uint32_t words[4] = {q.x, q.y, q.z, q.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(W) == 4) {
      f[i] = __uint_as_float(words[i]);
    } else {
      const float2 pair = WidenPair<W>(words[i]);
      f[2 * i] = pair.x;
      f[2 * i + 1] = pair.y;
    }
  }
}

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_WEIGHT_WIDEN_CUH_
