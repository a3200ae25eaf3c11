#include "engine/model.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "engine/expert_parallel.h"
#include "engine/model_device.h"
#include "kernels/sample_row.h"

namespace cmoe::engine {

using kernels::Accumulate;

std::span<const float> ForwardOutput::Logits(size_t chunk, int64_t row) const {
  const int64_t r = first_row[chunk] + (row < 0 ? num_rows[chunk] - 1 : row);
  return {logits.data() + r * vocab, static_cast<size_t>(vocab)};
}

Model::Model(std::unique_ptr<Checkpoint> checkpoint, std::unique_ptr<kernels::Backend> backend)
    : checkpoint_(std::move(checkpoint)), backend_(std::move(backend)) {}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(std::unique_ptr<Checkpoint> checkpoint,
                                                     std::unique_ptr<kernels::Backend> backend,
                                                     const ModelOptions& options) {
  if (checkpoint == nullptr || backend == nullptr) {
    return absl::InvalidArgumentError("Model::Create: null checkpoint or backend");
  }
  std::unique_ptr<Model> model(new Model(std::move(checkpoint), std::move(backend)));
  ExpertSlice slice;
  if (options.expert_parallel != nullptr) {
    const std::optional<CmoeConfig>& cmoe = model->config().cmoe;
    if (!cmoe.has_value()) {
      return absl::InvalidArgumentError(
          "Model::Create: expert parallelism needs a carved (CMoE) checkpoint; this one is dense");
    }
    kernels::Communicator& comm = *options.expert_parallel;
    CMOE_ASSIGN_OR_RETURN(const ExpertPlacement placement,
                          ExpertPlacement::Create(cmoe->num_routed(), comm.world_size()));
    slice = {.first = placement.FirstExpert(comm.rank()),
             .count = placement.NumLocalExperts(comm.rank())};
    model->comm_ = &comm;
  }
  // The fused FFN path: device backends, and every backend under expert parallelism.
  if (model->backend_->IsDevice() || model->comm_ != nullptr) {
    model->device_ = std::make_unique<DeviceState>();
    absl::StatusOr<DeviceWeights> uploaded =
        UploadModelWeights(model->checkpoint_->weights(), model->config(), *model->backend_, slice);
    if (!uploaded.ok()) {
      return Annotate(uploaded.status(), absl::StrCat("uploading the weights to ",
                                                      std::string(model->backend_->Name())));
    }
    model->device_->weights = std::move(uploaded).value();
  }
  return model;
}

Model::~Model() = default;

const ModelWeights& Model::weights() const {
  return device_ != nullptr ? device_->weights.model : checkpoint_->weights();
}

namespace {

int64_t ExpertBytes(const ExpertWeights& e) {
  return e.gate.bytes() + e.up.bytes() + e.down.bytes();
}
int64_t ExpertMacs(const ExpertWeights& e) {
  return e.gate.elements() + e.up.elements() + e.down.elements();
}

// FFN bytes (or MACs with `macs`) one token touches in expectation with k routed experts.
int64_t FfnCost(const LayerWeights& l, int32_t k, bool macs) {
  if (!l.moe.has_value()) {
    return macs ? l.w_gate.elements() + l.w_up.elements() + l.w_down.elements()
                : l.w_gate.bytes() + l.w_up.bytes() + l.w_down.bytes();
  }
  const MoeLayerWeights& m = *l.moe;
  const auto n_r = static_cast<int64_t>(m.experts.size());
  int64_t routed = 0;
  for (const ExpertWeights& e : m.experts) routed += macs ? ExpertMacs(e) : ExpertBytes(e);
  const int64_t router = static_cast<int64_t>(m.router_gate.size() + m.router_up.size());
  return (macs ? ExpertMacs(m.shared) + router : ExpertBytes(m.shared) + router * 4) +
         routed * k / n_r;
}

}  // namespace

int64_t Model::DecodeWeightBytes(int32_t k) const {
  const ModelWeights& w = checkpoint_->weights();
  const int32_t kk = k > 0 ? k : (config().cmoe ? config().cmoe->num_activated_experts : 0);
  int64_t bytes = w.final_norm.bytes() + w.lm_head.bytes();
  for (const LayerWeights& l : w.layers) {
    for (const WeightView* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm}) {
      bytes += v->bytes();
    }
    bytes += FfnCost(l, kk, /*macs=*/false);
  }
  return bytes;
}

