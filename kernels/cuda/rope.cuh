// Rotate-half RoPE in place on the device (the Hugging Face layout; kernels/backend.h Rope).
#ifndef CMOE_KERNELS_CUDA_ROPE_CUH_
#define CMOE_KERNELS_CUDA_ROPE_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cmoe::kernels::cuda {

// x: (rows, n_heads, head_dim) f32 device, read/written; positions: (rows) int32 device. Launches
// nothing when rows, n_heads or head_dim is 0; cudaErrorInvalidValue for a negative size or an
// odd head_dim; otherwise cudaGetLastError() after the launch.
cudaError_t LaunchRope(float* x, const int32_t* positions, int64_t rows, int32_t n_heads,
                       int32_t head_dim, float theta, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_ROPE_CUH_
