#include "engine/llama2c_import.h"

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/checkpoint.h"
#include "engine/model_config.h"
#include "engine/protobuf_wire.h"
#include "engine/safetensors_writer.h"
#include "engine/staged_output_dir.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine {
namespace {

using Json = nlohmann::json;
using kernels::DType;

constexpr int64_t kHeaderBytes = 28;  // 7 int32

absl::Status BinError(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("llama2.c checkpoint ", path, ": ", what));
}

struct Header {
  int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 0;
  bool shared_classifier = true;

  int64_t head_size() const { return dim / heads; }
  int64_t kv_dim() const { return kv_heads * head_size(); }
};

absl::StatusOr<Header> ParseHeader(std::span<const uint8_t> bytes, const std::string& path) {
  if (bytes.size() < kHeaderBytes) {
    return BinError(path, absl::StrCat("only ", bytes.size(), " bytes, shorter than the ",
                                       kHeaderBytes, "-byte header"));
  }
  int32_t v[7];
  std::memcpy(v, bytes.data(), sizeof(v));
  static constexpr const char* kNames[7] = {"dim",        "hidden_dim", "n_layers", "n_heads",
                                            "n_kv_heads", "vocab_size", "seq_len"};
  static constexpr int64_t kLimits[7] = {1 << 16, 1 << 20, 1 << 10, 1 << 12,
                                         1 << 12, 1 << 22, 1 << 22};
  int64_t f[7];
  for (int i = 0; i < 7; ++i) {
    f[i] = i == 5 ? (v[i] < 0 ? -int64_t{v[i]} : v[i]) : v[i];
    if (f[i] <= 0 || f[i] > kLimits[i]) {
      return BinError(path, absl::StrCat("header field ", kNames[i], " = ", v[i],
                                         " is out of range (not a llama2.c v0 checkpoint?)"));
    }
  }
  Header h{f[0], f[1], f[2], f[3], f[4], f[5], f[6], v[5] > 0};
  if (h.dim % h.heads != 0 || h.head_size() % 2 != 0) {
    return BinError(path, absl::StrCat("header n_heads = ", h.heads, " does not split dim = ",
                                       h.dim, " into heads of even size"));
  }
  if (h.heads % h.kv_heads != 0) {
    return BinError(path, absl::StrCat("header n_kv_heads = ", h.kv_heads,
                                       " does not divide n_heads = ", h.heads));
  }
  return h;
}

// Floats after the header: the weights, the two RoPE tables and optionally the classifier.
int64_t BodyFloats(const Header& h, bool with_classifier) {
  const int64_t d = h.dim, l = h.layers, kv = h.kv_dim(), f = h.hidden;
  int64_t n = h.vocab * d + 2 * l * d + 2 * l * d * d + 2 * l * kv * d + 3 * l * f * d + d;
  n += h.seq_len * h.head_size();  // freq_cis_real + freq_cis_imag, (seq_len, head_size/2) each
  if (with_classifier) n += h.vocab * d;
  return n;
}

absl::Status CheckFileSize(const Header& h, int64_t size, const std::string& path) {
  const int64_t expected = kHeaderBytes + 4 * BodyFloats(h, !h.shared_classifier);
  if (size == expected) return absl::OkStatus();
  const int64_t other = kHeaderBytes + 4 * BodyFloats(h, h.shared_classifier);
  std::string hint;
  if (size == other) {
    hint = h.shared_classifier
               ? " (it has room for an untied classifier, but vocab_size > 0 says tied)"
               : " (it lacks the untied classifier that vocab_size < 0 announces)";
  } else if (size < expected) {
    hint = " (truncated?)";
  }
  return BinError(path, absl::StrCat(size, " bytes, but the header (dim ", h.dim, ", hidden_dim ",
                                     h.hidden, ", n_layers ", h.layers, ", n_heads ", h.heads,
                                     ", n_kv_heads ", h.kv_heads, ", vocab_size ", h.vocab,
                                     h.shared_classifier ? " tied" : " untied", ", seq_len ",
                                     h.seq_len, ") implies ", expected, hint));
}

// Start of each array in the mapped file (fp32, layers stacked).
struct Arrays {
  const uint8_t *embed, *rms_att, *wq, *wk, *wv, *wo, *rms_ffn, *w1, *w2, *w3, *rms_final;
  const uint8_t* classifier;  // == embed when shared
};

Arrays Locate(const Header& h, const uint8_t* p) {
  auto take = [&p](int64_t floats) {
    const uint8_t* start = p;
    p += 4 * floats;
    return start;
  };
  const int64_t d = h.dim, l = h.layers, kv = h.kv_dim(), f = h.hidden;
  Arrays a{};
  a.embed = take(h.vocab * d);
  a.rms_att = take(l * d);
  a.wq = take(l * d * d);
  a.wk = take(l * kv * d);
  a.wv = take(l * kv * d);
  a.wo = take(l * d * d);
  a.rms_ffn = take(l * d);
  a.w1 = take(l * f * d);
  a.w2 = take(l * d * f);
  a.w3 = take(l * f * d);
  a.rms_final = take(d);
  take(h.seq_len * h.head_size());
  a.classifier = h.shared_classifier ? a.embed : take(h.vocab * d);
  return a;
}

