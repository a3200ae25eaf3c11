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
// - "The backend's memory" is host memory for the CPU backends and device memory for CUDA.
//   Allocate / CopyToBackend / CopyToHost / UploadWeight move data there; the defaults below are
//   the host versions. Spans of ids, positions, slots and block tables are host memory in every
//   backend (the engine plans a step on the host); a device backend copies them itself.
// - Device backends run ops asynchronously in call order; CopyToHost and Synchronize wait. A
//   sticky device error (the context is lost) makes every later call fail; Health() reports it.
#ifndef CMOE_KERNELS_BACKEND_H_
#define CMOE_KERNELS_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/attention_types.h"
#include "kernels/buffer.h"
#include "kernels/ffn_ops.h"
#include "kernels/moe_ops.h"
#include "kernels/sampling.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels {

enum class Accumulate { kNo, kYes };

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view Name() const = 0;

  // A hint that no kernel call follows for a while (a serving engine between steps): a backend
  // with spinning worker threads lets them sleep so their cores go to other threads. The next
  // kernel call works as usual. Same thread as the kernel calls.
  virtual void Idle() {}

  // --- Memory. Defaults: host memory (64-byte aligned), memcpy, the weights used in place. ---

  // True when the backend's memory is not host memory.
  virtual bool IsDevice() const { return false; }
  // `bytes` of uninitialised backend memory; bytes == 0 gives an empty Buffer. ResourceExhausted
  // when it cannot be had.
  virtual absl::StatusOr<Buffer> Allocate(int64_t bytes);
  // dst (backend memory) <- src (host memory), `bytes` bytes. Returns once src may be reused.
  virtual absl::Status CopyToBackend(void* dst, const void* src, int64_t bytes);
  // dst (host memory) <- src (backend memory), after every op called before it has finished.
  virtual absl::Status CopyToHost(void* dst, const void* src, int64_t bytes);
  // A view of `host` (host memory, usually memory-mapped) that this backend's ops can read. The
  // CPU backends return `host` itself; a device backend copies it to memory it owns until it is
  // destroyed (the returned view dies with the backend).
  virtual absl::StatusOr<WeightView> UploadWeight(const WeightView& host);
  // Makes `buffer` at least `bytes` long (when it is shorter, a new allocation of at least 1.5x
  // its old size; the contents are not kept). Workspaces that grow to the largest step and then
  // stay use this.
  absl::Status Reserve(Buffer& buffer, int64_t bytes);
  // Waits for every op called so far; their errors surface here at the latest.
  virtual absl::Status Synchronize() { return absl::OkStatus(); }
  // OK, or the sticky device error that fails every call from now on.
  virtual absl::Status Health() const { return absl::OkStatus(); }

  // --- Step graphs. ---
  // Between BeginGraph and EndGraph a device backend may record the ops it is called for instead
  // of queueing them one by one, and queue the recording as one graph at EndGraph (CUDA graphs:
  // one launch for the step's hundreds of kernels, no gaps between them). Everything else stays
  // as documented: host operands (ids, positions, block tables, sampling parameters) are read
  // during the call and may be reused at once, errors are returned by the call that causes them,
  // and the ops run in call order after everything queued before BeginGraph. Nothing recorded
  // runs before EndGraph returns OK.
  // - An op that would have to wait for the device inside a recording (CopyToHost, Synchronize,
  //   the cuBLAS grouped GEMM that reads its group sizes) returns an error for which
  //   IsNotInGraph() is true; the caller then calls CancelGraph and runs the ops again without a
  //   graph (nothing recorded has run, so repeating them is safe).
  // - After any error between BeginGraph and EndGraph, call CancelGraph before other calls.
  // The defaults (host backends, and device backends with graphs turned off) run every op as it
  // is called; EndGraph and CancelGraph then do nothing.
  virtual absl::Status BeginGraph() { return absl::OkStatus(); }
  virtual absl::Status EndGraph() { return absl::OkStatus(); }
  // Drops what was recorded since BeginGraph (nothing of it runs). Safe to call at any time.
  virtual void CancelGraph() {}
  // What the backend did with step graphs since it was made.
  struct GraphStats {
    int64_t launched = 0;      // graphs queued by EndGraph
    int64_t instantiated = 0;  // of those, built from scratch (a new shape of step)
    int64_t updated = 0;       // of those, an earlier graph with new arguments (cheap)
    int64_t cancelled = 0;     // recordings dropped by CancelGraph
  };
  virtual GraphStats graph_stats() const { return {}; }

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

  // Several products of one input: outputs[i].y = x · outputs[i].w^T (the q, k and v projections
  // of one normed input). The default calls MatMul for each; the CUDA backend rounds x to the
  // weights' dtype once for all of them on its cuBLAS path. No y may overlap x.
  struct MatMulOutput {
    WeightView w;
    float* y = nullptr;
  };
  virtual absl::Status MatMuls(const float* x, int64_t num_rows,
                               std::span<const MatMulOutput> outputs);

  // out = silu(gate) * up elementwise over `count` floats; out may alias gate or up.
  virtual absl::Status SiluMul(const float* gate, const float* up, int64_t count, float* out) = 0;

  // Stores the keys and values of T new positions: k/v (T, n_kv_heads, head_dim) f32 go to
  // cache slots slots[t], rounded to nearest even for a BF16 cache. A slot outside the cache or a
  // cache dtype other than F32 / BF16 is InvalidArgument.
  virtual absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                               const PagedKvLayer& cache) = 0;

  // Grouped-query causal attention over the paged cache (softmax(q·k^T·scale)·v per head, query
  // head h reading kv head h / (n_heads / n_kv_heads)). Rows not covered by a sequence are left
  // untouched.
  virtual absl::Status Attention(const AttentionParams& params) = 0;

  // --- MoE primitives (kernels/moe_ops.h describes the pipeline). ---

  // Router scores, softmax, top-k with bias and gate weights per token (engine/moe_dispatch.h
  // RouteTokens on up * silu(gate)). Non-finite scores are not diagnosed here; a host backend
  // orders NaN below every number.
  virtual absl::Status RouteTopK(const RouteTopKParams& params) = 0;
  // The dispatch plan of engine/moe_dispatch.h BuildDispatchPlan, in backend memory. Ids must
  // be valid and distinct per token (RouteTopK's output is); a host backend checks them.
  virtual absl::Status BuildDispatch(const DispatchParams& params) = 0;
  // One matmul per group over its contiguous rows: y[p] = W_e . x_p (see GroupedMatMulParams).
  virtual absl::Status GroupedMatMul(const GroupedMatMulParams& params) = 0;
  // out[r, i] = silu(gate_up[r, i]) * gate_up[r, width + i]: gate_up (rows, 2 * width) f32 read,
  // out (rows, width) f32 written; out must not overlap gate_up.
  virtual absl::Status SiluMulPacked(const float* gate_up, int64_t rows, int64_t width,
                                     float* out) = 0;
  // x[t] += sum_j weights[t, j] * expert_out[token_slot[t * k + j]], summed in j order.
  virtual absl::Status CombineExperts(const CombineParams& params) = 0;

  // One SwiGLU FFN block, dense or over expert groups (kernels/ffn_ops.h). The default runs
  // GatedFfnByOps: MatMul or GroupedMatMul, SiluMulPacked, MatMul or GroupedMatMul, in f32; a
  // backend may override it to keep the intermediates in another precision.
  virtual absl::Status GatedFfn(const GatedFfnParams& params);

  // --- Sampling (kernels/sampling.h). ---

  // The next token of each row of logits, where the logits are: only the ids need to reach the
  // host. Every backend makes the same decisions (kernels/sample_row.h).
  virtual absl::Status SampleTokens(const SampleTokensParams& params) = 0;
};

