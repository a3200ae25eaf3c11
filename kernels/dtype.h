// Element types of checkpoint tensors. Weights are F32/F16/BF16; I32 only holds index tensors
// (a carved checkpoint's neuron_index) and never reaches a kernel.
#ifndef CMOE_KERNELS_DTYPE_H_
#define CMOE_KERNELS_DTYPE_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace cmoe::kernels {

enum class DType { kF32, kF16, kBF16, kI32 };

// Bytes per element.
constexpr size_t DTypeSize(DType dtype) {
  return dtype == DType::kF32 || dtype == DType::kI32 ? 4 : 2;
}

// F32, F16 or BF16: a dtype the kernels read as weights.
constexpr bool IsFloatDType(DType dtype) { return dtype != DType::kI32; }

// Safetensors spelling: "F32", "F16", "BF16", "I32".
std::string_view DTypeName(DType dtype);

// Parses the safetensors spelling (case-sensitive, as the format defines it); nullopt otherwise.
std::optional<DType> ParseDType(std::string_view name);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_DTYPE_H_