int64_t Model::LastStepWeightBytes() const {
  const ModelWeights& w = checkpoint_->weights();
  int64_t bytes = w.final_norm.bytes() + w.lm_head.bytes();
  for (size_t layer = 0; layer < w.layers.size(); ++layer) {
    const LayerWeights& l = w.layers[layer];
    for (const WeightView* v : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm}) {
      bytes += v->bytes();
    }
    if (!l.moe.has_value() || stats_.tokens_per_expert.empty()) {
      bytes += FfnCost(l, 0, /*macs=*/false);
      continue;
    }
    const MoeLayerWeights& m = *l.moe;
    bytes += ExpertBytes(m.shared) +
             static_cast<int64_t>(4 * (m.router_gate.size() + m.router_up.size()));
    const int64_t* counts = stats_.tokens_per_expert.data() + layer * stats_.num_routed;
    for (size_t e = 0; e < m.experts.size(); ++e) {
      if (counts[e] > 0) bytes += ExpertBytes(m.experts[e]);
    }
  }
  return bytes;
}

int64_t Model::MatmulFlopsPerToken(int32_t k) const {
  const ModelWeights& w = checkpoint_->weights();
  const int32_t kk = k > 0 ? k : (config().cmoe ? config().cmoe->num_activated_experts : 0);
  int64_t macs = w.lm_head.elements();
  for (const LayerWeights& l : w.layers) {
    macs += l.wq.elements() + l.wk.elements() + l.wv.elements() + l.wo.elements() +
            FfnCost(l, kk, /*macs=*/true);
  }
  return 2 * macs;
}

absl::Status Model::Validate(std::span<const SequenceChunk> chunks, const KvCache& cache) const {
  const ModelConfig& c = config();
  if (chunks.empty()) return absl::InvalidArgumentError("Forward: no sequences in the step");
  for (size_t i = 0; i < chunks.size(); ++i) {
    const SequenceChunk& s = chunks[i];
    const int64_t end = s.start_pos + static_cast<int64_t>(s.tokens.size());
    if (s.tokens.empty() || s.start_pos < 0 || s.blocks == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: sequence ", i, " has no tokens, a negative start or no blocks"));
    }
    if (end > c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: sequence ", i, " reaches position ",
                                                     end, " beyond the context of ",
                                                     c.max_position_embeddings));
    }
    if (s.blocks->length < end ||
        static_cast<int64_t>(s.blocks->table.size()) < cache.BlocksFor(end)) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: sequence ", i,
                                                     " has cache room for ", s.blocks->length,
                                                     " positions, needs ", end));
    }
    if (s.num_activated_experts != 0) {
      if (comm_ != nullptr && s.num_activated_experts != c.cmoe->num_activated_experts) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: sequence ", i, " sets num_activated_experts ", s.num_activated_experts,
            "; under expert parallelism every sequence uses the checkpoint's ",
            c.cmoe->num_activated_experts, " (every rank must exchange the same rounds)"));
      }
      if (!c.cmoe.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Forward: sequence ", i,
                         " sets num_activated_experts but the model is dense (not carved)"));
      }
      if (s.num_activated_experts < 1 || s.num_activated_experts > c.cmoe->num_routed()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Forward: sequence ", i, " num_activated_experts ",
                         s.num_activated_experts, " outside [1, ", c.cmoe->num_routed(),
                         "] (the routed experts of ", c.cmoe->Name(), ")"));
      }
    }
    if (s.sample != nullptr) {
      if (s.all_logits) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: sequence ", i, " asks for all logits and for a token sampled in the model"));
      }
      if (c.vocab_size > kernels::sample_row::kMaxVocab) {
        return absl::InvalidArgumentError(absl::StrCat(
            "Forward: sequence ", i, " asks for a token sampled in the model, but a ", c.vocab_size,
            "-token vocabulary is over the sampler's ", kernels::sample_row::kMaxVocab));
      }
      if (absl::Status bad = kernels::ValidateRowSampling(*s.sample); !bad.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Forward: sequence ", i, " sampling: ", bad.message()));
      }
    }
    for (int32_t id : s.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("Forward: sequence ", i, " token id ", id,
                                                       " outside the vocabulary of ",
                                                       c.vocab_size));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status Model::Resize(int64_t rows, bool dense_ffn) {
  const ModelConfig& c = config();
  const auto n = [rows](int64_t width) { return static_cast<size_t>(rows * width); };
  tokens_.resize(n(1));
  positions_.resize(n(1));
  slots_.resize(n(1));
  kernels::Backend& b = *backend_;
  const auto floats = [rows](int64_t width) { return rows * width * 4; };
  CMOE_RETURN_IF_ERROR(b.Reserve(x_, floats(c.hidden_size)));
  CMOE_RETURN_IF_ERROR(b.Reserve(h_, floats(c.hidden_size)));
  CMOE_RETURN_IF_ERROR(b.Reserve(q_, floats(c.num_attention_heads * c.head_dim)));
  CMOE_RETURN_IF_ERROR(b.Reserve(k_, floats(c.num_key_value_heads * c.head_dim)));
  CMOE_RETURN_IF_ERROR(b.Reserve(v_, floats(c.num_key_value_heads * c.head_dim)));
  CMOE_RETURN_IF_ERROR(b.Reserve(attn_, floats(c.num_attention_heads * c.head_dim)));
  // The host dense FFN's activations; carved layers, FFN overrides and devices use their own.
  if (dense_ffn && device_ == nullptr) {
    CMOE_RETURN_IF_ERROR(b.Reserve(gate_, floats(c.intermediate_size)));
    CMOE_RETURN_IF_ERROR(b.Reserve(up_, floats(c.intermediate_size)));
  }
  return absl::OkStatus();
}

