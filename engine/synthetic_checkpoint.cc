#include "engine/synthetic_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/half.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/checkpoint.h"
#include "engine/safetensors_writer.h"
#include "engine/staged_output_dir.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine {
namespace {

using Json = nlohmann::json;
using kernels::DType;

constexpr int64_t kMinVocab = 3 + 256;
constexpr int64_t kBlockElements = int64_t{1} << 16;  // one PRNG stream each
constexpr int64_t kChunkBlocks = 64;                  // blocks generated per write
// Uniform on [-a, a] has standard deviation a / sqrt(3); we want 0.02.
const float kUniformHalfWidth = 0.02f * std::sqrt(3.0f);

absl::Status SpecError(std::string_view spec, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("synthetic shape '", std::string(spec), "': ", what));
}

ModelConfig BaseConfig(int64_t d, int64_t f, int64_t layers, int64_t heads, int64_t kv,
                       int64_t vocab, int64_t ctx) {
  ModelConfig c;
  c.hidden_size = d;
  c.intermediate_size = f;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.num_key_value_heads = kv;
  c.head_dim = d / heads;
  c.vocab_size = vocab;
  c.max_position_embeddings = ctx;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = false;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

absl::StatusOr<std::map<std::string, int64_t>> ParseSpecKeys(std::string_view spec) {
  const absl::string_view inner(spec.data() + 7, spec.size() - 8);  // inside "custom(...)"
  static const char* const kKeys[] = {"hidden", "ffn", "layers",   "heads", "kv_heads",
                                      "vocab",  "ctx", "head_dim", "tied"};
  std::map<std::string, int64_t> values;
  for (absl::string_view part : absl::StrSplit(inner, ',', absl::SkipWhitespace())) {
    std::pair<std::string, std::string> kv = absl::StrSplit(part, absl::MaxSplits('=', 1));
    const std::string key(absl::StripAsciiWhitespace(kv.first));
    int64_t value = 0;
    if (std::find(std::begin(kKeys), std::end(kKeys), key) == std::end(kKeys)) {
      return SpecError(spec, absl::StrCat("unknown key '", key, "'"));
    }
    if (!absl::SimpleAtoi(kv.second, &value) || value < 0) {
      return SpecError(spec, absl::StrCat("key '", key, "': bad value '", kv.second, "'"));
    }
    values[key] = value;
  }
  for (const char* key : {"hidden", "ffn", "layers", "heads", "vocab"}) {
    if (!values.contains(key)) return SpecError(spec, absl::StrCat("key '", key, "' missing"));
  }
  return values;
}

absl::StatusOr<ModelConfig> CustomConfig(std::string_view spec) {
  CMOE_ASSIGN_OR_RETURN(auto v, ParseSpecKeys(spec));
  const int64_t heads = std::max<int64_t>(v["heads"], 1);
  ModelConfig c = BaseConfig(v["hidden"], v["ffn"], v["layers"], heads,
                             v.contains("kv_heads") ? v["kv_heads"] : heads, v["vocab"],
                             v.contains("ctx") ? v["ctx"] : 2048);
  if (v.contains("head_dim")) {
    c.head_dim = v["head_dim"];
  } else if (v["hidden"] % heads != 0) {
    return SpecError(spec, "key 'heads' does not divide 'hidden' (give head_dim)");
  }
  c.tie_word_embeddings = v.contains("tied") && v["tied"] != 0;
  return c;
}

}  // namespace

