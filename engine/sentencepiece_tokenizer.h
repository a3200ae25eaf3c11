// A Tokenizer over libsentencepiece for tokenizer.model files (stories260K's tok512.model,
// babyllama-tok105's tok105.model, Llama-2's tokenizer.model).
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<SentencePieceTokenizer> tok,
//                         SentencePieceTokenizer::Open(dir + "/tok512.model", config));
//   CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time", {}));
//
// Encoding is libsentencepiece's, with its normalizer spec: tok512 and tok105 use the identity
// normalization but remove extra whitespace (leading and trailing spaces dropped, runs of spaces
// collapsed), so Decode(Encode(text)) == text only for text without those. Text that looks like
// a control token ("<s>") is encoded literally. Characters outside a vocabulary without byte
// fallback (tok105) become the unk id, a run of them a single unk.
//
// The dummy prefix: libsentencepiece reads add_dummy_prefix from the model's normalizer spec.
// Open loads the model twice, with that flag forced on and off (by appending the field to the
// serialized NormalizerSpec; protobuf keeps the last value of a repeated scalar field), and
// Encode picks per EncodeOptions::add_dummy_prefix; this is exact, unlike stripping a leading
// "▁" from the output, which would leave merges such as "▁Once" behind.
//
// Decoding (TokenBytes): the piece with "▁" -> " ", byte pieces <0xNN> -> the byte, control,
// unknown and unused pieces -> "", and one leading space dropped from the first token of a text
// or the token after BOS. Unlike libsentencepiece's own decoder, unk decodes to "" not " ⁇ ".
#ifndef CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_
#define CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace cmoe::engine {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Loads a SentencePiece model file. BOS/EOS: config.bos_token_id / config.eos_token_ids[0]
  // when set, else the model's bos_id() / eos_id(). Errors name the file: NotFound, and
  // InvalidArgument for a file libsentencepiece rejects or a vocabulary larger than
  // config.vocab_size (when that is set).
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

  std::unique_ptr<sentencepiece::SentencePieceProcessor> with_prefix_;
  std::unique_ptr<sentencepiece::SentencePieceProcessor> without_prefix_;
  std::vector<std::string> token_bytes_;  // TokenBytes without the leading-space rule
  std::vector<bool> special_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool default_dummy_prefix_ = true;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SENTENCEPIECE_TOKENIZER_H_
