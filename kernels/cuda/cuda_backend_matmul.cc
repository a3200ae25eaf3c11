// CudaBackend::MatMul: y (T, out) = x (T, in) . w^T (+ y with Accumulate::kYes), all in device
// memory. Up to kGemvMaxRows token rows (decode) it is the memory-bound GEMV of gemv.cu, which
// reads x in f32; above, cuBLAS with f32 accumulation: for F16 / BF16 weights x is rounded to the
// weight dtype (cast.cu, into Scratch::kCastX) so that the tensor cores take both operands, for
// F32 weights an exact f32 GEMM (CUBLAS_COMPUTE_32F with the default math mode: no TF32).
//
// Row-major y = x . w^T is, in cuBLAS's column-major terms, C (out, T) = op(A) B with
// A = w seen as (in, out) column-major (lda = in) and op = transpose, B = x seen as (in, T)
// (ldb = in) and C = y seen as (out, T) (ldc = out).
#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.cuh"

namespace cmoe::kernels::cuda {
namespace {

// cuBLAS and the GEMV index with int: every dimension must fit.
constexpr int64_t kMaxDim = INT_MAX;

absl::Status ValidateMatMul(const float* x, int64_t num_rows, const WeightView& w, const float* y) {
  if (num_rows < 0 || w.rows < 0 || w.cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MatMul: negative shape: x rows ", num_rows,
                                                   ", w (", w.rows, ", ", w.cols, ")"));
  }
  if (num_rows == 0 || w.rows == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr || (w.data == nullptr && w.cols > 0)) {
    return absl::InvalidArgumentError("MatMul: null x, y or weight data");
  }
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

// One cublasGemmEx on int-sized pieces: tokens [t0, t0 + n) x outputs [o0, o0 + m), where b
// holds the n rows of x (in the weight dtype, or f32 for F32 weights).
struct GemmPiece {
  const void* b;
  int64_t t0, n, o0, m;
};

absl::Status GemmEx(CudaBackend& backend, const WeightView& w, const GemmPiece& p, float* y,
                    bool accumulate) {
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;  // beta == 0: cuBLAS does not read y
  const cudaDataType_t type = CublasType(w.dtype);
  const auto* a = static_cast<const char*>(w.data) + p.o0 * w.cols * DTypeSize(w.dtype);
  const int in = static_cast<int>(w.cols);
  return backend.Check(CMOE_CUBLAS_STATUS(cublasGemmEx(
      backend.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.m), static_cast<int>(p.n), in,
      &alpha, a, type, in, p.b, type, in, &beta, y + p.t0 * w.rows + p.o0, CUDA_R_32F,
      static_cast<int>(w.rows), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)));
}

// The cuBLAS path. Token rows go in chunks with chunk * max(in, out) < 2^31 and output rows in
// chunks with chunk * in < 2^31, so that no extent cuBLAS computes in int overflows (one piece
// for every realistic shape).
absl::Status CublasMatMul(CudaBackend& backend, const float* x, int64_t num_rows,
                          const WeightView& w, float* y, bool accumulate) {
  const int64_t in = w.cols;
  const int64_t out = w.rows;
  const int64_t token_chunk = std::min(num_rows, std::max<int64_t>(1, kMaxDim / std::max(in, out)));
  const int64_t out_chunk = std::min(out, std::max<int64_t>(1, kMaxDim / in));
  const bool cast = w.dtype != DType::kF32;
  void* x_cast = nullptr;
  if (cast) {
    CMOE_ASSIGN_OR_RETURN(
        x_cast, backend.ScratchSpace(Scratch::kCastX, token_chunk * in * DTypeSize(w.dtype)));
  }
  for (int64_t t0 = 0; t0 < num_rows; t0 += token_chunk) {
    const int64_t n = std::min(token_chunk, num_rows - t0);
    const float* xt = x + t0 * in;
    if (cast) {
      CMOE_RETURN_IF_ERROR(backend.Check(
          CMOE_CUDA_STATUS(LaunchCastFromF32(xt, n * in, w.dtype, x_cast, backend.stream()))));
    }
    for (int64_t o0 = 0; o0 < out; o0 += out_chunk) {
      const GemmPiece piece{.b = cast ? x_cast : static_cast<const void*>(xt),
                            .t0 = t0,
                            .n = n,
                            .o0 = o0,
                            .m = std::min(out_chunk, out - o0)};
      CMOE_RETURN_IF_ERROR(GemmEx(backend, w, piece, y, accumulate));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                                 Accumulate accumulate) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateMatMul(x, num_rows, w, y));
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
  return CublasMatMul(*this, x, num_rows, w, y, add);
}

}  // namespace cmoe::kernels::cuda
