// Backend::SampleTokens on host memory (kernels/sampling.h): the reference and CPU backends use
// it, and it is the ground truth of the CUDA kernel, with which it shares the arithmetic of
// kernels/sample_row.h. Validates first (ValidateSampleTokens) and writes nothing on error.
#ifndef CMOE_KERNELS_CPU_SAMPLING_HOST_H_
#define CMOE_KERNELS_CPU_SAMPLING_HOST_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace cmoe::kernels::cpu {

absl::Status SampleTokensHost(const SampleTokensParams& params);

// One row: the token `sampling` picks from `logits` (vocab). The parameters must be valid.
int32_t SampleRowHost(std::span<const float> logits, const RowSampling& sampling);

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_SAMPLING_HOST_H_
