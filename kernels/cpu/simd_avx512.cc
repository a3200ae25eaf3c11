// AVX-512 (F/BW/VL/DQ + FMA + F16C) instantiation of the CPU kernels: 16 f32 lanes, a 12 x 32
// GEMM micro-kernel (24 zmm accumulators), masked loads for tails, BF16 widened with
// cvtepu16_epi32 + slli 16, F16 with vcvtph2ps. Compiled with -mavx512*; only called after
// DetectSimdLevel() found AVX-512. Tolerance against the reference: see simd_kernels_impl.h
// (f32 accumulation, ~1e-6 relative to sum |x_i w_i|).
// GCC 12's AVX-512 headers build vectors from deliberately undefined ones (_mm512_undefined_*),
// which -Wuninitialized reports at every use; the warnings are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/simd_kernels_impl.h"

namespace cmoe::kernels::cpu {
namespace {

using simd::WBf16;
using simd::WF16;
using simd::WF32;

struct Avx512 {
  using F = __m512;
  static constexpr int kWidth = 16;
  static constexpr int kGemmMr = 12;
  static constexpr int kGemmNrVecs = 2;
  static constexpr int kGemvRowsT1 = 8;
  static constexpr int kGemvRowsBf16Pairs =
      16;  // measured best for 1-token decode (81-84 % vs 79 % at 8)
  static constexpr int kGemvMaxTokens = 4;

  static __mmask16 Mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static F Zero() { return _mm512_setzero_ps(); }
  static F Set1(float v) { return _mm512_set1_ps(v); }
  static F Load(const float* p) { return _mm512_loadu_ps(p); }
  static F LoadN(const float* p, int n) { return _mm512_maskz_loadu_ps(Mask(n), p); }
  static void Store(float* p, F v) { _mm512_storeu_ps(p, v); }
  static void StoreN(float* p, F v, int n) { _mm512_mask_storeu_ps(p, Mask(n), v); }

  static F LoadW(WF32, const uint8_t* p) { return _mm512_loadu_ps(p); }
  static F LoadWN(WF32, const uint8_t* p, int n) { return _mm512_maskz_loadu_ps(Mask(n), p); }
  static F LoadW(WF16, const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F LoadWN(WF16, const uint8_t* p, int n) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(Mask(n), p));
  }
  static F Bf16(__m256i h) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  }
  static F LoadW(WBf16, const uint8_t* p) {
    return Bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static F LoadWN(WBf16, const uint8_t* p, int n) {
    return Bf16(_mm256_maskz_loadu_epi16(Mask(n), p));
  }

  static __m512i LoadRaw(const uint8_t* p) { return _mm512_loadu_si512(p); }
  static F Bf16Even(__m512i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)); }
  static F Bf16Odd(__m512i v) {
    return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(-65536)));
  }

  static F Add(F a, F b) { return _mm512_add_ps(a, b); }
  static F Sub(F a, F b) { return _mm512_sub_ps(a, b); }
  static F Mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F Div(F a, F b) { return _mm512_div_ps(a, b); }
  static F Min(F a, F b) { return _mm512_min_ps(a, b); }
  static F Max(F a, F b) { return _mm512_max_ps(a, b); }
  static F Fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F Round(F x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static F Pow2(F n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  // 16 x 16 in four rounds of 16 shuffles: pairs, quads, 128-bit lanes, 256-bit halves.
  static void Transpose(F (&r)[16]) {
    F t[16], u[16];
    for (int i = 0; i < 16; i += 2) {
      t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
      t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
      u[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
      u[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
      u[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
      u[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
    }
    for (int h = 0; h < 16; h += 8) {
      for (int i = 0; i < 4; ++i) {
        t[h + i] = _mm512_shuffle_f32x4(u[h + i], u[h + 4 + i], 0x88);
        t[h + 4 + i] = _mm512_shuffle_f32x4(u[h + i], u[h + 4 + i], 0xdd);
      }
    }
    for (int i = 0; i < 8; ++i) {
      r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
      r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
    }
  }
  static float ReduceAdd(F v) { return _mm512_reduce_add_ps(v); }
  static float ReduceMax(F v) { return _mm512_reduce_max_ps(v); }
};

}  // namespace

const SimdKernels& Avx512Kernels() {
  static const SimdKernels kernels = simd::MakeKernels<Avx512>("avx512");
  return kernels;
}

}  // namespace cmoe::kernels::cpu
