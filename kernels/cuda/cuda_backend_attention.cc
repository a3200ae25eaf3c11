// SCAFFOLD (replaced this session): CudaBackend Attention.
#include "kernels/cuda/cuda_backend_impl.h"

namespace cmoe::kernels::cuda {

absl::Status CudaBackend::Attention(const AttentionParams& params) {
  return absl::UnimplementedError("CudaBackend::Attention");
}

}  // namespace cmoe::kernels::cuda
