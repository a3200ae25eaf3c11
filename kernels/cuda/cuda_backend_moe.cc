// SCAFFOLD (replaced this session): CudaBackend MoE primitives.
#include "kernels/cuda/cuda_backend_impl.h"

namespace cmoe::kernels::cuda {

absl::Status CudaBackend::RouteTopK(const RouteTopKParams& params) {
  return absl::UnimplementedError("CudaBackend::RouteTopK");
}

absl::Status CudaBackend::BuildDispatch(const DispatchParams& params) {
  return absl::UnimplementedError("CudaBackend::BuildDispatch");
}

absl::Status CudaBackend::GroupedMatMul(const GroupedMatMulParams& params) {
  return absl::UnimplementedError("CudaBackend::GroupedMatMul");
}

absl::Status CudaBackend::CombineExperts(const CombineParams& params) {
  return absl::UnimplementedError("CudaBackend::CombineExperts");
}

}  // namespace cmoe::kernels::cuda
