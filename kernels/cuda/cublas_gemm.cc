#include "kernels/cuda/cublas_gemm.h"

#include <cublas_v2.h>
#include <library_types.h>

#include "common/status.h"
#include "kernels/cuda/cast.cuh"
#include "kernels/cuda/cuda_status.h"

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
  return backend.Check(CMOE_CUBLAS_STATUS(
      cublasGemmEx(backend.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(p.m),
                   static_cast<int>(p.n), k, &alpha, p.w, type, k, p.x, type, k, &beta, p.y,
                   CUDA_R_32F, static_cast<int>(p.ldy), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)));
}

}  // namespace cmoe::kernels::cuda
