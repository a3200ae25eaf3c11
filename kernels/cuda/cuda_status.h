// CUDA, cuBLAS and NCCL errors as absl::Status values naming the call and where it was made.
//
//   CMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream));
//   -> Internal "cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, stream) failed at
//      kernels/cuda/cuda_backend.cc:123: an illegal memory access was encountered
//      (cudaErrorIllegalAddress, sticky: the device context is lost)"
//
// Codes: out of memory -> ResourceExhausted; no device / no driver / unsupported -> Unavailable;
// bad arguments -> InvalidArgument; everything else -> Internal.
#ifndef CMOE_KERNELS_CUDA_CUDA_STATUS_H_
#define CMOE_KERNELS_CUDA_CUDA_STATUS_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace cmoe::kernels::cuda {

// True for errors after which the CUDA context is unusable (illegal address, launch failure,
// assert, ECC...): every later call of the process fails, so the server must stop serving.
bool IsStickyCudaError(cudaError_t error);

// True for a Status made by CudaStatus from a sticky error (it carries a payload saying so).
bool IsStickyStatus(const absl::Status& status);

absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line);
absl::Status CublasStatus(cublasStatus_t status, const char* call, const char* file, int line);

}  // namespace cmoe::kernels::cuda

#define CMOE_CUDA_STATUS(expr) ::cmoe::kernels::cuda::CudaStatus((expr), #expr, __FILE__, __LINE__)
#define CMOE_CUBLAS_STATUS(expr) \
  ::cmoe::kernels::cuda::CublasStatus((expr), #expr, __FILE__, __LINE__)

#define CMOE_CUDA_RETURN_IF_ERROR(expr)                        \
  do {                                                         \
    ::absl::Status cmoe_cuda_status_ = CMOE_CUDA_STATUS(expr); \
    if (!cmoe_cuda_status_.ok()) return cmoe_cuda_status_;     \
  } while (false)

#define CMOE_CUBLAS_RETURN_IF_ERROR(expr)                          \
  do {                                                             \
    ::absl::Status cmoe_cublas_status_ = CMOE_CUBLAS_STATUS(expr); \
    if (!cmoe_cublas_status_.ok()) return cmoe_cublas_status_;     \
  } while (false)

#endif  // CMOE_KERNELS_CUDA_CUDA_STATUS_H_
