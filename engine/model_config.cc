#include "engine/model_config.h"

#include <initializer_list>
#include <limits>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine {
namespace {

constexpr int64_t kMaxSize = int64_t{1} << 24;

using Json = nlohmann::json;

// Reads typed keys of one config object; every error names the file and the key.
class ConfigReader {
 public:
  ConfigReader(const Json& root, std::string path) : root_(root), path_(std::move(path)) {}

  absl::Status Error(absl::string_view key, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": key '", key, "': ", what));
  }

  bool Has(const char* key) const { return root_.contains(key) && !root_[key].is_null(); }

  absl::StatusOr<int64_t> PositiveInt(const char* key) const {
    if (!Has(key)) return Error(key, "required key missing");
    return PositiveIntValue(key, root_[key]);
  }

  absl::StatusOr<int64_t> PositiveIntOr(const char* key, int64_t fallback) const {
    if (!Has(key)) return fallback;
    return PositiveIntValue(key, root_[key]);
  }

  absl::StatusOr<double> PositiveNumberOr(const char* key, double fallback) const {
    if (!Has(key)) return fallback;
    const Json& v = root_[key];
    if (!v.is_number()) return Error(key, "expected a number");
    const double d = v.get<double>();
    if (!(d > 0)) return Error(key, absl::StrCat("must be positive, got ", v.dump()));
    return d;
  }

  absl::StatusOr<bool> BoolOr(const char* key, bool fallback) const {
    if (!Has(key)) return fallback;
    if (!root_[key].is_boolean()) return Error(key, "expected true or false");
    return root_[key].get<bool>();
  }

  absl::StatusOr<std::string> StringOr(const char* key, std::string fallback) const {
    if (!Has(key)) return fallback;
    if (!root_[key].is_string()) return Error(key, "expected a string");
    return root_[key].get<std::string>();
  }

  // A token id: a non-negative integer below vocab_size.
  absl::StatusOr<int32_t> TokenId(const char* key, const Json& v, int64_t vocab) const {
    if (!v.is_number_integer()) return Error(key, "expected an integer token id");
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab) {
      return Error(key, absl::StrCat("token id ", id, " outside the vocabulary [0, ", vocab, ")"));
    }
    return static_cast<int32_t>(id);
  }

  const Json& root() const { return root_; }

 private:
  absl::StatusOr<int64_t> PositiveIntValue(const char* key, const Json& v) const {
    if (!v.is_number_integer()) {
      return Error(key, absl::StrCat("expected an integer, got ", v.dump()));
    }
    const int64_t n = v.get<int64_t>();
    // 2^24 bounds every real model (the largest vocabularies are ~2^18) and keeps products of
    // sizes, positions and cache slots far from overflow.
    if (n <= 0 || n > kMaxSize) {
      return Error(key, absl::StrCat("must be a positive size up to ", kMaxSize, ", got ", n));
    }
    return n;
  }

  const Json& root_;
  std::string path_;
};

absl::Status CheckArchitecture(const ConfigReader& r, ModelConfig& config) {
  const Json& root = r.root();
  if (r.Has("architectures")) {
    const Json& archs = root["architectures"];
    if (!archs.is_array()) return r.Error("architectures", "expected a list of strings");
    for (const Json& a : archs) {
      if (a.is_string() && a.get<std::string>() == "LlamaForCausalLM") return absl::OkStatus();
    }
    return r.Error("architectures", absl::StrCat("unsupported architecture ", archs.dump(),
                                                 " (only LlamaForCausalLM is supported)"));
  }
  CMOE_ASSIGN_OR_RETURN(std::string model_type, r.StringOr("model_type", ""));
  if (model_type.empty()) {
    return r.Error("architectures", "missing (and no model_type either)");
  }
  if (model_type != "llama") {
    return r.Error("model_type", absl::StrCat("unsupported model_type '", model_type,
                                              "' (only llama is supported)"));
  }
  config.architecture = "LlamaForCausalLM";
  return absl::OkStatus();
}

// Features of the Llama family we do not implement must be explicitly off.
absl::Status CheckUnsupportedFeatures(const ConfigReader& r) {
  if (r.Has("rope_scaling")) {
    return r.Error("rope_scaling", absl::StrCat("rope_scaling ", r.root()["rope_scaling"].dump(),
                                                " is unsupported (must be null or absent)"));
  }
  CMOE_ASSIGN_OR_RETURN(std::string act, r.StringOr("hidden_act", "silu"));
  if (act != "silu") {
    return r.Error("hidden_act", absl::StrCat("'", act, "' unsupported (silu only)"));
  }
  for (const char* key : {"attention_bias", "mlp_bias"}) {
    CMOE_ASSIGN_OR_RETURN(bool bias, r.BoolOr(key, false));
    if (bias) return r.Error(key, "biases are unsupported (must be false)");
  }
  return absl::OkStatus();
}

