#include "engine/carve/carve_model.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/kv_cache.h"
#include "engine/moe_layer.h"
#include "kernels/backend_factory.h"

namespace cmoe::engine::carve {
namespace {

constexpr int32_t kCalibBlockSize = 16;

std::string ScoreName(ScoreVariant v) { return v == ScoreVariant::kRaw ? "raw" : "normalized"; }
std::string RouterName(RouterVariant v) {
  return v == RouterVariant::kPaper ? "paper" : "reference";
}

CmoeConfig MakeCmoeConfig(const CarveModelOptions& o, int64_t ffn_width, const CalibrationSet& c) {
  const ExpertWidthPlan widths = ExpertWidths(ffn_width, o.layer.num_experts, o.layer.num_shared);
  CmoeConfig m;
  m.num_experts = o.layer.num_experts;
  m.num_shared_experts = o.layer.num_shared;
  m.num_activated_experts = o.layer.num_activated;
  m.shared_width = widths.shared_width;
  m.expert_widths = widths.routed_widths;
  m.k_act = o.layer.k_act;
  m.score = ScoreName(o.layer.score);
  m.router = RouterName(o.router);
  m.cluster_iters = o.layer.cluster_iters;
  m.balance_bias_gamma = o.balance_bias_gamma;
  m.calibration = {.file = o.calibration.file,
                   .range_begin = c.range_begin,
                   .range_end = c.range_end,
                   .seqs = static_cast<int64_t>(c.windows.size()),
                   .len = c.windows.empty() ? 0 : static_cast<int64_t>(c.windows[0].size()),
                   .seed = o.calibration.seed};
  return m;
}

CarveReport MakeReport(const ModelConfig& c, const CmoeConfig& m, const CarveModelOptions& o,
                       const Model& model, int threads) {
  CarveReport r;
  r.model_dir = model.checkpoint().dir();
  r.config_name = m.Name();
  r.num_experts = m.num_experts;
  r.num_shared = m.num_shared_experts;
  r.num_activated = m.num_activated_experts;
  r.k_act = m.k_act;
  r.score = m.score;
  r.router = m.router;
  r.cluster_iters = m.cluster_iters;
  r.balance_bias_gamma = m.balance_bias_gamma;
  r.calib_file = o.calibration.file;
  r.calib_range_begin = m.calibration.range_begin;
  r.calib_range_end = m.calibration.range_end;
  r.calib_seqs = m.calibration.seqs;
  r.calib_len = m.calibration.len;
  r.seed = m.calibration.seed;
  r.calib_tokens = m.calibration.seqs * m.calibration.len;
  r.hidden_size = c.hidden_size;
  r.ffn_width = c.intermediate_size;
  r.num_layers = c.num_hidden_layers;
  r.activation_ratio = m.ActivationRatio();
  r.threads = threads;
  return r;
}

absl::Status CheckWindows(const CalibrationSet& calib, const ModelConfig& c) {
  if (calib.windows.empty()) return absl::InvalidArgumentError("no calibration sequences");
  for (size_t i = 0; i < calib.windows.size(); ++i) {
    const auto len = static_cast<int64_t>(calib.windows[i].size());
    if (len < 1 || len > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("calibration sequence ", i, " has ", len,
                                                     " tokens; want 1..", c.max_position_embeddings,
                                                     " (the model's context)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

CarvedLayerWeights BuildCarvedLayerWeights(const LayerWeights& dense, const CarvedLayer& carved,
                                           RouterVariant variant) {
  CarvedLayerWeights out;
  out.storage.reserve(carved.expert_neurons.size() + 1);
  out.storage.push_back(SliceExpert(dense.w_gate, dense.w_up, dense.w_down, carved.shared_neurons));
  for (const std::vector<int64_t>& neurons : carved.expert_neurons) {
    out.storage.push_back(SliceExpert(dense.w_gate, dense.w_up, dense.w_down, neurons));
  }
  out.weights.shared = out.storage[0].View();
  for (size_t j = 1; j < out.storage.size(); ++j) {
    out.weights.experts.push_back(out.storage[j].View());
  }
  out.weights.router_gate = carved.router.gate;
  out.weights.router_up = carved.router.up;
  out.weights.bias = carved.bias;
  out.weights.variant = variant;
  return out;
}

absl::StatusOr<CarvedModel> CarveModel(Model& model, const CalibrationSet& calib,
                                       const CarveModelOptions& o) {
  const ModelConfig& c = model.config();
  if (c.cmoe.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("model ", model.checkpoint().dir(),
                                                      " is already carved (", c.cmoe->Name(),
                                                      "); carve the dense original instead"));
  }
  CMOE_RETURN_IF_ERROR(ValidateCarveConfig(o.layer, c.intermediate_size));
  if (!(o.balance_bias_gamma >= 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("balance bias gamma must be >= 0, got ", o.balance_bias_gamma));
  }
  CMOE_RETURN_IF_ERROR(CheckWindows(calib, c));
  if (o.threads > kernels::kMaxThreads) {
    return absl::InvalidArgumentError(absl::StrCat("carving threads ", o.threads, " above the ",
                                                   kernels::kMaxThreads, " supported"));
  }
  Timer total;

  int64_t blocks = 0;
  for (const auto& w : calib.windows) {
    blocks += (static_cast<int64_t>(w.size()) + kCalibBlockSize - 1) / kCalibBlockSize;
  }
  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                        KvCache::Create(c, {.block_size = kCalibBlockSize, .num_blocks = blocks}));
  std::vector<SequenceBlocks> seq_blocks(calib.windows.size());
  std::vector<SequenceChunk> chunks;
  std::vector<int64_t> window_rows;  // first row of each window, then the total
  int64_t rows_total = 0;
  for (size_t i = 0; i < calib.windows.size(); ++i) {
    CMOE_RETURN_IF_ERROR(
        cache->Reserve(seq_blocks[i], static_cast<int64_t>(calib.windows[i].size())));
    chunks.push_back({.tokens = calib.windows[i], .start_pos = 0, .blocks = &seq_blocks[i]});
    window_rows.push_back(rows_total);
    rows_total += static_cast<int64_t>(calib.windows[i].size());
  }
  window_rows.push_back(rows_total);

  const int threads = o.threads > 0 ? o.threads : ThreadPool::HardwareThreads();
  ThreadPool pool(threads);
  CarvedModel out;
  out.config = c;
  out.config.cmoe = MakeCmoeConfig(o, c.intermediate_size, calib);
  out.report = MakeReport(c, *out.config.cmoe, o, model, threads);
  const int32_t n_r = out.config.cmoe->num_routed();
  MoeLayer moe;
  MoeStepStats stats;
  Timer phase;

  const auto carve_layer = [&](int64_t layer, std::span<const float> h, int64_t rows,
                               std::span<float> x) -> absl::Status {
    LayerReport r;
    r.layer = layer;
    r.forward_s = phase.Seconds();
    const LayerWeights& dense = model.checkpoint().weights().layers[layer];
    CMOE_ASSIGN_OR_RETURN(LayerCarve lc, CarveLayer({.x = h,
                                                     .num_tokens = rows,
                                                     .w_gate = dense.w_gate,
                                                     .w_up = dense.w_up,
                                                     .backend = &model.backend()},
                                                    o.layer, &pool));
    phase.Reset();
    CarvedLayer carved{.shared_neurons = std::move(lc.shared_neurons),
                       .expert_neurons = std::move(lc.expert_neurons),
                       .bias = std::vector<float>(static_cast<size_t>(n_r), 0.0f)};
    CMOE_ASSIGN_OR_RETURN(carved.router,
                          RouterRows(dense.w_gate, dense.w_up, lc.representatives, o.router));
    CarvedLayerWeights weights = BuildCarvedLayerWeights(dense, carved, o.router);
    // The carved FFN on the calibration tokens gives the next layer its input. With the
    // balancing bias, each calibration sequence is one batch: route it, then update b.
    r.tokens_per_expert.assign(static_cast<size_t>(n_r), 0);
    const bool balance = o.balance_bias_gamma > 0;
    const size_t batches = balance ? calib.windows.size() : 1;
    for (size_t b = 0; b < batches; ++b) {
      const int64_t first = balance ? window_rows[b] : 0;
      const int64_t count = balance ? window_rows[b + 1] - first : rows;
      const int64_t d = c.hidden_size;
      CMOE_RETURN_IF_ERROR(moe.Forward(model.backend(), weights.weights,
                                       {.h = h.data() + first * d,
                                        .num_tokens = count,
                                        .num_activated = o.layer.num_activated,
                                        .x = x.data() + first * d},
                                       &stats));
      for (int32_t e = 0; e < n_r; ++e) r.tokens_per_expert[e] += stats.tokens_per_expert[e];
      if (balance) {
        UpdateBalanceBias(stats.tokens_per_expert, static_cast<float>(o.balance_bias_gamma),
                          weights.weights.bias);
      }
    }
    carved.bias = weights.weights.bias;
    r.apply_s = phase.Seconds();
    r.activation = SummarizeActivationRates(lc.activation_rates);
    r.shared_width = static_cast<int64_t>(carved.shared_neurons.size());
    for (const auto& e : carved.expert_neurons) {
      r.expert_widths.push_back(static_cast<int64_t>(e.size()));
    }
    r.assignment_cost = lc.assignment_cost;
    r.cluster_iters_run = lc.cluster_iters_run;
    r.seeds = lc.seeds;
    r.representatives = lc.representatives;
    r.balance_bias.assign(carved.bias.begin(), carved.bias.end());
    r.scores_s = lc.timings.scores_s;
    r.markers_s = lc.timings.markers_s;
    r.assignment_s = lc.timings.assignment_s;
    r.centroid_s = lc.timings.centroid_s;
    out.layers.push_back(std::move(carved));
    out.report.layers.push_back(r);
    if (o.on_layer) o.on_layer(r);
    phase.Reset();
    return absl::OkStatus();
  };
  const absl::Status status = model.ForwardWithFfn(chunks, *cache, carve_layer);
  for (SequenceBlocks& s : seq_blocks) cache->Release(s);
  CMOE_RETURN_IF_ERROR(status);
  out.report.total_s = total.Seconds();
  return out;
}

}  // namespace cmoe::engine::carve
