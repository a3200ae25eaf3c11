// Parameters of the MoE primitives of a Backend: the device-resident "expert scheduler" of
// docs/architecture.md. One carved layer over T tokens with E routed experts, k per token and
// P = T * k (token, expert) slots runs as
//
//   MatMul(h, router (2E, d))             -> logits (T, 2E): gate scores, then up scores
//   RouteTopK(logits)                     -> selected (T, k), weights (T, k)
//   BuildDispatch(selected)               -> counts (E), offsets (E+1), slot_token (P),
//                                            slot_source (P), token_slot (P)
//   GroupedMatMul(h[slot_token], W_gu)    -> gate_up (P, 2m)   (gate and up fused per expert)
//   SiluMulPacked(gate_up)                -> act (P, m)
//   GroupedMatMul(act, W_down)            -> expert_out (P, d)
//   CombineExperts(expert_out)            -> x[t] += sum_j weights[t, j] * expert_out[slot(t, j)]
//
// The engine runs the three FFN steps as one grouped Backend::GatedFfn (kernels/ffn_ops.h), which
// lets a backend keep gate_up and act in another precision (BF16 on the CUDA GEMM paths).
// with no host round trip: every array lives in the backend's memory and the shapes the host
// passes (T, k, E, widths) are known before the step. The semantics are exactly those of the
// engine's RouterScores / RouteTokens / BuildDispatchPlan (engine/moe_dispatch.h).
#ifndef CMOE_KERNELS_MOE_OPS_H_
#define CMOE_KERNELS_MOE_OPS_H_

#include <cstdint>

#include "kernels/dtype.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels {

// E weight matrices of one shape stored back to back: group e is rows [e * rows, (e + 1) * rows)
// of a (groups * rows, cols) row-major tensor. Carved experts whose widths differ by one are
// zero-padded to the widest at load; padded rows produce silu(0) * 0 = 0 and padded columns
// multiply those zeros, so the padding never changes a result.
struct GroupedWeightView {
  const void* data = nullptr;  // (groups, rows, cols) in the backend's memory, read
  DType dtype = DType::kF32;
  int32_t groups = 0;
  int64_t rows = 0;
  int64_t cols = 0;

  WeightView Group(int32_t e) const {
    return {.data = static_cast<const char*>(data) + e * rows * cols * DTypeSize(dtype),
            .dtype = dtype,
            .rows = rows,
            .cols = cols};
  }
};

struct RouteTopKParams {
  // (T, 2E) f32, read: columns [0, E) are Wr_gate . x, columns [E, 2E) are Wr_up . x.
  const float* logits = nullptr;
  int64_t num_tokens = 0;     // T >= 0
  int32_t num_experts = 0;    // E >= 1
  int32_t num_activated = 0;  // k in [1, E]
  // score = up * silu(gate), with |up * silu(gate)| when true (RouterVariant::kReference).
  bool abs_score = true;
  const float* bias = nullptr;   // (E) f32, read; null means zero
  const float* scale = nullptr;  // (E) f32, read; null means zero (w = 1)
  int32_t* selected = nullptr;   // (T, k) int32, written: experts by descending p + b, ties low
  float* weights = nullptr;      // (T, k) f32, written: 1 + p_e * u_e
};

struct DispatchParams {
  const int32_t* selected = nullptr;  // (T, k) int32, read; ids in [0, E), distinct per token
  int64_t num_tokens = 0;             // T >= 0, T * k < 2^31
  int32_t k = 0;
  int32_t num_experts = 0;
  int32_t* counts = nullptr;       // (E) int32, written
  int32_t* offsets = nullptr;      // (E + 1) int32, written: exclusive prefix sum, offsets[E] = P
  int32_t* slot_token = nullptr;   // (P) int32, written: token of sorted slot p (stable by token)
  int32_t* slot_source = nullptr;  // (P) int32, written: t * k + j of sorted slot p
  int32_t* token_slot = nullptr;   // (P) int32, written: inverse, token_slot[t * k + j] = p
};

struct GroupedMatMulParams {
  // Input row p is x[row_index[p]] when row_index is set (a fused gather), else x[p].
  const float* x = nullptr;            // (rows of x, w.cols) f32, read
  const int32_t* row_index = nullptr;  // (P) int32, read; may be null
  int64_t num_rows = 0;                // P
  const int32_t* offsets = nullptr;  // (E + 1) int32, read: rows of group e are [off[e], off[e+1])
  GroupedWeightView w;               // (E, out, in)
  float* y = nullptr;                // (P, w.rows) f32, written: y[p] = W_e . x_p for p in e
};

struct CombineParams {
  const float* expert_out = nullptr;    // (P, dim) f32, read
  const int32_t* token_slot = nullptr;  // (T * k) int32, read
  const float* weights = nullptr;       // (T, k) f32, read
  int64_t num_tokens = 0;               // T
  int32_t k = 0;
  int64_t dim = 0;
  float* x = nullptr;  // (T, dim) f32, read/written: x[t] += sum_j w[t,j] * out[token_slot[t*k+j]]
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_MOE_OPS_H_
