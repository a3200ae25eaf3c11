// The hyper-parameters of a Llama-family checkpoint, read from its config.json.
//
//   CMOE_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig("/models/tinyllama"));
#ifndef CMOE_ENGINE_MODEL_CONFIG_H_
#define CMOE_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace cmoe::engine {

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
};

// Parses and validates config.json text. `path` only names the file in errors. Errors name the
// key: missing or mistyped required keys, non-positive sizes, heads that do not divide, an
// architecture other than LlamaForCausalLM / model_type llama, rope_scaling other than null,
// hidden_act other than silu, attention or MLP biases.
// Required: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, vocab_size,
// max_position_embeddings. Absent or null keys take the defaults above (rms_norm_eps 1e-6 as in
// transformers' LlamaConfig). eos_token_id may be an int or a list; token ids must lie in the
// vocabulary. Errors are InvalidArgument "<path>: key '<key>': <what>".
absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text, std::string_view path);

// Reads DIR/config.json (NotFound naming the path when it is missing).
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir);

// The config.json text for `config` (Hugging Face key names), used by the converter and synth.
std::string ModelConfigToJson(const ModelConfig& config);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_CONFIG_H_