absl::Status Model::PlanStep(std::span<const SequenceChunk> chunks, const KvCache& cache,
                             bool dense_ffn) {
  rows_ = 0;
  for (const SequenceChunk& s : chunks) rows_ += static_cast<int64_t>(s.tokens.size());
  CMOE_RETURN_IF_ERROR(Resize(rows_, dense_ffn));
  sequences_.clear();
  int64_t row = 0;
  for (const SequenceChunk& s : chunks) {
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    for (int64_t i = 0; i < n; ++i) {
      tokens_[row + i] = s.tokens[i];
      positions_[row + i] = static_cast<int32_t>(s.start_pos + i);
      slots_[row + i] = cache.Slot(*s.blocks, s.start_pos + i);
    }
    sequences_.push_back({.first_row = row,
                          .num_tokens = n,
                          .context_len = s.start_pos + n,
                          .block_table = s.blocks->table});
    row += n;
  }
  return absl::OkStatus();
}

absl::Status Model::AttentionBlock(int64_t layer, KvCache& cache) {
  const ModelConfig& c = config();
  const LayerWeights& w = weights().layers[layer];
  const auto theta = static_cast<float>(c.rope_theta);
  const auto hd = static_cast<int32_t>(c.head_dim);
  kernels::Backend& b = *backend_;
  float* x = x_.as<float>();
  float* h = h_.as<float>();
  float* q = q_.as<float>();
  float* k = k_.as<float>();
  float* v = v_.as<float>();
  CMOE_RETURN_IF_ERROR(b.RmsNorm(x, rows_, w.attn_norm, static_cast<float>(c.rms_norm_eps), h));
  const kernels::Backend::MatMulOutput qkv[] = {{w.wq, q}, {w.wk, k}, {w.wv, v}};
  CMOE_RETURN_IF_ERROR(b.MatMuls(h, rows_, qkv));
  CMOE_RETURN_IF_ERROR(
      b.Rope(q, positions_, static_cast<int32_t>(c.num_attention_heads), hd, theta));
  CMOE_RETURN_IF_ERROR(
      b.Rope(k, positions_, static_cast<int32_t>(c.num_key_value_heads), hd, theta));
  const kernels::PagedKvLayer kv = cache.Layer(layer);
  CMOE_RETURN_IF_ERROR(b.KvWrite(k, v, slots_, kv));
  CMOE_RETURN_IF_ERROR(b.Attention({.q = q,
                                    .num_rows = rows_,
                                    .n_heads = static_cast<int32_t>(c.num_attention_heads),
                                    .scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                    .sequences = sequences_,
                                    .cache = kv,
                                    .out = attn_.as<float>()}));
  return b.MatMul(attn_.as<float>(), rows_, w.wo, x, Accumulate::kYes);
}

