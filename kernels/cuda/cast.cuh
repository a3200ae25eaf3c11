// Element conversions for cuBLAS operands.
#ifndef CMOE_KERNELS_CUDA_CAST_CUH_
#define CMOE_KERNELS_CUDA_CAST_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace cmoe::kernels::cuda {

// out (count elements of dtype F16 or BF16, device) <- x (count f32, device), round to nearest.
cudaError_t LaunchCastFromF32(const float* x, int64_t count, DType dtype, void* out,
                              cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CAST_CUH_
