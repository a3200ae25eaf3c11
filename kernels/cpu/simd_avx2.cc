// AVX2 + FMA + F16C instantiation of the CPU kernels: 8 f32 lanes, a 6 x 16 GEMM micro-kernel
// (12 ymm accumulators), maskload/maskstore for f32 tails and a zero-padded copy for 16-bit
// tails, BF16 widened with cvtepu16_epi32 + slli 16, F16 with vcvtph2ps. Compiled with -mavx2
// -mfma -mf16c; only called after DetectSimdLevel() found AVX2. Tolerance against the reference:
// see simd_kernels_impl.h (f32 accumulation, ~1e-6 relative to sum |x_i w_i|).
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/simd_kernels_impl.h"

namespace cmoe::kernels::cpu {
namespace {

using simd::WBf16;
using simd::WF16;
using simd::WF32;

struct Avx2 {
  using F = __m256;
  static constexpr int kWidth = 8;
  static constexpr int kGemmMr = 6;
  static constexpr int kGemmNrVecs = 2;
  static constexpr int kGemvRowsT1 = 8;
  static constexpr int kGemvRowsBf16Pairs = 8;
  static constexpr int kGemvMaxTokens = 2;

  // Lanes < n all ones.
  static __m256i Mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  // The first n 16-bit values at p, the rest zero.
  static __m128i Load16N(const uint8_t* p, int n) {
    alignas(16) uint16_t tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    __builtin_memcpy(tmp, p, static_cast<unsigned>(n) * 2u);
    return _mm_load_si128(reinterpret_cast<const __m128i*>(tmp));
  }
  static __m128i Load16(const uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  }

  static F Zero() { return _mm256_setzero_ps(); }
  static F Set1(float v) { return _mm256_set1_ps(v); }
  static F Load(const float* p) { return _mm256_loadu_ps(p); }
  static F LoadN(const float* p, int n) { return _mm256_maskload_ps(p, Mask(n)); }
  static void Store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static void StoreN(float* p, F v, int n) { _mm256_maskstore_ps(p, Mask(n), v); }

  static F LoadW(WF32, const uint8_t* p) {
    return _mm256_loadu_ps(reinterpret_cast<const float*>(p));
  }
  static F LoadWN(WF32, const uint8_t* p, int n) {
    return _mm256_maskload_ps(reinterpret_cast<const float*>(p), Mask(n));
  }
  static F LoadW(WF16, const uint8_t* p) { return _mm256_cvtph_ps(Load16(p)); }
  static F LoadWN(WF16, const uint8_t* p, int n) { return _mm256_cvtph_ps(Load16N(p, n)); }
  static F Bf16(__m128i h) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static F LoadW(WBf16, const uint8_t* p) { return Bf16(Load16(p)); }
  static F LoadWN(WBf16, const uint8_t* p, int n) { return Bf16(Load16N(p, n)); }

  static __m256i LoadRaw(const uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static F Bf16Even(__m256i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)); }
  static F Bf16Odd(__m256i v) {
    return _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(-65536)));
  }

  static F Add(F a, F b) { return _mm256_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm256_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm256_mul_ps(a, b); }
  static F Div(F a, F b) { return _mm256_div_ps(a, b); }
  static F Min(F a, F b) { return _mm256_min_ps(a, b); }
  static F Max(F a, F b) { return _mm256_max_ps(a, b); }
  static F Fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F Round(F x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static F Pow2(F n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  // 8 x 8: pairs, quads, then 128-bit lanes.
  static void Transpose(F (&r)[8]) {
    F t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
      t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
      u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
      u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int i = 0; i < 4; ++i) {
      r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
      r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
    }
  }
  static float ReduceAdd(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static float ReduceMax(F v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
};

}  // namespace

const SimdKernels& Avx2Kernels() {
  static const SimdKernels kernels = simd::MakeKernels<Avx2>("avx2");
  return kernels;
}

}  // namespace cmoe::kernels::cpu