absl::Status ReadSizes(const ConfigReader& r, ModelConfig& c) {
  CMOE_ASSIGN_OR_RETURN(c.hidden_size, r.PositiveInt("hidden_size"));
  CMOE_ASSIGN_OR_RETURN(c.intermediate_size, r.PositiveInt("intermediate_size"));
  CMOE_ASSIGN_OR_RETURN(c.num_hidden_layers, r.PositiveInt("num_hidden_layers"));
  CMOE_ASSIGN_OR_RETURN(c.num_attention_heads, r.PositiveInt("num_attention_heads"));
  CMOE_ASSIGN_OR_RETURN(c.num_key_value_heads,
                        r.PositiveIntOr("num_key_value_heads", c.num_attention_heads));
  CMOE_ASSIGN_OR_RETURN(c.vocab_size, r.PositiveInt("vocab_size"));
  CMOE_ASSIGN_OR_RETURN(c.max_position_embeddings, r.PositiveInt("max_position_embeddings"));
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return r.Error("num_key_value_heads",
                   absl::StrCat(c.num_key_value_heads, " does not divide num_attention_heads ",
                                c.num_attention_heads));
  }
  if (!r.Has("head_dim") && c.hidden_size % c.num_attention_heads != 0) {
    return r.Error(
        "num_attention_heads",
        absl::StrCat(c.num_attention_heads, " does not divide hidden_size ", c.hidden_size));
  }
  CMOE_ASSIGN_OR_RETURN(c.head_dim,
                        r.PositiveIntOr("head_dim", c.hidden_size / c.num_attention_heads));
  if (c.head_dim % 2 != 0) {
    return r.Error("head_dim", absl::StrCat("must be even for RoPE, got ", c.head_dim));
  }
  return absl::OkStatus();
}

absl::Status ReadTokens(const ConfigReader& r, ModelConfig& c) {
  if (r.Has("bos_token_id")) {
    CMOE_ASSIGN_OR_RETURN(c.bos_token_id,
                          r.TokenId("bos_token_id", r.root()["bos_token_id"], c.vocab_size));
  }
  c.eos_token_ids.clear();
  if (!r.Has("eos_token_id")) return absl::OkStatus();
  const Json& eos = r.root()["eos_token_id"];
  if (!eos.is_array()) {
    CMOE_ASSIGN_OR_RETURN(int32_t id, r.TokenId("eos_token_id", eos, c.vocab_size));
    c.eos_token_ids.push_back(id);
    return absl::OkStatus();
  }
  for (const Json& v : eos) {
    CMOE_ASSIGN_OR_RETURN(int32_t id, r.TokenId("eos_token_id", v, c.vocab_size));
    c.eos_token_ids.push_back(id);
  }
  return absl::OkStatus();
}

// An integer key of the "cmoe" object in [lo, hi].
absl::StatusOr<int64_t> CmoeInt(const ConfigReader& r, const Json& cmoe, const char* key,
                                int64_t lo, int64_t hi) {
  const std::string name = absl::StrCat("cmoe.", key);
  if (!cmoe.contains(key) || cmoe[key].is_null()) return r.Error(name, "required key missing");
  const Json& v = cmoe[key];
  if (!v.is_number_integer())
    return r.Error(name, absl::StrCat("expected an integer, got ", v.dump()));
  const int64_t n = v.get<int64_t>();
  if (n < lo || n > hi) {
    return r.Error(name, absl::StrCat("must be in [", lo, ", ", hi, "], got ", n));
  }
  return n;
}

absl::StatusOr<std::string> CmoeChoice(const ConfigReader& r, const Json& cmoe, const char* key,
                                       std::initializer_list<const char*> allowed) {
  const std::string name = absl::StrCat("cmoe.", key);
  if (!cmoe.contains(key) || !cmoe[key].is_string()) return r.Error(name, "expected a string");
  const std::string v = cmoe[key].get<std::string>();
  for (const char* a : allowed) {
    if (v == a) return v;
  }
  return r.Error(name, absl::StrCat("unknown value '", v, "'"));
}

