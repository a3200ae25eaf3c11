// Skinny matmul for decode steps: y (rows, out) = x (rows, in) . w^T with rows <= kGemvMaxRows,
// weights read once from HBM in their own dtype, f32 accumulation.
#ifndef CMOE_KERNELS_CUDA_GEMV_CUH_
#define CMOE_KERNELS_CUDA_GEMV_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/weight_view.h"

namespace cmoe::kernels::cuda {

inline constexpr int64_t kGemvMaxRows = 8;

// x: (rows, w.cols) f32 device; w: (out, in) F32/F16/BF16 device; y: (rows, w.rows) f32 device,
// y += when accumulate. 1 <= rows <= kGemvMaxRows.
cudaError_t LaunchGemv(const float* x, int64_t rows, const WeightView& w, float* y, bool accumulate,
                       cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GEMV_CUH_
