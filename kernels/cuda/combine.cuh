// Weighted combine of expert outputs back into token order on the device (no atomics, j order):
// x[t] += sum_j weights[t, j] * expert_out[token_slot[t * k + j]].
#ifndef CMOE_KERNELS_CUDA_COMBINE_CUH_
#define CMOE_KERNELS_CUDA_COMBINE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

cudaError_t LaunchCombineExperts(const CombineParams& params, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_COMBINE_CUH_
