// The hyper-parameters of a Llama-family checkpoint, read from its config.json.
//
//   CMOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig("/models/tinyllama"));
#ifndef CMOE_ENGINE_MODEL_CONFIG_H_
#define CMOE_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cmoe::engine {

// Where a carve's calibration text came from (informational; kept in config.json for audits).
struct CmoeCalibration {
  std::string file;
  int64_t range_begin = 0;  // bytes of `file`
  int64_t range_end = 0;
  int64_t seqs = 0;
  int64_t len = 0;  // tokens per sequence
  uint64_t seed = 0;
};

// The "cmoe" object of a carved checkpoint's config.json (docs/architecture.md "Model formats").
// The FFN of every layer is a shared expert of width shared_width (0: none) plus N_r =
// num_experts - num_shared_experts routed experts of expert_widths[j] neurons;
// shared_width + sum(expert_widths) == intermediate_size.
struct CmoeConfig {
  static constexpr int32_t kFormatVersion = 1;

  int32_t format_version = kFormatVersion;
  int32_t num_experts = 0;            // N
  int32_t num_shared_experts = 0;     // N_s
  int32_t num_activated_experts = 0;  // N_k, the default routed experts per token
  int64_t shared_width = 0;
  std::vector<int64_t> expert_widths;  // (N_r)
  int32_t k_act = 0;
  std::string score = "normalized";  // "normalized" | "raw"
  std::string router = "reference";  // "reference" | "paper"
  int32_t cluster_iters = 1;
  double balance_bias_gamma = 0;  // 0: no bias updates during calibration
  CmoeCalibration calibration;

  int32_t num_routed() const { return num_experts - num_shared_experts; }
  // "S2A2E16"
  std::string Name() const;
  // Fraction of the FFN neurons one token computes with k routed experts (k <= 0: the default
  // N_k): (shared_width + k * mean routed width) / intermediate_size.
  double ActivationRatio(int32_t k = 0) const;
};

struct ModelConfig {
  std::string architecture = "LlamaForCausalLM";
  int64_t hidden_size = 0;        // d
  int64_t intermediate_size = 0;  // FFN width
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // GQA; equals num_attention_heads when absent
  int64_t head_dim = 0;             // hidden_size / num_attention_heads unless given
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // the context length
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int32_t bos_token_id = -1;            // -1: none
  std::vector<int32_t> eos_token_ids;   // may be empty
  std::string torch_dtype = "float32";  // informational
  std::optional<CmoeConfig> cmoe;       // set for carved checkpoints
};

// Parses and validates config.json text. `path` only names the file in errors. Errors name the
// key: missing or mistyped required keys, non-positive sizes, heads that do not divide, an
// architecture other than LlamaForCausalLM / model_type llama, rope_scaling other than null,
// hidden_act other than silu, attention or MLP biases.
// Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
// max_position_embeddings. Absent or null keys take the defaults above (rms_norm_eps 1e-6 as in
// transformers' LlamaConfig). eos_token_id may be an int or a list; token ids must lie in the
// vocabulary. An optional "cmoe" object (a carved checkpoint) must be complete and consistent:
// format_version 1, 1 <= num_activated_experts <= N_r, one width >= 1 per routed expert, widths
// summing to intermediate_size, known score/router names. Errors are InvalidArgument
// "<path>: key '<key>': <what>" (cmoe keys as "cmoe.<key>").
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view path);

// Reads DIR/config.json (NotFound naming the path when it is missing).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// The config.json text for `config` (Hugging Face key names, plus "cmoe" when set), used by the
// converter, synth and carve tools.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_CONFIG_H_
