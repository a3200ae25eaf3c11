// A read-only view of a weight tensor in host memory (usually inside a memory-mapped
// checkpoint). The kernels widen F16/BF16 to float on the fly, so weights keep their file dtype.
#ifndef CMOE_KERNELS_WEIGHT_VIEW_H_
#define CMOE_KERNELS_WEIGHT_VIEW_H_

#include <cstdint>

#include "kernels/dtype.h"

namespace cmoe::kernels {

// Row-major matrix (rows, cols) of `dtype`; a vector is a view with rows == 1. `data` need not be
// aligned (safetensors offsets are arbitrary). Not owning.
struct WeightView {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;

  int64_t elements() const { return rows * cols; }
  int64_t bytes() const { return elements() * static_cast<int64_t>(DTypeSize(dtype)); }
  // Element (r, c) widened to float.
  float At(int64_t r, int64_t c) const;
  // The view of row r as a (1, cols) vector.
  WeightView Row(int64_t r) const;
};

// Widens `count` elements starting at element `offset` of `w` into `out`.
void WidenToFloat(const WeightView& w, int64_t offset, int64_t count, float* out);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_WEIGHT_VIEW_H_
