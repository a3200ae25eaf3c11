#include "engine/sentencepiece_tokenizer.h"

#include <cstring>
#include <functional>
#include <map>
#include <optional>
#include <queue>
#include <utility>

#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/protobuf_wire.h"
#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

constexpr uint32_t kWireFixed32 = 5;

// sentencepiece_model.proto field numbers.
// ModelProto
constexpr uint32_t kPiecesField = 1;
constexpr uint32_t kTrainerSpecField = 2;
constexpr uint32_t kNormalizerSpecField = 3;
// ModelProto.SentencePiece
constexpr uint32_t kPieceField = 1;
constexpr uint32_t kScoreField = 2;
constexpr uint32_t kTypeField = 3;
// TrainerSpec
constexpr uint32_t kModelTypeField = 3;
constexpr uint32_t kTreatWhitespaceAsSuffixField = 24;
constexpr uint32_t kByteFallbackField = 35;
constexpr uint32_t kBosPieceField = 46;
constexpr uint32_t kEosPieceField = 47;
// NormalizerSpec
constexpr uint32_t kNormalizerNameField = 1;
constexpr uint32_t kPrecompiledCharsmapField = 2;
constexpr uint32_t kAddDummyPrefixField = 3;
constexpr uint32_t kRemoveExtraWhitespacesField = 4;
constexpr uint32_t kEscapeWhitespacesField = 5;

// TrainerSpec.ModelType
constexpr uint64_t kModelUnigram = 1;
constexpr uint64_t kModelBpe = 2;
constexpr uint64_t kModelWord = 3;
constexpr uint64_t kModelChar = 4;

// ModelProto.SentencePiece.Type
constexpr uint64_t kTypeNormal = 1;
constexpr uint64_t kTypeUnknown = 2;
constexpr uint64_t kTypeControl = 3;
constexpr uint64_t kTypeUserDefined = 4;
constexpr uint64_t kTypeUnused = 5;
constexpr uint64_t kTypeByte = 6;

std::string ModelTypeName(uint64_t type) {
  switch (type) {
    case kModelUnigram:
      return "UNIGRAM";
    case kModelBpe:
      return "BPE";
    case kModelWord:
      return "WORD";
    case kModelChar:
      return "CHAR";
    default:
      return std::to_string(type);
  }
}

// One symbol of the segmentation: a slice of the normalized text in a linked list.
struct Symbol {
  size_t begin = 0;
  size_t size = 0;  // 0 once merged into its left neighbour
  int prev = -1;
  int next = -1;
  bool freeze = false;  // a user-defined piece: never merged
};

struct SymbolPair {
  int left = 0;
  int right = 0;
  float score = 0;
  size_t size = 0;  // of the merged piece, to detect stale pairs
};

