// Grouped-query causal attention over the paged KV cache on the device (decode and chunked
// prefill; kernels/backend.h Attention).
#ifndef CMOE_KERNELS_CUDA_ATTENTION_CUH_
#define CMOE_KERNELS_CUDA_ATTENTION_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/attention_types.h"

namespace cmoe::kernels::cuda {

// A sequence of the step as the device reads it: its block table starts at
// block_tables[table_offset].
struct DeviceAttentionSequence {
  int64_t first_row = 0;
  int64_t num_tokens = 0;
  int64_t context_len = 0;
  int64_t table_offset = 0;
};

struct PagedAttentionArgs {
  const float* q = nullptr;  // (num_rows, n_heads, head_dim) f32 device, read
  int64_t num_rows = 0;
  int32_t n_heads = 0;
  float scale = 0.0f;
  const DeviceAttentionSequence* sequences = nullptr;  // (num_sequences) device
  int32_t num_sequences = 0;
  const int32_t* block_tables = nullptr;  // concatenated block tables, int32 device
  int64_t max_tokens = 0;                 // max num_tokens over the sequences (host-known)
  int64_t max_context = 0;                // max context_len over the sequences (host-known)
  PagedKvLayer cache;                     // device, read
  float* out = nullptr;                   // (num_rows, n_heads, head_dim) f32 device, written
  // Split-K (PlanAttentionSplit): each sequence's keys in chunks of split_keys, one block per
  // chunk, partial results in `partial` (partial_floats, device scratch), merged by a second
  // kernel. num_splits == 1: one pass, `partial` unused.
  int32_t num_splits = 1;
  int32_t split_keys = 0;
  float* partial = nullptr;
  // > 0: sequences with num_tokens * (n_heads / n_kv_heads) >= this many query vectors are left
  // to the tensor-core kernel (attention_tile.cuh) and skipped here.
  int64_t tile_min_queries = 0;
};

// How to split the keys: for steps whose grid alone would leave most of the device idle (decode
// at small batch) and contexts of at least 1,024 keys, enough splits of at least 256 keys to give
// the device about two blocks per SM, at most 64. split_keys > 0 forces chunks of that many keys
// (tests), < 0 forbids splitting; 0 decides as above.
struct AttentionSplit {
  int32_t num_splits = 1;
  int32_t split_keys = 0;
  int64_t partial_floats = 0;  // the scratch LaunchPagedAttention needs in args.partial
};
AttentionSplit PlanAttentionSplit(const PagedAttentionArgs& args, int sm_count, int32_t split_keys);

// Rows not covered by a sequence are left untouched.
cudaError_t LaunchPagedAttention(const PagedAttentionArgs& args, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_ATTENTION_CUH_