// Streams the (heads * head_size, cols) matrix at `w` with the rows of each head reordered from
// llama2.c's interleaved pairs to HF's halves: new row j * head_size/2 + i = old row 2i + j.
TensorProducer PermutedRows(const uint8_t* w, int64_t heads, int64_t head_size, int64_t cols) {
  return [=](TensorSink& sink) -> absl::Status {
    const int64_t row_bytes = 4 * cols;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t j = 0; j < 2; ++j) {
        for (int64_t i = 0; i < head_size / 2; ++i) {
          const uint8_t* row = w + (h * head_size + 2 * i + j) * row_bytes;
          CMOE_RETURN_IF_ERROR(sink.Write({row, static_cast<size_t>(row_bytes)}));
        }
      }
    }
    return absl::OkStatus();
  };
}

absl::Status AddLayer(SafetensorsWriter& w, const Header& h, const Arrays& a, int64_t l) {
  const int64_t d = h.dim, kv = h.kv_dim(), f = h.hidden, hs = h.head_size();
  const std::string p = absl::StrCat("model.layers.", l, ".");
  auto add = [&](const std::string& name, int64_t rows, int64_t cols, const uint8_t* base) {
    const int64_t bytes = 4 * rows * cols;
    std::vector<int64_t> shape = rows == 1 ? std::vector<int64_t>{cols} : std::vector{rows, cols};
    return w.AddBorrowed(p + name, DType::kF32, std::move(shape),
                         {base + l * bytes, static_cast<size_t>(bytes)});
  };
  CMOE_RETURN_IF_ERROR(add("input_layernorm.weight", 1, d, a.rms_att));
  CMOE_RETURN_IF_ERROR(w.AddProduced(p + "self_attn.q_proj.weight", DType::kF32, {d, d},
                                     PermutedRows(a.wq + l * 4 * d * d, h.heads, hs, d)));
  CMOE_RETURN_IF_ERROR(w.AddProduced(p + "self_attn.k_proj.weight", DType::kF32, {kv, d},
                                     PermutedRows(a.wk + l * 4 * kv * d, h.kv_heads, hs, d)));
  CMOE_RETURN_IF_ERROR(add("self_attn.v_proj.weight", kv, d, a.wv));
  CMOE_RETURN_IF_ERROR(add("self_attn.o_proj.weight", d, d, a.wo));
  CMOE_RETURN_IF_ERROR(add("post_attention_layernorm.weight", 1, d, a.rms_ffn));
  CMOE_RETURN_IF_ERROR(add("mlp.gate_proj.weight", f, d, a.w1));
  CMOE_RETURN_IF_ERROR(add("mlp.down_proj.weight", d, f, a.w2));
  CMOE_RETURN_IF_ERROR(add("mlp.up_proj.weight", f, d, a.w3));
  return absl::OkStatus();
}

absl::Status WriteWeights(const Header& h, const MappedFile& bin, const std::string& out_path) {
  const Arrays a = Locate(h, bin.bytes().data() + kHeaderBytes);
  const int64_t d = h.dim;
  auto span_of = [](const uint8_t* p, int64_t floats) {
    return std::span<const uint8_t>(p, static_cast<size_t>(4 * floats));
  };
  SafetensorsWriter w;
  w.SetMetadata("format", "pt");
  CMOE_RETURN_IF_ERROR(w.AddBorrowed("model.embed_tokens.weight", DType::kF32, {h.vocab, d},
                                     span_of(a.embed, h.vocab * d)));
  for (int64_t l = 0; l < h.layers; ++l) CMOE_RETURN_IF_ERROR(AddLayer(w, h, a, l));
  CMOE_RETURN_IF_ERROR(
      w.AddBorrowed("model.norm.weight", DType::kF32, {d}, span_of(a.rms_final, d)));
  if (!h.shared_classifier) {
    CMOE_RETURN_IF_ERROR(w.AddBorrowed("lm_head.weight", DType::kF32, {h.vocab, d},
                                       span_of(a.classifier, h.vocab * d)));
  }
  return w.Write(out_path);
}

// The parts of a SentencePiece ModelProto we need: the pieces (field 1, each a message with the
// piece string in field 1 and its type in field 3). A few lines of protobuf wire format spare the
// converter a dependency on libprotobuf.
struct SpModel {
  std::vector<std::string> pieces;
  int64_t unk_id = -1;
};

