// Router softmax and top-k on the device (kernels/moe_ops.h RouteTopKParams), one warp per token.
//
// Launch: blocks of kWarpsPerBlock = 4 warps, one token per warp, grid ceil(T / 4); dynamic shared
// memory 2 * E floats per warp (probabilities and keys). Lane l owns experts l, l + 32, ...:
//   score s = up * silu(gate) in f32 (|s| when abs_score), p = softmax(s) max-subtracted with a
//   warp max and a warp sum, key = p + b; then k rounds of a warp arg-max over the experts not yet
//   taken, in the host's order (larger key first, NaN below every number, ties to the lower
//   expert), each writing its expert and weight 1 + p * u.
// Limits: 1 <= E <= kMaxExperts = 1024 (each lane keeps one "taken" bit per 32 experts); beyond it
// the launcher returns cudaErrorInvalidValue (CudaBackend::RouteTopK says so first). k rounds cost
// O(k * E / 32) per warp.
// Tolerance against the host (scores and softmax in double): p within a few f32 ulps, so weights
// within kF32Tolerance; the selected ids are equal unless two keys lie within those ulps.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "kernels/cuda/route_topk.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kMaxExperts = 1024;  // 32 lanes x 32 taken-bits
constexpr unsigned kFullMask = 0xffffffffu;

struct Candidate {
  float key;
  int expert;  // < 0: no candidate
};

// a ranks before b: a real candidate first, then larger key, NaN last, ties to the lower expert.
__device__ __forceinline__ bool Before(Candidate a, Candidate b) {
  if (a.expert < 0) return false;
  if (b.expert < 0) return true;
  const bool nan_a = isnan(a.key);
  const bool nan_b = isnan(b.key);
  if (nan_a != nan_b) return nan_b;
  if (!nan_a && a.key != b.key) return a.key > b.key;
  return a.expert < b.expert;
}

__device__ __forceinline__ float WarpMax(float v) {
  // fmaxf ignores NaN, as the host's std::max(max, s) does.
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  }
  return v;
}

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Before is a strict total order on real candidates, so the butterfly leaves the same winner in
// every lane.
__device__ __forceinline__ Candidate WarpBest(Candidate c) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    const Candidate other{__shfl_xor_sync(kFullMask, c.key, offset),
                          __shfl_xor_sync(kFullMask, c.expert, offset)};
    if (Before(other, c)) c = other;
  }
  return c;
}

// probs[e] <- softmax of the token's scores; keys[e] <- probs[e] + bias[e]. Each lane writes only
// the experts it owns.
__device__ __forceinline__ void TokenProbs(const RouteTopKParams& p, int64_t t, int lane,
                                           float* probs, float* keys) {
  const int n = p.num_experts;
  const float* gate = p.logits + t * 2 * n;
  const float* up = gate + n;
  float max_score = -INFINITY;
  for (int e = lane; e < n; e += kWarpSize) {
    const float g = gate[e];
    const float s = up[e] * (g / (1.0f + expf(-g)));
    probs[e] = p.abs_score ? fabsf(s) : s;
    max_score = fmaxf(max_score, probs[e]);
  }
  max_score = WarpMax(max_score);
  float sum = 0.0f;
  for (int e = lane; e < n; e += kWarpSize) {
    const float v = expf(probs[e] - max_score);
    probs[e] = v;
    sum += v;
  }
  sum = WarpSum(sum);
  for (int e = lane; e < n; e += kWarpSize) {
    probs[e] = probs[e] / sum;
    keys[e] = probs[e] + (p.bias != nullptr ? p.bias[e] : 0.0f);
  }
}

__global__ void RouteTopKKernel(RouteTopKParams p) {
  extern __shared__ float shared[];  // (kWarpsPerBlock, 2, E)
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (t >= p.num_tokens) return;  // the whole warp leaves; no block-wide barrier follows
  const int n = p.num_experts;
  const int k = p.num_activated;
  float* probs = shared + static_cast<int64_t>(warp) * 2 * n;
  float* keys = probs + n;
  TokenProbs(p, t, lane, probs, keys);
  __syncwarp();  // the winner's probability is read by lane 0 below

  uint32_t taken = 0;  // bit i: expert lane + 32 * i is already selected
  for (int j = 0; j < k; ++j) {
    Candidate best{0.0f, -1};
    int i = 0;
    for (int e = lane; e < n; e += kWarpSize, ++i) {
      if ((taken >> i) & 1u) continue;
      const Candidate c{keys[e], e};
      if (Before(c, best)) best = c;
    }
    best = WarpBest(best);
    const int e = best.expert;  // a real expert: j < k <= E leaves one untaken
    if (e % kWarpSize == lane) taken |= 1u << (e / kWarpSize);
    if (lane == 0) {
      const int64_t out = t * k + j;
      p.selected[out] = e;
      // __fmul_rn keeps the host's rounding (no fused multiply-add).
      p.weights[out] = p.scale != nullptr ? 1.0f + __fmul_rn(probs[e], p.scale[e]) : 1.0f;
    }
  }
}

}  // namespace

cudaError_t LaunchRouteTopK(const RouteTopKParams& params, cudaStream_t stream) {
  const int32_t n = params.num_experts;
  if (n < 1 || n > kMaxExperts || params.num_activated < 1 || params.num_activated > n ||
      params.num_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  if (params.num_tokens == 0) return cudaSuccess;
  const int64_t blocks = (params.num_tokens + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (blocks > 0x7fffffff) return cudaErrorInvalidValue;
  const size_t shared_bytes = sizeof(float) * 2 * kWarpsPerBlock * static_cast<size_t>(n);
  RouteTopKKernel<<<static_cast<unsigned>(blocks), kWarpsPerBlock * kWarpSize, shared_bytes,
                    stream>>>(params);
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
