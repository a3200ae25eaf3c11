// Portable instantiation of the CPU kernels for x86-64 CPUs without AVX2 (and any other target):
// a "vector" of 8 floats held in an array, which the compiler maps onto SSE2 registers. Same
// algorithms and blocking as the AVX paths, so the same tolerance against the reference (see
// simd_kernels_impl.h: f32 accumulation, ~1e-6 relative to sum |x_i w_i|).
#include <bit>
#include <cstdint>
#include <cstring>

#include "common/half.h"
#include "kernels/cpu/simd_kernels_impl.h"

namespace cmoe::kernels::cpu {
namespace {

using simd::WBf16;
using simd::WF16;
using simd::WF32;

struct Scalar {
  static constexpr int kWidth = 8;
  struct F {
    float v[kWidth];
  };
  static constexpr int kGemmMr = 4;
  static constexpr int kGemmNrVecs = 1;
  static constexpr int kGemvRowsT1 = 4;
  static constexpr int kGemvMaxTokens = 2;

  template <class Fn>
  static F Map(Fn fn) {
    F r;
    for (int i = 0; i < kWidth; ++i) r.v[i] = fn(i);
    return r;
  }
  static F Zero() { return Set1(0.0f); }
  static F Set1(float s) {
    return Map([s](int) { return s; });
  }
  static F Load(const float* p) { return LoadN(p, kWidth); }
  static F LoadN(const float* p, int n) {
    return Map([p, n](int i) { return i < n ? p[i] : 0.0f; });
  }
  static void Store(float* p, F v) { StoreN(p, v, kWidth); }
  static void StoreN(float* p, F v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }

  static float Widen(WF32, const uint8_t* p) {
    float f;
    std::memcpy(&f, p, 4);
    return f;
  }
  static uint16_t Half(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
  }
  static float Widen(WF16, const uint8_t* p) { return F16ToFloat(Half(p)); }
  static float Widen(WBf16, const uint8_t* p) { return Bf16ToFloat(Half(p)); }
  template <class W>
  static F LoadWN(W tag, const uint8_t* p, int n) {
    return Map([=](int i) { return i < n ? Widen(tag, p + i * W::kBytes) : 0.0f; });
  }
  template <class W>
  static F LoadW(W tag, const uint8_t* p) {
    return Map([=](int i) { return Widen(tag, p + i * W::kBytes); });
  }

  static F Add(F a, F b) {
    return Map([&](int i) { return a.v[i] + b.v[i]; });
  }
  static F Sub(F a, F b) {
    return Map([&](int i) { return a.v[i] - b.v[i]; });
  }
  static F Mul(F a, F b) {
    return Map([&](int i) { return a.v[i] * b.v[i]; });
  }
  static F Div(F a, F b) {
    return Map([&](int i) { return a.v[i] / b.v[i]; });
  }
  static F Min(F a, F b) {
    return Map([&](int i) { return a.v[i] < b.v[i] ? a.v[i] : b.v[i]; });
  }
  static F Max(F a, F b) {
    return Map([&](int i) { return a.v[i] > b.v[i] ? a.v[i] : b.v[i]; });
  }
  static F Fma(F a, F b, F c) {
    return Map([&](int i) { return a.v[i] * b.v[i] + c.v[i]; });
  }
  // Round to nearest even for |x| < 2^22 (all Exp needs).
  static F Round(F x) {
    return Map([&](int i) { return (x.v[i] + 12582912.0f) - 12582912.0f; });
  }
  static F Pow2(F n) {
    return Map([&](int i) {
      return std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(n.v[i]) + 127) << 23);
    });
  }
  static void Transpose(F (&r)[kWidth]) {
    for (int i = 0; i < kWidth; ++i) {
      for (int j = i + 1; j < kWidth; ++j) {
        const float t = r[i].v[j];
        r[i].v[j] = r[j].v[i];
        r[j].v[i] = t;
      }
    }
  }
  static float ReduceAdd(F v) {
    float s = 0.0f;
    for (float x : v.v) s += x;
    return s;
  }
  static float ReduceMax(F v) {
    float m = v.v[0];
    for (float x : v.v) m = x > m ? x : m;
    return m;
  }
};

}  // namespace

const SimdKernels& ScalarKernels() {
  static const SimdKernels kernels = simd::MakeKernels<Scalar>("scalar");
  return kernels;
}

}  // namespace cmoe::kernels::cpu
