// cuBLAS products of a row-major weight with f32 activations, as CudaBackend::MatMul (above
// kGemvMaxRows rows) and the prefill path of CudaBackend::GroupedMatMul run them:
//   y (n, m) = x (n, k) . w^T   (or y += with accumulate),   w (m, k) row-major F32 / F16 / BF16,
// f32 output and accumulation (CUBLAS_COMPUTE_32F in the default math mode: no TF32). For F16 /
// BF16 weights x is first rounded to the weight dtype (CublasInput, cast.cu) so that the tensor
// cores take both operands; for F32 weights x is used as it is (an exact f32 GEMM).
//
// Row-major y = x . w^T is, in cuBLAS's column-major terms, C (m, n) = op(A) B with A = w seen as
// (k, m) column-major (lda = k) and op = transpose, B = x seen as (k, n) (ldb = k) and C = y seen
// as (m, n) (ldc = ldy).
//
//   CMOE_ASSIGN_OR_RETURN(const void* b, CublasInput(backend, x, rows * in, w.dtype));
//   CMOE_RETURN_IF_ERROR(CublasWeightGemm(backend, {.w = w.data, .x = b, .y = y, .dtype = w.dtype,
//                                                   .m = w.rows, .n = rows, .k = w.cols,
//                                                   .ldy = w.rows}));
//
// Internal to kernels/cuda; both queue work on the backend's stream and record sticky errors
// through CudaBackend::Check.
#ifndef CMOE_KERNELS_CUDA_CUBLAS_GEMM_H_
#define CMOE_KERNELS_CUDA_CUBLAS_GEMM_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/dtype.h"

namespace cmoe::kernels::cuda {

// cuBLAS's x operand for weights of `dtype`: x itself (f32) for F32 weights, else x rounded to
// F16 / BF16 in Scratch::kCastX (valid until that scratch is next used). x: `count` f32 device.
absl::StatusOr<const void*> CublasInput(CudaBackend& backend, const float* x, int64_t count,
                                        DType dtype);

struct CublasWeightGemmParams {
  const void* w = nullptr;  // (m, k) row-major, `dtype`, device, read
  const void* x = nullptr;  // (n, k) row-major, CublasInput's result for `dtype`, device, read
  float* y = nullptr;       // (n, ldy) f32 row-major, device: columns [0, m) written
  DType dtype = DType::kF32;
  int64_t m = 0;            // output columns (weight rows)
  int64_t n = 0;            // rows of x and y
  int64_t k = 0;            // the inner dimension (weight columns)
  int64_t ldy = 0;          // floats between rows of y, >= m
  bool accumulate = false;  // y += x . w^T (y is read) instead of y = x . w^T
};

// One cublasGemmEx: y = x . w^T (+ y). m, n, k and ldy must be in [1, 2^31); the caller keeps
// every extent cuBLAS computes in int (m * k, n * k, n * ldy) below 2^31.
absl::Status CublasWeightGemm(CudaBackend& backend, const CublasWeightGemmParams& p);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CUBLAS_GEMM_H_
