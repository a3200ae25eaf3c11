// Embedding gather on the device: out[t, :] = table[ids[t], :] widened to f32.
#ifndef CMOE_KERNELS_CUDA_EMBEDDING_CUH_
#define CMOE_KERNELS_CUDA_EMBEDDING_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/weight_view.h"

namespace cmoe::kernels::cuda {

// table: (vocab, dim) F32/F16/BF16 device; ids: (num_ids) int32 device, already validated to lie in
// [0, vocab); out: (num_ids, dim) f32 device, written. Pointers need no alignment (aligned ones
// take the float4 path). Launches nothing when num_ids or dim is 0; cudaErrorInvalidValue for a
// negative size or an I32 table; otherwise cudaGetLastError() after the launch.
cudaError_t LaunchEmbedding(const WeightView& table, const int32_t* ids, int64_t num_ids,
                            float* out, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_EMBEDDING_CUH_
