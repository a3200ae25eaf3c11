#include "kernels/cuda/cublas_gemm.h"

#include <cublas_v2.h>
#include <library_types.h>

#include <algorithm>
#include <climits>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gather_rows.cuh"

namespace cmoe::kernels::cuda {
namespace {

cudaDataType_t CublasType(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return CUDA_R_16F;
    case DType::kBF16:
      return CUDA_R_16BF;
    default:
      return CUDA_R_32F;
  }
}

}  // namespace

absl::StatusOr<const void*> CublasInput(CudaBackend& backend, const float* x, int64_t count,
                                        DType dtype) {
  if (dtype == DType::kF32) return x;
  CMOE_ASSIGN_OR_RETURN(
      void* cast,
      backend.ScratchSpace(Scratch::kCastX, count * static_cast<int64_t>(DTypeSize(dtype))));
  CMOE_RETURN_IF_ERROR(
      backend.Check(CMOE_CUDA_STATUS(LaunchCastFromF32(x, count, dtype, cast, backend.stream()))));
  return cast;
}

absl::Status CublasWeightGemm(CudaBackend& backend, const CublasWeightGemmParams& p) {
  const float alpha = 1.0f;
  const float beta = p.accumulate ? 1.0f : 0.0f;  // beta == 0: cuBLAS does not read y
  const cudaDataType_t type = CublasType(p.dtype);
  const int k = static_cast<int>(p.k);
  return backend.Check(CMOE_CUBLAS_STATUS(cublasGemmEx(
      backend.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.m), static_cast<int>(p.n), k,
      &alpha, p.w, type, k, p.x, type, k, &beta, p.y, CublasType(p.y_dtype),
      static_cast<int>(p.ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)));
}

absl::Status CublasRowsGemm(CudaBackend& backend, const CublasRowsParams& p) {
  constexpr int64_t kMaxDim = INT_MAX;
  const WeightView& w = p.w;
  const int64_t in = w.cols;
  const int64_t out = w.rows;
  const int64_t token_chunk = std::min(p.rows, std::max<int64_t>(1, kMaxDim / std::max(in, out)));
  const int64_t out_chunk = std::min(out, std::max<int64_t>(1, kMaxDim / in));
  const int64_t element = static_cast<int64_t>(DTypeSize(w.dtype));
  const int64_t y_element = static_cast<int64_t>(DTypeSize(p.y_dtype));
  for (int64_t t0 = 0; t0 < p.rows; t0 += token_chunk) {
    const int64_t n = std::min(token_chunk, p.rows - t0);
    const void* b = nullptr;
    if (p.x_cast != nullptr) {
      b = static_cast<const char*>(p.x_cast) + t0 * in * element;
    } else {
      CMOE_ASSIGN_OR_RETURN(b, CublasInput(backend, p.x_f32 + t0 * in, n * in, w.dtype));
    }
    for (int64_t o0 = 0; o0 < out; o0 += out_chunk) {
      CMOE_RETURN_IF_ERROR(
          CublasWeightGemm(backend, {.w = static_cast<const char*>(w.data) + o0 * in * element,
                                     .x = b,
                                     .y = static_cast<char*>(p.y) + (t0 * out + o0) * y_element,
                                     .dtype = w.dtype,
                                     .y_dtype = p.y_dtype,
                                     .m = std::min(out_chunk, out - o0),
                                     .n = n,
                                     .k = in,
                                     .ldy = out,
                                     .accumulate = p.accumulate}));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> HostGroupOffsets(CudaBackend& backend, const int32_t* offsets,
                                                      int32_t groups, int64_t num_rows,
                                                      const char* op) {
  if (groups == 1) return std::vector<int32_t>{0, static_cast<int32_t>(num_rows)};
  if (backend.recording()) return NotInGraphError(absl::StrCat(op, " on cuBLAS (group sizes)"));
  std::vector<int32_t> host(static_cast<size_t>(groups) + 1);
  CMOE_RETURN_IF_ERROR(backend.CopyToHost(host.data(), offsets,
                                          static_cast<int64_t>(host.size() * sizeof(int32_t))));
  if (host.front() != 0 || host.back() != num_rows) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": offsets run from ", host.front(), " to ",
                                                   host.back(), ", not from 0 to num_rows ",
                                                   num_rows));
  }
  for (size_t e = 0; e + 1 < host.size(); ++e) {
    if (host[e + 1] < host[e]) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": offsets decrease at group ", e));
    }
  }
  return host;
}

absl::StatusOr<const void*> CublasGroupedInput(CudaBackend& backend, const float* x,
                                               const int32_t* row_index, int64_t num_rows,
                                               const GroupedWeightView& w) {
  const int64_t in = w.cols;
  if (row_index != nullptr) {
    CMOE_ASSIGN_OR_RETURN(
        void* gathered, backend.ScratchSpace(Scratch::kGather,
                                             num_rows * in * static_cast<int64_t>(sizeof(float))));
    CMOE_RETURN_IF_ERROR(backend.Check(CMOE_CUDA_STATUS(LaunchGatherRows(
        x, in, row_index, num_rows, static_cast<float*>(gathered), backend.stream()))));
    x = static_cast<const float*>(gathered);
  }
  return CublasInput(backend, x, num_rows * in, w.dtype);
}

absl::Status CublasGroupedGemm(CudaBackend& backend, std::span<const int32_t> offsets,
                               const void* x, const GroupedWeightView& w, void* y, DType y_dtype) {
  const int64_t element = static_cast<int64_t>(DTypeSize(w.dtype));
  const int64_t y_element = static_cast<int64_t>(DTypeSize(y_dtype));
  for (int32_t e = 0; e < w.groups; ++e) {
    const int n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    CMOE_RETURN_IF_ERROR(CublasWeightGemm(
        backend, {.w = static_cast<const char*>(w.data) + e * w.rows * w.cols * element,
                  .x = static_cast<const char*>(x) + offsets[e] * w.cols * element,
                  .y = static_cast<char*>(y) + offsets[e] * w.rows * y_element,
                  .dtype = w.dtype,
                  .y_dtype = y_dtype,
                  .m = w.rows,
                  .n = n,
                  .k = w.cols,
                  .ldy = w.rows}));
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels::cuda
