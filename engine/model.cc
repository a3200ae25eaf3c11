#include "engine/model.h"

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::engine {

using kernels::Accumulate;

std::span<const float> ForwardOutput::Logits(size_t chunk, int64_t row) const {
  const int64_t r = first_row[chunk] + (row < 0 ? num_rows[chunk] - 1 : row);
  return {logits.data() + r * vocab, static_cast<size_t>(vocab)};
}

Model::Model(std::unique_ptr<Checkpoint> checkpoint, std::unique_ptr<kernels::Backend> backend)
    : checkpoint_(std::move(checkpoint)), backend_(std::move(backend)) {}

absl::StatusOr<std::unique_ptr<Model>> Model::Create(std::unique_ptr<Checkpoint> checkpoint,
                                                     std::unique_ptr<kernels::Backend> backend) {
  if (checkpoint == nullptr || backend == nullptr) {
    return absl::InvalidArgumentError("Model::Create: null checkpoint or backend");
  }
  return std::unique_ptr<Model>(new Model(std::move(checkpoint), std::move(backend)));
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

void Model::Resize(int64_t rows, bool dense_ffn) {
  const ModelConfig& c = config();
  const auto n = [rows](int64_t width) { return static_cast<size_t>(rows * width); };
  tokens_.resize(n(1));
  positions_.resize(n(1));
  slots_.resize(n(1));
  x_.resize(n(c.hidden_size));
  h_.resize(n(c.hidden_size));
  q_.resize(n(c.num_attention_heads * c.head_dim));
  k_.resize(n(c.num_key_value_heads * c.head_dim));
  v_.resize(n(c.num_key_value_heads * c.head_dim));
  attn_.resize(n(c.num_attention_heads * c.head_dim));
  // The dense FFN's activations; carved layers and FFN overrides use their own.
  gate_.resize(dense_ffn ? n(c.intermediate_size) : 0);
  up_.resize(dense_ffn ? n(c.intermediate_size) : 0);
}

void Model::PlanStep(std::span<const SequenceChunk> chunks, const KvCache& cache, bool dense_ffn) {
  rows_ = 0;
  for (const SequenceChunk& s : chunks) rows_ += static_cast<int64_t>(s.tokens.size());
  Resize(rows_, dense_ffn);
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
}

absl::Status Model::AttentionBlock(int64_t layer, KvCache& cache) {
  const ModelConfig& c = config();
  const LayerWeights& w = checkpoint_->weights().layers[layer];
  const auto theta = static_cast<float>(c.rope_theta);
  const auto hd = static_cast<int32_t>(c.head_dim);
  kernels::Backend& b = *backend_;
  CMOE_RETURN_IF_ERROR(
      b.RmsNorm(x_.data(), rows_, w.attn_norm, static_cast<float>(c.rms_norm_eps), h_.data()));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.wq, q_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.wk, k_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.wv, v_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(
      b.Rope(q_.data(), positions_, static_cast<int32_t>(c.num_attention_heads), hd, theta));
  CMOE_RETURN_IF_ERROR(
      b.Rope(k_.data(), positions_, static_cast<int32_t>(c.num_key_value_heads), hd, theta));
  const kernels::PagedKvLayer kv = cache.Layer(layer);
  CMOE_RETURN_IF_ERROR(b.KvWrite(k_.data(), v_.data(), slots_, kv));
  CMOE_RETURN_IF_ERROR(b.Attention({.q = q_.data(),
                                    .num_rows = rows_,
                                    .n_heads = static_cast<int32_t>(c.num_attention_heads),
                                    .scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim)),
                                    .sequences = sequences_,
                                    .cache = kv,
                                    .out = attn_.data()}));
  return b.MatMul(attn_.data(), rows_, w.wo, x_.data(), Accumulate::kYes);
}

