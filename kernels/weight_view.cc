#include "kernels/weight_view.h"

#include <cstring>

#include "common/half.h"
#include "common/logging.h"

namespace cmoe::kernels {

void WidenToFloat(const WeightView& w, int64_t offset, int64_t count, float* out) {
  const auto* bytes = static_cast<const uint8_t*>(w.data);
  switch (w.dtype) {
    case DType::kF32:
      std::memcpy(out, bytes + offset * 4, static_cast<size_t>(count) * 4);
      return;
    case DType::kF16:
    case DType::kBF16: {
      const bool bf16 = w.dtype == DType::kBF16;
      for (int64_t i = 0; i < count; ++i) {
        uint16_t h;
        std::memcpy(&h, bytes + (offset + i) * 2, 2);
        out[i] = bf16 ? Bf16ToFloat(h) : F16ToFloat(h);
      }
      return;
    }
    case DType::kI32:
      break;
  }
  CMOE_CHECK(false) << "WidenToFloat on an I32 tensor (index tensors are never weights)";
}

float WeightView::At(int64_t r, int64_t c) const {
  float value;
  WidenToFloat(*this, r * cols + c, 1, &value);
  return value;
}

WeightView WeightView::Row(int64_t r) const {
  return WeightView{
      .data = static_cast<const uint8_t*>(data) + r * cols * static_cast<int64_t>(DTypeSize(dtype)),
      .dtype = dtype,
      .rows = 1,
      .cols = cols};
}

}  // namespace cmoe::kernels
