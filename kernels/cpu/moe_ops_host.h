// The MoE primitives of kernels/moe_ops.h on host memory, written as plain loops: the reference
// backend uses them as they are and the fast CPU backend for everything but GroupedMatMul. They
// are the ground truth the CUDA kernels are tested against. Every function validates first
// (kernels/backend.h Validate*) and writes nothing on error.
#ifndef CMOE_KERNELS_CPU_MOE_OPS_HOST_H_
#define CMOE_KERNELS_CPU_MOE_OPS_HOST_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/moe_ops.h"

namespace cmoe::kernels::cpu {

// Scores in double, softmax max-subtracted, top-k of p + b with ties to the lower expert; NaN
// keys order below every number.
absl::Status RouteTopKHost(const RouteTopKParams& params);
// Counting sort, stable by token. Also checks every id is in [0, E) and distinct per token
// (InvalidArgument naming the token), before writing anything.
absl::Status BuildDispatchHost(const DispatchParams& params);
// Double accumulation. Offsets must be non-decreasing from 0 to num_rows (InvalidArgument).
absl::Status GroupedMatMulHost(const GroupedMatMulParams& params);
absl::Status SiluMulPackedHost(const float* gate_up, int64_t rows, int64_t width, float* out);
absl::Status CombineExpertsHost(const CombineParams& params);

// Offsets (E + 1) non-decreasing from 0 to num_rows, and row indices (if any) non-negative.
absl::Status ValidateGroupOffsets(const GroupedMatMulParams& params);

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_MOE_OPS_HOST_H_
