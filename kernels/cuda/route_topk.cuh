// Router scores, softmax, top-k with bias and gate weights on the device, one token per warp
// (kernels/moe_ops.h RouteTopKParams; every pointer device memory).
#ifndef CMOE_KERNELS_CUDA_ROUTE_TOPK_CUH_
#define CMOE_KERNELS_CUDA_ROUTE_TOPK_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

cudaError_t LaunchRouteTopK(const RouteTopKParams& params, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_ROUTE_TOPK_CUH_
