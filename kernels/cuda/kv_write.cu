// KV-cache store: for every new token t, cache.k[slots[t], :, :] = k[t, :, :] and
// cache.v[slots[t], :, :] = v[t, :, :] (width = n_kv_heads * head_dim floats per slot).
//
// Launch geometry: a 2-D grid of 1-D blocks. blockIdx.y walks the tokens (at most 65535 blocks,
// looping beyond); blockIdx.x * blockDim.x + threadIdx.x walks the width, each thread copying
// the same element of k and of v. When width % 4 == 0 and all four pointers are 16-byte aligned
// each thread copies float4s; otherwise single floats. Blocks of 256 threads, or the width
// rounded up to a warp when narrower. Slots are distinct in a step (the engine's plan); if two
// tokens named the same slot, which one lands would be unspecified.
//
// Tolerance against the CPU reference: bit-exact (a copy); slots not written keep their bits.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/kv_write.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // gridDim.y limit; the x dimension uses it too

template <bool kVec4>
__global__ void __launch_bounds__(kMaxThreads)
    KvWriteKernel(const float* __restrict__ k, const float* __restrict__ v,
                  const int32_t* __restrict__ slots, int64_t num_tokens, int64_t width,
                  float* __restrict__ cache_k, float* __restrict__ cache_v) {
  const int64_t units = kVec4 ? width / 4 : width;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = blockIdx.y; t < num_tokens; t += gridDim.y) {
    const int64_t src = t * width;
    const int64_t dst = static_cast<int64_t>(slots[t]) * width;
    for (int64_t u = first; u < units; u += stride) {
      if constexpr (kVec4) {
        reinterpret_cast<float4*>(cache_k + dst)[u] = reinterpret_cast<const float4*>(k + src)[u];
        reinterpret_cast<float4*>(cache_v + dst)[u] = reinterpret_cast<const float4*>(v + src)[u];
      } else {
        cache_k[dst + u] = k[src + u];
        cache_v[dst + u] = v[src + u];
      }
    }
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t LaunchKvWrite(const float* k, const float* v, const int32_t* slots, int64_t num_tokens,
                          const PagedKvLayer& cache, cudaStream_t stream) {
  const int64_t width = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
  if (num_tokens < 0 || cache.n_kv_heads < 0 || cache.head_dim < 0) return cudaErrorInvalidValue;
  if (num_tokens == 0 || width == 0) return cudaSuccess;
  const bool vec4 =
      width % 4 == 0 && Aligned(k) && Aligned(v) && Aligned(cache.k) && Aligned(cache.v);
  const int64_t units = vec4 ? width / 4 : width;
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (units + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(std::min(kMaxBlocks, (units + threads - 1) / threads)),
                  static_cast<unsigned>(std::min(kMaxBlocks, num_tokens)));
  if (vec4) {
    KvWriteKernel<true>
        <<<grid, threads, 0, stream>>>(k, v, slots, num_tokens, width, cache.k, cache.v);
  } else {
    KvWriteKernel<false>
        <<<grid, threads, 0, stream>>>(k, v, slots, num_tokens, width, cache.k, cache.v);
  }
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