absl::StatusOr<ModelConfig> SynthShapeConfig(std::string_view shape) {
  ModelConfig c;
  if (shape == "tinyllama-1.1b") {
    c = BaseConfig(2048, 5632, 22, 32, 4, 32000, 2048);
  } else if (shape == "llama2-7b") {
    c = BaseConfig(4096, 11008, 32, 32, 32, 32000, 4096);
  } else if (shape.size() > 8 && shape.starts_with("custom(") && shape.ends_with(")")) {
    CMOE_ASSIGN_OR_RETURN(c, CustomConfig(shape));
  } else {
    return SpecError(shape, "unknown shape (want tinyllama-1.1b, llama2-7b or custom(...))");
  }
  if (c.vocab_size < kMinVocab) {
    return SpecError(shape, absl::StrCat("key 'vocab': ", c.vocab_size, " < ", kMinVocab,
                                         " (3 special and 256 byte tokens)"));
  }
  // The config.json validation catches heads that do not divide, zero sizes and the like.
  auto checked = ParseModelConfig(ModelConfigToJson(c),
                                  absl::StrCat("synthetic shape '", std::string(shape), "'"));
  if (!checked.ok()) return checked.status();
  return c;
}

absl::StatusOr<kernels::DType> ParseSynthDType(std::string_view name) {
  if (name == "bf16") return DType::kBF16;
  if (name == "f16") return DType::kF16;
  if (name == "f32") return DType::kF32;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", std::string(name), "' (want bf16, f16 or f32)"));
}

namespace {

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t HashName(std::string_view name) {  // FNV-1a
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001b3ull;
  return h;
}

template <DType kDType>
void StoreValue(float v, uint8_t* out) {
  if constexpr (kDType == DType::kF32) {
    std::memcpy(out, &v, 4);
  } else {
    const uint16_t h = kDType == DType::kBF16 ? FloatToBf16(v) : FloatToF16(v);
    std::memcpy(out, &h, 2);
  }
}

// `count` values of one PRNG stream (uniform on [-a, a]; 1.0 for norms) into `out`.
template <DType kDType>
void FillBlock(uint64_t stream, int64_t count, bool ones, uint8_t* out) {
  constexpr size_t kSize = kernels::DTypeSize(kDType);
  const float scale = kUniformHalfWidth / 2147483648.0f;
  for (int64_t i = 0; i < count; i += 2) {
    const uint64_t r = ones ? 0 : SplitMix64(stream);
    const float a = ones ? 1.0f : static_cast<float>(static_cast<int32_t>(r)) * scale;
    const float b = ones ? 1.0f : static_cast<float>(static_cast<int32_t>(r >> 32)) * scale;
    StoreValue<kDType>(a, out + i * kSize);
    if (i + 1 < count) StoreValue<kDType>(b, out + (i + 1) * kSize);
  }
}

void FillBlockAs(DType dtype, uint64_t stream, int64_t count, bool ones, uint8_t* out) {
  switch (dtype) {
    case DType::kF32:
      return FillBlock<DType::kF32>(stream, count, ones, out);
    case DType::kF16:
      return FillBlock<DType::kF16>(stream, count, ones, out);
    case DType::kBF16:
      return FillBlock<DType::kBF16>(stream, count, ones, out);
    case DType::kI32:
      break;
  }
  CMOE_CHECK(false) << "synthetic weights are never I32";
}

struct SynthTensor {
  std::string name;
  std::vector<int64_t> shape;
  bool ones = false;  // norm weights
  int64_t elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

std::vector<SynthTensor> TensorList(const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, v = c.vocab_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  std::vector<SynthTensor> t = {{"model.embed_tokens.weight", {v, d}},
                                {"model.norm.weight", {d}, true}};
  if (!c.tie_word_embeddings) t.push_back({"lm_head.weight", {v, d}});
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    t.push_back({p + "input_layernorm.weight", {d}, true});
    t.push_back({p + "self_attn.q_proj.weight", {q, d}});
    t.push_back({p + "self_attn.k_proj.weight", {kv, d}});
    t.push_back({p + "self_attn.v_proj.weight", {kv, d}});
    t.push_back({p + "self_attn.o_proj.weight", {d, q}});
    t.push_back({p + "post_attention_layernorm.weight", {d}, true});
    t.push_back({p + "mlp.gate_proj.weight", {f, d}});
    t.push_back({p + "mlp.up_proj.weight", {f, d}});
    t.push_back({p + "mlp.down_proj.weight", {d, f}});
  }
  return t;
}

// Streams one tensor: chunks of kChunkBlocks blocks generated in parallel, then written.
TensorProducer RandomProducer(SynthTensor t, DType dtype, uint64_t seed, ThreadPool& pool) {
  return [t = std::move(t), dtype, seed, &pool](TensorSink& sink) -> absl::Status {
    const int64_t elements = t.elements();
    const auto esize = static_cast<int64_t>(kernels::DTypeSize(dtype));
    const int64_t blocks = (elements + kBlockElements - 1) / kBlockElements;
    const uint64_t base = HashName(t.name) ^ (seed * 0xd1342543de82ef95ull);
    std::vector<uint8_t> buffer(std::min(blocks, kChunkBlocks) * kBlockElements * esize);
    for (int64_t first = 0; first < blocks; first += kChunkBlocks) {
      const int64_t n = std::min(kChunkBlocks, blocks - first);
      pool.ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          const int64_t block = first + b;
          uint64_t stream = base + static_cast<uint64_t>(block) * 0x9e3779b97f4a7c15ull;
          stream = SplitMix64(stream);
          const int64_t count = std::min(kBlockElements, elements - block * kBlockElements);
          FillBlockAs(dtype, stream, count, t.ones, buffer.data() + b * kBlockElements * esize);
        }
      });
      const int64_t chunk = std::min(n * kBlockElements, elements - first * kBlockElements);
      CMOE_RETURN_IF_ERROR(sink.Write({buffer.data(), static_cast<size_t>(chunk * esize)}));
    }
    return absl::OkStatus();
  };
}

