#include "engine/sentencepiece_tokenizer.h"

// libsentencepiece 0.1.97's header declares `namespace absl { using std::string_view; }`, which
// clashes with Debian's Abseil (built with its own absl::string_view class). The header only uses
// that name for std::string_view, so it is compiled against a private namespace instead; the
// declared functions keep their std::string_view signatures.
#define absl cmoe_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

#include <optional>
#include <utility>

#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/protobuf_wire.h"
#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

// ModelProto.normalizer_spec (field 3) and its add_dummy_prefix (field 3, a varint).
constexpr uint32_t kNormalizerSpecField = 3;
constexpr uint32_t kAddDummyPrefixField = 3;

// The model's add_dummy_prefix: the last occurrence wins; the proto default is true.
bool ReadAddDummyPrefix(std::string_view model) {
  bool value = true;
  size_t pos = 0;
  while (std::optional<WireField> field = ReadWireField(model, &pos)) {
    if (field->number != kNormalizerSpecField || field->wire_type != kWireLengthDelimited) continue;
    size_t inner = 0;
    while (std::optional<WireField> spec = ReadWireField(field->payload, &inner)) {
      if (spec->number == kAddDummyPrefixField && spec->wire_type == kWireVarint) {
        value = spec->varint != 0;
      }
    }
  }
  return value;
}

// `model` with add_dummy_prefix forced to `value`: appended to every normalizer_spec, or a new
// normalizer_spec holding just that field when there is none.
absl::StatusOr<std::string> WithAddDummyPrefix(std::string_view model, bool value,
                                               const std::string& path) {
  const std::string flag = {static_cast<char>(kAddDummyPrefixField << 3 | kWireVarint),
                            static_cast<char>(value ? 1 : 0)};
  const char spec_tag = static_cast<char>(kNormalizerSpecField << 3 | kWireLengthDelimited);
  std::string out;
  bool found = false;
  size_t pos = 0;
  while (pos < model.size()) {
    const size_t begin = pos;
    const std::optional<WireField> field = ReadWireField(model, &pos);
    if (!field) return absl::InvalidArgumentError(path + ": not a SentencePiece model");
    if (field->number != kNormalizerSpecField || field->wire_type != kWireLengthDelimited) {
      out.append(model.substr(begin, pos - begin));
      continue;
    }
    found = true;
    out.push_back(spec_tag);
    AppendVarint(field->payload.size() + flag.size(), &out);
    out.append(field->payload);
    out.append(flag);
  }
  if (!found) out += std::string(1, spec_tag) + static_cast<char>(flag.size()) + flag;
  return out;
}

absl::StatusOr<std::unique_ptr<sentencepiece::SentencePieceProcessor>> LoadProcessor(
    std::string_view model, bool add_dummy_prefix, const std::string& path) {
  CMOE_ASSIGN_OR_RETURN(std::string patched, WithAddDummyPrefix(model, add_dummy_prefix, path));
  auto processor = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const sentencepiece::util::Status status = processor->LoadFromSerializedProto(patched);
  if (!status.ok()) {
    return absl::InvalidArgumentError(path +
                                      ": not a valid SentencePiece model: " + status.ToString());
  }
  return processor;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer() = default;
SentencePieceTokenizer::~SentencePieceTokenizer() = default;

absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> SentencePieceTokenizer::Open(
    const std::string& model_path, const ModelConfig& config) {
  std::unique_ptr<SentencePieceTokenizer> tok(new SentencePieceTokenizer());
  CMOE_RETURN_IF_ERROR(tok->Load(model_path, config));
  return tok;
}

absl::Status SentencePieceTokenizer::Load(const std::string& model_path,
                                          const ModelConfig& config) {
  CMOE_ASSIGN_OR_RETURN(std::string model, ReadFileToString(model_path));
  CMOE_ASSIGN_OR_RETURN(with_prefix_, LoadProcessor(model, true, model_path));
  CMOE_ASSIGN_OR_RETURN(without_prefix_, LoadProcessor(model, false, model_path));
  default_dummy_prefix_ = ReadAddDummyPrefix(model);
  const int32_t size = with_prefix_->GetPieceSize();
  if (config.vocab_size > 0 && size > config.vocab_size) {
    return absl::InvalidArgumentError(model_path + ": vocabulary of " + std::to_string(size) +
                                      " pieces exceeds the model's vocab_size " +
                                      std::to_string(config.vocab_size));
  }
  bos_id_ = config.bos_token_id >= 0 ? config.bos_token_id : with_prefix_->bos_id();
  eos_id_ = config.eos_token_ids.empty() ? with_prefix_->eos_id() : config.eos_token_ids[0];
  if (bos_id_ >= size || eos_id_ >= size) {
    return absl::InvalidArgumentError(model_path + ": BOS/EOS id outside the vocabulary");
  }
  BuildDecodeTable();
  return absl::OkStatus();
}

void SentencePieceTokenizer::BuildDecodeTable() {
  const sentencepiece::SentencePieceProcessor& sp = *with_prefix_;
  const int32_t size = sp.GetPieceSize();
  token_bytes_.assign(size, std::string());
  special_.assign(size, false);
  for (int32_t id = 0; id < size; ++id) {
    special_[id] = sp.IsControl(id) || sp.IsUnknown(id) || id == bos_id_ || id == eos_id_;
    if (special_[id] || sp.IsUnused(id)) continue;
    const std::string& piece = sp.IdToPiece(id);
    const std::optional<uint8_t> byte = sp.IsByte(id) ? ParseBytePiece(piece) : std::nullopt;
    token_bytes_[id] =
        byte ? std::string(1, static_cast<char>(*byte)) : ReplaceAll(piece, kMetaspace, " ");
  }
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(
    std::string_view text, const EncodeOptions& options) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  const sentencepiece::SentencePieceProcessor& sp =
      options.add_dummy_prefix ? *with_prefix_ : *without_prefix_;
  std::vector<int> pieces;
  const sentencepiece::util::Status status = sp.Encode(text, &pieces);
  if (!status.ok()) return absl::InternalError("sentencepiece Encode: " + status.ToString());
  std::vector<int32_t> ids;
  ids.reserve(pieces.size() + 1);
  if (options.add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  ids.insert(ids.end(), pieces.begin(), pieces.end());
  return ids;
}

absl::StatusOr<std::string> SentencePieceTokenizer::TokenBytes(int32_t previous, int32_t id) const {
  CMOE_RETURN_IF_ERROR(CheckTokenId(id));
  std::string bytes = token_bytes_[id];
  const bool at_start = previous == -1 || (bos_id_ >= 0 && previous == bos_id_);
  if (at_start && !bytes.empty() && bytes[0] == ' ' && !with_prefix_->IsByte(id)) {
    bytes.erase(0, 1);
  }
  return bytes;
}

std::string SentencePieceTokenizer::Piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? with_prefix_->IdToPiece(id) : std::string();
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

float SentencePieceTokenizer::Score(int32_t id) const {
  return id >= 0 && id < vocab_size() ? with_prefix_->GetScore(id) : 0.0f;
}

}  // namespace cmoe::engine