absl::Status Model::FfnBlock(int64_t layer, std::span<const SequenceChunk> chunks) {
  const ModelConfig& c = config();
  const LayerWeights& w = weights().layers[layer];
  kernels::Backend& b = *backend_;
  float* x = x_.as<float>();
  float* h = h_.as<float>();
  CMOE_RETURN_IF_ERROR(b.RmsNorm(x, rows_, w.ffn_norm, static_cast<float>(c.rms_norm_eps), h));
  stats_.neurons_dense += rows_ * c.intermediate_size;
  const bool carved = checkpoint_->weights().layers[layer].moe.has_value();
  if (!carved) stats_.neurons_computed += rows_ * c.intermediate_size;
  if (device_ != nullptr) return DeviceFfn(layer, chunks);
  if (carved) return MoeFfn(layer, chunks);
  float* gate = gate_.as<float>();
  float* up = up_.as<float>();
  CMOE_RETURN_IF_ERROR(b.MatMul(h, rows_, w.w_gate, gate, Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.MatMul(h, rows_, w.w_up, up, Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.SiluMul(gate, up, rows_ * c.intermediate_size, gate));
  return b.MatMul(gate, rows_, w.w_down, x, Accumulate::kYes);
}

// Consecutive chunks with the same number of routed experts share one MoeLayer pass over their
// rows (all of the step when no request overrides it), so a per-request k costs one extra
// routing/dispatch pass per distinct run, never a different result.
absl::Status Model::MoeFfn(int64_t layer, std::span<const SequenceChunk> chunks) {
  const CmoeConfig& m = *config().cmoe;
  const MoeLayerWeights& w = *checkpoint_->weights().layers[layer].moe;
  const int64_t d = config().hidden_size;
  const int32_t n_r = m.num_routed();
  int64_t* counts = stats_.tokens_per_expert.data() + layer * n_r;
  size_t i = 0;
  while (i < chunks.size()) {
    const auto k_of = [&](size_t j) {
      return chunks[j].num_activated_experts > 0 ? chunks[j].num_activated_experts
                                                 : m.num_activated_experts;
    };
    const int32_t k = k_of(i);
    const int64_t first_row = sequences_[i].first_row;
    int64_t rows = 0;
    size_t j = i;
    for (; j < chunks.size() && k_of(j) == k; ++j) rows += sequences_[j].num_tokens;
    CMOE_RETURN_IF_ERROR(moe_.Forward(*backend_, w,
                                      {.h = h_.as<float>() + first_row * d,
                                       .num_tokens = rows,
                                       .num_activated = k,
                                       .x = x_.as<float>() + first_row * d},
                                      &moe_stats_));
    stats_.neurons_computed += moe_stats_.neurons_computed;
    for (int32_t e = 0; e < n_r; ++e) counts[e] += moe_stats_.tokens_per_expert[e];
    i = j;
  }
  return absl::OkStatus();
}

// The final norm over the step's rows, then the LM head on the rows that need logits as a
// one-group GroupedMatMul whose row index gathers them (no copy of the rows).
absl::Status Model::LmHead(std::span<const SequenceChunk> chunks, ForwardOutput& out) {
  const ModelConfig& c = config();
  const int64_t vocab = c.vocab_size;
  out.vocab = vocab;
  out.first_row.assign(chunks.size(), 0);
  out.num_rows.assign(chunks.size(), 0);
  out.tokens.assign(chunks.size(), -1);
  lm_index_.clear();
  sampling_.clear();
  // The last n rows of chunk i, which end at sequences_[i].first_row + num_tokens.
  const auto add_rows = [&](size_t i, int64_t n) {
    const int64_t src = sequences_[i].first_row + sequences_[i].num_tokens - n;
    for (int64_t r = 0; r < n; ++r) lm_index_.push_back(static_cast<int32_t>(src + r));
  };
  // Rows sampled here first, so that the logits that go back are one contiguous block.
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].sample == nullptr) continue;
    sampling_.push_back(*chunks[i].sample);
    add_rows(i, 1);
  }
  const auto sampled = static_cast<int64_t>(sampling_.size());
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].sample != nullptr) continue;
    out.first_row[i] = static_cast<int64_t>(lm_index_.size()) - sampled;
    out.num_rows[i] = chunks[i].all_logits ? static_cast<int64_t>(chunks[i].tokens.size()) : 1;
    add_rows(i, out.num_rows[i]);
  }
  const auto rows = static_cast<int64_t>(lm_index_.size());
  lm_index_.push_back(0);  // the one group's offsets: {0, rows}
  lm_index_.push_back(static_cast<int32_t>(rows));
  kernels::Backend& b = *backend_;
  const auto index_bytes = static_cast<int64_t>(lm_index_.size() * sizeof(int32_t));
  CMOE_RETURN_IF_ERROR(b.Reserve(lm_rows_, index_bytes));
  CMOE_RETURN_IF_ERROR(b.CopyToBackend(lm_rows_.data(), lm_index_.data(), index_bytes));
  const ModelWeights& w = weights();
  CMOE_RETURN_IF_ERROR(b.RmsNorm(x_.as<float>(), rows_, w.final_norm,
                                 static_cast<float>(c.rms_norm_eps), h_.as<float>()));
  if (device_ != nullptr) {
    CMOE_RETURN_IF_ERROR(b.Reserve(logits_, rows * vocab * 4));
  } else {
    out.logits.resize(static_cast<size_t>(rows * vocab));
  }
  float* logits = device_ != nullptr ? logits_.as<float>() : out.logits.data();
  CMOE_RETURN_IF_ERROR(b.GroupedMatMul({.x = h_.as<float>(),
                                        .row_index = lm_rows_.as<int32_t>(),
                                        .num_rows = rows,
                                        .offsets = lm_rows_.as<int32_t>() + rows,
                                        .w = {.data = w.lm_head.data,
                                              .dtype = w.lm_head.dtype,
                                              .groups = 1,
                                              .rows = w.lm_head.rows,
                                              .cols = w.lm_head.cols},
                                        .y = logits}));
  if (sampled > 0) {
    CMOE_RETURN_IF_ERROR(b.Reserve(sampled_, sampled * 4));
    CMOE_RETURN_IF_ERROR(b.SampleTokens({.logits = logits,
                                         .rows = sampled,
                                         .vocab = vocab,
                                         .sampling = sampling_.data(),
                                         .tokens = sampled_.as<int32_t>()}));
    sampled_host_.resize(static_cast<size_t>(sampled));
    CMOE_RETURN_IF_ERROR(b.CopyToHost(sampled_host_.data(), sampled_.data(), sampled * 4));
    for (size_t i = 0, j = 0; i < chunks.size(); ++i) {
      if (chunks[i].sample != nullptr) out.tokens[i] = sampled_host_[j++];
    }
  }
  if (device_ == nullptr) {
    out.logits.erase(out.logits.begin(), out.logits.begin() + sampled * vocab);
    return absl::OkStatus();
  }
  out.logits.resize(static_cast<size_t>((rows - sampled) * vocab));
  return b.CopyToHost(out.logits.data(), logits + sampled * vocab, (rows - sampled) * vocab * 4);
}

