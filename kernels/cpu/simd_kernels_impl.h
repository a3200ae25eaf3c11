// The inner loops of the fast CPU backend written once against a small vector-traits interface
// `V`; simd_scalar.cc, simd_avx2.cc and simd_avx512.cc each define a traits type and instantiate
// MakeKernels<V>(). Include this header only from those files.
//
// All arithmetic accumulates in f32 (the reference uses double). Against the reference: GEMV and
// GEMM are within ~1e-6 relative to sum_i |x_i w_i|; exp (softmax, SiLU) uses a degree-6
// Cephes-style polynomial, within 2 ulp for inputs in [-87, 88] (inputs below -87 saturate at
// exp(-87) ~ 1.6e-38, which is negligible beside the softmax sum of at least 1).
//
// ODR: the three including files are compiled with different instruction sets, so every function
// here is a template over V, whose traits types live in each file's anonymous namespace. That
// gives every instantiation internal linkage and keeps AVX-512 code out of the AVX2 and scalar
// paths. Do not add non-template functions, and do not include headers with inline functions
// (the standard library's among them) into the SIMD files.
//
// The traits interface (F is the vector type, kWidth its float lanes):
//   Zero, Set1, Load, LoadN (first n lanes, rest zero), Store, StoreN (first n lanes),
//   LoadW / LoadWN (tag WF32/WF16/WBf16, unaligned bytes -> widened floats), Add, Sub, Mul, Div,
//   Min, Max, Fma (a * b + c), Round (to nearest), Pow2 (2^n for integral n in [-126, 127]),
//   ReduceAdd, ReduceMax, Transpose (kWidth vectors as a square matrix, in place); constants
//   kGemmMr, kGemmNrVecs (micro-kernel tile), kGemvRowsT1 (rows per GEMV tile at one token),
//   kGemvMaxTokens (tokens per GEMV tile). Optional, for the BF16 one-token path: LoadRaw
//   (2 * kWidth BF16 as one integer vector), Bf16Even / Bf16Odd (its even / odd elements as
//   floats), kGemvRowsBf16Pairs.
#ifndef CMOE_KERNELS_CPU_SIMD_KERNELS_IMPL_H_
#define CMOE_KERNELS_CPU_SIMD_KERNELS_IMPL_H_

#include <cstdint>

#include "kernels/cpu/simd_kernels.h"

