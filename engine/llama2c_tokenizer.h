// The tokenizer of karpathy's llama2.c: its tokenizer .bin (stories260K/tok512.bin) and the
// encode algorithm of its run.c.
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Llama2cTokenizer> tok,
//                         Llama2cTokenizer::Open(dir + "/tok512.bin", config));
//   CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time", {}));
//
// File format (little-endian): int32 max_token_length, then per token float32 score,
// int32 byte length, the bytes. The file does not store the vocabulary size; Open reads tokens
// until the end of the file and, when config.vocab_size is set, requires that many.
// llama2.c's export writes pieces with "▁" replaced by " ", BOS as "\n<s>\n" and EOS as
// "\n</s>\n"; Piece() returns them as stored.
//
// Encode (run.c): the dummy prefix " " (when requested and the text is non-empty), each UTF-8
// character looked up as a piece or else spelled as its byte-fallback pieces <0xNN> (run.c's
// "byte + 3", found here by name), then repeatedly the adjacent pair whose concatenation is the
// highest-scoring piece is merged (leftmost on ties), in O(n log n) rather than run.c's O(n^2).
// Special-looking text ("<s>") is encoded literally. BOS is config.bos_token_id, else 1; EOS is
// config.eos_token_ids[0], else 2 (llama2.c's constants).
//
// TokenBytes: the piece, <0xNN> -> the byte, BOS/EOS/"<unk>" -> "", and one leading space
// dropped from the first token of a text or the token after BOS (as run.c's decode does after
// BOS).
#ifndef CMOE_ENGINE_LLAMA2C_TOKENIZER_H_
#define CMOE_ENGINE_LLAMA2C_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace cmoe::engine {

class Llama2cTokenizer final : public Tokenizer {
 public:
  // Reads a llama2.c tokenizer .bin. Errors name the file: NotFound, and InvalidArgument for a
  // truncated file, a negative or oversized length, a non-finite score, no tokens, or a token
  // count different from config.vocab_size (when that is set).
  //   auto tok = Llama2cTokenizer::Open("/models/stories260K/tok512.bin", config);
  static absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Open(const std::string& path,
                                                                const ModelConfig& config);

  // Tokenizer interface; see tokenizer.h and the file comment.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t previous, int32_t id) const override;
  std::string Piece(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool IsSpecial(int32_t id) const override;
  bool DefaultDummyPrefix() const override { return true; }  // run.c always adds it

  // The score stored for `id` (0 outside the vocabulary).
  //   float s = tok->Score(300);
  float Score(int32_t id) const;
  // The max_token_length field of the file header.
  int32_t max_token_length() const { return max_token_length_; }

 private:
  Llama2cTokenizer() = default;
  absl::Status Parse(std::string_view data, const std::string& path, const ModelConfig& config);
  void BuildTables();
  void AppendCharSymbols(std::string_view character, std::vector<int32_t>* symbols) const;

  int32_t max_token_length_ = 0;
  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::unordered_map<std::string, int32_t> piece_to_id_;
  std::unordered_map<uint64_t, int32_t> merges_;  // (left, right) -> the concatenation's id
  std::array<int32_t, 256> byte_ids_{};           // -1 where there is no <0xNN> piece
  std::vector<bool> special_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  int32_t unk_id_ = -1;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_LLAMA2C_TOKENIZER_H_
