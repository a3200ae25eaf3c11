// KV-cache store: for every new token t, cache.k[slots[t], :, :] = k[t, :, :] and
// cache.v[slots[t], :, :] = v[t, :, :] (width = n_kv_heads * head_dim elements per slot), f32
// copied or rounded to BF16 (nearest even) for a BF16 cache.
//
// Launch geometry: a 2-D grid of 1-D blocks. blockIdx.y walks the tokens (at most 65535 blocks,
// looping beyond); blockIdx.x * blockDim.x + threadIdx.x walks the width, each thread copying
// the same element of k and of v. When width % 4 == 0 and all four pointers are 16-byte aligned
// each thread moves float4s; otherwise single floats. Blocks of 256 threads, or the width
// rounded up to a warp when narrower. Slots are distinct in a step (the engine's plan); if two
// tokens named the same slot, which one lands would be unspecified.
//
// Tolerance against the CPU reference: bit-exact (a copy, or the same round-to-nearest-even);
// slots not written keep their bits.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/kv_write.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxBlocks = 65535;  // gridDim.y limit; the x dimension uses it too

__device__ __forceinline__ void Store(float* p, float x) { *p = x; }
__device__ __forceinline__ void Store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void Store4(float* p, float4 x) { *reinterpret_cast<float4*>(p) = x; }
__device__ __forceinline__ void Store4(__nv_bfloat16* p, float4 x) {
  p[0] = __float2bfloat16_rn(x.x);
  p[1] = __float2bfloat16_rn(x.y);
  p[2] = __float2bfloat16_rn(x.z);
  p[3] = __float2bfloat16_rn(x.w);
}

template <class T, bool kVec4>
__global__ void __launch_bounds__(kMaxThreads)
    KvWriteKernel(const float* __restrict__ k, const float* __restrict__ v,
                  const int32_t* __restrict__ slots, int64_t num_tokens, int64_t width,
                  T* __restrict__ cache_k, T* __restrict__ cache_v) {
  const int64_t units = kVec4 ? width / 4 : width;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = blockIdx.y; t < num_tokens; t += gridDim.y) {
    const int64_t src = t * width;
    const int64_t dst = static_cast<int64_t>(slots[t]) * width;
    for (int64_t u = first; u < units; u += stride) {
      if constexpr (kVec4) {
        Store4(cache_k + dst + 4 * u, reinterpret_cast<const float4*>(k + src)[u]);
        Store4(cache_v + dst + 4 * u, reinterpret_cast<const float4*>(v + src)[u]);
      } else {
        Store(cache_k + dst + u, k[src + u]);
        Store(cache_v + dst + u, v[src + u]);
      }
    }
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
void Launch(bool vec4, dim3 grid, int threads, cudaStream_t stream, const float* k, const float* v,
            const int32_t* slots, int64_t num_tokens, int64_t width, const PagedKvLayer& cache) {
  T* cache_k = static_cast<T*>(cache.k);
  T* cache_v = static_cast<T*>(cache.v);
  if (vec4) {
    KvWriteKernel<T, true>
        <<<grid, threads, 0, stream>>>(k, v, slots, num_tokens, width, cache_k, cache_v);
  } else {
    KvWriteKernel<T, false>
        <<<grid, threads, 0, stream>>>(k, v, slots, num_tokens, width, cache_k, cache_v);
  }
}

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
  if (cache.dtype == DType::kBF16) {
    Launch<__nv_bfloat16>(vec4, grid, threads, stream, k, v, slots, num_tokens, width, cache);
  } else if (cache.dtype == DType::kF32) {
    Launch<float>(vec4, grid, threads, stream, k, v, slots, num_tokens, width, cache);
  } else {
    return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
