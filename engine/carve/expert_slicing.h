// Cutting experts out of a dense FFN: rows of W_gate/W_up and columns of W_down, copied in the
// weights' own dtype (bytes, no rounding), so a carved expert holds exactly the dense values.
//
//   OwnedExpert e = SliceExpert(layer.w_gate, layer.w_up, layer.w_down, neurons);
//   ExpertWeights view = e.View();  // valid while `e` lives
#ifndef CMOE_ENGINE_CARVE_EXPERT_SLICING_H_
#define CMOE_ENGINE_CARVE_EXPERT_SLICING_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model_weights.h"
#include "kernels/weight_view.h"

namespace cmoe::engine::carve {

// out (rows.size(), w.cols) = w[rows[i], :]. `out` holds rows.size() * w.cols elements of
// w.dtype. Indices must lie in [0, w.rows) (CHECK).
void GatherRows(const kernels::WeightView& w, std::span<const int64_t> rows, uint8_t* out);

// out (row_end - row_begin, cols.size()) = w[r, cols[j]] for r in [row_begin, row_end): the
// columns of a block of rows (a producer streams W_down in row blocks). Indices in range (CHECK).
void GatherColumns(const kernels::WeightView& w, std::span<const int64_t> cols, int64_t row_begin,
                   int64_t row_end, uint8_t* out);

// A matrix owned as raw elements of its dtype.
struct OwnedMatrix {
  kernels::DType dtype = kernels::DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;

  kernels::WeightView View() const {
    return {.data = bytes.data(), .dtype = dtype, .rows = rows, .cols = cols};
  }
};

// One expert's weights, owned; each matrix keeps the dtype of the dense tensor it came from
// (checkpoints may mix dtypes).
struct OwnedExpert {
  OwnedMatrix gate;  // (m, d)
  OwnedMatrix up;    // (m, d)
  OwnedMatrix down;  // (d, m)

  ExpertWeights View() const { return {.gate = gate.View(), .up = up.View(), .down = down.View()}; }
};

// The expert made of `neurons` (original indices) of a dense SwiGLU FFN. An empty list gives
// an empty expert (width 0) whose View() has gate/up (0, d) and down (d, 0).
OwnedExpert SliceExpert(const kernels::WeightView& w_gate, const kernels::WeightView& w_up,
                        const kernels::WeightView& w_down, std::span<const int64_t> neurons);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_EXPERT_SLICING_H_
