// Internal to engine/model.cc and engine/model_device.cc: what a Model keeps for a device
// backend — the uploaded weights and the MoE step's workspace in device memory.
#ifndef CMOE_ENGINE_MODEL_DEVICE_H_
#define CMOE_ENGINE_MODEL_DEVICE_H_

#include <cstdint>
#include <vector>

#include "engine/device_weights.h"
#include "engine/model.h"
#include "kernels/buffer.h"

namespace cmoe::engine {

struct Model::DeviceState {
  DeviceWeights weights;

  // One routing pass per run of consecutive chunks with the same k, per carved layer.
  struct Run {
    int64_t first_row = 0;
    int64_t rows = 0;
    int32_t k = 0;
  };
  std::vector<Run> runs;  // this step's runs (the same for every layer)

  // Device workspace, grown to the largest step (P = rows * k slots of one run).
  kernels::Buffer ffn_workspace;  // GatedFfnWorkspaceBytes(max(P, T), max width)
  kernels::Buffer router_logits;  // (T, 2E) f32
  kernels::Buffer selected;       // (T, k) int32
  kernels::Buffer route_weights;  // (T, k) f32
  kernels::Buffer slot_token;     // (P) int32
  kernels::Buffer slot_source;    // (P) int32
  kernels::Buffer token_slot;     // (P) int32
  kernels::Buffer expert_out;     // (P, d) f32
  kernels::Buffer offsets;        // (E + 1) int32
  // (layers, runs, E) int32: tokens routed per expert, copied back once per step.
  kernels::Buffer counts;
  std::vector<int32_t> counts_host;

  // Expert parallelism (engine/model_expert_parallel.cc): the step's plans on the host and the
  // exchanged rows in backend memory, grown to the largest layer (R = rows received).
  struct ExpertParallel {
    std::vector<int32_t> selected;     // (T, k) host copy of the routing
    std::vector<int32_t> group_index;  // (R + L + 1): expert_rows, then the local offsets
    std::vector<int32_t> inverse;      // (R) receive row of grouped row q
    std::vector<int32_t> counts;       // (E) this rank's tokens per expert (metrics)
    kernels::Buffer send;              // (P, d) f32 rows sent, then the outputs received back
    kernels::Buffer recv;              // (R, d) f32 rows received
    kernels::Buffer out;               // (R, d) f32 local experts' outputs, grouped
    kernels::Buffer back;              // (R, d) f32 the outputs in receive order
    kernels::Buffer index;             // device copy of group_index
    kernels::Buffer token_slot;        // (P) int32 device copy of the plan's token_slot
  };
  ExpertParallel ep;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_DEVICE_H_
