// Row gather on the device: out[r, :] = x[index[r], :].
#ifndef CMOE_KERNELS_CUDA_GATHER_ROWS_CUH_
#define CMOE_KERNELS_CUDA_GATHER_ROWS_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace cmoe::kernels::cuda {

// x: (*, cols) f32 device; index: (rows) int32 device; out: (rows, cols) f32 device.
cudaError_t LaunchGatherRows(const float* x, int64_t cols, const int32_t* index, int64_t rows,
                             float* out, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GATHER_ROWS_CUH_
