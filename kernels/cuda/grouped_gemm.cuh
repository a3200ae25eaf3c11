// Grouped GEMM on tensor cores with the group offsets read on the device: the alternative to the
// per-group cuBLAS path of CudaBackend::GroupedMatMul (CudaBackendOptions::grouped_gemm).
#ifndef CMOE_KERNELS_CUDA_GROUPED_GEMM_CUH_
#define CMOE_KERNELS_CUDA_GROUPED_GEMM_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

// y[p] = W_e . x_p for the rows p of each group e (kernels/moe_ops.h GroupedMatMulParams; every
// pointer device memory), BF16 or F16 weights only. Returns cudaErrorInvalidValue for another
// dtype, num_rows < 1, sizes over int32, or more than kMaxGroupedGemmOutputs outputs (grid.y);
// else cudaGetLastError() after the launch.
inline constexpr int64_t kMaxGroupedGemmOutputs = int64_t{65535} * 64;

cudaError_t LaunchGroupedGemm(const GroupedMatMulParams& params, cudaStream_t stream);

// The operands of LaunchGroupedGemm with x and y each f32 or the weight dtype (any other pairing
// is cudaErrorInvalidValue): x (rows of x, w.cols) and y (num_rows, w.rows).
struct GroupedGemmOperands {
  const void* x = nullptr;
  DType x_dtype = DType::kF32;
  const int32_t* row_index = nullptr;
  int64_t num_rows = 0;
  const int32_t* offsets = nullptr;
  GroupedWeightView w;
  void* y = nullptr;
  DType y_dtype = DType::kF32;
};
cudaError_t LaunchGroupedGemm(const GroupedGemmOperands& operands, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GROUPED_GEMM_CUH_
