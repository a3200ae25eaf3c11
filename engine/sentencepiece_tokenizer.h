// A Tokenizer for SentencePiece tokenizer.model files (stories260K's tok512.model,
// babyllama-tok105's tok105.model, Llama-2's tokenizer.model), implemented here: the ModelProto
// is read with protobuf_wire, so neither libsentencepiece nor libprotobuf is linked (Debian's
// libsentencepiece bundles and exports its own protobuf-lite, which clashes with gRPC's
// libprotobuf in cmoe-serve).
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceTokenizer> tok,
//                         SentencePieceTokenizer::Open(dir + "/tok512.model", config));
//   CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time", {}));
//
// Encoding reproduces libsentencepiece's (0.1.9x) BPE model id for id (tests/engine/
// sentencepiece_oracle_test.cc compares the two on the shared corpora):
//  - normalization: only the "identity" normalizer (no precompiled character map) is supported;
//    a model with a character map (nmt_nfkc, nfkc, ...) is InvalidArgument. The normalizer
//    spec's remove_extra_whitespaces drops leading and trailing spaces and collapses runs of
//    spaces (only ' '; newlines are kept), escape_whitespaces turns ' ' into "▁", and the dummy
//    prefix "▁" goes before non-empty text. So Decode(Encode(text)) == text only for text
//    without extra spaces (tok512 and tok105 remove them).
//  - segmentation: the text is split into characters (user-defined pieces, longest first, stay
//    whole), then the adjacent pair whose concatenation is a vocabulary piece with the highest
//    score is merged, leftmost on ties, until none is left; merges into UNUSED pieces are undone
//    at the end. Characters outside the vocabulary become byte pieces <0xNN> with byte fallback
//    (tok512), else the unk id, a run of them a single unk (tok105). Text that looks like a
//    control token ("<s>") is encoded literally.
//  - only BPE models: UNIGRAM, WORD and CHAR models, and treat_whitespace_as_suffix, are
//    InvalidArgument naming the file.
//
// The dummy prefix: the model's add_dummy_prefix is DefaultDummyPrefix(); Encode follows
// EncodeOptions::add_dummy_prefix, applied before the merges (unlike stripping a leading "▁"
// from the output, which would leave merges such as "▁Once" behind).
//
// Decoding (TokenBytes): the piece with "▁" -> " ", byte pieces <0xNN> -> the byte, control,
// unknown and unused pieces -> "", and one leading space dropped from the first token of a text
// or the token after BOS. Unlike libsentencepiece's own decoder, unk decodes to "" not " ⁇ ".
#ifndef CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_
#define CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_

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

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a SentencePiece model file. BOS/EOS: config.bos_token_id / config.eos_token_ids[0]
  // when set, else the ids of the model's bos_piece / eos_piece ("<s>" / "</s>") when those are
  // control pieces, else -1. Errors name the file: NotFound, and InvalidArgument for a file
  // libsentencepiece rejects or a vocabulary larger than config.vocab_size (when that is set): a
  // malformed ModelProto, a model that is not BPE, a normalizer with a character map, no unknown
  // piece, or duplicate pieces.
  //   auto tok = SentencePieceTokenizer::Open("/models/stories260K/tok512.model", config);
  static absl::StatusOr<std::unique_ptr<SentencePieceTokenizer>> Open(const std::string& model_path,
                                                                      const ModelConfig& config);

  ~SentencePieceTokenizer() override;

  // Tokenizer interface; see tokenizer.h and the file comment.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t previous, int32_t id) const override;
  std::string Piece(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool IsSpecial(int32_t id) const override;
  // The model's add_dummy_prefix (true when its normalizer spec leaves it unset).
  bool DefaultDummyPrefix() const override { return default_dummy_prefix_; }

  // The score of piece `id` stored in the model (0 outside the vocabulary).
  //   float s = tok->Score(300);
  float Score(int32_t id) const;

 private:
  SentencePieceTokenizer();
  absl::Status Load(const std::string& model_path, const ModelConfig& config);
  void BuildDecodeTable();
  // The normalized text ("▁" for spaces, extra spaces removed, the dummy prefix when asked).
  std::string Normalize(std::string_view text, bool add_dummy_prefix) const;
  // libsentencepiece's PieceToId: control/unknown/byte pieces, then the others, else unk.
  int32_t PieceToId(std::string_view piece) const;
  // The length of the longest user-defined piece at text[pos] (*user_defined = true), else of
  // the character there.
  size_t SymbolLength(std::string_view text, size_t pos, bool* user_defined = nullptr) const;

  enum class PieceType : uint8_t { kNormal, kUnknown, kControl, kUserDefined, kUnused, kByte };

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  std::vector<PieceType> types_;
  std::unordered_map<std::string, int32_t> normal_ids_;    // NORMAL, USER_DEFINED, UNUSED
  std::unordered_map<std::string, int32_t> reserved_ids_;  // CONTROL, UNKNOWN, BYTE
  std::vector<std::string> user_defined_;
  std::array<int32_t, 256> byte_ids_{};
  int32_t unk_id_ = -1;
  bool byte_fallback_ = false;
  bool remove_extra_whitespaces_ = true;
  bool escape_whitespaces_ = true;
  std::vector<std::string> token_bytes_;  // TokenBytes without the leading-space rule
  std::vector<bool> special_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool default_dummy_prefix_ = true;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_
