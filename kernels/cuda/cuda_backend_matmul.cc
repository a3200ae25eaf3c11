// SCAFFOLD (replaced this session): CudaBackend MatMul.
#include "kernels/cuda/cuda_backend_impl.h"

namespace cmoe::kernels::cuda {

absl::Status CudaBackend::MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y, Accumulate accumulate) {
  return absl::UnimplementedError("CudaBackend::MatMul");
}

}  // namespace cmoe::kernels::cuda
