// Model's routed experts under expert parallelism (ModelOptions::expert_parallel): one run of a
// carved layer, after routing (engine/model_device.cc), over the communicator. The arithmetic is
// engine/expert_parallel.h's; the rows move in backend memory:
//   1. the routing comes to the host (one copy; the send plan and the counts need it);
//   2. every rank learns how many rows each peer sends to each of its local experts
//      (AllToAllCounts) and where they land (ExpertRecvPlan);
//   3. the rows go out in dispatch order, which is already destination-rank order
//      (Embedding over the FFN input gathers them), and arrive grouped by source rank;
//   4. the local experts run as the single-rank path does (one grouped GatedFfn reading the
//      received rows through the expert-grouped permutation);
//   5. the outputs go back to receive order and to their source ranks (the same counts,
//      swapped), where CombineExperts adds them, weighted, into the residual stream in the plan's
//      order, as the single-rank path does.
#include <algorithm>
#include <cstdint>
#include <span>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/expert_parallel.h"
#include "engine/model.h"
#include "engine/model_device.h"

namespace cmoe::engine {

absl::Status Model::ForwardIdle() {
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError("ForwardIdle: only a model under expert parallelism");
  }
  stats_ = FfnStepStats{};
  graphed_ = false;
  const ModelConfig& c = config();
  stats_.num_routed = c.cmoe->num_routed();
  stats_.tokens_per_expert.assign(static_cast<size_t>(c.num_hidden_layers * stats_.num_routed), 0);
  // No tokens of its own: only the exchanges of every carved layer, to serve the peers' rows.
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    if (device_->weights.ffn[layer].num_routed == 0) continue;
    CMOE_RETURN_IF_ERROR(ExpertParallelRun(layer, /*first_row=*/0, /*rows=*/0,
                                           c.cmoe->num_activated_experts, /*counts=*/nullptr));
  }
  return absl::OkStatus();
}