// libsentencepiece's agenda order: the highest score first, the leftmost on ties.
struct SymbolPairLess {
  bool operator()(const SymbolPair& a, const SymbolPair& b) const {
    if (a.score != b.score) return a.score < b.score;
    return a.left > b.left;
  }
};

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
  const auto invalid = [&](const std::string& what) {
    return absl::InvalidArgumentError(model_path + ": not a valid SentencePiece model: " + what);
  };
  uint64_t model_type = kModelUnigram;  // the proto default
  bool treat_whitespace_as_suffix = false;
  std::string bos_piece = "<s>";
  std::string eos_piece = "</s>";
  std::string normalizer_name;
  std::string_view charsmap;
  size_t pos = 0;
  while (std::optional<WireField> field = ReadWireField(model, &pos)) {
    if (field->wire_type != kWireLengthDelimited) continue;
    const std::string_view payload = field->payload;
    size_t inner = 0;
    if (field->number == kPiecesField) {
      std::string piece;
      float score = 0;
      uint64_t type = kTypeNormal;
      while (std::optional<WireField> f = ReadWireField(payload, &inner)) {
        if (f->number == kPieceField && f->wire_type == kWireLengthDelimited) {
          piece = std::string(f->payload);
        } else if (f->number == kScoreField && f->wire_type == kWireFixed32) {
          std::memcpy(&score, payload.data() + inner - sizeof(float), sizeof(float));
        } else if (f->number == kTypeField && f->wire_type == kWireVarint) {
          type = f->varint;
        }
      }
      if (inner != payload.size())
        return invalid("malformed piece " + std::to_string(pieces_.size()));
      PieceType t;
      switch (type) {
        case kTypeNormal:
          t = PieceType::kNormal;
          break;
        case kTypeUnknown:
          t = PieceType::kUnknown;
          break;
        case kTypeControl:
          t = PieceType::kControl;
          break;
        case kTypeUserDefined:
          t = PieceType::kUserDefined;
          break;
        case kTypeUnused:
          t = PieceType::kUnused;
          break;
        case kTypeByte:
          t = PieceType::kByte;
          break;
        default:
          return invalid("piece " + std::to_string(pieces_.size()) + " has unknown type " +
                         std::to_string(type));
      }
      pieces_.push_back(std::move(piece));
      scores_.push_back(score);
      types_.push_back(t);
    } else if (field->number == kTrainerSpecField) {
      while (std::optional<WireField> f = ReadWireField(payload, &inner)) {
        if (f->wire_type == kWireVarint) {
          if (f->number == kModelTypeField) model_type = f->varint;
          if (f->number == kTreatWhitespaceAsSuffixField)
            treat_whitespace_as_suffix = f->varint != 0;
          if (f->number == kByteFallbackField) byte_fallback_ = f->varint != 0;
        } else if (f->wire_type == kWireLengthDelimited) {
          if (f->number == kBosPieceField) bos_piece = std::string(f->payload);
          if (f->number == kEosPieceField) eos_piece = std::string(f->payload);
        }
      }
      if (inner != payload.size()) return invalid("malformed trainer_spec");
    } else if (field->number == kNormalizerSpecField) {
      while (std::optional<WireField> f = ReadWireField(payload, &inner)) {
        if (f->wire_type == kWireVarint) {
          if (f->number == kAddDummyPrefixField) default_dummy_prefix_ = f->varint != 0;
          if (f->number == kRemoveExtraWhitespacesField) remove_extra_whitespaces_ = f->varint != 0;
          if (f->number == kEscapeWhitespacesField) escape_whitespaces_ = f->varint != 0;
        } else if (f->wire_type == kWireLengthDelimited) {
          if (f->number == kNormalizerNameField) normalizer_name = std::string(f->payload);
          if (f->number == kPrecompiledCharsmapField) charsmap = f->payload;
        }
      }
      if (inner != payload.size()) return invalid("malformed normalizer_spec");
    }
  }
  if (pos != model.size()) return invalid("malformed ModelProto");
  if (pieces_.empty()) return invalid("no pieces");
  if (model_type != kModelBpe) {
    return absl::InvalidArgumentError(model_path + ": unsupported SentencePiece model type " +
                                      ModelTypeName(model_type) + " (only BPE is supported)");
  }
  if (treat_whitespace_as_suffix) {
    return absl::InvalidArgumentError(
        model_path + ": SentencePiece treat_whitespace_as_suffix is not supported");
  }
  if (!charsmap.empty()) {
    return absl::InvalidArgumentError(
        model_path + ": SentencePiece normalizer \"" + normalizer_name +
        "\" has a character map; only the identity normalizer is supported");
  }

  const auto size = static_cast<int32_t>(pieces_.size());
  byte_ids_.fill(-1);
  for (int32_t id = 0; id < size; ++id) {
    const std::string& piece = pieces_[id];
    const PieceType type = types_[id];
    if (piece.empty()) return invalid("piece " + std::to_string(id) + " is empty");
    const bool normal =
        type == PieceType::kNormal || type == PieceType::kUserDefined || type == PieceType::kUnused;
    if (!(normal ? normal_ids_ : reserved_ids_).emplace(piece, id).second) {
      return invalid("piece \"" + piece + "\" is defined twice");
    }
    if (type == PieceType::kUserDefined) user_defined_.push_back(piece);
    if (type == PieceType::kUnknown) {
      if (unk_id_ >= 0) return invalid("more than one unknown piece");
      unk_id_ = id;
    }
    if (type == PieceType::kByte) {
      if (!byte_fallback_) return invalid("byte piece \"" + piece + "\" without byte_fallback");
      const std::optional<uint8_t> byte = ParseBytePiece(piece);
      if (!byte) return invalid("byte piece \"" + piece + "\" is not <0xNN>");
      byte_ids_[*byte] = id;
    }
  }
  if (unk_id_ < 0) return invalid("no unknown piece");
  if (config.vocab_size > 0 && size > config.vocab_size) {
    return absl::InvalidArgumentError(model_path + ": vocabulary of " + std::to_string(size) +
                                      " pieces exceeds the model's vocab_size " +
                                      std::to_string(config.vocab_size));
  }
  const auto control_id = [&](const std::string& piece) {
    const int32_t id = PieceToId(piece);
    return types_[id] == PieceType::kControl ? id : -1;
  };
  bos_id_ = config.bos_token_id >= 0 ? config.bos_token_id : control_id(bos_piece);
  eos_id_ = config.eos_token_ids.empty() ? control_id(eos_piece) : config.eos_token_ids[0];
  if (bos_id_ >= size || eos_id_ >= size) {
    return absl::InvalidArgumentError(model_path + ": BOS/EOS id outside the vocabulary");
  }
  BuildDecodeTable();
  return absl::OkStatus();
}

