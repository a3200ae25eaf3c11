#include "engine/checkpoint.h"

#include <cmath>
#include <cstring>
#include <set>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/safetensors.h"

namespace cmoe::engine {
namespace {

constexpr int64_t kLargeCheckpointBytes = int64_t{1} << 30;

// Tensors some exporters store that carry no weights we need.
bool IsHarmlessExtra(absl::string_view name) { return absl::EndsWith(name, "rotary_emb.inv_freq"); }

// Binds tensors by name, checking shapes, and remembers which ones it consumed.
class Binder {
 public:
  Binder(const TensorStore& store, bool carved)
      : store_(store), c_kind_(carved ? "carved" : "dense") {}

  // A 2-D tensor of exactly (rows, cols), or a 1-D tensor of (cols) when rows == 0 (a vector,
  // returned as a (1, cols) view).
  absl::StatusOr<WeightView> Bind(const std::string& name, int64_t rows, int64_t cols) {
    CMOE_ASSIGN_OR_RETURN(const TensorInfo* t, store_.Get(name));
    const std::vector<int64_t> expected =
        rows == 0 ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols};
    if (t->shape != expected) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in file ", t->file, " has shape ", t->ShapeString(),
                       " but config.json implies [", absl::StrJoin(expected, ", "), "]"));
    }
    if (!kernels::IsFloatDType(t->dtype)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", name, "' in file ", t->file, " has dtype ",
          std::string(kernels::DTypeName(t->dtype)), "; weights must be F32, F16 or BF16"));
    }
    used_.insert(name);
    return WeightView{
        .data = t->data, .dtype = t->dtype, .rows = rows == 0 ? 1 : rows, .cols = cols};
  }

  bool Has(const std::string& name) const { return store_.Find(name) != nullptr; }

  // A float vector or matrix copied out as f32 (router rows and biases are small).
  absl::StatusOr<std::vector<float>> BindF32Copy(const std::string& name, int64_t rows,
                                                 int64_t cols) {
    CMOE_ASSIGN_OR_RETURN(WeightView v, Bind(name, rows, cols));
    std::vector<float> out(static_cast<size_t>(v.rows * v.cols));
    kernels::WidenToFloat(v, 0, v.rows * v.cols, out.data());
    for (size_t i = 0; i < out.size(); ++i) {
      if (!std::isfinite(out[i])) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in file ",
                                                       store_.Find(name)->file,
                                                       " holds a non-finite value at element ", i));
      }
    }
    return out;
  }

  // A 1-D I32 tensor of `n` elements.
  absl::StatusOr<std::vector<int32_t>> BindI32(const std::string& name, int64_t n) {
    CMOE_ASSIGN_OR_RETURN(const TensorInfo* t, store_.Get(name));
    if (t->dtype != kernels::DType::kI32 || t->shape != std::vector<int64_t>{n}) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in file ", t->file, " is ",
                       std::string(kernels::DTypeName(t->dtype)), " ", t->ShapeString(),
                       " but must be I32 [", n, "]"));
    }
    used_.insert(name);
    std::vector<int32_t> out(static_cast<size_t>(n));
    std::memcpy(out.data(), t->data, static_cast<size_t>(n) * sizeof(int32_t));
    return out;
  }

  const std::string& FileOf(const std::string& name) const { return store_.Find(name)->file; }

  // The first tensor that was neither bound nor a known harmless extra.
  absl::Status CheckAllUsed() const {
    for (const auto& [name, t] : store_.tensors()) {
      if (used_.contains(name) || IsHarmlessExtra(name)) continue;
      return absl::InvalidArgumentError(absl::StrCat("unexpected tensor ", name, " in file ",
                                                     t->file, " (not part of a ", c_kind_,
                                                     " Llama model with this config.json)"));
    }
    return absl::OkStatus();
  }

 private:
  const TensorStore& store_;
  const char* c_kind_;
  std::set<std::string, std::less<>> used_;
};

absl::StatusOr<ExpertWeights> BindExpert(Binder& b, const std::string& prefix, int64_t width,
                                         int64_t d) {
  ExpertWeights e;
  CMOE_ASSIGN_OR_RETURN(e.gate, b.Bind(prefix + "gate_proj.weight", width, d));
  CMOE_ASSIGN_OR_RETURN(e.up, b.Bind(prefix + "up_proj.weight", width, d));
  CMOE_ASSIGN_OR_RETURN(e.down, b.Bind(prefix + "down_proj.weight", d, width));
  return e;
}

