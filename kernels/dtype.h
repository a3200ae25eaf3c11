// Element types of checkpoint tensors.
#ifndef CMOE_KERNELS_DTYPE_H_
#define CMOE_KERNELS_DTYPE_H_

#include <cstddef>
#include <optional>
#include <string_view>

namespace cmoe::kernels {

enum class DType { kF32, kF16, kBF16 };

// Bytes per element.
constexpr size_t DTypeSize(DType dtype) { return dtype == DType::kF32 ? 4 : 2; }

// Safetensors spelling: "F32", "F16", "BF16".
std::string_view DTypeName(DType dtype);

// Parses the safetensors spelling (case-sensitive, as the format defines it); nullopt otherwise.
std::optional<DType> ParseDType(std::string_view name);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_DTYPE_H_
