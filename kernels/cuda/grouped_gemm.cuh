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

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GROUPED_GEMM_CUH_