// The carved FFN of one layer (docs/architecture.md "Model formats").
absl::Status BindMoe(Binder& b, const ModelConfig& c, const std::string& p, LayerWeights& w) {
  const CmoeConfig& m = *c.cmoe;
  const int64_t d = c.hidden_size, f = c.intermediate_size, nr = m.num_routed();
  MoeLayerWeights moe;
  if (m.shared_width > 0) {
    CMOE_ASSIGN_OR_RETURN(moe.shared, BindExpert(b, p + "mlp.shared_experts.", m.shared_width, d));
  } else {
    moe.shared = {.gate = {.rows = 0, .cols = d},
                  .up = {.rows = 0, .cols = d},
                  .down = {.rows = d, .cols = 0}};
  }
  for (int64_t j = 0; j < nr; ++j) {
    CMOE_ASSIGN_OR_RETURN(ExpertWeights e, BindExpert(b, absl::StrCat(p, "mlp.experts.", j, "."),
                                                      m.expert_widths[j], d));
    moe.experts.push_back(e);
  }
  CMOE_ASSIGN_OR_RETURN(moe.router_gate, b.BindF32Copy(p + "mlp.gate.gate.weight", nr, d));
  CMOE_ASSIGN_OR_RETURN(moe.router_up, b.BindF32Copy(p + "mlp.gate.classifier.weight", nr, d));
  CMOE_ASSIGN_OR_RETURN(moe.bias, b.BindF32Copy(p + "mlp.gate.extra_bias", 0, nr));
  CMOE_ASSIGN_OR_RETURN(moe.scale, b.BindF32Copy(p + "mlp.gate.extra_scale", 0, nr));
  moe.variant = m.router == "paper" ? RouterVariant::kPaper : RouterVariant::kReference;
  const std::string index_name = p + "mlp.neuron_index";
  CMOE_ASSIGN_OR_RETURN(w.neuron_index, b.BindI32(index_name, f));
  std::vector<bool> seen(static_cast<size_t>(f), false);
  for (int64_t i = 0; i < f; ++i) {
    const int32_t n = w.neuron_index[i];
    if (n < 0 || n >= f || seen[n]) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", index_name, "' in file ", b.FileOf(index_name),
                       " is not a permutation of [0, ", f, "): element ", i, " is ", n));
    }
    seen[n] = true;
  }
  w.moe = std::move(moe);
  return absl::OkStatus();
}

absl::StatusOr<LayerWeights> BindLayer(Binder& b, const ModelConfig& c, int64_t layer) {
  const std::string p = absl::StrCat("model.layers.", layer, ".");
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  LayerWeights w;
  CMOE_ASSIGN_OR_RETURN(w.attn_norm, b.Bind(p + "input_layernorm.weight", 0, d));
  CMOE_ASSIGN_OR_RETURN(w.wq, b.Bind(p + "self_attn.q_proj.weight", q, d));
  CMOE_ASSIGN_OR_RETURN(w.wk, b.Bind(p + "self_attn.k_proj.weight", kv, d));
  CMOE_ASSIGN_OR_RETURN(w.wv, b.Bind(p + "self_attn.v_proj.weight", kv, d));
  CMOE_ASSIGN_OR_RETURN(w.wo, b.Bind(p + "self_attn.o_proj.weight", d, q));
  CMOE_ASSIGN_OR_RETURN(w.ffn_norm, b.Bind(p + "post_attention_layernorm.weight", 0, d));
  if (c.cmoe.has_value()) {
    CMOE_RETURN_IF_ERROR(BindMoe(b, c, p, w));
    return w;
  }
  CMOE_ASSIGN_OR_RETURN(w.w_gate, b.Bind(p + "mlp.gate_proj.weight", f, d));
  CMOE_ASSIGN_OR_RETURN(w.w_up, b.Bind(p + "mlp.up_proj.weight", f, d));
  CMOE_ASSIGN_OR_RETURN(w.w_down, b.Bind(p + "mlp.down_proj.weight", d, f));
  return w;
}

