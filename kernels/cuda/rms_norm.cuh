// RMSNorm on the device: y[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * weight.
#ifndef CMOE_KERNELS_CUDA_RMS_NORM_CUH_
#define CMOE_KERNELS_CUDA_RMS_NORM_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/weight_view.h"

namespace cmoe::kernels::cuda {

// x, y: (rows, dim) f32 device, may alias (exactly); weight: (1, dim) F32/F16/BF16 device, dim =
// weight.elements(). Pointers need no alignment (aligned ones take the float4 path). Launches
// nothing when rows or dim is 0; cudaErrorInvalidValue for a negative size or an I32 weight;
// otherwise cudaGetLastError() after the launch.
cudaError_t LaunchRmsNorm(const float* x, int64_t rows, const WeightView& weight, float eps,
                          float* y, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_RMS_NORM_CUH_
