// Grouped skinny matmul for decode steps: every expert's weights are read once per step for all
// of its rows (kernels/moe_ops.h GroupedMatMulParams; device memory). Group sizes are read on the
// device from params.offsets, so no host round trip is needed.
#ifndef CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_
#define CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

cudaError_t LaunchGroupedGemv(const GroupedMatMulParams& params, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_
