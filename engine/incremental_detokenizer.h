// Streaming detokenization: feed generated token ids one at a time and get back only text that
// is complete UTF-8, so a client never sees half a character (byte-fallback tokens spell a
// multi-byte character over several ids).
//
//   IncrementalDetokenizer detok(*tokenizer);
//   for (int32_t id : generated) {
//     CMOE_ASSIGN_OR_RETURN(std::string text, detok.Push(id));
//     Send(text);  // may be empty
//   }
//   Send(detok.Flush());
//
// For token sequences whose full decode is valid UTF-8, the concatenation of every Push result
// and Flush equals Tokenizer::Decode of the whole sequence. Every returned string is valid UTF-8:
// ill-formed bytes that can no longer become a character are replaced by U+FFFD as soon as that
// is certain. Not thread-safe; the tokenizer must outlive the detokenizer.
#ifndef CMOE_ENGINE_INCREMENTAL_DETOKENIZER_H_
#define CMOE_ENGINE_INCREMENTAL_DETOKENIZER_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace cmoe::engine {

class IncrementalDetokenizer {
 public:
  // `tokenizer` is borrowed and must outlive this object. `previous` is the token before the
  // first pushed one (-1: none, the start of a text). Streaming a continuation, pass the prompt's
  // last token: a leading "▁" is a space there, dropped only at the start of a text.
  explicit IncrementalDetokenizer(const Tokenizer& tokenizer, int32_t previous = -1)
      : tokenizer_(&tokenizer), previous_(previous) {}

  // Appends token `id`; returns the newly completed text (possibly ""), holding back a trailing
  // incomplete UTF-8 sequence. An id outside the vocabulary is InvalidArgument and changes
  // nothing.
  //   CMOE_ASSIGN_OR_RETURN(std::string text, detok.Push(id));
  absl::StatusOr<std::string> Push(int32_t id);

  // Returns whatever is held back (an unfinished sequence becomes U+FFFD) and starts over as at
  // the beginning of a text.
  //   std::string rest = detok.Flush();
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  int32_t previous_ = -1;
  std::string pending_;  // bytes not yet returned: at most an incomplete UTF-8 sequence
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_INCREMENTAL_DETOKENIZER_H_
