// The tokenizer interface the engine uses, and the loader that picks an implementation from the
// files of a model directory.
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tok, LoadTokenizer(dir, config));
//   CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time", {}));
//
// Implementations are immutable after loading and safe to use from several threads.
#ifndef CMOE_ENGINE_TOKENIZER_H_
#define CMOE_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"

namespace cmoe::engine {

struct EncodeOptions {
  bool add_bos = true;  // prepend the BOS id when the tokenizer has one
  // Prepend the dummy-prefix "▁" that SentencePiece-style tokenizers put before the text.
  // Models trained without it after BOS (tinystories-656k) want false.
  bool add_dummy_prefix = true;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids. Never fails on valid UTF-8; invalid UTF-8 is InvalidArgument.
  virtual absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                      const EncodeOptions& options) const = 0;

  // The bytes token `id` stands for when it follows `previous` (-1 at the start of a text):
  // "▁" becomes a space, <0xNN> becomes the byte, the leading space after BOS / at the start is
  // dropped as the Llama decoders do, special tokens (BOS/EOS/UNK) decode to "". The bytes may be
  // an incomplete UTF-8 sequence. An id outside the vocabulary is InvalidArgument.
  virtual absl::StatusOr<std::string> TokenBytes(int32_t previous, int32_t id) const = 0;

  // Ids -> text (the concatenation of TokenBytes). Invalid UTF-8 left at the end is kept as is.
  absl::StatusOr<std::string> Decode(std::span<const int32_t> ids) const;

  // The vocabulary entry of `id` as stored ("▁the", "<0x0A>", "<s>"); "" outside the vocabulary.
  virtual std::string Piece(int32_t id) const = 0;

  virtual int32_t vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // True for control tokens (BOS, EOS, UNK, added special tokens).
  virtual bool IsSpecial(int32_t id) const = 0;
  // Whether prompts should get the dummy prefix by default for this model.
  virtual bool DefaultDummyPrefix() const = 0;

 protected:
  // InvalidArgument naming `id` unless 0 <= id < vocab_size().
  absl::Status CheckTokenId(int32_t id) const;
};

// Loads the tokenizer of a model directory: tokenizer.json (Hugging Face BPE) when present, else
// tokenizer.model (SentencePiece). BOS/EOS come from the config files. NotFound names the files
// looked for; an unsupported tokenizer.json model type is InvalidArgument naming it.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                         const ModelConfig& config);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_TOKENIZER_H_
