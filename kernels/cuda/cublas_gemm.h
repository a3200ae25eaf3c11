// cuBLAS products of a row-major weight with activations, as CudaBackend::MatMul (above
// kGemvMaxRows rows), the prefill path of CudaBackend::GroupedMatMul and CudaBackend::GatedFfn
// run them:
//   y (n, m) = x (n, k) . w^T   (or y += with accumulate),   w (m, k) row-major F32 / F16 / BF16,
// f32 output (or the weight dtype, for GatedFfn's intermediates) and f32 accumulation
// (CUBLAS_COMPUTE_32F in the default math mode: no TF32). For F16 / BF16 weights x is first rounded
// to the weight dtype (CublasInput, cast.cu) so that the tensor cores take both operands; for F32
// weights x is used as it is (an exact f32 GEMM).
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
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/dtype.h"
#include "kernels/moe_ops.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels::cuda {

// cuBLAS's x operand for weights of `dtype`: x itself (f32) for F32 weights, else x rounded to
// F16 / BF16 in Scratch::kCastX (valid until that scratch is next used). x: `count` f32 device.
absl::StatusOr<const void*> CublasInput(CudaBackend& backend, const float* x, int64_t count,
                                        DType dtype);

struct CublasWeightGemmParams {
  const void* w = nullptr;  // (m, k) row-major, `dtype`, device, read
  const void* x = nullptr;  // (n, k) row-major, CublasInput's result for `dtype`, device, read
  void* y = nullptr;        // (n, ldy) row-major `y_dtype`, device: columns [0, m) written
  DType dtype = DType::kF32;
  // F32, or the weight dtype when that is F16 / BF16 (cuBLAS rounds the f32 sums once).
  DType y_dtype = DType::kF32;
  int64_t m = 0;            // output columns (weight rows)
  int64_t n = 0;            // rows of x and y
  int64_t k = 0;            // the inner dimension (weight columns)
  int64_t ldy = 0;          // elements between rows of y, >= m
  bool accumulate = false;  // y += x . w^T (y is read) instead of y = x . w^T
};

// One cublasGemmEx: y = x . w^T (+ y). m, n, k and ldy must be in [1, 2^31); the caller keeps
// every extent cuBLAS computes in int (m * k, n * k, n * ldy) below 2^31.
absl::Status CublasWeightGemm(CudaBackend& backend, const CublasWeightGemmParams& p);

// y (rows, w.rows) = x (rows, w.cols) . w^T (+ y with accumulate) for any int64 row count: token
// rows go in chunks with chunk * max(in, out) < 2^31 and output rows in chunks with
// chunk * in < 2^31, so that no extent cuBLAS computes in int overflows (one piece for every
// realistic shape). x is f32 (x_f32, rounded per chunk by CublasInput) or already in the weight
// dtype (x_cast, exactly one of the two set); y is `y_dtype` as in CublasWeightGemmParams.
// w.rows, w.cols >= 1 and < 2^31.
struct CublasRowsParams {
  const float* x_f32 = nullptr;
  const void* x_cast = nullptr;
  int64_t rows = 0;
  WeightView w;
  void* y = nullptr;
  DType y_dtype = DType::kF32;
  bool accumulate = false;
};
absl::Status CublasRowsGemm(CudaBackend& backend, const CublasRowsParams& p);

// The group offsets (groups + 1 int32, device) on the host, checked to run non-decreasing from 0
// to num_rows (InvalidArgument naming `op` otherwise). One group needs no copy (its offsets are
// {0, num_rows} by contract); several wait for the device, NotInGraphError while recording.
absl::StatusOr<std::vector<int32_t>> HostGroupOffsets(CudaBackend& backend, const int32_t* offsets,
                                                      int32_t groups, int64_t num_rows,
                                                      const char* op);

// cuBLAS's x operand for grouped weights w: x's rows (f32, device), gathered by row_index when set
// (Scratch::kGather), then CublasInput: (num_rows, w.cols) in w's dtype (or x itself).
absl::StatusOr<const void*> CublasGroupedInput(CudaBackend& backend, const float* x,
                                               const int32_t* row_index, int64_t num_rows,
                                               const GroupedWeightView& w);

// One CublasWeightGemm per non-empty group: y_e (n_e, out) = x_e (n_e, in) . W_e^T, x in w's
// dtype (CublasGroupedInput's result), y (offsets.back(), w.rows) of `y_dtype`. Per-group GEMMs
// rather than cublasGemmGroupedBatchedEx: simpler to get right; the launches are few (<= E) next
// to the GEMMs of a prefill step.
absl::Status CublasGroupedGemm(CudaBackend& backend, std::span<const int32_t> offsets,
                               const void* x, const GroupedWeightView& w, void* y, DType y_dtype);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CUBLAS_GEMM_H_