// The error of an op that cannot run inside a step graph (see Backend::BeginGraph):
// FailedPrecondition "<op> waits for the device and cannot run inside a step graph", marked so
// that IsNotInGraph() recognises it.
absl::Status NotInGraphError(std::string_view op);
bool IsNotInGraph(const absl::Status& status);

// Validation shared by every backend's MoE primitives: non-null operands where T > 0, k in
// [1, E], T * k < 2^31, grouped weight shapes (x width = w.cols). Names the op and the operand.
absl::Status ValidateRouteTopK(const RouteTopKParams& params);
absl::Status ValidateDispatch(const DispatchParams& params);
absl::Status ValidateGroupedMatMul(const GroupedMatMulParams& params);
absl::Status ValidateCombine(const CombineParams& params);
// GatedFfn: gate_up (E, 2m, d) and down (E, d, m) float weights of one dtype, m >= 1; offsets
// null needs E == 1 and no row_index, accumulate needs offsets null; a workspace of
// GatedFfnWorkspaceBytes; non-null x and y where P > 0.
absl::Status ValidateGatedFfn(const GatedFfnParams& params);

// GatedFfn as the chain of single ops on `backend` with f32 intermediates in params.workspace
// (validated first): what Backend::GatedFfn does unless a backend overrides it.
absl::Status GatedFfnByOps(Backend& backend, const GatedFfnParams& params);

// Validation shared by every backend's SampleTokens: rows >= 0, vocab in [1, 2^23], non-null
// operands where rows > 0, and every row's parameters in range (naming the row and the field).
absl::Status ValidateSampleTokens(const SampleTokensParams& params);
// One row's parameters: InvalidArgument "<field> = <value> <rule>".
absl::Status ValidateRowSampling(const RowSampling& sampling);

// Validation shared by the fast CPU and the CUDA MatMul: no negative shape; unless there is
// nothing to compute (num_rows == 0 or w.rows == 0), non-null x and y, and w.data when w.cols > 0.
absl::Status ValidateMatMul(const float* x, int64_t num_rows, const WeightView& w, const float* y);

// Validation shared by every backend's Embedding: every id inside [0, table.rows).
absl::Status ValidateEmbedding(const WeightView& table, std::span<const int32_t> ids);

// A KV cache of F32 or BF16 (the dtypes every backend's KvWrite and Attention take); `op` names
// the caller in the InvalidArgument.
absl::Status ValidateKvCacheDType(const char* op, const PagedKvLayer& cache);

// Validation shared by every backend's Attention: shapes, GQA divisibility, row ranges and block
// tables that cover each sequence's context, the cache's dtype.
absl::Status ValidateAttention(const AttentionParams& params);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_BACKEND_H_
