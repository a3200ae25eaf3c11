// Token sampling on the device (kernels/sampling.h): greedy, temperature, top-k, top-p, min-p,
// with the arithmetic of kernels/sample_row.h, so the decisions equal the host's bit for bit
// (only exp in double may differ by an ulp, which moves a fixed-point mass by at most one unit of
// 2^-40 and a decision only when the draw lands within that of a boundary).
//
// Launch: one block of kThreads per row. A greedy row is one pass: a block max over the keys
// (logit bits, then the id reversed), the winner is the largest logit with the lowest id. A
// sampled row then runs radix descents (sample_row.h): per descent step every thread adds the
// count or fixed-point mass of its matching tokens into 256 shared bins (integer atomics, so
// the order does not matter; lanes of a warp with the same bin add up first), thread 0 picks
// the byte, and the block moves to the next byte:
// 4 + ceil(log256 vocab) passes per descent, at most three descents (top-k, top-p, the draw) and
// two totals. Scaled logits and masses are recomputed per pass from the row (L2-resident) rather
// than stored.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/sample_tokens.cuh"
#include "kernels/sample_row.h"

namespace cmoe::kernels::cuda {
namespace {

namespace sr = sample_row;

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

struct Shared {
  unsigned long long bins[sr::kRadixBins];
  unsigned long long partial[kWarps];
  unsigned long long above;
  int bin;
};

// Block-wide max or sum of v (every thread gets the result). Leaves `partial` free again.
template <bool kMax>
__device__ __forceinline__ unsigned long long BlockReduce(unsigned long long v, Shared& sh) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const unsigned long long other = __shfl_xor_sync(kFullMask, v, offset);
    v = kMax ? (other > v ? other : v) : v + other;
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) sh.partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? sh.partial[lane] : 0;
    for (int offset = 16; offset > 0; offset /= 2) {
      const unsigned long long other = __shfl_xor_sync(kFullMask, v, offset);
      v = kMax ? (other > v ? other : v) : v + other;
    }
    if (lane == 0) sh.partial[0] = v;
  }
  __syncthreads();
  v = sh.partial[0];
  __syncthreads();
  return v;
}

// One row's scaled logits.
struct Row {
  const float* logits;
  int64_t vocab;
  float best;
  RowSampling p;

  __device__ __forceinline__ float Scaled(int64_t i) const {
    return sr::ScaledLogit(logits[i], best, p.temperature);
  }
};

// The key of the first token (largest key first) among those with key >= lower (and min_p
// passed, when `min_p` is set) where the running total of the counts (kMass false) or masses
// reaches `need`. False when they fall short; the block agrees on the result.
template <bool kMass>
__device__ bool Descend(const Row& row, uint64_t lower, bool min_p, uint64_t need, Shared& sh,
                        uint64_t& key_out) {
  uint64_t prefix = 0, mask = 0;
  if (threadIdx.x == 0) sh.above = 0;
  const int digits = sr::NumDigits(row.vocab);
  for (int d = 0; d < digits; ++d) {
    const int shift = sr::DigitShift(d, row.vocab);
    for (int b = threadIdx.x; b < sr::kRadixBins; b += kThreads) sh.bins[b] = 0;
    __syncthreads();
    // Warp-uniform trip count, so that every lane takes part in the aggregation below.
    for (int64_t base = 0; base < row.vocab; base += kThreads) {
      const int64_t i = base + threadIdx.x;
      int bin = -1;
      uint64_t w = 0;
      if (i < row.vocab) {
        const float s = row.Scaled(i);
        const uint64_t key = sr::Key(s, i, row.vocab);
        if ((key & mask) == prefix && key >= lower && (!min_p || sr::PassesMinP(s, row.p.min_p))) {
          w = kMass ? sr::FixedMass(s) : 1;
          bin = w != 0 ? static_cast<int>((key >> shift) & 0xff) : -1;
        }
      }
      // Most tokens fall into a few bins, and a 64-bit shared atomic is a compare-and-swap
      // loop: lanes with the same bin add up first (w <= 2^40 as two 20-bit halves, whose sums
      // over 32 lanes fit in 32 bits) and one of them adds the total.
      const unsigned peers = __match_any_sync(kFullMask, bin);
      const unsigned hi = __reduce_add_sync(peers, static_cast<unsigned>(w >> 20));
      const unsigned lo = __reduce_add_sync(peers, static_cast<unsigned>(w & 0xfffff));
      if (bin >= 0 && (threadIdx.x % 32) == __ffs(peers) - 1) {
        atomicAdd(&sh.bins[bin], (static_cast<unsigned long long>(hi) << 20) + lo);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      uint64_t above = sh.above;
      sh.bin = sr::DescendDigit(sh.bins, need, above);
      sh.above = above;
    }
    __syncthreads();
    const int b = sh.bin;
    if (b < 0) return false;
    prefix |= static_cast<uint64_t>(b) << shift;
    mask |= uint64_t{0xff} << shift;
  }
  key_out = prefix;
  return true;
}

// Mass of the tokens with key >= lower that pass min_p.
__device__ uint64_t CandidatesMass(const Row& row, uint64_t lower, Shared& sh) {
  unsigned long long total = 0;
  for (int64_t i = threadIdx.x; i < row.vocab; i += kThreads) {
    const float s = row.Scaled(i);
    if (sr::Key(s, i, row.vocab) >= lower && sr::PassesMinP(s, row.p.min_p)) {
      total += sr::FixedMass(s);
    }
  }
  return BlockReduce<false>(total, sh);
}

__global__ void __launch_bounds__(kThreads, 1)
    SampleTokensKernel(const float* logits, int64_t vocab, const RowSampling* sampling,
                       int32_t* tokens) {
  __shared__ Shared sh;
  const int64_t r = blockIdx.x;
  const float* l = logits + r * vocab;
  unsigned long long best_key = 0;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const unsigned long long key = sr::Key(l[i], i, vocab);
    best_key = key > best_key ? key : best_key;
  }
  best_key = BlockReduce<true>(best_key, sh);
  const int32_t argmax = sr::TokenOf(best_key, vocab);
  const RowSampling p = sampling[r];
  int32_t token = argmax;
  if (p.temperature != 0.0f) {
    const Row row{l, vocab, l[argmax], p};
    uint64_t lower = 0;
    bool ok = true;
    if (p.top_k > 0 && p.top_k < vocab) {
      ok = Descend<false>(row, 0, false, static_cast<uint64_t>(p.top_k), sh, lower);
    }
    uint64_t total = ok ? CandidatesMass(row, lower, sh) : 0;
    if (total != 0 && p.top_p < 1.0f) {
      ok = Descend<true>(row, lower, true, sr::TopPNeed(p.top_p, total), sh, lower);
      total = ok ? CandidatesMass(row, lower, sh) : 0;
    }
    uint64_t drawn = 0;
    if (total != 0 && Descend<true>(row, lower, true, sr::DrawNeed(p.uniform, total), sh, drawn)) {
      token = sr::TokenOf(drawn, vocab);
    }
  }
  if (threadIdx.x == 0) tokens[r] = token;
}

}  // namespace

cudaError_t LaunchSampleTokens(const float* logits, int64_t rows, int64_t vocab,
                               const RowSampling* sampling, int32_t* tokens, cudaStream_t stream) {
  if (rows < 1 || rows > 0x7fffffff || vocab < 1 || vocab > sr::kMaxVocab) {
    return cudaErrorInvalidValue;
  }
  SampleTokensKernel<<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(logits, vocab, sampling,
                                                                           tokens);
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
