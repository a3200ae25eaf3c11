#include "engine/carve/expert_slicing.h"

#include <cstring>

#include "common/logging.h"

namespace cmoe::engine::carve {

void GatherRows(const kernels::WeightView& w, std::span<const int64_t> rows, uint8_t* out) {
  const auto row_bytes = static_cast<size_t>(w.cols) * kernels::DTypeSize(w.dtype);
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (size_t i = 0; i < rows.size(); ++i) {
    CMOE_CHECK(rows[i] >= 0 && rows[i] < w.rows) << "row " << rows[i] << " of " << w.rows;
    std::memcpy(out + i * row_bytes, src + static_cast<size_t>(rows[i]) * row_bytes, row_bytes);
  }
}

void GatherColumns(const kernels::WeightView& w, std::span<const int64_t> cols, int64_t row_begin,
                   int64_t row_end, uint8_t* out) {
  const size_t es = kernels::DTypeSize(w.dtype);
  const auto* src = static_cast<const uint8_t*>(w.data);
  for (int64_t c : cols) CMOE_CHECK(c >= 0 && c < w.cols) << "column " << c << " of " << w.cols;
  CMOE_CHECK(row_begin >= 0 && row_begin <= row_end && row_end <= w.rows);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const uint8_t* row = src + static_cast<size_t>(r * w.cols) * es;
    for (size_t j = 0; j < cols.size(); ++j) {
      std::memcpy(out, row + static_cast<size_t>(cols[j]) * es, es);
      out += es;
    }
  }
}

namespace {

OwnedMatrix Rows(const kernels::WeightView& w, std::span<const int64_t> rows) {
  OwnedMatrix m{.dtype = w.dtype, .rows = static_cast<int64_t>(rows.size()), .cols = w.cols};
  m.bytes.resize(static_cast<size_t>(m.rows * m.cols) * kernels::DTypeSize(w.dtype));
  GatherRows(w, rows, m.bytes.data());
  return m;
}

OwnedMatrix Columns(const kernels::WeightView& w, std::span<const int64_t> cols) {
  OwnedMatrix m{.dtype = w.dtype, .rows = w.rows, .cols = static_cast<int64_t>(cols.size())};
  m.bytes.resize(static_cast<size_t>(m.rows * m.cols) * kernels::DTypeSize(w.dtype));
  GatherColumns(w, cols, 0, w.rows, m.bytes.data());
  return m;
}

}  // namespace

OwnedExpert SliceExpert(const kernels::WeightView& w_gate, const kernels::WeightView& w_up,
                        const kernels::WeightView& w_down, std::span<const int64_t> neurons) {
  return {
      .gate = Rows(w_gate, neurons), .up = Rows(w_up, neurons), .down = Columns(w_down, neurons)};
}

}  // namespace cmoe::engine::carve