// The embedding and the output layer. Tied checkpoints may store either one (tinystories-656k
// stores only lm_head.weight) or both.
absl::Status BindEmbeddings(Binder& b, const ModelConfig& c, const std::string& dir,
                            ModelWeights& w) {
  const std::string kEmbed = "model.embed_tokens.weight", kHead = "lm_head.weight";
  const int64_t v = c.vocab_size, d = c.hidden_size;
  const bool has_embed = b.Has(kEmbed), has_head = b.Has(kHead);
  if (has_embed) {
    CMOE_ASSIGN_OR_RETURN(w.embed, b.Bind(kEmbed, v, d));
  }
  if (has_head) {
    CMOE_ASSIGN_OR_RETURN(w.lm_head, b.Bind(kHead, v, d));
  }
  if (c.tie_word_embeddings) {
    if (!has_embed && !has_head) {
      return absl::NotFoundError(absl::StrCat("tensor '", kEmbed, "' (or '", kHead,
                                              "', tied) missing from the weights in ", dir));
    }
    if (!has_head) w.lm_head = w.embed;
    if (!has_embed) w.embed = w.lm_head;
    return absl::OkStatus();
  }
  for (const std::string* name : {&kEmbed, &kHead}) {
    if (!b.Has(*name)) {
      return absl::NotFoundError(absl::StrCat("tensor '", *name, "' missing from the weights in ",
                                              dir, " (config.json: tie_word_embeddings is false)"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ModelWeights> BindWeights(const TensorStore& store, const ModelConfig& c,
                                         const std::string& dir) {
  Binder b(store, c.cmoe.has_value());
  ModelWeights w;
  CMOE_RETURN_IF_ERROR(BindEmbeddings(b, c, dir, w));
  for (int64_t layer = 0; layer < c.num_hidden_layers; ++layer) {
    CMOE_ASSIGN_OR_RETURN(LayerWeights lw, BindLayer(b, c, layer));
    w.layers.push_back(std::move(lw));
  }
  CMOE_ASSIGN_OR_RETURN(w.final_norm, b.Bind("model.norm.weight", 0, c.hidden_size));
  CMOE_RETURN_IF_ERROR(b.CheckAllUsed());
  return w;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& model_dir) {
  Timer timer;
  std::unique_ptr<Checkpoint> ckpt(new Checkpoint());
  ckpt->dir_ = model_dir;
  CMOE_ASSIGN_OR_RETURN(ckpt->config_, LoadModelConfig(model_dir));
  CMOE_ASSIGN_OR_RETURN(ckpt->tensors_, TensorStore::OpenDir(model_dir));
  const bool large = ckpt->tensors_->total_bytes() > kLargeCheckpointBytes;
  if (large) {
    CMOE_LOG(INFO) << "checkpoint " << model_dir << ": mapped " << ckpt->tensors_->tensors().size()
                   << " tensors (" << static_cast<double>(ckpt->tensors_->total_bytes()) / (1 << 30)
                   << " GiB) from " << ckpt->tensors_->description() << ", binding weights";
  }
  CMOE_ASSIGN_OR_RETURN(ckpt->weights_, BindWeights(*ckpt->tensors_, ckpt->config_, model_dir));
  if (large) {
    CMOE_LOG(INFO) << "checkpoint " << model_dir << ": " << ckpt->config_.num_hidden_layers
                   << " layers bound in " << timer.Seconds() << " s";
  }
  return ckpt;
}

Checkpoint::~Checkpoint() = default;

int64_t Checkpoint::weight_bytes() const {
  int64_t total = weights_.embed.bytes() + weights_.final_norm.bytes();
  if (weights_.lm_head.data != weights_.embed.data) total += weights_.lm_head.bytes();
  for (const LayerWeights& l : weights_.layers) {
    for (const WeightView* v :
         {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      total += v->bytes();
    }
    if (!l.moe.has_value()) continue;
    const MoeLayerWeights& m = *l.moe;
    total += m.shared.gate.bytes() + m.shared.up.bytes() + m.shared.down.bytes();
    for (const ExpertWeights& e : m.experts) {
      total += e.gate.bytes() + e.up.bytes() + e.down.bytes();
    }
    total += static_cast<int64_t>(sizeof(float) * (m.router_gate.size() + m.router_up.size()));
  }
  return total;
}

}  // namespace cmoe::engine
