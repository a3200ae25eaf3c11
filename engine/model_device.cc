// The FFN half of Model::Forward on a device backend (see engine/model.h): dense layers and
// shared experts as one GatedFfn (fused gate+up), routed experts through the MoE primitives of
// kernels/moe_ops.h with their FFN as one grouped GatedFfn, all in device memory; the per-expert
// counts of the whole step come back with one copy at its end.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/model.h"
#include "engine/model_device.h"

namespace cmoe::engine {

using kernels::Accumulate;

namespace {

int32_t RunK(const SequenceChunk& chunk, const CmoeConfig& cmoe) {
  return chunk.num_activated_experts > 0 ? chunk.num_activated_experts : cmoe.num_activated_experts;
}

}  // namespace

// Plans the step's routing runs (consecutive chunks with the same k, as the host MoE path
// groups them) and sizes the device workspace for the largest of them.
absl::Status Model::DeviceBeginStep(std::span<const SequenceChunk> chunks) {
  DeviceState& dev = *device_;
  const ModelConfig& c = config();
  dev.runs.clear();
  if (c.cmoe.has_value()) {
    for (size_t i = 0; i < chunks.size(); ++i) {
      const int32_t k = RunK(chunks[i], *c.cmoe);
      if (dev.runs.empty() || dev.runs.back().k != k) {
        dev.runs.push_back({.first_row = sequences_[i].first_row, .rows = 0, .k = k});
      }
      dev.runs.back().rows += sequences_[i].num_tokens;
    }
  }
  int64_t slots = 0;
  int64_t max_k = 0;
  for (const DeviceState::Run& r : dev.runs) {
    slots = std::max(slots, r.rows * r.k);
    max_k = std::max<int64_t>(max_k, r.k);
  }
  int64_t routed_width = 0;
  int64_t dense_width = 0;
  int32_t experts = 0;
  for (const DeviceFfnWeights& f : dev.weights.ffn) {
    dense_width = std::max(dense_width, f.width);
    routed_width = std::max(routed_width, f.expert_down.cols);
    experts = std::max(experts, f.num_routed);
  }
  kernels::Backend& b = *backend_;
  const int64_t d = c.hidden_size;
  const int64_t rows = std::max(slots, rows_);
  const int64_t width = std::max(routed_width, dense_width);
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.ffn_workspace, kernels::GatedFfnWorkspaceBytes(rows, width)));
  if (experts == 0) return absl::OkStatus();
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.router_logits, rows_ * 2 * experts * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.selected, rows_ * max_k * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.route_weights, rows_ * max_k * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.slot_token, slots * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.slot_source, slots * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.token_slot, slots * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.expert_out, slots * d * 4));
  CMOE_RETURN_IF_ERROR(b.Reserve(dev.offsets, (experts + 1) * 4));
  const auto count_slots = static_cast<int64_t>(c.num_hidden_layers * dev.runs.size()) * experts;
  return b.Reserve(dev.counts, count_slots * 4);
}

