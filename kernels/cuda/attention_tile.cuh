// Tensor-core attention for prefill chunks over the paged KV cache (the long-sequence half of
// kernels/backend.h Attention; attention.cuh's flash-decoding kernel takes the decode rows).
#ifndef CMOE_KERNELS_CUDA_ATTENTION_TILE_CUH_
#define CMOE_KERNELS_CUDA_ATTENTION_TILE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cuda/attention.cuh"

namespace cmoe::kernels::cuda {

// Query vectors (rows x query heads per kv head) a sequence needs for the tile kernel to be
// worth its 64-vector tiles; sequences with fewer stay with the flash-decoding kernel.
inline constexpr int64_t kTileAttentionMinQueries = 64;

// Whether the tile kernel takes this head_dim (64 or 128).
bool TileAttentionSupports(int32_t head_dim);

// Attention for the sequences with num_tokens * (n_heads / n_kv_heads) >= min_queries (the
// others are skipped), from args (num_splits must be 1). Queries, keys, values and softmax
// weights go to the tensor cores as F16 (an F32 cache) or BF16 (a BF16 cache); scores, softmax
// and the output accumulate in f32. Rows of skipped
// sequences and rows no sequence covers are left untouched.
cudaError_t LaunchTileAttention(const PagedAttentionArgs& args, int64_t min_queries,
                                cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_ATTENTION_TILE_CUH_