void SentencePieceTokenizer::BuildDecodeTable() {
  const auto size = static_cast<int32_t>(pieces_.size());
  token_bytes_.assign(size, std::string());
  special_.assign(size, false);
  for (int32_t id = 0; id < size; ++id) {
    const PieceType type = types_[id];
    special_[id] = type == PieceType::kControl || type == PieceType::kUnknown || id == bos_id_ ||
                   id == eos_id_;
    if (special_[id] || type == PieceType::kUnused) continue;
    const std::string& piece = pieces_[id];
    const std::optional<uint8_t> byte =
        type == PieceType::kByte ? ParseBytePiece(piece) : std::nullopt;
    token_bytes_[id] =
        byte ? std::string(1, static_cast<char>(*byte)) : ReplaceAll(piece, kMetaspace, " ");
  }
}

int32_t SentencePieceTokenizer::PieceToId(std::string_view piece) const {
  const std::string key(piece);
  if (const auto it = reserved_ids_.find(key); it != reserved_ids_.end()) return it->second;
  if (const auto it = normal_ids_.find(key); it != normal_ids_.end()) return it->second;
  return unk_id_;
}

size_t SentencePieceTokenizer::SymbolLength(std::string_view text, size_t pos,
                                            bool* user_defined) const {
  size_t longest = 0;
  for (const std::string& piece : user_defined_) {
    if (piece.size() > longest && text.substr(pos).starts_with(piece)) longest = piece.size();
  }
  if (user_defined != nullptr) *user_defined = longest > 0;
  if (longest > 0) return longest;
  const size_t len = Utf8CharLength(text, pos);
  return len > 0 ? len : 1;
}

// libsentencepiece's Normalizer::Normalize for a normalizer without a character map.
std::string SentencePieceTokenizer::Normalize(std::string_view text, bool add_dummy_prefix) const {
  std::string out;
  if (remove_extra_whitespaces_) {
    while (!text.empty() && SymbolLength(text, 0) == 1 && text[0] == ' ') text.remove_prefix(1);
  }
  if (text.empty()) return out;
  const std::string_view space = escape_whitespaces_ ? kMetaspace : std::string_view(" ");
  out.reserve(text.size() * 3 + space.size());
  if (add_dummy_prefix) out.append(space);
  bool is_prev_space = remove_extra_whitespaces_;
  while (!text.empty()) {
    const size_t len = SymbolLength(text, 0);
    std::string_view sp = text.substr(0, len);
    while (is_prev_space && !sp.empty() && sp[0] == ' ') sp.remove_prefix(1);
    if (!sp.empty()) {
      for (char c : sp) {
        if (escape_whitespaces_ && c == ' ') {
          out.append(kMetaspace);
        } else {
          out.push_back(c);
        }
      }
      is_prev_space = sp.back() == ' ';
    }
    text.remove_prefix(len);
    if (!remove_extra_whitespaces_) is_prev_space = false;
  }
  if (remove_extra_whitespaces_) {
    size_t end = out.size();
    while (std::string_view(out).substr(0, end).ends_with(space)) end -= space.size();
    out.erase(end);
  }
  return out;
}