absl::Status ReadCalibration(const ConfigReader& r, const Json& j, CmoeCalibration& cal) {
  if (!j.is_object()) return r.Error("cmoe.calibration", "expected an object");
  if (j.contains("file") && j["file"].is_string()) cal.file = j["file"].get<std::string>();
  for (auto [key, field] :
       {std::pair{"range_begin", &cal.range_begin}, std::pair{"range_end", &cal.range_end},
        std::pair{"seqs", &cal.seqs}, std::pair{"len", &cal.len}}) {
    if (!j.contains(key)) continue;
    if (!j[key].is_number_integer()) {
      return r.Error(absl::StrCat("cmoe.calibration.", key), "expected an integer");
    }
    *field = j[key].get<int64_t>();
  }
  if (j.contains("seed")) {
    if (!j["seed"].is_number_unsigned()) {
      return r.Error("cmoe.calibration.seed", "expected a non-negative integer");
    }
    cal.seed = j["seed"].get<uint64_t>();
  }
  return absl::OkStatus();
}

absl::StatusOr<CmoeConfig> ReadCmoe(const ConfigReader& r, const ModelConfig& c) {
  const Json& j = r.root()["cmoe"];
  if (!j.is_object()) return r.Error("cmoe", "expected an object");
  CmoeConfig m;
  CMOE_ASSIGN_OR_RETURN(const int64_t version,
                        CmoeInt(r, j, "format_version", 1, std::numeric_limits<int32_t>::max()));
  if (version != CmoeConfig::kFormatVersion) {
    return r.Error("cmoe.format_version",
                   absl::StrCat("version ", version, " is not supported (this build reads ",
                                CmoeConfig::kFormatVersion, ")"));
  }
  const int64_t f = c.intermediate_size;
  CMOE_ASSIGN_OR_RETURN(const int64_t n, CmoeInt(r, j, "num_experts", 1, f));
  CMOE_ASSIGN_OR_RETURN(const int64_t ns, CmoeInt(r, j, "num_shared_experts", 0, n - 1));
  CMOE_ASSIGN_OR_RETURN(const int64_t nk, CmoeInt(r, j, "num_activated_experts", 1, n - ns));
  CMOE_ASSIGN_OR_RETURN(m.shared_width, CmoeInt(r, j, "shared_width", 0, f));
  CMOE_ASSIGN_OR_RETURN(const int64_t k_act, CmoeInt(r, j, "k_act", 1, f));
  CMOE_ASSIGN_OR_RETURN(const int64_t iters, CmoeInt(r, j, "cluster_iters", 1, 1 << 20));
  m.num_experts = static_cast<int32_t>(n);
  m.num_shared_experts = static_cast<int32_t>(ns);
  m.num_activated_experts = static_cast<int32_t>(nk);
  m.k_act = static_cast<int32_t>(k_act);
  m.cluster_iters = static_cast<int32_t>(iters);
  CMOE_ASSIGN_OR_RETURN(m.score, CmoeChoice(r, j, "score", {"normalized", "raw"}));
  CMOE_ASSIGN_OR_RETURN(m.router, CmoeChoice(r, j, "router", {"reference", "paper"}));
  if (j.contains("balance_bias_gamma") && !j["balance_bias_gamma"].is_null()) {
    if (!j["balance_bias_gamma"].is_number() || j["balance_bias_gamma"].get<double>() < 0) {
      return r.Error("cmoe.balance_bias_gamma", "expected a non-negative number");
    }
    m.balance_bias_gamma = j["balance_bias_gamma"].get<double>();
  }
  const Json& widths = j.contains("expert_widths") ? j["expert_widths"] : Json();
  if (!widths.is_array() || static_cast<int64_t>(widths.size()) != n - ns) {
    return r.Error("cmoe.expert_widths",
                   absl::StrCat("expected a list of ", n - ns, " widths (one per routed expert)"));
  }
  int64_t total = m.shared_width;
  for (const Json& w : widths) {
    if (!w.is_number_integer() || w.get<int64_t>() < 1 || w.get<int64_t>() > f) {
      return r.Error("cmoe.expert_widths", absl::StrCat("bad width ", w.dump()));
    }
    m.expert_widths.push_back(w.get<int64_t>());
    total += m.expert_widths.back();
  }
  if (total != f) {
    return r.Error("cmoe.expert_widths",
                   absl::StrCat("shared_width + sum(expert_widths) = ", total,
                                " but intermediate_size is ", f, " (every neuron in one expert)"));
  }
  if (j.contains("calibration")) {
    CMOE_RETURN_IF_ERROR(ReadCalibration(r, j["calibration"], m.calibration));
  }
  return m;
}

