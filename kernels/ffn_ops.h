// Parameters of Backend::GatedFfn: one SwiGLU feed-forward block as a single op,
//
//   y_p (+)= W_down,e . (silu(W_gate,e . x_p) * (W_up,e . x_p))      for every row p of group e,
//
// over the rows of a dense layer or a shared expert (one group, every row) or over the routed
// experts' rows grouped by expert (kernels/moe_ops.h: the GroupedMatMul -> SiluMulPacked ->
// GroupedMatMul chain). As one op a backend may keep the intermediates (gate and up, then the
// activations) in the precision it likes: the CUDA backend keeps them in BF16 on its GEMM paths
// (kernels/cuda/cuda_backend_ffn.cc); every other backend runs the chain of single ops in f32
// (GatedFfnByOps, kernels/backend.h).
#ifndef CMOE_KERNELS_FFN_OPS_H_
#define CMOE_KERNELS_FFN_OPS_H_

#include <cstdint>

#include "kernels/moe_ops.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels {

struct GatedFfnParams {
  // Input row p is x[row_index[p]] when row_index is set (a fused gather), else x[p].
  const float* x = nullptr;            // (rows of x, d) f32, read
  const int32_t* row_index = nullptr;  // (P) int32, read; only with offsets
  int64_t num_rows = 0;                // P
  // (E + 1) int32, read: the rows of group e are [offsets[e], offsets[e + 1]). Null for one
  // group holding every row (a dense FFN or a shared expert).
  const int32_t* offsets = nullptr;
  GroupedWeightView gate_up;  // (E, 2m, d): per group the m gate rows, then the m up rows
  GroupedWeightView down;     // (E, d, m)
  // At least GatedFfnWorkspaceBytes(P, m) bytes of the backend's memory, for the intermediates
  // (its contents afterwards are unspecified).
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  float* y = nullptr;  // (P, d) f32: written, or added to with accumulate (offsets null only)
  bool accumulate = false;
};

// A single weight as a grouped view of one group (the dense FFN's or a shared expert's).
inline GroupedWeightView AsOneGroup(const WeightView& w) {
  return {.data = w.data, .dtype = w.dtype, .groups = 1, .rows = w.rows, .cols = w.cols};
}

// What GatedFfn needs for P rows of width m: the f32 gate/up output (P, 2m) and activations (P, m).
inline int64_t GatedFfnWorkspaceBytes(int64_t num_rows, int64_t width) {
  return num_rows * 3 * width * static_cast<int64_t>(sizeof(float));
}

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_FFN_OPS_H_