absl::StatusOr<SpModel> ParseSentencePiece(std::string_view proto, const std::string& path) {
  const absl::Status bad = absl::InvalidArgumentError(
      absl::StrCat("tokenizer ", path, ": not a SentencePiece model (malformed protobuf)"));
  SpModel model;
  size_t pos = 0;
  while (std::optional<WireField> field = ReadWireField(proto, &pos)) {
    if (field->number != 1 || field->wire_type != kWireLengthDelimited) continue;
    std::string text;
    uint64_t type = 1;  // NORMAL
    size_t inner = 0;
    while (std::optional<WireField> f = ReadWireField(field->payload, &inner)) {
      if (f->number == 1 && f->wire_type == kWireLengthDelimited) text = std::string(f->payload);
      if (f->number == 3 && f->wire_type == kWireVarint) type = f->varint;
    }
    if (inner != field->payload.size()) return bad;
    if (type == 2 && model.unk_id < 0) model.unk_id = static_cast<int64_t>(model.pieces.size());
    model.pieces.push_back(std::move(text));
  }
  if (pos != proto.size()) return bad;
  if (model.pieces.size() < 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tokenizer ", path, ": not a SentencePiece model (", model.pieces.size(), " pieces)"));
  }
  return model;
}

ModelConfig ConfigFor(const Header& h) {
  ModelConfig c;
  c.hidden_size = h.dim;
  c.intermediate_size = h.hidden;
  c.num_hidden_layers = h.layers;
  c.num_attention_heads = h.heads;
  c.num_key_value_heads = h.kv_heads;
  c.head_dim = h.head_size();
  c.vocab_size = h.vocab;
  c.max_position_embeddings = h.seq_len;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 10000.0;
  c.tie_word_embeddings = h.shared_classifier;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  c.torch_dtype = "float32";
  return c;
}

absl::Status WriteJson(const StagedOutputDir& dir, const std::string& name, const Json& j) {
  return WriteFileAtomically(dir.Join(name), j.dump(2) + "\n");
}

// config.json, the tokenizer and the small JSON files transformers writes beside them.
absl::Status WriteMetadataFiles(const Header& h, const SpModel& sp, std::string_view tokenizer,
                                const StagedOutputDir& dir) {
  CMOE_RETURN_IF_ERROR(
      WriteFileAtomically(dir.Join("config.json"), ModelConfigToJson(ConfigFor(h))));
  CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir.Join("tokenizer.model"), tokenizer));
  Json specials = {{"bos_token", sp.pieces[1]}, {"eos_token", sp.pieces[2]}};
  if (sp.unk_id >= 0) specials["unk_token"] = sp.pieces[static_cast<size_t>(sp.unk_id)];
  CMOE_RETURN_IF_ERROR(WriteJson(dir, "special_tokens_map.json", specials));
  Json tok_config = specials;
  tok_config.update({{"add_bos_token", true},
                     {"add_eos_token", false},
                     {"clean_up_tokenization_spaces", false},
                     {"legacy", true},
                     {"model_max_length", h.seq_len},
                     {"pad_token", nullptr},
                     {"sp_model_kwargs", Json::object()},
                     {"tokenizer_class", "LlamaTokenizer"}});
  CMOE_RETURN_IF_ERROR(WriteJson(dir, "tokenizer_config.json", tok_config));
  const Json generation = {{"_from_model_config", true}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  return WriteJson(dir, "generation_config.json", generation);
}

}  // namespace

absl::Status ConvertLlama2c(const Llama2cConvertOptions& o) {
  if (o.model_path.empty()) return absl::InvalidArgumentError("llama2.c checkpoint path not given");
  if (o.tokenizer_path.empty()) return absl::InvalidArgumentError("tokenizer path not given");
  CMOE_ASSIGN_OR_RETURN(MappedFile bin, MappedFile::Open(o.model_path));
  CMOE_ASSIGN_OR_RETURN(Header h, ParseHeader(bin.bytes(), o.model_path));
  CMOE_RETURN_IF_ERROR(CheckFileSize(h, static_cast<int64_t>(bin.size()), o.model_path));
  CMOE_ASSIGN_OR_RETURN(std::string tokenizer, ReadFileToString(o.tokenizer_path));
  CMOE_ASSIGN_OR_RETURN(SpModel sp, ParseSentencePiece(tokenizer, o.tokenizer_path));
  if (static_cast<int64_t>(sp.pieces.size()) > h.vocab) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", o.tokenizer_path, " has ",
                                                   sp.pieces.size(), " pieces but the checkpoint ",
                                                   o.model_path, " has vocab_size ", h.vocab));
  }
  CMOE_ASSIGN_OR_RETURN(auto staged, StagedOutputDir::Create(o.out_dir, o.force));
  CMOE_RETURN_IF_ERROR(WriteWeights(h, bin, staged->Join("model.safetensors")));
  CMOE_RETURN_IF_ERROR(WriteMetadataFiles(h, sp, tokenizer, *staged));
  // The output must load with the normal loader before it replaces anything.
  auto check = Checkpoint::Open(staged->path());
  if (!check.ok()) return Annotate(check.status(), "converted checkpoint failed to load");
  CMOE_RETURN_IF_ERROR(staged->Commit());
  CMOE_LOG(INFO) << "converted " << o.model_path << " (dim " << h.dim << ", " << h.layers
                 << " layers, vocab " << h.vocab << (h.shared_classifier ? ", tied" : ", untied")
                 << ") to " << o.out_dir;
  return absl::OkStatus();
}

}  // namespace cmoe::engine
