// CudaBackend::GatedFfn (kernels/ffn_ops.h). With BF16 weights on the GEMM paths (more rows than
// the GEMVs take: prefill, large decode batches) the intermediates stay BF16, as vLLM's and
// TensorRT-LLM's FFNs keep them:
//
//   gate_up (P, 2m) BF16 = x . W_gu^T      cuBLAS with a BF16 C, or the tensor-core grouped kernel
//                                          writing BF16 (f32 sums rounded once)
//   act (P, m)      BF16 = silu(gate) * up (f32 arithmetic, rounded once)
//   y (P, d)        f32 (+)= act . W_down^T (the down GEMM reads act as it is: no cast)
//
// The f32 chain (GatedFfnByOps) writes and reads gate_up in f32, writes act in f32 and casts it to
// BF16 before the down GEMM: 28 m bytes of intermediates per row against 12 m here. Numerically
// the difference is gate and up rounded to BF16 before the SiLU (act was rounded before the down
// GEMM already). The GEMV paths (decode), F16 / F32 weights and FfnActivations::kF32 run the f32
// chain. On the cuBLAS grouped path the offsets come to the host once per FFN, not once per
// projection.
#include <cstdint>
#include <limits>
#include <vector>

#include "common/status.h"
#include "kernels/cuda/cublas_gemm.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/grouped_gemm.cuh"
#include "kernels/cuda/grouped_gemv.cuh"
#include "kernels/cuda/silu_mul.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int64_t kIntMax = std::numeric_limits<int32_t>::max();

// Whether the rows take a GEMM (not a GEMV) and every extent fits the kernels' int32 indexing;
// else the f32 chain runs (and its single ops report what does not fit).
bool TakesGemm(const GatedFfnParams& p) {
  if (p.num_rows >= kIntMax || p.gate_up.rows > kIntMax || p.gate_up.cols > kIntMax) return false;
  if (p.offsets == nullptr) return p.num_rows > kGemvMaxRows;
  return p.num_rows > kGroupedGemvRowsPerGroup * p.gate_up.groups;
}

}  // namespace

absl::Status CudaBackend::GatedFfn(const GatedFfnParams& p) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateGatedFfn(p));
  if (p.num_rows == 0) return absl::OkStatus();
  if (ffn_activations_ != FfnActivations::kBf16 || p.gate_up.dtype != DType::kBF16 ||
      !TakesGemm(p)) {
    return GatedFfnByOps(*this, p);
  }
  const int64_t rows = p.num_rows;
  const int64_t m = p.down.cols;
  constexpr int64_t kBf16 = 2;
  // gate_up, then act 16-byte aligned after it (rows * m >= 9 here, so the workspace of
  // 12 * rows * m bytes holds both and the padding).
  void* gate_up = p.workspace;
  const int64_t act_offset = (rows * 2 * m * kBf16 + 15) / 16 * 16;
  void* act = static_cast<char*>(p.workspace) + act_offset;
  const auto silu = [&] {
    return Check(CMOE_CUDA_STATUS(LaunchSiluMulPackedBf16(gate_up, rows, m, act, stream_)));
  };

  if (p.offsets == nullptr) {  // a dense FFN or a shared expert
    CMOE_RETURN_IF_ERROR(CublasRowsGemm(*this, {.x_f32 = p.x,
                                                .rows = rows,
                                                .w = p.gate_up.Group(0),
                                                .y = gate_up,
                                                .y_dtype = DType::kBF16}));
    CMOE_RETURN_IF_ERROR(silu());
    return CublasRowsGemm(
        *this,
        {.x_cast = act, .rows = rows, .w = p.down.Group(0), .y = p.y, .accumulate = p.accumulate});
  }

  if (grouped_gemm_ == GroupedGemmPath::kTensorCore && p.gate_up.rows <= kMaxGroupedGemmOutputs &&
      p.down.rows <= kMaxGroupedGemmOutputs) {  // no host round trip
    CMOE_RETURN_IF_ERROR(
        Check(CMOE_CUDA_STATUS(LaunchGroupedGemm(GroupedGemmOperands{.x = p.x,
                                                                     .x_dtype = DType::kF32,
                                                                     .row_index = p.row_index,
                                                                     .num_rows = rows,
                                                                     .offsets = p.offsets,
                                                                     .w = p.gate_up,
                                                                     .y = gate_up,
                                                                     .y_dtype = DType::kBF16},
                                                 stream_))));
    CMOE_RETURN_IF_ERROR(silu());
    return Check(CMOE_CUDA_STATUS(LaunchGroupedGemm(GroupedGemmOperands{.x = act,
                                                                        .x_dtype = DType::kBF16,
                                                                        .num_rows = rows,
                                                                        .offsets = p.offsets,
                                                                        .w = p.down,
                                                                        .y = p.y,
                                                                        .y_dtype = DType::kF32},
                                                    stream_)));
  }

  CMOE_ASSIGN_OR_RETURN(const std::vector<int32_t> offsets,
                        HostGroupOffsets(*this, p.offsets, p.gate_up.groups, rows, "GatedFfn"));
  CMOE_ASSIGN_OR_RETURN(const void* x,
                        CublasGroupedInput(*this, p.x, p.row_index, rows, p.gate_up));
  CMOE_RETURN_IF_ERROR(CublasGroupedGemm(*this, offsets, x, p.gate_up, gate_up, DType::kBF16));
  CMOE_RETURN_IF_ERROR(silu());
  return CublasGroupedGemm(*this, offsets, act, p.down, p.y, DType::kF32);
}

}  // namespace cmoe::kernels::cuda