absl::StatusOr<ModelConfig> ParseConfigObject(const Json& root, std::string path) {
  const ConfigReader r(root, std::move(path));
  ModelConfig c;
  CMOE_RETURN_IF_ERROR(CheckArchitecture(r, c));
  CMOE_RETURN_IF_ERROR(CheckUnsupportedFeatures(r));
  CMOE_RETURN_IF_ERROR(ReadSizes(r, c));
  CMOE_ASSIGN_OR_RETURN(c.rms_norm_eps, r.PositiveNumberOr("rms_norm_eps", 1e-6));
  CMOE_ASSIGN_OR_RETURN(c.rope_theta, r.PositiveNumberOr("rope_theta", 10000.0));
  CMOE_ASSIGN_OR_RETURN(c.tie_word_embeddings, r.BoolOr("tie_word_embeddings", false));
  CMOE_ASSIGN_OR_RETURN(c.torch_dtype, r.StringOr("torch_dtype", "float32"));
  CMOE_RETURN_IF_ERROR(ReadTokens(r, c));
  if (r.Has("cmoe")) {
    CMOE_ASSIGN_OR_RETURN(c.cmoe, ReadCmoe(r, c));
  }
  return c;
}

}  // namespace

std::string CmoeConfig::Name() const {
  return absl::StrCat("S", num_shared_experts, "A", num_activated_experts, "E", num_experts);
}

double CmoeConfig::ActivationRatio(int32_t k) const {
  if (k <= 0) k = num_activated_experts;
  int64_t routed = 0;
  for (int64_t w : expert_widths) routed += w;
  const double total = static_cast<double>(shared_width + routed);
  if (total <= 0 || expert_widths.empty()) return 0;
  const double mean_routed =
      static_cast<double>(routed) / static_cast<double>(expert_widths.size());
  return (static_cast<double>(shared_width) + k * mean_routed) / total;
}

absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text,
                                             std::string_view path_view) {
  const std::string path(path_view);
  const Json root = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected a JSON object"));
  }
  return ParseConfigObject(root, path);
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  CMOE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseModelConfig(text, path);
}

std::string ModelConfigToJson(const ModelConfig& config) {
  Json j;
  j["architectures"] = Json::array({config.architecture});
  j["model_type"] = "llama";
  j["hidden_size"] = config.hidden_size;
  j["intermediate_size"] = config.intermediate_size;
  j["num_hidden_layers"] = config.num_hidden_layers;
  j["num_attention_heads"] = config.num_attention_heads;
  j["num_key_value_heads"] = config.num_key_value_heads;
  j["head_dim"] = config.head_dim;
  j["vocab_size"] = config.vocab_size;
  j["max_position_embeddings"] = config.max_position_embeddings;
  j["rms_norm_eps"] = config.rms_norm_eps;
  j["rope_theta"] = config.rope_theta;
  j["rope_scaling"] = nullptr;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = config.tie_word_embeddings;
  j["torch_dtype"] = config.torch_dtype;
  j["bos_token_id"] = config.bos_token_id >= 0 ? Json(config.bos_token_id) : Json(nullptr);
  if (config.eos_token_ids.size() == 1) {
    j["eos_token_id"] = config.eos_token_ids[0];
  } else if (!config.eos_token_ids.empty()) {
    j["eos_token_id"] = config.eos_token_ids;
  }
  if (config.cmoe.has_value()) {
    const CmoeConfig& m = *config.cmoe;
    const CmoeCalibration& cal = m.calibration;
    j["cmoe"] = {{"format_version", m.format_version},
                 {"name", m.Name()},
                 {"num_experts", m.num_experts},
                 {"num_shared_experts", m.num_shared_experts},
                 {"num_activated_experts", m.num_activated_experts},
                 {"shared_width", m.shared_width},
                 {"expert_widths", m.expert_widths},
                 {"k_act", m.k_act},
                 {"score", m.score},
                 {"router", m.router},
                 {"cluster_iters", m.cluster_iters},
                 {"balance_bias_gamma", m.balance_bias_gamma},
                 {"calibration",
                  {{"file", cal.file},
                   {"range_begin", cal.range_begin},
                   {"range_end", cal.range_end},
                   {"seqs", cal.seqs},
                   {"len", cal.len},
                   {"seed", cal.seed}}}};
  }
  return j.dump(2) + "\n";
}

}  // namespace cmoe::engine
