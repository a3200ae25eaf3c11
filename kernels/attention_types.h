// The operands of paged attention, shared by every backend (plain structs, no Abseil, so CUDA
// launchers take them as they are).
#ifndef CMOE_KERNELS_ATTENTION_TYPES_H_
#define CMOE_KERNELS_ATTENTION_TYPES_H_

#include <cstdint>
#include <span>

#include "kernels/dtype.h"

namespace cmoe::kernels {

// One layer's slice of the paged KV cache. Slot s (= block * block_size + offset) holds the key
// and value of one position: k[s, kv_head, :] and v[s, kv_head, :], in `dtype`: F32, or BF16
// (half the memory and bandwidth; KvWrite rounds to nearest even, attention widens to f32).
struct PagedKvLayer {
  void* k = nullptr;  // (num_blocks * block_size, n_kv_heads, head_dim) dtype, read/written
  void* v = nullptr;  // (num_blocks * block_size, n_kv_heads, head_dim) dtype, read/written
  DType dtype = DType::kF32;
  int64_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
};

// The query rows of one sequence in an attention step. Row i (0 <= i < num_tokens) of the sequence
// sits at batch row first_row + i, has position context_len - num_tokens + i and attends causally
// to positions [0, that position]. Position p lives in slot
// block_table[p / block_size] * block_size + p % block_size.
struct AttentionSequence {
  int64_t first_row = 0;
  int64_t num_tokens = 0;
  int64_t context_len = 0;
  std::span<const int32_t> block_table;  // host memory in every backend
};

struct AttentionParams {
  const float* q = nullptr;  // (T, n_heads, head_dim) f32, read; RoPE already applied
  int64_t num_rows = 0;      // T
  int32_t n_heads = 0;       // query heads; a multiple of the cache's n_kv_heads (GQA)
  float scale = 0.0f;        // usually 1/sqrt(head_dim)
  std::span<const AttentionSequence> sequences;
  PagedKvLayer cache;    // read
  float* out = nullptr;  // (T, n_heads, head_dim) f32, written
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_ATTENTION_TYPES_H_