absl::Status Model::Begin(std::span<const SequenceChunk> chunks, KvCache& cache, bool dense_ffn) {
  stats_ = FfnStepStats{};
  CMOE_RETURN_IF_ERROR(Validate(chunks, cache));
  CMOE_RETURN_IF_ERROR(PlanStep(chunks, cache, dense_ffn));
  const ModelConfig& c = config();
  stats_.tokens = rows_;
  if (c.cmoe.has_value()) {
    stats_.num_routed = c.cmoe->num_routed();
    stats_.tokens_per_expert.assign(static_cast<size_t>(c.num_hidden_layers * stats_.num_routed),
                                    0);
  }
  if (device_ != nullptr) CMOE_RETURN_IF_ERROR(DeviceBeginStep(chunks));
  return absl::OkStatus();
}

bool Model::IsGraphStep(std::span<const SequenceChunk> chunks) const {
  // Expert parallelism reads the routing on the host every carved layer: no graph.
  if (device_ == nullptr || comm_ != nullptr || rows_ > graph_row_limit_) return false;
  return std::all_of(chunks.begin(), chunks.end(),
                     [](const SequenceChunk& c) { return c.tokens.size() == 1; });
}

absl::Status Model::Layers(std::span<const SequenceChunk> chunks, KvCache& cache, bool graph) {
  kernels::Backend& b = *backend_;
  if (graph) CMOE_RETURN_IF_ERROR(b.BeginGraph());
  absl::Status status = b.Embedding(weights().embed, tokens_, x_.as<float>());
  for (int64_t layer = 0; status.ok() && layer < config().num_hidden_layers; ++layer) {
    status = AttentionBlock(layer, cache);
    if (status.ok()) status = FfnBlock(layer, chunks);
  }
  if (!graph) return status;
  if (!status.ok()) {
    b.CancelGraph();
    return status;
  }
  return b.EndGraph();
}