absl::StatusOr<std::vector<int32_t>> SentencePieceTokenizer::Encode(
    std::string_view text, const EncodeOptions& options) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  const std::string normalized = Normalize(text, options.add_dummy_prefix);
  const std::string_view norm(normalized);

  // Split into characters (user-defined pieces whole).
  std::vector<Symbol> symbols;
  for (size_t pos = 0; pos < norm.size();) {
    Symbol s;
    s.begin = pos;
    s.size = SymbolLength(norm, pos, &s.freeze);
    const int index = static_cast<int>(symbols.size());
    s.prev = index - 1;
    pos += s.size;
    s.next = pos < norm.size() ? index + 1 : -1;
    symbols.push_back(s);
  }

  // Merge the best pair until none is left.
  std::priority_queue<SymbolPair, std::vector<SymbolPair>, SymbolPairLess> agenda;
  std::map<std::string_view, std::pair<std::string_view, std::string_view>> rev_merge;
  const auto piece_of = [&](const Symbol& s) { return norm.substr(s.begin, s.size); };
  const auto maybe_add_pair = [&](int left, int right) {
    if (left < 0 || right < 0 || symbols[left].freeze || symbols[right].freeze) return;
    const std::string_view piece =
        norm.substr(symbols[left].begin, symbols[left].size + symbols[right].size);
    const auto it = normal_ids_.find(std::string(piece));
    if (it == normal_ids_.end()) return;
    agenda.push({left, right, scores_[it->second], piece.size()});
    if (types_[it->second] == PieceType::kUnused) {
      rev_merge[piece] = {piece_of(symbols[left]), piece_of(symbols[right])};
    }
  };
  for (size_t i = 1; i < symbols.size(); ++i) {
    maybe_add_pair(static_cast<int>(i) - 1, static_cast<int>(i));
  }
  while (!agenda.empty()) {
    const SymbolPair top = agenda.top();
    agenda.pop();
    Symbol& left = symbols[top.left];
    Symbol& right = symbols[top.right];
    if (left.size == 0 || right.size == 0 || left.size + right.size != top.size) continue;
    left.size += right.size;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.left;
    right.size = 0;
    maybe_add_pair(left.prev, top.left);
    maybe_add_pair(top.left, left.next);
  }

  // Undo merges into unused pieces, then map unknown pieces to bytes or a single unk.
  std::vector<int32_t> ids;
  ids.reserve(symbols.size() + 1);
  if (options.add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  bool prev_unk = false;
  const auto emit = [&](std::string_view piece, int32_t id) {
    const bool unk = types_[id] == PieceType::kUnknown;
    if (unk && byte_fallback_) {
      for (char c : piece) {
        const int32_t byte_id = byte_ids_[static_cast<uint8_t>(c)];
        ids.push_back(byte_id >= 0 ? byte_id : unk_id_);
      }
    } else if (!(unk && prev_unk)) {
      ids.push_back(id);
    }
    prev_unk = unk;
  };
  std::function<void(std::string_view)> resegment = [&](std::string_view piece) {
    const int32_t id = PieceToId(piece);
    if (types_[id] == PieceType::kUnused) {
      if (const auto it = rev_merge.find(piece); it != rev_merge.end()) {
        resegment(it->second.first);
        resegment(it->second.second);
        return;
      }
    }
    emit(piece, id);
  };
  for (int index = symbols.empty() ? -1 : 0; index != -1; index = symbols[index].next) {
    resegment(piece_of(symbols[index]));
  }
  return ids;
}

absl::StatusOr<std::string> SentencePieceTokenizer::TokenBytes(int32_t previous, int32_t id) const {
  CMOE_RETURN_IF_ERROR(CheckTokenId(id));
  std::string bytes = token_bytes_[id];
  const bool at_start = previous == -1 || (bos_id_ >= 0 && previous == bos_id_);
  if (at_start && !bytes.empty() && bytes[0] == ' ' && types_[id] != PieceType::kByte) {
    bytes.erase(0, 1);
  }
  return bytes;
}

std::string SentencePieceTokenizer::Piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? pieces_[id] : std::string();
}

bool SentencePieceTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

float SentencePieceTokenizer::Score(int32_t id) const {
  return id >= 0 && id < vocab_size() ? scores_[id] : 0.0f;
}

}  // namespace cmoe::engine
