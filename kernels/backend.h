// The numerics interface: one method per op of a Llama-family forward. The engine calls these and
// nothing else for arithmetic, so every backend (the plain-loop reference, the threaded SIMD CPU
// path, CUDA) is interchangeable and tested against the reference op by op.
//
// Conventions for every method:
// - Activations are float32, row-major, in the backend's memory (host memory for CPU backends).
//   `T` is the number of token rows in the step; rows of one sequence are contiguous.
// - Weights are WeightView (F32, F16 or BF16, row-major (out, in)), read only.
// - Outputs are written, never read, unless the method says it accumulates.
// - Shapes are validated; a mismatch returns InvalidArgument naming the op and the operand, and
//   writes nothing.
// - A backend is used by one thread at a time (the engine's step thread); it may use its own
//   worker threads inside a call.
#ifndef CMOE_KERNELS_BACKEND_H_
#define CMOE_KERNELS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels {

// One layer's slice of the paged KV cache. Slot s (= block * block_size + offset) holds the key
// and value of one position: k[s, kv_head, :] and v[s, kv_head, :].
struct PagedKvLayer {
  float* k = nullptr;  // (num_blocks * block_size, n_kv_heads, head_dim) f32, read/written
  float* v = nullptr;  // (num_blocks * block_size, n_kv_heads, head_dim) f32, read/written
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
  std::span<const int32_t> block_table;  // host memory for CPU backends
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

enum class Accumulate { kNo, kYes };

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view Name() const = 0;

  // A hint that no kernel call follows for a while (a serving engine between steps): a backend
  // with spinning worker threads lets them sleep so their cores go to other threads. The next
  // kernel call works as usual. Same thread as the kernel calls.
  virtual void Idle() {}

  // out[t, :] = table[ids[t], :] widened to float. table: (vocab, dim); out: (T, dim).
  // An id outside [0, vocab) is InvalidArgument.
  virtual absl::Status Embedding(const WeightView& table, std::span<const int32_t> ids,
                                 float* out) = 0;

  // y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight. x, y: (T, dim), may alias.
  // weight: (1, dim).
  virtual absl::Status RmsNorm(const float* x, int64_t num_rows, const WeightView& weight,
                               float eps, float* y) = 0;

  // Rotate-half RoPE in place (the Hugging Face layout): for each row t, head h and
  // i < head_dim / 2, with angle = positions[t] * theta^(-2i / head_dim):
  //   (x[i], x[i + head_dim/2]) <- (x[i] cos - x[i + head_dim/2] sin, x[i] sin + x[i + hd/2] cos).
  // x: (T, n_heads, head_dim) f32, read/written; head_dim even.
  virtual absl::Status Rope(float* x, std::span<const int32_t> positions, int32_t n_heads,
                            int32_t head_dim, float theta) = 0;

  // y (T, out) = x (T, in) · w^T, w: (out, in). With Accumulate::kYes, y += x · w^T (y is read).
  // x and y must not overlap.
  virtual absl::Status MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                              Accumulate accumulate) = 0;

  // out = silu(gate) * up elementwise over `count` floats; out may alias gate or up.
  virtual absl::Status SiluMul(const float* gate, const float* up, int64_t count, float* out) = 0;

  // Stores the keys and values of T new positions: k/v (T, n_kv_heads, head_dim) go to
  // cache slots slots[t]. A slot outside the cache is InvalidArgument.
  virtual absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                               const PagedKvLayer& cache) = 0;

  // Grouped-query causal attention over the paged cache (softmax(q·k^T·scale)·v per head, query
  // head h reading kv head h / (n_heads / n_kv_heads)). Rows not covered by a sequence are left
  // untouched.
  virtual absl::Status Attention(const AttentionParams& params) = 0;
};

// Validation shared by every backend's Embedding: every id inside [0, table.rows).
absl::Status ValidateEmbedding(const WeightView& table, std::span<const int32_t> ids);

// Validation shared by every backend's Attention: shapes, GQA divisibility, row ranges and block
// tables that cover each sequence's context.
absl::Status ValidateAttention(const AttentionParams& params);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_BACKEND_H_