absl::Status Model::DeviceFfn(int64_t layer, std::span<const SequenceChunk> /*chunks*/) {
  DeviceState& dev = *device_;
  const DeviceFfnWeights& f = dev.weights.ffn[layer];
  kernels::Backend& b = *backend_;
  const int64_t d = config().hidden_size;
  float* h = h_.as<float>();
  float* x = x_.as<float>();
  if (f.width > 0) {  // the dense FFN, or the shared expert of a carved layer
    CMOE_RETURN_IF_ERROR(b.GatedFfn({.x = h,
                                     .num_rows = rows_,
                                     .gate_up = kernels::AsOneGroup(f.gate_up),
                                     .down = kernels::AsOneGroup(f.down),
                                     .workspace = dev.ffn_workspace.data(),
                                     .workspace_bytes = dev.ffn_workspace.bytes(),
                                     .y = x,
                                     .accumulate = true}));
  }
  const int32_t experts = f.num_routed;
  if (experts == 0) return absl::OkStatus();
  for (size_t r = 0; r < dev.runs.size(); ++r) {
    const DeviceState::Run& run = dev.runs[r];
    const int64_t slots = run.rows * run.k;
    float* run_h = h + run.first_row * d;
    CMOE_RETURN_IF_ERROR(
        b.MatMul(run_h, run.rows, f.router, dev.router_logits.as<float>(), Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b.RouteTopK({.logits = dev.router_logits.as<float>(),
                                      .num_tokens = run.rows,
                                      .num_experts = experts,
                                      .num_activated = run.k,
                                      .abs_score = f.abs_score,
                                      .bias = f.bias.as<float>(),
                                      .scale = f.scale.as<float>(),
                                      .selected = dev.selected.as<int32_t>(),
                                      .weights = dev.route_weights.as<float>()}));
    int32_t* counts =
        dev.counts.as<int32_t>() + (layer * static_cast<int64_t>(dev.runs.size()) + r) * experts;
    if (comm_ != nullptr) {  // the routed rows travel to the ranks owning their experts
      CMOE_RETURN_IF_ERROR(ExpertParallelRun(layer, run.first_row, run.rows, run.k, counts));
      continue;
    }
    CMOE_RETURN_IF_ERROR(b.BuildDispatch({.selected = dev.selected.as<int32_t>(),
                                          .num_tokens = run.rows,
                                          .k = run.k,
                                          .num_experts = experts,
                                          .counts = counts,
                                          .offsets = dev.offsets.as<int32_t>(),
                                          .slot_token = dev.slot_token.as<int32_t>(),
                                          .slot_source = dev.slot_source.as<int32_t>(),
                                          .token_slot = dev.token_slot.as<int32_t>()}));
    CMOE_RETURN_IF_ERROR(b.GatedFfn({.x = run_h,
                                     .row_index = dev.slot_token.as<int32_t>(),
                                     .num_rows = slots,
                                     .offsets = dev.offsets.as<int32_t>(),
                                     .gate_up = f.expert_gate_up,
                                     .down = f.expert_down,
                                     .workspace = dev.ffn_workspace.data(),
                                     .workspace_bytes = dev.ffn_workspace.bytes(),
                                     .y = dev.expert_out.as<float>()}));
    CMOE_RETURN_IF_ERROR(b.CombineExperts({.expert_out = dev.expert_out.as<float>(),
                                           .token_slot = dev.token_slot.as<int32_t>(),
                                           .weights = dev.route_weights.as<float>(),
                                           .num_tokens = run.rows,
                                           .k = run.k,
                                           .dim = d,
                                           .x = x + run.first_row * d}));
  }
  return absl::OkStatus();
}

// Brings the step's per-expert counts back (one copy) and fills the FFN statistics the host
// MoE path computes as it goes.
absl::Status Model::DeviceFinishStep() {
  DeviceState& dev = *device_;
  const ModelConfig& c = config();
  if (!c.cmoe.has_value() || dev.runs.empty()) return absl::OkStatus();
  const int32_t experts = c.cmoe->num_routed();
  const auto runs = static_cast<int64_t>(dev.runs.size());
  dev.counts_host.resize(static_cast<size_t>(c.num_hidden_layers * runs * experts));
  CMOE_RETURN_IF_ERROR(backend_->CopyToHost(dev.counts_host.data(), dev.counts.data(),
                                            static_cast<int64_t>(dev.counts_host.size() * 4)));
  const ModelWeights& host = checkpoint_->weights();
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (!host.layers[l].moe.has_value()) continue;
    const MoeLayerWeights& m = *host.layers[l].moe;
    stats_.neurons_computed += rows_ * m.shared.width();
    for (int32_t e = 0; e < experts; ++e) {
      int64_t count = 0;
      for (int64_t r = 0; r < runs; ++r) count += dev.counts_host[(l * runs + r) * experts + e];
      stats_.tokens_per_expert[l * experts + e] = count;
      stats_.neurons_computed += count * m.experts[e].width();
    }
  }
  return absl::OkStatus();
}

}  // namespace cmoe::engine
