// The dispatch plan on the device: per-expert counts, offsets and the stable permutation of
// (token, expert) slots sorted by expert (kernels/moe_ops.h DispatchParams; device memory).
#ifndef CMOE_KERNELS_CUDA_DISPATCH_CUH_
#define CMOE_KERNELS_CUDA_DISPATCH_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

cudaError_t LaunchBuildDispatch(const DispatchParams& params, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_DISPATCH_CUH_
