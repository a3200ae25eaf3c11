// SCAFFOLD (replaced this session): CudaBackend elementwise ops: Embedding, RmsNorm, Rope, SiluMul, SiluMulPacked, KvWrite.
#include "kernels/cuda/cuda_backend_impl.h"

namespace cmoe::kernels::cuda {

absl::Status CudaBackend::Embedding(const WeightView& table, std::span<const int32_t> ids, float* out) {
  return absl::UnimplementedError("CudaBackend::Embedding");
}

absl::Status CudaBackend::RmsNorm(const float* x, int64_t num_rows, const WeightView& weight, float eps, float* y) {
  return absl::UnimplementedError("CudaBackend::RmsNorm");
}

absl::Status CudaBackend::Rope(float* x, std::span<const int32_t> positions, int32_t n_heads, int32_t head_dim, float theta) {
  return absl::UnimplementedError("CudaBackend::Rope");
}

absl::Status CudaBackend::SiluMul(const float* gate, const float* up, int64_t count, float* out) {
  return absl::UnimplementedError("CudaBackend::SiluMul");
}

absl::Status CudaBackend::SiluMulPacked(const float* gate_up, int64_t rows, int64_t width, float* out) {
  return absl::UnimplementedError("CudaBackend::SiluMulPacked");
}

absl::Status CudaBackend::KvWrite(const float* k, const float* v, std::span<const int32_t> slots, const PagedKvLayer& cache) {
  return absl::UnimplementedError("CudaBackend::KvWrite");
}

}  // namespace cmoe::kernels::cuda
