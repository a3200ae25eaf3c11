// UTF-8 helpers for the tokenizers and the streaming detokenizer, and the small piece-text
// helpers that the SentencePiece-style vocabularies share ("▁" for a space, "<0xNN>" for a byte).
//
//   if (!IsValidUtf8(text)) return absl::InvalidArgumentError("not UTF-8");
//   size_t held = IncompleteUtf8SuffixLength(pending);  // bytes to keep for the next token
//
// Validity follows Unicode Table 3-7 (no overlongs, no surrogates, nothing above U+10FFFF).
#ifndef CMOE_ENGINE_UTF8_H_
#define CMOE_ENGINE_UTF8_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cmoe::engine {

// "▁" (U+2581), the SentencePiece meta symbol that stands for a space.
inline constexpr std::string_view kMetaspace = "\xE2\x96\x81";

// The length (1-4) of the well-formed UTF-8 character starting at text[pos]; 0 when the bytes
// there are not one (invalid lead, bad continuation, or cut off by the end of `text`).
//   size_t n = Utf8CharLength("é!", 0);  // 2
size_t Utf8CharLength(std::string_view text, size_t pos);

// True when `text` is entirely well-formed UTF-8.
//   IsValidUtf8("h\xC3\xA9") == true; IsValidUtf8("\xFF") == false
bool IsValidUtf8(std::string_view text);

// The number of bytes (0-3) at the end of `text` that form a proper prefix of a well-formed
// character, i.e. bytes that may still become valid when more bytes follow.
//   IncompleteUtf8SuffixLength("a\xE2\x96") == 2
size_t IncompleteUtf8SuffixLength(std::string_view text);

// `text` with every ill-formed sequence replaced by U+FFFD (one per maximal ill-formed subpart,
// as Python's errors="replace" does).
//   SanitizeUtf8("a\xFF") == "a\uFFFD"
std::string SanitizeUtf8(std::string_view text);

// The byte a byte-fallback piece "<0xNN>" (two upper- or lower-case hex digits) stands for.
//   ParseBytePiece("<0x0A>") == 10; ParseBytePiece("<s>") == std::nullopt
std::optional<uint8_t> ParseBytePiece(std::string_view piece);

// The byte-fallback piece for `byte`, spelled as SentencePiece and Hugging Face do: "<0x0A>".
std::string BytePiece(uint8_t byte);

// `text` with every occurrence of `from` (non-empty) replaced by `to`.
//   ReplaceAll("a b", " ", kMetaspace) == "a▁b"
std::string ReplaceAll(std::string_view text, std::string_view from, std::string_view to);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_UTF8_H_