absl::Status Model::Forward(std::span<const SequenceChunk> chunks, KvCache& cache,
                            ForwardOutput& out) {
  const bool dense = !config().cmoe.has_value();
  graphed_ = false;
  CMOE_RETURN_IF_ERROR(Begin(chunks, cache, dense));
  bool graph = IsGraphStep(chunks);
  absl::Status status = Layers(chunks, cache, graph);
  if (graph && kernels::IsNotInGraph(status)) {
    // An op of this step must wait for the device (a decode batch large enough for the cuBLAS
    // grouped GEMM): nothing recorded ran, so the step runs again op by op, as does every decode
    // step this large from now on.
    graph_row_limit_ = rows_ - 1;
    CMOE_RETURN_IF_ERROR(Begin(chunks, cache, dense));  // the FFN counters start again
    graph = false;
    status = Layers(chunks, cache, graph);
  }
  CMOE_RETURN_IF_ERROR(status);
  // A backend with graphs off (or a host backend) ran the ops one by one.
  graphed_ = graph && backend_->graph_stats().launched > graph_launches_;
  graph_launches_ = backend_->graph_stats().launched;
  CMOE_RETURN_IF_ERROR(LmHead(chunks, out));
  return device_ != nullptr ? DeviceFinishStep() : absl::OkStatus();
}

absl::Status Model::ForwardWithFfn(std::span<const SequenceChunk> chunks, KvCache& cache,
                                   const FfnOverride& ffn) {
  if (device_ != nullptr) {
    return absl::FailedPreconditionError(
        "ForwardWithFfn (carving calibration) runs on a CPU backend, not on a device");
  }
  CMOE_RETURN_IF_ERROR(Begin(chunks, cache, /*dense_ffn=*/false));
  CMOE_RETURN_IF_ERROR(backend_->Embedding(weights().embed, tokens_, x_.as<float>()));
  const ModelConfig& c = config();
  const int64_t n = rows_ * c.hidden_size;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    CMOE_RETURN_IF_ERROR(AttentionBlock(layer, cache));
    const LayerWeights& w = checkpoint_->weights().layers[layer];
    CMOE_RETURN_IF_ERROR(backend_->RmsNorm(x_.as<float>(), rows_, w.ffn_norm,
                                           static_cast<float>(c.rms_norm_eps), h_.as<float>()));
    CMOE_RETURN_IF_ERROR(ffn(layer, {h_.as<float>(), static_cast<size_t>(n)}, rows_,
                             {x_.as<float>(), static_cast<size_t>(n)}));
  }
  return absl::OkStatus();
}

}  // namespace cmoe::engine
