// SwiGLU activations on the device.
#ifndef CMOE_KERNELS_CUDA_SILU_MUL_CUH_
#define CMOE_KERNELS_CUDA_SILU_MUL_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cmoe::kernels::cuda {

// Both launch nothing for an empty input, return cudaErrorInvalidValue for a negative size and
// otherwise cudaGetLastError() after the launch. Pointers need no alignment (aligned ones take the
// float4 path).
//
// out = silu(gate) * up over count floats (device); out may alias gate or up (exactly).
cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t count, float* out,
                          cudaStream_t stream);
// out[r, i] = silu(gate_up[r, i]) * gate_up[r, width + i]; gate_up (rows, 2 width), out (rows,
// width), f32 device, not overlapping.
cudaError_t LaunchSiluMulPacked(const float* gate_up, int64_t rows, int64_t width, float* out,
                                cudaStream_t stream);
// As LaunchSiluMulPacked with gate_up and out BF16 (f32 arithmetic, outputs rounded to nearest).
cudaError_t LaunchSiluMulPackedBf16(const void* gate_up, int64_t rows, int64_t width, void* out,
                                    cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_SILU_MUL_CUH_
