// Token sampling on the device (kernels/sampling.h), one block per row.
#ifndef CMOE_KERNELS_CUDA_SAMPLE_TOKENS_CUH_
#define CMOE_KERNELS_CUDA_SAMPLE_TOKENS_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/sampling.h"

namespace cmoe::kernels::cuda {

// tokens[r] <- the token sampling[r] picks from logits row r. logits (rows, vocab) f32, sampling
// (rows) and tokens (rows) int32, all device memory; rows in [1, 2^31 - 1], vocab in
// [1, sample_row::kMaxVocab] and every row's parameters valid (ValidateSampleTokens), else
// cudaErrorInvalidValue. Returns cudaGetLastError() after the launch.
cudaError_t LaunchSampleTokens(const float* logits, int64_t rows, int64_t vocab,
                               const RowSampling* sampling, int32_t* tokens, cudaStream_t stream);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_SAMPLE_TOKENS_CUH_
