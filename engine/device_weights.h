// A model's weights as a device backend reads them, uploaded once at load (docs/architecture.md
// "The MoE layer"): every tensor copied to the device in its checkpoint dtype, and the FFNs laid
// out for the fused device path of kernels/moe_ops.h:
// - dense FFN: gate and up stacked into one (2f, d) matrix (one matmul), down (d, f);
// - carved FFN: the shared expert stacked the same way ((2 m_s, d), (d, m_s)); the router as one
//   (2E, d) f32 matrix (gate rows, then up rows); the routed experts as two grouped tensors,
//   (E, 2 m, d) gate+up and (E, d, m), every expert zero-padded to the widest m (carved widths
//   differ by at most one, and padding changes no result: see kernels/moe_ops.h).
//
//   CMOE_ASSIGN_OR_RETURN(DeviceWeights w, UploadModelWeights(checkpoint.weights(), config,
//                                                             backend));
//
// The views point into memory the backend owns (or, on a host backend, buffers DeviceWeights
// keeps); they live as long as the backend and the DeviceWeights.
//
// With expert parallelism a rank uploads only its block of routed experts (ExpertSlice); the
// router keeps every expert's rows, since each rank routes its own tokens to all of them.
#ifndef CMOE_ENGINE_DEVICE_WEIGHTS_H_
#define CMOE_ENGINE_DEVICE_WEIGHTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"
#include "kernels/backend.h"
#include "kernels/moe_ops.h"

namespace cmoe::engine {

// One layer's FFN on the device.
struct DeviceFfnWeights {
  // Dense layers: the FFN; carved layers: the shared expert (rows == 0 when there is none).
  WeightView gate_up;  // (2w, d)
  WeightView down;     // (d, w)
  int64_t width = 0;   // w: f, or m_s
  // Carved layers only (num_routed == 0 for dense ones).
  int32_t num_routed = 0;                     // E: every routed expert of the layer
  WeightView router;                          // (2E, d) F32
  int32_t first_local_expert = 0;             // the grouped tensors hold experts [first, first+L)
  kernels::GroupedWeightView expert_gate_up;  // (L, 2m, d); L = E without expert parallelism
  kernels::GroupedWeightView expert_down;     // (L, d, m)
  kernels::Buffer bias;                       // (E) f32, or empty (b = 0)
  kernels::Buffer scale;                      // (E) f32, or empty (u = 0)
  bool abs_score = true;                      // RouterVariant::kReference
};

struct DeviceWeights {
  ModelWeights model;  // every view uploaded; the FFN views of `model.layers` are not used
  std::vector<DeviceFfnWeights> ffn;  // (layers)
  // Host backends: the stacked tensors (UploadWeight returns a host view as it is, so the copies
  // the stacking makes are kept here).
  std::vector<kernels::Buffer> owned;
};

// The routed experts a rank holds: [first, first + count); count < 0 means every expert.
struct ExpertSlice {
  int32_t first = 0;
  int32_t count = -1;
};

// InvalidArgument when a layer's FFN tensors mix dtypes (the stacked layouts need one dtype) or
// the slice is not inside [0, E); backend errors (out of device memory) propagate.
absl::StatusOr<DeviceWeights> UploadModelWeights(const ModelWeights& host,
                                                 const ModelConfig& config,
                                                 kernels::Backend& backend,
                                                 ExpertSlice experts = {});

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_DEVICE_WEIGHTS_H_
