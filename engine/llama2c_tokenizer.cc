#include "engine/llama2c_tokenizer.h"

#include <cmath>
#include <cstring>
#include <optional>

#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/bpe_tokenizer.h"
#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

// llama2.c's export spells BOS and EOS like this.
constexpr std::string_view kBosPiece = "\n<s>\n";
constexpr std::string_view kEosPiece = "\n</s>\n";
constexpr int32_t kLlama2cBos = 1;
constexpr int32_t kLlama2cEos = 2;
constexpr float kNoMergeScore = -1e10f;

template <typename T>
bool ReadScalar(std::string_view data, size_t* pos, T* value) {
  if (data.size() - *pos < sizeof(T)) return false;
  std::memcpy(value, data.data() + *pos, sizeof(T));
  *pos += sizeof(T);
  return true;
}

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Llama2cTokenizer::Open(
    const std::string& path, const ModelConfig& config) {
  CMOE_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open(path));
  const std::string_view data(reinterpret_cast<const char*>(file.bytes().data()), file.size());
  std::unique_ptr<Llama2cTokenizer> tok(new Llama2cTokenizer());
  CMOE_RETURN_IF_ERROR(tok->Parse(data, path, config));
  tok->BuildTables();
  return tok;
}

absl::Status Llama2cTokenizer::Parse(std::string_view data, const std::string& path,
                                     const ModelConfig& config) {
  const auto error = [&](const std::string& what) {
    return absl::InvalidArgumentError(path + ": llama2.c tokenizer: " + what);
  };
  size_t pos = 0;
  if (!ReadScalar(data, &pos, &max_token_length_)) return error("truncated header");
  if (max_token_length_ < 0) return error("negative max_token_length");
  while (pos < data.size()) {
    const std::string token = "token " + std::to_string(pieces_.size());
    float score = 0;
    int32_t length = 0;
    if (!ReadScalar(data, &pos, &score) || !ReadScalar(data, &pos, &length)) {
      return error(token + " is truncated");
    }
    if (!std::isfinite(score)) return error(token + " has a non-finite score");
    if (length < 0) return error(token + " has a negative length " + std::to_string(length));
    if (length > max_token_length_) {
      return error(token + " is longer than max_token_length " + std::to_string(max_token_length_));
    }
    if (data.size() - pos < static_cast<size_t>(length)) return error(token + " is truncated");
    pieces_.emplace_back(data.substr(pos, length));
    scores_.push_back(score);
    pos += length;
  }
  if (pieces_.empty()) return error("no tokens");
  if (config.vocab_size > 0 && static_cast<int64_t>(pieces_.size()) != config.vocab_size) {
    return error(std::to_string(pieces_.size()) + " tokens, but the model's vocab_size is " +
                 std::to_string(config.vocab_size));
  }
  const auto size = static_cast<int32_t>(pieces_.size());
  bos_id_ =
      config.bos_token_id >= 0 ? config.bos_token_id : (size > kLlama2cBos ? kLlama2cBos : -1);
  eos_id_ = !config.eos_token_ids.empty() ? config.eos_token_ids[0]
                                          : (size > kLlama2cEos ? kLlama2cEos : -1);
  if (bos_id_ >= size || eos_id_ >= size) return error("BOS/EOS id outside the vocabulary");
  return absl::OkStatus();
}

void Llama2cTokenizer::BuildTables() {
  const auto size = static_cast<int32_t>(pieces_.size());
  for (int32_t id = 0; id < size; ++id) piece_to_id_.emplace(pieces_[id], id);  // first wins
  byte_ids_.fill(-1);
  special_.assign(size, false);
  for (int32_t id = 0; id < size; ++id) {
    const std::string& piece = pieces_[id];
    if (std::optional<uint8_t> byte = ParseBytePiece(piece); byte && byte_ids_[*byte] < 0) {
      byte_ids_[*byte] = id;
    }
    special_[id] = id == bos_id_ || id == eos_id_ || piece == "<unk>" || piece == kBosPiece ||
                   piece == kEosPiece;
    if (piece == "<unk>" && unk_id_ < 0) unk_id_ = id;
    // Every split of a piece into two pieces is a merge into it (run.c's str_lookup of the
    // concatenation).
    for (size_t cut = 1; cut < piece.size(); ++cut) {
      const auto left = piece_to_id_.find(piece.substr(0, cut));
      const auto right = piece_to_id_.find(piece.substr(cut));
      if (left == piece_to_id_.end() || right == piece_to_id_.end()) continue;
      merges_.emplace(PairKey(left->second, right->second), piece_to_id_[piece]);
    }
  }
}

void Llama2cTokenizer::AppendCharSymbols(std::string_view character,
                                         std::vector<int32_t>* symbols) const {
  const auto it = piece_to_id_.find(std::string(character));
  if (it != piece_to_id_.end()) {
    symbols->push_back(it->second);
    return;
  }
  for (char c : character) {
    const int32_t id = byte_ids_[static_cast<uint8_t>(c)];
    symbols->push_back(id >= 0 ? id : std::max(unk_id_, 0));
  }
}

absl::StatusOr<std::vector<int32_t>> Llama2cTokenizer::Encode(std::string_view text,
                                                              const EncodeOptions& options) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  std::vector<int32_t> symbols;
  symbols.reserve(text.size() + 1);
  const auto space = piece_to_id_.find(" ");
  if (options.add_dummy_prefix && !text.empty() && space != piece_to_id_.end()) {
    symbols.push_back(space->second);
  }
  for (size_t pos = 0; pos < text.size();) {
    const size_t len = Utf8CharLength(text, pos);
    AppendCharSymbols(text.substr(pos, len), &symbols);
    pos += len;
  }
  std::vector<int32_t> ids;
  if (options.add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  const std::vector<int32_t> merged =
      MergeAdjacentPairs(symbols, [this](int32_t left, int32_t right) -> std::optional<PairMerge> {
        const auto it = merges_.find(PairKey(left, right));
        // run.c starts its search at a best score of -1e10, so nothing at or below merges.
        if (it == merges_.end() || scores_[it->second] <= kNoMergeScore) return std::nullopt;
        return PairMerge{-static_cast<double>(scores_[it->second]), it->second};
      });
  ids.insert(ids.end(), merged.begin(), merged.end());
  return ids;
}

absl::StatusOr<std::string> Llama2cTokenizer::TokenBytes(int32_t previous, int32_t id) const {
  CMOE_RETURN_IF_ERROR(CheckTokenId(id));
  if (special_[id]) return std::string();
  if (std::optional<uint8_t> byte = ParseBytePiece(pieces_[id])) {
    return std::string(1, static_cast<char>(*byte));
  }
  const bool at_start = previous == -1 || (bos_id_ >= 0 && previous == bos_id_);
  const std::string& piece = pieces_[id];
  return at_start && !piece.empty() && piece[0] == ' ' ? piece.substr(1) : piece;
}

std::string Llama2cTokenizer::Piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? pieces_[id] : std::string();
}

bool Llama2cTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

float Llama2cTokenizer::Score(int32_t id) const {
  return id >= 0 && id < vocab_size() ? scores_[id] : 0.0f;
}

}  // namespace cmoe::engine
