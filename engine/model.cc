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

int64_t Model::DecodeWeightBytes() const {
  const ModelWeights& w = checkpoint_->weights();
  int64_t bytes = w.final_norm.bytes() + w.lm_head.bytes();
  for (const LayerWeights& l : w.layers) {
    for (const WeightView* v :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      bytes += v->bytes();
    }
  }
  return bytes;
}

int64_t Model::MatmulFlopsPerToken() const {
  const ModelWeights& w = checkpoint_->weights();
  int64_t macs = w.lm_head.elements();
  for (const LayerWeights& l : w.layers) {
    macs += l.wq.elements() + l.wk.elements() + l.wv.elements() + l.wo.elements() +
            l.w_gate.elements() + l.w_up.elements() + l.w_down.elements();
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

void Model::Resize(int64_t rows) {
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
  gate_.resize(n(c.intermediate_size));
  up_.resize(n(c.intermediate_size));
}

void Model::PlanStep(std::span<const SequenceChunk> chunks, const KvCache& cache) {
  rows_ = 0;
  for (const SequenceChunk& s : chunks) rows_ += static_cast<int64_t>(s.tokens.size());
  Resize(rows_);
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

absl::Status Model::FfnBlock(int64_t layer) {
  const ModelConfig& c = config();
  const LayerWeights& w = checkpoint_->weights().layers[layer];
  kernels::Backend& b = *backend_;
  CMOE_RETURN_IF_ERROR(
      b.RmsNorm(x_.data(), rows_, w.ffn_norm, static_cast<float>(c.rms_norm_eps), h_.data()));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.w_gate, gate_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.MatMul(h_.data(), rows_, w.w_up, up_.data(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(
      b.SiluMul(gate_.data(), up_.data(), rows_ * c.intermediate_size, gate_.data()));
  return b.MatMul(gate_.data(), rows_, w.w_down, x_.data(), Accumulate::kYes);
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

absl::Status Model::Forward(std::span<const SequenceChunk> chunks, KvCache& cache,
                            ForwardOutput& out) {
  CMOE_RETURN_IF_ERROR(Validate(chunks, cache));
  PlanStep(chunks, cache);
  CMOE_RETURN_IF_ERROR(backend_->Embedding(checkpoint_->weights().embed, tokens_, x_.data()));
  for (int64_t layer = 0; layer < config().num_hidden_layers; ++layer) {
    CMOE_RETURN_IF_ERROR(AttentionBlock(layer, cache));
    CMOE_RETURN_IF_ERROR(FfnBlock(layer));
  }
  return LmHead(chunks, out);
}

}  // namespace cmoe::engine
