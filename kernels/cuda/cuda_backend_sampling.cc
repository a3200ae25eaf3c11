// CudaBackend::SampleTokens: the rows' parameters go up (skipped when they equal the last
// step's, e.g. greedy decoding), one block per row samples on the device, and only the token ids
// are left for the caller to copy back.
#include "common/status.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/sample_tokens.cuh"

namespace cmoe::kernels::cuda {

absl::Status CudaBackend::SampleTokens(const SampleTokensParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateSampleTokens(params));
  if (params.rows == 0) return absl::OkStatus();
  if (params.rows > 0x7fffffff) {
    return absl::InvalidArgumentError("SampleTokens: more than 2^31 - 1 rows in one call");
  }
  CMOE_ASSIGN_OR_RETURN(
      void* sampling,
      UploadBytes(params.sampling, params.rows * static_cast<int64_t>(sizeof(RowSampling)),
                  Scratch::kSampling));
  return Check(CMOE_CUDA_STATUS(LaunchSampleTokens(params.logits, params.rows, params.vocab,
                                                   static_cast<const RowSampling*>(sampling),
                                                   params.tokens, stream())));
}

}  // namespace cmoe::kernels::cuda