std::string TorchDtype(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "float32";
    case DType::kF16:
      return "float16";
    case DType::kBF16:
      return "bfloat16";
    case DType::kI32:
      break;
  }
  return "float32";
}

// Progress lines at most every two seconds, and at the end.
WriteProgress ProgressLogger(bool enabled) {
  if (!enabled) return nullptr;
  auto timer = std::make_shared<Timer>();
  auto last = std::make_shared<double>(0.0);
  return [timer, last](int64_t done, int64_t total) {
    const double now = timer->Seconds();
    if (done != total && now - *last < 2.0) return;
    *last = now;
    const auto done_gb = static_cast<double>(done) * 1e-9;
    const auto total_gb = static_cast<double>(std::max<int64_t>(total, 1)) * 1e-9;
    CMOE_LOG(INFO) << absl::StrFormat("synth: %.2f / %.2f GB written (%.0f%%), %.1f s, %.0f MB/s",
                                      done_gb, total_gb, 100.0 * done_gb / total_gb, now,
                                      done_gb * 1e3 / std::max(now, 1e-9));
  };
}

}  // namespace

namespace {

// The fixed parts of a Llama-2 style tokenizer.json; the vocabulary is filled in.
constexpr char kTokenizerTemplate[] = R"json({
  "version": "1.0", "truncation": null, "padding": null,
  "added_tokens": [
    {"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 1, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true},
    {"id": 2, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false,
     "normalized": false, "special": true}],
  "normalizer": {"type": "Sequence", "normalizers": [
    {"type": "Prepend", "prepend": "\u2581"},
    {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
  "pre_tokenizer": null,
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
             {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
    "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
  "decoder": {"type": "Sequence", "decoders": [
    {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
    {"type": "ByteFallback"}, {"type": "Fuse"},
    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
  "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
    "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
    "byte_fallback": true, "ignore_merges": false, "vocab": {}, "merges": []}
})json";

// piece -> id: specials, the 256 byte tokens, "▁", printable ASCII, then "▁w<N>" fillers.
Json SyntheticVocab(int64_t vocab_size) {
  Json vocab = Json::object();
  int64_t next = 0;
  auto add = [&](const std::string& piece) {
    if (next < vocab_size && !vocab.contains(piece)) vocab[piece] = next++;
  };
  for (const char* special : {"<unk>", "<s>", "</s>"}) add(special);
  for (int b = 0; b < 256; ++b) add(absl::StrFormat("<0x%02X>", b));
  add("\u2581");
  for (char c = 33; c < 127; ++c) add(std::string(1, c));
  for (int64_t i = 0; next < vocab_size; ++i) add(absl::StrCat("\u2581w", i));
  return vocab;
}

}  // namespace

std::string SyntheticTokenizerJson(int64_t vocab_size) {
  Json j = Json::parse(kTokenizerTemplate, nullptr, /*allow_exceptions=*/false);
  CMOE_CHECK(j.is_object()) << "kTokenizerTemplate is not valid JSON";
  j["model"]["vocab"] = SyntheticVocab(vocab_size);
  return j.dump(2) + "\n";
}

namespace {

absl::Status WriteMetadataFiles(const ModelConfig& c, const StagedOutputDir& dir) {
  CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir.Join("config.json"), ModelConfigToJson(c)));
  CMOE_RETURN_IF_ERROR(
      WriteFileAtomically(dir.Join("tokenizer.json"), SyntheticTokenizerJson(c.vocab_size)));
  const Json specials = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"}};
  CMOE_RETURN_IF_ERROR(
      WriteFileAtomically(dir.Join("special_tokens_map.json"), specials.dump(2) + "\n"));
  Json tok_config = specials;
  tok_config.update({{"add_bos_token", true},
                     {"add_eos_token", false},
                     {"clean_up_tokenization_spaces", false},
                     {"legacy", false},
                     {"model_max_length", c.max_position_embeddings},
                     {"pad_token", nullptr},
                     {"tokenizer_class", "LlamaTokenizerFast"}});
  CMOE_RETURN_IF_ERROR(
      WriteFileAtomically(dir.Join("tokenizer_config.json"), tok_config.dump(2) + "\n"));
  const Json generation = {{"_from_model_config", true}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  return WriteFileAtomically(dir.Join("generation_config.json"), generation.dump(2) + "\n");
}

absl::Status WriteWeights(const ModelConfig& c, const SynthOptions& o, const std::string& path) {
  ThreadPool pool(o.threads);
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (SynthTensor& t : TensorList(c)) {
    std::vector<int64_t> shape = t.shape;
    const std::string name = t.name;
    CMOE_RETURN_IF_ERROR(writer.AddProduced(name, o.dtype, std::move(shape),
                                            RandomProducer(std::move(t), o.dtype, o.seed, pool)));
  }
  if (o.log_progress) {
    CMOE_LOG(INFO) << "synth: writing " << o.shape << " (" << writer.num_tensors() << " tensors, "
                   << static_cast<double>(writer.data_bytes()) * 1e-9 << " GB "
                   << kernels::DTypeName(o.dtype) << ", seed " << o.seed << ") to " << o.out_dir;
  }
  return writer.Write(path, ProgressLogger(o.log_progress));
}

}  // namespace

absl::Status WriteSyntheticCheckpoint(const SynthOptions& o) {
  CMOE_ASSIGN_OR_RETURN(ModelConfig config, SynthShapeConfig(o.shape));
  config.torch_dtype = TorchDtype(o.dtype);
  CMOE_ASSIGN_OR_RETURN(auto staged, StagedOutputDir::Create(o.out_dir, o.force));
  CMOE_RETURN_IF_ERROR(WriteWeights(config, o, staged->Join("model.safetensors")));
  CMOE_RETURN_IF_ERROR(WriteMetadataFiles(config, *staged));
  auto check = Checkpoint::Open(staged->path());
  if (!check.ok()) return Annotate(check.status(), "synthetic checkpoint failed to load");
  return staged->Commit();
}

}  // namespace cmoe::engine
