// Stores new keys and values into paged KV-cache slots on the device.
#ifndef CMOE_KERNELS_CUDA_KV_WRITE_CUH_
#define CMOE_KERNELS_CUDA_KV_WRITE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_types.h"

namespace cmoe::kernels::cuda {

// k, v: (num_tokens, n_kv_heads, head_dim) f32 device, read; slots: (num_tokens) int32 device,
// already validated to lie inside the cache and distinct; cache.k / cache.v device (F32, or BF16:
// rounded to nearest even), written at those slots only. Pointers need no alignment (aligned ones
// take the float4 path). Launches nothing when num_tokens or the width is 0; cudaErrorInvalidValue
// for a negative size or another cache dtype; otherwise cudaGetLastError() after the launch.
cudaError_t LaunchKvWrite(const float* k, const float* v, const int32_t* slots, int64_t num_tokens,
                          const PagedKvLayer& cache, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_KV_WRITE_CUH_
