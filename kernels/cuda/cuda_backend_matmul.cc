// CudaBackend::MatMul: y (T, out) = x (T, in) . w^T (+ y with Accumulate::kYes), all in device
// memory. Up to kGemvMaxRows token rows (decode) it is the memory-bound GEMV of gemv.cu, which
// reads x in f32; above, cuBLAS (cublas_gemm.h) with f32 accumulation: for F16 / BF16 weights x is
// rounded to the weight dtype so that the tensor cores take both operands, for F32 weights an
// exact f32 GEMM.
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.cuh"

namespace cmoe::kernels::cuda {
namespace {

// cuBLAS and the GEMV index with int: every dimension must fit.
constexpr int64_t kMaxDim = INT_MAX;

// ValidateMatMul and what the CUDA kernels add: a float weight dtype and int-sized dimensions.
absl::Status ValidateCudaMatMul(const float* x, int64_t num_rows, const WeightView& w,
                                const float* y) {
  CMOE_RETURN_IF_ERROR(ValidateMatMul(x, num_rows, w, y));
  if (num_rows == 0 || w.rows == 0) return absl::OkStatus();
  if (!IsFloatDType(w.dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MatMul: weight dtype ", std::string(DTypeName(w.dtype)), " is not F32, F16 or BF16"));
  }
  const int64_t widest = std::max(w.rows, w.cols);
  if (widest > kMaxDim || num_rows > INT64_MAX / 4 / widest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MatMul: x rows ", num_rows, ", w (", w.rows, ", ", w.cols,
        ") is too large for the CUDA backend (w's rows and columns must each be < 2^31)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                                 Accumulate accumulate) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateCudaMatMul(x, num_rows, w, y));
  if (num_rows == 0 || w.rows == 0) return absl::OkStatus();
  const bool add = accumulate == Accumulate::kYes;
  if (w.cols == 0) {  // empty sums: y = 0, or y unchanged
    if (add) return absl::OkStatus();
    const absl::Status s = Check(CMOE_CUDA_STATUS(
        cudaMemsetAsync(y, 0, static_cast<size_t>(num_rows * w.rows) * sizeof(float), stream_)));
    if (!s.ok()) cudaGetLastError();  // so that the next launch does not report it (unless sticky)
    return s;
  }
  if (num_rows <= kGemvMaxRows) {
    return Check(CMOE_CUDA_STATUS(LaunchGemv(x, num_rows, w, y, add, stream_)));
  }
  return CublasRowsGemm(*this, {.x_f32 = x, .rows = num_rows, .w = w, .y = y, .accumulate = add});
}

absl::Status CudaBackend::MatMuls(const float* x, int64_t num_rows,
                                  std::span<const MatMulOutput> outputs) {
  CMOE_RETURN_IF_ERROR(Ready());
  // One cast of x serves every output when all of them take cuBLAS with the same 16-bit weight
  // dtype and width; anything else is MatMul output by output.
  bool shared = num_rows > kGemvMaxRows && !outputs.empty();
  for (const MatMulOutput& o : outputs) {
    CMOE_RETURN_IF_ERROR(ValidateCudaMatMul(x, num_rows, o.w, o.y));
    shared = shared && o.w.rows > 0 && o.w.cols == outputs[0].w.cols &&
             o.w.dtype == outputs[0].w.dtype && o.w.dtype != DType::kF32 && o.w.cols > 0;
  }
  if (!shared) return Backend::MatMuls(x, num_rows, outputs);
  const WeightView& first = outputs[0].w;
  CMOE_ASSIGN_OR_RETURN(const void* cast,
                        CublasInput(*this, x, num_rows * first.cols, first.dtype));
  for (const MatMulOutput& o : outputs) {
    CMOE_RETURN_IF_ERROR(
        CublasRowsGemm(*this, {.x_cast = cast, .rows = num_rows, .w = o.w, .y = o.y}));
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels::cuda