absl::Status Model::ExpertParallelRun(int64_t layer, int64_t first_row, int64_t rows, int32_t k,
                                      int32_t* counts) {
  DeviceState& dev = *device_;
  DeviceState::ExpertParallel& ep = dev.ep;
  const DeviceFfnWeights& f = dev.weights.ffn[layer];
  kernels::Backend& b = *backend_;
  kernels::Communicator& comm = *comm_;
  const int64_t d = config().hidden_size;
  const int64_t slots = rows * k;
  const int32_t experts = f.num_routed;
  const int32_t local = f.expert_gate_up.groups;
  const int64_t width = f.expert_down.cols;
  const auto floats = [d](int64_t n) { return n * d * static_cast<int64_t>(sizeof(float)); };

  // 1-2. The plans.
  ep.selected.resize(static_cast<size_t>(slots));
  if (slots > 0) {
    CMOE_RETURN_IF_ERROR(b.CopyToHost(ep.selected.data(), dev.selected.data(),
                                      slots * static_cast<int64_t>(sizeof(int32_t))));
  }
  CMOE_ASSIGN_OR_RETURN(const ExpertPlacement placement,
                        ExpertPlacement::Create(experts, comm.world_size()));
  CMOE_ASSIGN_OR_RETURN(const ExpertSendPlan send,
                        BuildExpertSendPlan(ep.selected, rows, k, placement));
  std::vector<int64_t> recv_counts(send.expert_counts.size());
  CMOE_RETURN_IF_ERROR(
      comm.AllToAllCounts(send.expert_counts, recv_counts, placement.MaxLocalExperts()));
  CMOE_ASSIGN_OR_RETURN(const ExpertRecvPlan recv,
                        BuildExpertRecvPlan(recv_counts, placement, comm.rank()));
  if (recv.num_local_experts != local) {
    return absl::InternalError(absl::StrCat("expert parallelism: rank ", comm.rank(), " holds ",
                                            local, " experts of layer ", layer, ", the plan ",
                                            recv.num_local_experts));
  }
  const int64_t received = recv.source_offsets.back();

  // The per-expert counts of this rank's tokens, where DeviceFinishStep reads them.
  if (counts != nullptr) {
    ep.counts.assign(send.dispatch.counts.begin(), send.dispatch.counts.end());
    CMOE_RETURN_IF_ERROR(
        b.CopyToBackend(counts, ep.counts.data(), experts * static_cast<int64_t>(sizeof(int32_t))));
  }

  // 3. Rows out, in dispatch order.
  CMOE_RETURN_IF_ERROR(b.Reserve(ep.send, floats(std::max<int64_t>(slots, 1))));
  CMOE_RETURN_IF_ERROR(b.Reserve(ep.recv, floats(std::max<int64_t>(received, 1))));
  CMOE_RETURN_IF_ERROR(b.Reserve(ep.out, floats(std::max<int64_t>(received, 1))));
  CMOE_RETURN_IF_ERROR(b.Reserve(ep.back, floats(std::max<int64_t>(received, 1))));
  if (slots > 0) {
    const float* run_h = h_.as<float>() + first_row * d;
    CMOE_RETURN_IF_ERROR(
        b.Embedding({.data = run_h, .dtype = kernels::DType::kF32, .rows = rows, .cols = d},
                    send.dispatch.slot_token, ep.send.as<float>()));
  }
  // A device communicator has a stream of its own: the rows must be written before it reads them,
  // and received before the backend reads them.
  CMOE_RETURN_IF_ERROR(b.Synchronize());
  CMOE_RETURN_IF_ERROR(
      comm.AllToAllRows({.send = {ep.send.as<float>(), static_cast<size_t>(slots * d)},
                         .send_counts = send.rank_counts,
                         .recv = {ep.recv.as<float>(), static_cast<size_t>(received * d)},
                         .recv_counts = recv.source_counts,
                         .row_width = d}));
  CMOE_RETURN_IF_ERROR(comm.Synchronize());

  // 4. The local experts over the received rows, grouped by expert.
  if (received > 0) {
    ep.group_index.resize(static_cast<size_t>(received + local + 1));
    ep.inverse.resize(static_cast<size_t>(received));
    for (int64_t q = 0; q < received; ++q) {
      ep.group_index[q] = static_cast<int32_t>(recv.expert_rows[q]);
      ep.inverse[recv.expert_rows[q]] = static_cast<int32_t>(q);
    }
    for (int32_t l = 0; l <= local; ++l) {
      ep.group_index[received + l] = static_cast<int32_t>(recv.expert_offsets[l]);
    }
    const auto index_bytes = static_cast<int64_t>(ep.group_index.size() * sizeof(int32_t));
    CMOE_RETURN_IF_ERROR(b.Reserve(ep.index, index_bytes));
    CMOE_RETURN_IF_ERROR(b.CopyToBackend(ep.index.data(), ep.group_index.data(), index_bytes));
    CMOE_RETURN_IF_ERROR(
        b.Reserve(dev.ffn_workspace, kernels::GatedFfnWorkspaceBytes(received, width)));
    CMOE_RETURN_IF_ERROR(b.GatedFfn({.x = ep.recv.as<float>(),
                                     .row_index = ep.index.as<int32_t>(),
                                     .num_rows = received,
                                     .offsets = ep.index.as<int32_t>() + received,
                                     .gate_up = f.expert_gate_up,
                                     .down = f.expert_down,
                                     .workspace = dev.ffn_workspace.data(),
                                     .workspace_bytes = dev.ffn_workspace.bytes(),
                                     .y = ep.out.as<float>()}));
    // Back to receive order: receive row i holds grouped row inverse[i].
    CMOE_RETURN_IF_ERROR(b.Embedding(
        {.data = ep.out.as<float>(), .dtype = kernels::DType::kF32, .rows = received, .cols = d},
        ep.inverse, ep.back.as<float>()));
  }

  // 5. Outputs home (into ep.send: its rows have been sent) and combined.
  CMOE_RETURN_IF_ERROR(b.Synchronize());
  CMOE_RETURN_IF_ERROR(
      comm.AllToAllRows({.send = {ep.back.as<float>(), static_cast<size_t>(received * d)},
                         .send_counts = recv.source_counts,
                         .recv = {ep.send.as<float>(), static_cast<size_t>(slots * d)},
                         .recv_counts = send.rank_counts,
                         .row_width = d}));
  CMOE_RETURN_IF_ERROR(comm.Synchronize());
  if (rows == 0) return absl::OkStatus();
  const auto slot_bytes = static_cast<int64_t>(send.dispatch.token_slot.size() * sizeof(int32_t));
  CMOE_RETURN_IF_ERROR(b.Reserve(ep.token_slot, slot_bytes));
  CMOE_RETURN_IF_ERROR(
      b.CopyToBackend(ep.token_slot.data(), send.dispatch.token_slot.data(), slot_bytes));
  return b.CombineExperts({.expert_out = ep.send.as<float>(),
                           .token_slot = ep.token_slot.as<int32_t>(),
                           .weights = dev.route_weights.as<float>(),
                           .num_tokens = rows,
                           .k = k,
                           .dim = d,
                           .x = x_.as<float>() + first_row * d});
}

}  // namespace cmoe::engine