absl::Status Model::FfnBlock(int64_t layer, std::span<const SequenceChunk> chunks) {
  const ModelConfig& c = config();
  const LayerWeights& w = checkpoint_->weights().layers[layer];
  kernels::Backend& b = *backend_;
  CMOE_RETURN_IF_ERROR(
      b.RmsNorm(x_.data(), rows_, w.ffn_norm, static_cast<float>(c.rms_norm_eps), h_.data()));
  stats_.neurons_dense += rows_ * c.intermediate_size;
  if (w.moe.has_value()) return MoeFfn(layer, chunks);
  stats_.neurons_computed += rows_ * c.intermediate_size;
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.w_gate, gate_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.w_up, up_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(
      b.SiluMul(gate_.data(), up_.data(), rows_ * c.intermediate_size, gate_.data()));
  return b.MatMul(gate_.data(), rows_, w.w_down, x_.data(), Accumulate::kYes);
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
                                      {.h = h_.data() + first_row * d,
                                       .num_tokens = rows,
                                       .num_activated = k,
                                       .x = x_.data() + first_row * d},
                                      &moe_stats_));
    stats_.neurons_computed += moe_stats_.neurons_computed;
    for (int32_t e = 0; e < n_r; ++e) counts[e] += moe_stats_.tokens_per_expert[e];
    i = j;
  }
  return absl::OkStatus();
}

absl::Status Model::LmHead(std::span<const SequenceChunk> chunks, ForwardOutput& out) {
  const ModelConfig& c = config();
  const int64_t d = c.hidden_size;
  out.vocab = c.vocab_size;
  out.first_row.clear();
  out.num_rows.clear();
  int64_t rows = 0;
  for (const SequenceChunk& s : chunks) {
    out.first_row.push_back(rows);
    out.num_rows.push_back(s.all_logits ? static_cast<int64_t>(s.tokens.size()) : 1);
    rows += out.num_rows.back();
  }
  last_.resize(static_cast<size_t>(rows * d));
  for (size_t i = 0; i < chunks.size(); ++i) {
    // Rows of chunk i end at sequences_[i].first_row + num_tokens; take its last num_rows rows.
    const int64_t src = sequences_[i].first_row + sequences_[i].num_tokens - out.num_rows[i];
    std::copy(x_.begin() + src * d, x_.begin() + (src + out.num_rows[i]) * d,
              last_.begin() + out.first_row[i] * d);
  }
  const ModelWeights& w = checkpoint_->weights();
  CMOE_RETURN_IF_ERROR(backend_->RmsNorm(last_.data(), rows, w.final_norm,
                                         static_cast<float>(c.rms_norm_eps), last_.data()));
  out.logits.resize(static_cast<size_t>(rows * c.vocab_size));
  return backend_->MatMul(last_.data(), rows, w.lm_head, out.logits.data(), Accumulate::kNo);
}

absl::Status Model::Begin(std::span<const SequenceChunk> chunks, KvCache& cache, bool dense_ffn) {
  stats_ = FfnStepStats{};
  CMOE_RETURN_IF_ERROR(Validate(chunks, cache));
  PlanStep(chunks, cache, dense_ffn);
  const ModelConfig& c = config();
  stats_.tokens = rows_;
  if (c.cmoe.has_value()) {
    stats_.num_routed = c.cmoe->num_routed();
    stats_.tokens_per_expert.assign(static_cast<size_t>(c.num_hidden_layers * stats_.num_routed),
                                    0);
  }
  return backend_->Embedding(checkpoint_->weights().embed, tokens_, x_.data());
}

absl::Status Model::Forward(std::span<const SequenceChunk> chunks, KvCache& cache,
                            ForwardOutput& out) {
  CMOE_RETURN_IF_ERROR(Begin(chunks, cache, /*dense_ffn=*/!config().cmoe.has_value()));
  for (int64_t layer = 0; layer < config().num_hidden_layers; ++layer) {
    CMOE_RETURN_IF_ERROR(AttentionBlock(layer, cache));
    CMOE_RETURN_IF_ERROR(FfnBlock(layer, chunks));
  }
  return LmHead(chunks, out);
}

absl::Status Model::ForwardWithFfn(std::span<const SequenceChunk> chunks, KvCache& cache,
                                   const FfnOverride& ffn) {
  CMOE_RETURN_IF_ERROR(Begin(chunks, cache, /*dense_ffn=*/false));
  const ModelConfig& c = config();
  const int64_t n = rows_ * c.hidden_size;
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    CMOE_RETURN_IF_ERROR(AttentionBlock(layer, cache));
    const LayerWeights& w = checkpoint_->weights().layers[layer];
    CMOE_RETURN_IF_ERROR(backend_->RmsNorm(x_.data(), rows_, w.ffn_norm,
                                           static_cast<float>(c.rms_norm_eps), h_.data()));
    CMOE_RETURN_IF_ERROR(ffn(layer, {h_.data(), static_cast<size_t>(n)}, rows_,
                             {x_.data(), static_cast<size_t>(n)}));
  }
  return absl::OkStatus();
}

}  // namespace cmoe::engine
