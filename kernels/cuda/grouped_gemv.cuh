// Grouped skinny matmul for decode steps: every expert's weights are read once per step for all
// of its rows (kernels/moe_ops.h GroupedMatMulParams; device memory). Group sizes are read on the
// device from params.offsets, so no host round trip is needed.
#ifndef CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_
#define CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/moe_ops.h"

namespace cmoe::kernels::cuda {

// CudaBackend::GroupedMatMul (and GatedFfn) take the grouped GEMV while num_rows <=
// kGroupedGemvRowsPerGroup * groups, i.e. at most 8 rows per group on average. Up to there the
// GEMV reads the touched experts' weights from HBM once (the bound at decode) with at most 8 FMAs
// per weight element, within the H100's FP32 and L1 rates at HBM speed, and it never waits for
// the host, so decode steps stay graph-capturable. Past it the GEMV's FMA and L1 (x) traffic grow
// with the rows while a tensor-core GEMM stays weight-bound, and the one host round trip
// (~10-20 us) and per-group launches of the cuBLAS path are spread over >= 8 rows per group. With
// E = 16 and k = 2 that keeps decode batches of up to 64 tokens on the device path.
inline constexpr int64_t kGroupedGemvRowsPerGroup = 8;
// The most groups with rows one launch takes (grid.y of grouped_gemv.cu).
inline constexpr int64_t kMaxGroupedGemvGroups = 65535;

cudaError_t LaunchGroupedGemv(const GroupedMatMulParams& params, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_GROUPED_GEMV_CUH_
