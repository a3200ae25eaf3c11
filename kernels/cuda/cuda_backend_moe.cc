// CudaBackend's MoE primitives (kernels/moe_ops.h): validation, the kernel launches, and the
// prefill path of GroupedMatMul on cuBLAS (cublas_gemm.h). Everything is queued on the backend's
// stream; only the prefill GroupedMatMul on cuBLAS over several groups waits for the device (to
// read the group offsets), so it cannot be part of a step graph; one group (the LM head) and the
// tensor-core path (CudaBackendOptions::grouped_gemm) do not wait.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/combine.cuh"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/dispatch.cuh"
#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_gemv.cuh"
#include "kernels/cuda/route_topk.cuh"

namespace cmoe::kernels::cuda {
namespace {

// The most experts route_topk.cu and dispatch.cu take (a taken-bit per 32 experts per lane; one
// shared-memory column per expert). Keep in step with kMaxExperts there.
constexpr int32_t kMaxExperts = 1024;

absl::Status ExpertLimit(const char* op, int32_t num_experts) {
  if (num_experts <= kMaxExperts) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", num_experts, " experts; the CUDA kernels take at most ", kMaxExperts));
}

// The prefill path: the group offsets to the host, then one CublasWeightGemm per non-empty group
// (cublas_gemm.h CublasGroupedGemm).
absl::Status GroupedGemm(CudaBackend& backend, const GroupedMatMulParams& p) {
  CMOE_ASSIGN_OR_RETURN(
      const std::vector<int32_t> offsets,
      HostGroupOffsets(backend, p.offsets, p.w.groups, p.num_rows, "GroupedMatMul"));
  CMOE_ASSIGN_OR_RETURN(const void* x,
                        CublasGroupedInput(backend, p.x, p.row_index, p.num_rows, p.w));
  return CublasGroupedGemm(backend, offsets, x, p.w, p.y, DType::kF32);
}

}  // namespace

absl::Status CudaBackend::RouteTopK(const RouteTopKParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateRouteTopK(params));
  CMOE_RETURN_IF_ERROR(ExpertLimit("RouteTopK", params.num_experts));
  if (params.num_tokens == 0) return absl::OkStatus();
  return Check(CMOE_CUDA_STATUS(LaunchRouteTopK(params, stream())));
}

absl::Status CudaBackend::BuildDispatch(const DispatchParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateDispatch(params));
  CMOE_RETURN_IF_ERROR(ExpertLimit("BuildDispatch", params.num_experts));
  // Also with T = 0: counts and offsets are written (zeros).
  return Check(CMOE_CUDA_STATUS(LaunchBuildDispatch(params, stream())));
}

absl::Status CudaBackend::GroupedMatMul(const GroupedMatMulParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateGroupedMatMul(params));
  if (params.num_rows == 0) return absl::OkStatus();
  constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();
  if (params.num_rows >= kIntMax || params.w.rows > kIntMax || params.w.cols > kIntMax) {
    return absl::InvalidArgumentError(
        absl::StrCat("GroupedMatMul: ", params.num_rows, " rows of (", params.w.rows, ", ",
                     params.w.cols, ") weights exceed the int32 sizes of the CUDA kernels"));
  }
  if (params.num_rows <= kGroupedGemvRowsPerGroup * params.w.groups) {
    if (std::min<int64_t>(params.w.groups, params.num_rows) > kMaxGroupedGemvGroups) {
      return absl::InvalidArgumentError(absl::StrCat("GroupedMatMul: ", params.w.groups,
                                                     " groups; the grouped GEMV takes at most ",
                                                     kMaxGroupedGemvGroups));
    }
    return Check(CMOE_CUDA_STATUS(LaunchGroupedGemv(params, stream())));
  }
  if (grouped_gemm_ == GroupedGemmPath::kTensorCore &&
      (params.w.dtype == DType::kBF16 || params.w.dtype == DType::kF16) &&
      params.w.rows <= kMaxGroupedGemmOutputs) {
    return Check(CMOE_CUDA_STATUS(LaunchGroupedGemm(params, stream())));
  }
  return GroupedGemm(*this, params);
}

absl::Status CudaBackend::CombineExperts(const CombineParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateCombine(params));
  if (params.num_tokens == 0) return absl::OkStatus();
  return Check(CMOE_CUDA_STATUS(LaunchCombineExperts(params, stream())));
}

}  // namespace cmoe::kernels::cuda