namespace cmoe::kernels::cpu::simd {

// Weight dtype tags for V::LoadW.
struct WF32 {
  static constexpr int kBytes = 4;
};
struct WF16 {
  static constexpr int kBytes = 2;
};
struct WBf16 {
  static constexpr int kBytes = 2;
};

template <class V>
inline int64_t Min(int64_t a, int64_t b) {
  return a < b ? a : b;
}

template <class V, class W, bool kPartial>
inline typename V::F LoadWeights(const uint8_t* p, int n) {
  if constexpr (kPartial) {
    return V::LoadWN(W{}, p, n);
  } else {
    return V::LoadW(W{}, p);
  }
}

template <class V, bool kPartial>
inline typename V::F LoadX(const float* p, int n) {
  if constexpr (kPartial) {
    return V::LoadN(p, n);
  } else {
    return V::Load(p);
  }
}

// exp(x), see the file comment for the accuracy.
template <class V>
inline typename V::F Exp(typename V::F x) {
  using F = typename V::F;
  x = V::Min(V::Max(x, V::Set1(-87.0f)), V::Set1(88.3f));
  const F n = V::Round(V::Mul(x, V::Set1(1.44269504088896341f)));
  F r = V::Fma(n, V::Set1(-0.693359375f), x);
  r = V::Fma(n, V::Set1(2.12194440e-4f), r);
  F p = V::Set1(1.9875691500e-4f);
  p = V::Fma(p, r, V::Set1(1.3981999507e-3f));
  p = V::Fma(p, r, V::Set1(8.3334519073e-3f));
  p = V::Fma(p, r, V::Set1(4.1665795894e-2f));
  p = V::Fma(p, r, V::Set1(1.6666665459e-1f));
  p = V::Fma(p, r, V::Set1(5.0000001201e-1f));
  p = V::Fma(p, V::Mul(r, r), V::Add(r, V::Set1(1.0f)));
  return V::Mul(p, V::Pow2(n));
}

// ---------------------------------------------------------------------------------------------
// GEMV: a tile of kRows weight rows x kTokens tokens, one accumulator vector per pair, so each
// widened weight vector is used for every token of the tile.

// Software prefetch distance along each weight row: with several rows streamed at once the
// hardware prefetchers alone leave memory bandwidth unused (measured: +5-10 % at one token).
constexpr int kGemvPrefetchBytes = 256;

template <class V, class W, int kRows, int kTokens, bool kPartial, bool kPrefetch = !kPartial>
inline void GemvStep(typename V::F (&acc)[kRows][kTokens], const uint8_t* w, int64_t row_bytes,
                     const float* x, int64_t ldx, int n) {
  typename V::F wv[kRows];
  if constexpr (kPrefetch) {
    for (int i = 0; i < kRows; ++i) __builtin_prefetch(w + i * row_bytes + kGemvPrefetchBytes);
  }
  for (int i = 0; i < kRows; ++i) wv[i] = LoadWeights<V, W, kPartial>(w + i * row_bytes, n);
  for (int t = 0; t < kTokens; ++t) {
    const typename V::F xv = LoadX<V, kPartial>(x + t * ldx, n);
    for (int i = 0; i < kRows; ++i) acc[i][t] = V::Fma(wv[i], xv, acc[i][t]);
  }
}

// Rows [r, r + kRows) x tokens [t0, t0 + kTokens).
template <class V, class W, int kRows, int kTokens>
void GemvTile(const GemvArgs& a, int64_t r, int64_t t0) {
  typename V::F acc[kRows][kTokens];
  for (int i = 0; i < kRows; ++i) {
    for (int t = 0; t < kTokens; ++t) acc[i][t] = V::Zero();
  }
  const int64_t row_bytes = a.in * W::kBytes;
  const uint8_t* w = static_cast<const uint8_t*>(a.w) + r * row_bytes;
  const float* x = a.x + t0 * a.ldx;
  int64_t k = 0;
  // A whole 64-byte line of every row per iteration, one prefetch per line.
  constexpr int kLine = 64 / W::kBytes > V::kWidth ? 64 / W::kBytes : V::kWidth;
  for (; k + kLine <= a.in; k += kLine) {
    GemvStep<V, W, kRows, kTokens, false, false>(acc, w + k * W::kBytes, row_bytes, x + k, a.ldx,
                                                 V::kWidth);
    for (int s = V::kWidth; s < kLine; s += V::kWidth) {
      GemvStep<V, W, kRows, kTokens, false, false>(acc, w + (k + s) * W::kBytes, row_bytes,
                                                   x + k + s, a.ldx, V::kWidth);
    }
  }
  for (; k + V::kWidth <= a.in; k += V::kWidth) {
    GemvStep<V, W, kRows, kTokens, false>(acc, w + k * W::kBytes, row_bytes, x + k, a.ldx,
                                          V::kWidth);
  }
  if (k < a.in) {
    GemvStep<V, W, kRows, kTokens, true>(acc, w + k * W::kBytes, row_bytes, x + k, a.ldx,
                                         static_cast<int>(a.in - k));
  }
  for (int t = 0; t < kTokens; ++t) {
    float* y = a.y + (t0 + t) * a.ldy + r;
    for (int i = 0; i < kRows; ++i) {
      const float sum = V::ReduceAdd(acc[i][t]);
      y[i] = a.accumulate ? y[i] + sum : sum;
    }
  }
}

// Rows [r, r + kRows) for every token, in tiles of up to kGemvMaxTokens tokens that re-read the
// same rows (from L1) for each tile.
template <class V, class W, int kRows>
void GemvRowBlock(const GemvArgs& a, int64_t r) {
  static_assert(V::kGemvMaxTokens >= 2 && V::kGemvMaxTokens <= 4);
  for (int64_t t0 = 0; t0 < a.num_tokens; t0 += V::kGemvMaxTokens) {
    switch (Min<V>(V::kGemvMaxTokens, a.num_tokens - t0)) {
      case 1:
        GemvTile<V, W, kRows, 1>(a, r, t0);
        break;
      case 2:
        GemvTile<V, W, kRows, 2>(a, r, t0);
        break;
      case 3:
        if constexpr (V::kGemvMaxTokens >= 3) GemvTile<V, W, kRows, 3>(a, r, t0);
        break;
      default:
        if constexpr (V::kGemvMaxTokens >= 4) GemvTile<V, W, kRows, 4>(a, r, t0);
        break;
    }
  }
}

// BF16 at one token, the hot loop of decode. A BF16 pair (2j, 2j+1) fills one 32-bit lane, so a
// plain load of 2 * kWidth weights yields both halves as floats with one shift (even elements)
// and one mask (odd elements), no shuffles; x is pre-arranged to match (PairX). Same sums as the
// generic path, in a different order.
template <class V>
concept HasBf16Pairs = requires(const uint8_t* p) {
  V::Bf16Even(V::LoadRaw(p));
};

template <class V>
void PairX(const float* x, int64_t in, float* dst) {
  constexpr int kBlock = 2 * V::kWidth;
  int64_t k = 0;
  for (; k + kBlock <= in; k += kBlock) {
    for (int j = 0; j < V::kWidth; ++j) {
      dst[k + j] = x[k + 2 * j];
      dst[k + V::kWidth + j] = x[k + 2 * j + 1];
    }
  }
  for (; k < in; ++k) dst[k] = x[k];
}

template <class V, int kRows>
void GemvBf16PairsTile(const GemvArgs& a, int64_t r) {
  constexpr int kBlock = 2 * V::kWidth, kBlockBytes = kBlock * 2;
  typename V::F acc[kRows][1];
  for (int i = 0; i < kRows; ++i) acc[i][0] = V::Zero();
  const int64_t row_bytes = a.in * 2;
  const uint8_t* w = static_cast<const uint8_t*>(a.w) + r * row_bytes;
  int64_t k = 0;
  for (; k + kBlock <= a.in; k += kBlock) {
    const uint8_t* wk = w + k * 2;
    if (kBlockBytes >= 64 || (k * 2) % 64 == 0) {
      for (int i = 0; i < kRows; ++i) __builtin_prefetch(wk + i * row_bytes + kGemvPrefetchBytes);
    }
    const typename V::F xe = V::Load(a.x_pairs + k), xo = V::Load(a.x_pairs + k + V::kWidth);
    for (int i = 0; i < kRows; ++i) {
      const auto raw = V::LoadRaw(wk + i * row_bytes);
      acc[i][0] = V::Fma(V::Bf16Even(raw), xe, acc[i][0]);
      acc[i][0] = V::Fma(V::Bf16Odd(raw), xo, acc[i][0]);
    }
  }
  // The tail (fewer than 2 * kWidth columns) in x's natural order.
  for (; k < a.in; k += V::kWidth) {
    const int n = static_cast<int>(Min<V>(V::kWidth, a.in - k));
    GemvStep<V, WBf16, kRows, 1, true>(acc, w + k * 2, row_bytes, a.x + k, a.ldx, n);
  }
  for (int i = 0; i < kRows; ++i) {
    const float sum = V::ReduceAdd(acc[i][0]);
    a.y[r + i] = a.accumulate ? a.y[r + i] + sum : sum;
  }
}

template <class W>
inline constexpr bool kIsBf16 = false;
template <>
inline constexpr bool kIsBf16<WBf16> = true;

template <class V, class W>
void Gemv(const GemvArgs& a, int64_t row_begin, int64_t row_end) {
  int64_t r = row_begin;
  if constexpr (kIsBf16<W> && HasBf16Pairs<V>) {
    if (a.num_tokens == 1 && a.x_pairs != nullptr) {
      for (; r + V::kGemvRowsBf16Pairs <= row_end; r += V::kGemvRowsBf16Pairs) {
        GemvBf16PairsTile<V, V::kGemvRowsBf16Pairs>(a, r);
      }
      for (; r < row_end; ++r) GemvBf16PairsTile<V, 1>(a, r);
      return;
    }
  }
  if (a.num_tokens == 1) {
    for (; r + V::kGemvRowsT1 <= row_end; r += V::kGemvRowsT1) {
      GemvTile<V, W, V::kGemvRowsT1, 1>(a, r, 0);
    }
  }
  for (; r + 4 <= row_end; r += 4) GemvRowBlock<V, W, 4>(a, r);
  for (; r < row_end; ++r) GemvRowBlock<V, W, 1>(a, r);
}

// ---------------------------------------------------------------------------------------------
// Widening and GEMM packing.

template <class V, class W>
void Widen(const void* src, int64_t count, float* dst) {
  const auto* s = static_cast<const uint8_t*>(src);
  int64_t i = 0;
  for (; i + V::kWidth <= count; i += V::kWidth)
    V::Store(dst + i, V::LoadW(W{}, s + i * W::kBytes));
  if (i < count) {
    const int n = static_cast<int>(count - i);
    V::StoreN(dst + i, V::LoadWN(W{}, s + i * W::kBytes, n), n);
  }
}

// Loads kWidth rows x kWidth columns (widened), transposes them in registers and stores them as
// kWidth rows of the k-major panel.
template <class V, class W>
void PackW(const void* w, int64_t in, int64_t row_begin, int64_t rows, int64_t k_begin, int64_t kc,
           float* dst) {
  constexpr int kW = V::kWidth, kNr = V::kGemmNrVecs * kW;
  const auto* base = static_cast<const uint8_t*>(w) + (row_begin * in + k_begin) * W::kBytes;
  for (int64_t p = 0; p * kNr < rows; ++p) {
    for (int v = 0; v < V::kGemmNrVecs; ++v) {
      const int64_t r0 = p * kNr + v * kW;
      const int64_t valid_rows = rows - r0;
      float* out = dst + p * kc * kNr + v * kW;
      for (int64_t k0 = 0; k0 < kc; k0 += kW) {
        const int n = static_cast<int>(Min<V>(kW, kc - k0));
        typename V::F t[kW];
        for (int i = 0; i < kW; ++i) {
          const uint8_t* src = base + ((r0 + i) * in + k0) * W::kBytes;
          t[i] = i >= valid_rows ? V::Zero()
                 : n == kW       ? V::LoadW(W{}, src)
                                 : V::LoadWN(W{}, src, n);
        }
        V::Transpose(t);
        for (int i = 0; i < n; ++i) V::Store(out + (k0 + i) * kNr, t[i]);
      }
    }
  }
}

template <class V>
void PackX(const float* x, int64_t ldx, int64_t tokens, int64_t kc, float* dst) {
  constexpr int kMr = V::kGemmMr;
  for (int64_t p = 0; p * kMr < tokens; ++p) {
    float* panel = dst + p * kc * kMr;
    for (int i = 0; i < kMr; ++i) {
      const int64_t t = p * kMr + i;
      if (t < tokens) {
        const float* src = x + t * ldx;
        for (int64_t k = 0; k < kc; ++k) panel[k * kMr + i] = src[k];
      } else {
        for (int64_t k = 0; k < kc; ++k) panel[k * kMr + i] = 0.0f;
      }
    }
  }
}

// The register-tiled micro-kernel: kGemmMr tokens x kGemmNrVecs vectors of output rows; per k it
// loads the packed weight vectors once and broadcasts one x value per token.
template <class V>
void GemmKernel(int64_t kc, const float* xp, const float* wp, float* c, int64_t ldc,
                bool accumulate) {
  using F = typename V::F;
  constexpr int kMr = V::kGemmMr, kNv = V::kGemmNrVecs, kNr = kNv * V::kWidth;
  F acc[kMr][kNv];
  for (int i = 0; i < kMr; ++i) {
    for (int v = 0; v < kNv; ++v) acc[i][v] = V::Zero();
  }
  for (int64_t k = 0; k < kc; ++k) {
    F b[kNv];
    for (int v = 0; v < kNv; ++v) b[v] = V::Load(wp + k * kNr + v * V::kWidth);
    for (int i = 0; i < kMr; ++i) {
      const F a = V::Set1(xp[k * kMr + i]);
      for (int v = 0; v < kNv; ++v) acc[i][v] = V::Fma(a, b[v], acc[i][v]);
    }
  }
  for (int i = 0; i < kMr; ++i) {
    for (int v = 0; v < kNv; ++v) {
      float* p = c + i * ldc + v * V::kWidth;
      V::Store(p, accumulate ? V::Add(V::Load(p), acc[i][v]) : acc[i][v]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Elementwise ops and attention.

template <class V>
float SumSquares(const float* x, int64_t n) {
  typename V::F acc0 = V::Zero(), acc1 = V::Zero();
  int64_t i = 0;
  for (; i + 2 * V::kWidth <= n; i += 2 * V::kWidth) {
    const typename V::F a = V::Load(x + i), b = V::Load(x + i + V::kWidth);
    acc0 = V::Fma(a, a, acc0);
    acc1 = V::Fma(b, b, acc1);
  }
  for (; i < n; i += V::kWidth) {
    const typename V::F a = V::LoadN(x + i, static_cast<int>(Min<V>(V::kWidth, n - i)));
    acc0 = V::Fma(a, a, acc0);
  }
  return V::ReduceAdd(V::Add(acc0, acc1));
}

template <class V>
void ScaleMul(const float* x, float s, const float* w, int64_t n, float* y) {
  const typename V::F sv = V::Set1(s);
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    V::Store(y + i, V::Mul(V::Mul(V::Load(x + i), sv), V::Load(w + i)));
  }
  if (i < n) {
    const int m = static_cast<int>(n - i);
    V::StoreN(y + i, V::Mul(V::Mul(V::LoadN(x + i, m), sv), V::LoadN(w + i, m)), m);
  }
}

template <class V>
inline typename V::F Silu(typename V::F g) {
  const typename V::F one = V::Set1(1.0f);
  return V::Div(g, V::Add(one, Exp<V>(V::Sub(V::Zero(), g))));
}

template <class V>
void SiluMul(const float* gate, const float* up, int64_t n, float* out) {
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    V::Store(out + i, V::Mul(Silu<V>(V::Load(gate + i)), V::Load(up + i)));
  }
  if (i < n) {
    const int m = static_cast<int>(n - i);
    V::StoreN(out + i, V::Mul(Silu<V>(V::LoadN(gate + i, m)), V::LoadN(up + i, m)), m);
  }
}

template <class V>
inline float Dot(const float* a, const float* b, int64_t n) {
  typename V::F acc0 = V::Zero(), acc1 = V::Zero();
  int64_t i = 0;
  for (; i + 2 * V::kWidth <= n; i += 2 * V::kWidth) {
    acc0 = V::Fma(V::Load(a + i), V::Load(b + i), acc0);
    acc1 = V::Fma(V::Load(a + i + V::kWidth), V::Load(b + i + V::kWidth), acc1);
  }
  for (; i < n; i += V::kWidth) {
    const int m = static_cast<int>(Min<V>(V::kWidth, n - i));
    acc0 = V::Fma(V::LoadN(a + i, m), V::LoadN(b + i, m), acc0);
  }
  return V::ReduceAdd(V::Add(acc0, acc1));
}

// y[i] += alpha * x[i].
template <class V>
inline void Axpy(float alpha, const float* x, float* y, int64_t n) {
  const typename V::F av = V::Set1(alpha);
  int64_t i = 0;
  for (; i + V::kWidth <= n; i += V::kWidth) {
    V::Store(y + i, V::Fma(av, V::Load(x + i), V::Load(y + i)));
  }
  if (i < n) {
    const int m = static_cast<int>(n - i);
    V::StoreN(y + i, V::Fma(av, V::LoadN(x + i, m), V::LoadN(y + i, m)), m);
  }
}

// x[i] = exp(x[i] - max); returns the sum of the new x.
template <class V>
float ExpSubSum(float* x, int64_t n, float max) {
  const typename V::F mv = V::Set1(max);
  typename V::F sum = V::Zero();
  for (int64_t i = 0; i < n; i += V::kWidth) {
    const int m = static_cast<int>(Min<V>(V::kWidth, n - i));
    const typename V::F e = Exp<V>(V::Sub(V::LoadN(x + i, m), mv));
    V::StoreN(x + i, e, m);
    sum = V::Add(sum, m == V::kWidth ? e : V::LoadN(x + i, m));
  }
  return V::ReduceAdd(sum);
}

template <class V>
void Scale(float* x, int64_t n, float s) {
  for (int64_t i = 0; i < n; i += V::kWidth) {
    const int m = static_cast<int>(Min<V>(V::kWidth, n - i));
    V::StoreN(x + i, V::Mul(V::LoadN(x + i, m), V::Set1(s)), m);
  }
}

// Calls fn(position, slot) for positions [0, a.num_positions) in order, walking the block table
// block by block (no division per position).
template <class V, class Fn>
inline void ForEachSlot(const AttendArgs& a, Fn&& fn) {
  for (int64_t p0 = 0, b = 0; p0 < a.num_positions; p0 += a.block_size, ++b) {
    const int64_t base = static_cast<int64_t>(a.block_table[b]) * a.block_size;
    const int64_t len = Min<V>(a.block_size, a.num_positions - p0);
    for (int64_t o = 0; o < len; ++o) fn(p0 + o, base + o);
  }
}

// Two-pass softmax per head: scores and their max (each key loaded once for all heads), exp and
// sum, then the weighted sum of values (each value loaded once for all heads).
template <class V>
void Attend(const AttendArgs& a) {
  const int64_t np = a.num_positions, hd = a.head_dim;
  float max[kMaxAttendHeads];
  for (int g = 0; g < a.num_heads; ++g) max[g] = -__builtin_inff();
  ForEachSlot<V>(a, [&](int64_t p, int64_t slot) {
    const float* key = a.k + slot * a.slot_stride;
    for (int g = 0; g < a.num_heads; ++g) {
      const float s = Dot<V>(a.q + g * hd, key, hd) * a.scale;
      a.scores[g * np + p] = s;
      max[g] = s > max[g] ? s : max[g];
    }
  });
  float inv_sum[kMaxAttendHeads];
  for (int g = 0; g < a.num_heads; ++g) {
    inv_sum[g] = 1.0f / ExpSubSum<V>(a.scores + g * np, np, max[g]);
  }
  for (int64_t i = 0; i < a.num_heads * hd; ++i) a.out[i] = 0.0f;
  ForEachSlot<V>(a, [&](int64_t p, int64_t slot) {
    const float* value = a.v + slot * a.slot_stride;
    for (int g = 0; g < a.num_heads; ++g) Axpy<V>(a.scores[g * np + p], value, a.out + g * hd, hd);
  });
  for (int g = 0; g < a.num_heads; ++g) Scale<V>(a.out + g * hd, hd, inv_sum[g]);
}

// Streams `bytes` with full-width loads into eight independent sums.
template <class V>
float ReadSum(const void* p, int64_t bytes) {
  using F = typename V::F;
  const auto* f = static_cast<const float*>(p);
  const int64_t n = bytes / 4;
  F acc[8];
  for (F& s : acc) s = V::Zero();
  for (int64_t i = 0; i + 8 * V::kWidth <= n; i += 8 * V::kWidth) {
    for (int u = 0; u < 8; ++u) acc[u] = V::Add(acc[u], V::Load(f + i + u * V::kWidth));
  }
  for (int u = 1; u < 8; ++u) acc[0] = V::Add(acc[0], acc[u]);
  return V::ReduceAdd(acc[0]);
}

template <class V>
SimdKernels MakeKernels(const char* name) {
  return SimdKernels{
      .name = name,
      .gemv = {&Gemv<V, WF32>, &Gemv<V, WF16>, &Gemv<V, WBf16>},
      .widen = {&Widen<V, WF32>, &Widen<V, WF16>, &Widen<V, WBf16>},
      .pack_w = {&PackW<V, WF32>, &PackW<V, WF16>, &PackW<V, WBf16>},
      .pack_x = &PackX<V>,
      .pair_x = HasBf16Pairs<V> ? &PairX<V> : nullptr,
      .gemm_kernel = &GemmKernel<V>,
      .gemm_mr = V::kGemmMr,
      .gemm_nr = V::kGemmNrVecs * V::kWidth,
      .sum_squares = &SumSquares<V>,
      .scale_mul = &ScaleMul<V>,
      .silu_mul = &SiluMul<V>,
      .attend = &Attend<V>,
      .read_sum = &ReadSum<V>,
  };
}

}  // namespace cmoe::kernels::cpu::simd

#endif  // CMOE_KERNELS_CPU_SIMD_KERNELS_IMPL_H_
