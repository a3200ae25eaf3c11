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
#include "kernels/cuda/gather_rows.cuh"
#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_gemv.cuh"
#include "kernels/cuda/route_topk.cuh"

namespace cmoe::kernels::cuda {
namespace {

// The most experts route_topk.cu and dispatch.cu take (a taken-bit per 32 experts per lane; one
// shared-memory column per expert). Keep in step with kMaxExperts there.
constexpr int32_t kMaxExperts = 1024;

// GroupedMatMul takes the grouped GEMV while num_rows <= kGemvRowsPerGroup * groups, i.e. at most
// 8 rows per group on average. Up to there the GEMV reads the touched experts' weights from HBM
// once (the bound at decode) with at most 8 FMAs per weight element, within the H100's FP32 and
// L1 rates at HBM speed, and it never waits for the host, so decode steps stay graph-capturable.
// Past it the GEMV's FMA and L1 (x) traffic grow with the rows while a tensor-core GEMM stays
// weight-bound, and the one host round trip (~10-20 us) and per-group launches of the cuBLAS path
// are spread over >= 8 rows per group. With E = 16 and k = 2 that keeps decode batches of up to 64
// tokens on the device path.
constexpr int64_t kGemvRowsPerGroup = 8;
constexpr int64_t kMaxGemvGridGroups = 65535;  // grid.y of grouped_gemv.cu

absl::Status ExpertLimit(const char* op, int32_t num_experts) {
  if (num_experts <= kMaxExperts) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", num_experts, " experts; the CUDA kernels take at most ", kMaxExperts));
}

// Host copies of device offsets: non-decreasing from 0 to num_rows, as GroupedMatMulHost checks.
absl::Status CheckOffsets(const std::vector<int32_t>& offsets, int64_t num_rows) {
  if (offsets.front() != 0 || offsets.back() != num_rows) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedMatMul: offsets run from ",
                                                   offsets.front(), " to ", offsets.back(),
                                                   ", not from 0 to num_rows ", num_rows));
  }
  for (size_t e = 0; e + 1 < offsets.size(); ++e) {
    if (offsets[e + 1] < offsets[e]) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedMatMul: offsets decrease at group ", e));
    }
  }
  return absl::OkStatus();
}

// cuBLAS's x operand (CublasInput): x's rows, gathered by row_index when set, (num_rows, in).
absl::StatusOr<const void*> PrepareGemmInput(CudaBackend& backend, const GroupedMatMulParams& p) {
  const int64_t in = p.w.cols;
  const float* x = p.x;
  if (p.row_index != nullptr) {
    CMOE_ASSIGN_OR_RETURN(
        void* gathered,
        backend.ScratchSpace(Scratch::kGather,
                             p.num_rows * in * static_cast<int64_t>(sizeof(float))));
    CMOE_RETURN_IF_ERROR(backend.Check(CMOE_CUDA_STATUS(LaunchGatherRows(
        p.x, in, p.row_index, p.num_rows, static_cast<float*>(gathered), backend.stream()))));
    x = static_cast<const float*>(gathered);
  }
  return CublasInput(backend, x, p.num_rows * in, p.w.dtype);
}

// The prefill path: one CublasWeightGemm per non-empty group, y_e (n_e, out) = x_e (n_e, in) .
// W_e^T (F16 / BF16 weights meet x rounded to their dtype). Per-group GEMMs rather than
// cublasGemmGroupedBatchedEx: simpler to get right; the launches are few (<= E) next to the GEMMs
// of a prefill step.
absl::Status GroupedGemm(CudaBackend& backend, const GroupedMatMulParams& p) {
  const int32_t groups = p.w.groups;
  std::vector<int32_t> offsets(static_cast<size_t>(groups) + 1);
  if (groups == 1) {
    // Offsets run from 0 to num_rows by contract: one group holds every row, nothing to read
    // (the LM head of a decode step over 8 rows, which would otherwise wait for the device).
    offsets = {0, static_cast<int32_t>(p.num_rows)};
  } else {
    if (backend.recording()) return NotInGraphError("GroupedMatMul on cuBLAS (group sizes)");
    CMOE_RETURN_IF_ERROR(backend.CopyToHost(
        offsets.data(), p.offsets, static_cast<int64_t>(offsets.size() * sizeof(int32_t))));
    CMOE_RETURN_IF_ERROR(CheckOffsets(offsets, p.num_rows));
  }
  CMOE_ASSIGN_OR_RETURN(const void* x, PrepareGemmInput(backend, p));
  const int64_t element = static_cast<int64_t>(DTypeSize(p.w.dtype));
  for (int32_t e = 0; e < groups; ++e) {
    const int n = offsets[e + 1] - offsets[e];
    if (n == 0) continue;
    CMOE_RETURN_IF_ERROR(CublasWeightGemm(
        backend, {.w = static_cast<const char*>(p.w.data) + e * p.w.rows * p.w.cols * element,
                  .x = static_cast<const char*>(x) + offsets[e] * p.w.cols * element,
                  .y = p.y + offsets[e] * p.w.rows,
                  .dtype = p.w.dtype,
                  .m = p.w.rows,
                  .n = n,
                  .k = p.w.cols,
                  .ldy = p.w.rows}));
  }
  return absl::OkStatus();
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
  if (params.num_rows <= kGemvRowsPerGroup * params.w.groups) {
    if (std::min<int64_t>(params.w.groups, params.num_rows) > kMaxGemvGridGroups) {
      return absl::InvalidArgumentError(absl::StrCat("GroupedMatMul: ", params.w.groups,
                                                     " groups; the grouped GEMV takes at most ",
                                                     kMaxGemvGridGroups));
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
