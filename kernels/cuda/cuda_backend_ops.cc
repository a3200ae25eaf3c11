// CudaBackend's elementwise ops: Embedding, RmsNorm, Rope, SiluMul, SiluMulPacked, KvWrite.
// Each validates on the host with the CPU backends' InvalidArgument errors (ids and slots are
// checked before anything is uploaded or written), copies its host span (ids, positions, slots)
// to the kIds scratch and queues one kernel on the backend's stream.
#include <cstdint>
#include <span>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/kv_write.cuh"
#include "kernels/cuda/rms_norm.cuh"
#include "kernels/cuda/rope.cuh"
#include "kernels/cuda/silu_mul.cuh"

namespace cmoe::kernels::cuda {
namespace {

// InvalidArgument unless `w` is a float matrix with data (an I32 view never reaches a kernel).
absl::Status CheckWeight(const WeightView& w, const char* op, const char* operand) {
  if (!IsFloatDType(w.dtype) || w.rows < 0 || w.cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " (", w.rows, ", ", w.cols,
                                                   ") ", std::string(DTypeName(w.dtype)),
                                                   " is not an F32, F16 or BF16 matrix"));
  }
  if (w.data == nullptr && w.elements() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " data is null"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::Embedding(const WeightView& table, std::span<const int32_t> ids,
                                    float* out) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(CheckWeight(table, "Embedding", "table"));
  CMOE_RETURN_IF_ERROR(ValidateEmbedding(table, ids));
  if (ids.empty() || table.cols == 0) return absl::OkStatus();
  if (out == nullptr) return absl::InvalidArgumentError("Embedding: out is null");
  CMOE_ASSIGN_OR_RETURN(const int32_t* device_ids, UploadInts(ids, Scratch::kIds));
  return Check(CMOE_CUDA_STATUS(
      LaunchEmbedding(table, device_ids, static_cast<int64_t>(ids.size()), out, stream_)));
}

absl::Status CudaBackend::RmsNorm(const float* x, int64_t num_rows, const WeightView& weight,
                                  float eps, float* y) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (num_rows < 0) return absl::InvalidArgumentError("RmsNorm: negative num_rows");
  CMOE_RETURN_IF_ERROR(CheckWeight(weight, "RmsNorm", "weight"));
  if (num_rows == 0 || weight.elements() == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr) return absl::InvalidArgumentError("RmsNorm: x or y is null");
  return Check(CMOE_CUDA_STATUS(LaunchRmsNorm(x, num_rows, weight, eps, y, stream_)));
}

absl::Status CudaBackend::Rope(float* x, std::span<const int32_t> positions, int32_t n_heads,
                               int32_t head_dim, float theta) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: head_dim ", head_dim, " is odd"));
  }
  if (n_heads < 0 || head_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("Rope: negative n_heads ", n_heads, " or head_dim ", head_dim));
  }
  if (positions.empty() || n_heads == 0 || head_dim == 0) return absl::OkStatus();
  if (x == nullptr) return absl::InvalidArgumentError("Rope: x is null");
  CMOE_ASSIGN_OR_RETURN(const int32_t* device_positions,
                        UploadInts(positions, Scratch::kPositions));
  return Check(
      CMOE_CUDA_STATUS(LaunchRope(x, device_positions, static_cast<int64_t>(positions.size()),
                                  n_heads, head_dim, theta, stream_)));
}

absl::Status CudaBackend::SiluMul(const float* gate, const float* up, int64_t count, float* out) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (count < 0) return absl::InvalidArgumentError("SiluMul: negative count");
  if (count == 0) return absl::OkStatus();
  if (gate == nullptr || up == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("SiluMul: gate, up or out is null");
  }
  return Check(CMOE_CUDA_STATUS(LaunchSiluMul(gate, up, count, out, stream_)));
}

absl::Status CudaBackend::SiluMulPacked(const float* gate_up, int64_t rows, int64_t width,
                                        float* out) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (rows < 0 || width < 1) {
    return absl::InvalidArgumentError(absl::StrCat("SiluMulPacked: rows ", rows, ", width ", width,
                                                   " (need rows >= 0, width >= 1)"));
  }
  if (rows == 0) return absl::OkStatus();
  if (gate_up == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("SiluMulPacked: gate_up or out is null");
  }
  return Check(CMOE_CUDA_STATUS(LaunchSiluMulPacked(gate_up, rows, width, out, stream_)));
}

absl::Status CudaBackend::KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                                  const PagedKvLayer& cache) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateKvCacheDType("KvWrite", cache));
  if (cache.num_blocks < 0 || cache.block_size < 0 || cache.n_kv_heads < 0 || cache.head_dim < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KvWrite: negative cache shape: ", cache.num_blocks, " blocks of ",
                     cache.block_size, ", ", cache.n_kv_heads, " kv heads of ", cache.head_dim));
  }
  const int64_t width = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
  const int64_t num_slots = cache.num_blocks * cache.block_size;
  for (const int32_t slot : slots) {
    if (slot < 0 || slot >= num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("KvWrite: slot ", slot, " outside the cache of ", num_slots));
    }
  }
  if (slots.empty() || width == 0) return absl::OkStatus();
  if (k == nullptr || v == nullptr || cache.k == nullptr || cache.v == nullptr) {
    return absl::InvalidArgumentError("KvWrite: k, v or a cache pointer is null");
  }
  CMOE_ASSIGN_OR_RETURN(const int32_t* device_slots, UploadInts(slots, Scratch::kSlots));
  return Check(CMOE_CUDA_STATUS(
      LaunchKvWrite(k, v, device_slots, static_cast<int64_t>(slots.size()), cache, stream_)));
}

}  // namespace cmoe::kernels::cuda
