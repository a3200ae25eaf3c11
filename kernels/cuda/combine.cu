// Weighted combine of expert outputs into token order on the device (kernels/moe_ops.h
// CombineParams): x[t, i] += sum_j weights[t, j] * expert_out[token_slot[t * k + j], i].
//
// Launch: one block per token (grid = T), up to 256 threads striding over the columns, each
// element accumulated in f32 with fused multiply-adds in j order starting from x[t, i]: no atomics,
// so the result does not depend on scheduling. 16-byte accesses when dim % 4 == 0 and x and
// expert_out are 16-byte aligned. token_slot is not checked on the device (BuildDispatch makes it).
// Tolerance against the host (double sum, one rounding): k + 1 f32 roundings, within
// kF32Tolerance.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/combine.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;

__device__ __forceinline__ float Fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ float4 Fma(float a, float4 b, float4 c) {
  return make_float4(fmaf(a, b.x, c.x), fmaf(a, b.y, c.y), fmaf(a, b.z, c.z), fmaf(a, b.w, c.w));
}

// V is float or float4; `cols` counts V elements.
template <class V>
__global__ void CombineKernel(const V* expert_out, const int32_t* token_slot, const float* weights,
                              int32_t k, int64_t cols, V* x) {
  const int64_t t = blockIdx.x;
  const int32_t* slots = token_slot + t * k;
  const float* w = weights + t * k;
  V* row = x + t * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    V acc = row[c];
    for (int32_t j = 0; j < k; ++j) {
      acc = Fma(__ldg(w + j), __ldg(expert_out + static_cast<int64_t>(__ldg(slots + j)) * cols + c),
                acc);
    }
    row[c] = acc;
  }
}

template <class V>
cudaError_t Launch(const CombineParams& p, int64_t cols, cudaStream_t stream) {
  const int64_t threads = std::min<int64_t>(kMaxThreads, (cols + 31) / 32 * 32);
  CombineKernel<V>
      <<<static_cast<unsigned>(p.num_tokens), static_cast<unsigned>(threads), 0, stream>>>(
          reinterpret_cast<const V*>(p.expert_out), p.token_slot, p.weights, p.k, cols,
          reinterpret_cast<V*>(p.x));
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchCombineExperts(const CombineParams& params, cudaStream_t stream) {
  if (params.num_tokens < 0 || params.num_tokens > 0x7fffffff || params.k < 1 || params.dim < 1) {
    return cudaErrorInvalidValue;
  }
  if (params.num_tokens == 0) return cudaSuccess;
  const bool vec4 = params.dim % 4 == 0 &&
                    reinterpret_cast<uintptr_t>(params.expert_out) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(params.x) % 16 == 0;
  if (vec4) return Launch<float4>(params, params.dim / 4, stream);
  return Launch<float>(params, params.dim, stream);
}

}  // namespace cmoe::kernels::cuda
