// Hugging Face tokenizer.json with a "BPE" model, in the shape Llama-2-style checkpoints use
// (SentencePiece-converted vocabularies: "▁" for spaces, <0xNN> byte fallback, no pre-tokenizer
// or a Metaspace one), and the pair-merging core shared with the llama2.c tokenizer.
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<BpeTokenizer> tok,
//                         BpeTokenizer::Open(dir + "/tokenizer.json", config));
//   CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> ids, tok->Encode("Once upon a time", {}));
//
// Supported: normalizer null / Prepend / Replace (String pattern) / a Sequence of those;
// pre_tokenizer null / Metaspace; post_processor null / TemplateProcessing; decoder null /
// Replace / ByteFallback / Fuse / Strip / Metaspace / a Sequence of those. Anything else is
// InvalidArgument naming the type and the file, as are other model types (WordPiece, Unigram,
// WordLevel) and merges that reference tokens missing from the vocabulary.
//
// Encoding: added tokens (specials such as "<|end_story|>") are matched in the raw text first,
// leftmost-longest; each stretch of text between them is normalized and merged on its own. The
// dummy prefix (the normalizer's Prepend, or Metaspace's prepend_scheme) is applied only to a
// stretch at the very start of the text, and only when EncodeOptions::add_dummy_prefix is set.
// This deliberately differs from the legacy Hugging Face behaviour, which matches "normalized"
// added tokens in the normalized text (where "<|end_story|>" becomes "▁<|end_story|>" and is then
// missed after anything but a space). BPE merges run over each whole stretch (merges may cross
// "▁" here) with a priority queue: lowest merge rank first, leftmost on ties, as Hugging Face's
// BPE::merge_word does, in O(n log n).
//
// Decoding (TokenBytes): "▁" -> " ", <0xNN> -> the byte, special tokens -> "", and one leading
// space dropped from the first token of a text or the token after BOS (the Strip decoder).
#ifndef CMOE_ENGINE_BPE_TOKENIZER_H_
#define CMOE_ENGINE_BPE_TOKENIZER_H_

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"

namespace cmoe::engine {

// A merge the pair-merging loop may apply: lower `priority` goes first.
struct PairMerge {
  double priority = 0;
  int32_t merged_id = -1;
};

// Returns the merge of the adjacent pair (left, right), or nullopt when the pair does not merge.
using PairMergeLookup = absl::FunctionRef<std::optional<PairMerge>(int32_t left, int32_t right)>;

// Repeatedly replaces the adjacent pair with the lowest merge priority (the leftmost one on ties)
// by its merged id until no adjacent pair merges; O(n log n) in the number of symbols. This is
// both Hugging Face BPE (priority = merge rank) and llama2.c / SentencePiece BPE (priority =
// -score of the merged piece).
//   std::vector<int32_t> ids = MergeAdjacentPairs(char_ids, [&](int32_t l, int32_t r) {...});
std::vector<int32_t> MergeAdjacentPairs(std::span<const int32_t> symbols, PairMergeLookup lookup);

class BpeTokenizer final : public Tokenizer {
 public:
  // Loads `json_path` and, when they exist beside it, tokenizer_config.json and
  // special_tokens_map.json. BOS/EOS: config.bos_token_id / config.eos_token_ids[0] when set,
  // else the bos_token / eos_token of tokenizer_config.json, else special_tokens_map.json, else
  // (BOS only) the first special token of the TemplateProcessing post-processor. Errors name the
  // file: NotFound, InvalidArgument for malformed JSON or unsupported components.
  //   auto tok = BpeTokenizer::Open("/models/tinystories-656k/tokenizer.json", config);
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Open(const std::string& json_path,
                                                            const ModelConfig& config);

  // Tokenizer interface; see tokenizer.h and the file comment for the exact rules. With
  // add_bos, the BOS id is prepended and the post-processor's trailing special tokens (if any)
  // are appended.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override;
  absl::StatusOr<std::string> TokenBytes(int32_t previous, int32_t id) const override;
  std::string Piece(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(spec_.pieces.size()); }
  int32_t bos_id() const override { return bos_id_; }
  int32_t eos_id() const override { return eos_id_; }
  bool IsSpecial(int32_t id) const override;
  // False when the vocabulary shows that the model was trained without "▁" after BOS: it holds a
  // merged piece in which the BOS text is directly followed by something other than "▁"
  // (tinystories-656k has "▁<|start_story|>Once▁"). True otherwise when the normalizer or
  // pre-tokenizer prepends "▁".
  bool DefaultDummyPrefix() const override { return default_dummy_prefix_; }

  // The id of vocabulary or added-token entry `piece`; -1 when there is none.
  //   int32_t eos = tok->PieceToId("<|end_story|>");
  int32_t PieceToId(std::string_view piece) const;

  // One step of the normalizer (applied in order); internal, public for the loader code.
  struct NormalizerStep {
    bool is_prepend = false;  // Prepend `to`; otherwise replace every `from` with `to`.
    std::string from;
    std::string to;
  };
  struct AddedToken {
    std::string content;
    int32_t id = -1;
    bool special = false;
  };
  // The parsed components; internal, public so that the loader helpers can fill it.
  struct Spec {
    std::vector<std::string> pieces;  // by id; "" for holes
    std::unordered_map<std::string, int32_t> piece_to_id;
    std::unordered_map<uint64_t, PairMerge> merges;  // key: PairKey(left, right)
    std::vector<AddedToken> added_tokens;
    std::vector<NormalizerStep> normalizer;
    std::optional<std::string> metaspace;  // the Metaspace pre-tokenizer's replacement
    bool metaspace_prepend = false;        // its prepend_scheme is "first" or "always"
    bool metaspace_split = false;
    bool byte_fallback = false;
    bool fuse_unk = false;
    bool ignore_merges = false;
    int32_t unk_id = -1;
    std::vector<int32_t> template_prefix;  // special ids before $A in post_processor.single
    std::vector<int32_t> template_suffix;  // special ids after $A
    bool decode_metaspace = false;         // decoder turns "▁" into " "
    bool decode_byte_fallback = false;     // decoder turns <0xNN> into the byte
    bool decode_strip_leading_space = false;
  };

  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) |
           static_cast<uint32_t>(right);
  }

  BpeTokenizer(Spec spec, int32_t bos_id, int32_t eos_id);

 private:
  struct Segment {
    std::string_view text;  // plain text when id < 0
    int32_t id = -1;        // an added token
    size_t offset = 0;      // byte offset in the encoded text
  };

  std::vector<Segment> SplitAddedTokens(std::string_view text) const;
  std::string Normalize(std::string_view text, bool prepend) const;
  absl::Status EncodeSegment(std::string_view text, bool at_start, const EncodeOptions& options,
                             std::vector<int32_t>* ids) const;
  absl::Status EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;
  absl::Status AppendCharSymbols(std::string_view word, size_t pos, size_t len,
                                 std::vector<int32_t>* symbols) const;
  bool ComputeDefaultDummyPrefix() const;

  Spec spec_;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  std::array<int32_t, 256> byte_ids_;     // -1 where the vocabulary has no <0xNN>
  std::array<int32_t, 128> ascii_ids_;    // the piece of each ASCII character; -1 if none
  std::vector<std::string> token_bytes_;  // TokenBytes without the leading-space rule
  std::vector<bool> special_;
  bool default_dummy_prefix_ = true;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_BPE_TOKENIZER_H_
