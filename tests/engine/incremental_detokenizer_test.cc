#include "engine/incremental_detokenizer.h"

#include <gtest/gtest.h>

#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

// A byte-level fake: ids 0-255 are those bytes, kHello is " hello" (its space dropped at the
// start or after BOS, as the real tokenizers do), kBos is a special token.
constexpr int32_t kHello = 256, kBos = 257;

class FakeByteTokenizer final : public Tokenizer {
 public:
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                              const EncodeOptions& options) const override {
    std::vector<int32_t> ids;
    if (options.add_bos) ids.push_back(kBos);
    for (char c : text) ids.push_back(static_cast<uint8_t>(c));
    return ids;
  }
  absl::StatusOr<std::string> TokenBytes(int32_t previous, int32_t id) const override {
    if (id < 0 || id > kBos) return absl::InvalidArgumentError("id out of range");
    if (id == kBos) return std::string();
    if (id == kHello) return previous == -1 || previous == kBos ? "hello" : " hello";
    return std::string(1, static_cast<char>(id));
  }
  std::string Piece(int32_t id) const override { return ""; }
  int32_t vocab_size() const override { return kBos + 1; }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return -1; }
  bool IsSpecial(int32_t id) const override { return id == kBos; }
  bool DefaultDummyPrefix() const override { return true; }
};

struct Streamed {
  std::vector<std::string> pieces;  // each Push result, then Flush
  std::string text;
};

Streamed Stream(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  IncrementalDetokenizer detok(tok);
  Streamed out;
  for (int32_t id : ids) {
    absl::StatusOr<std::string> piece = detok.Push(id);
    EXPECT_TRUE(piece.ok()) << piece.status();
    out.pieces.push_back(piece.value_or(""));
  }
  out.pieces.push_back(detok.Flush());
  for (const std::string& piece : out.pieces) out.text += piece;
  return out;
}

TEST(IncrementalDetokenizerTest, NeverEmitsHalfACharacter) {
  FakeByteTokenizer tok;
  const std::string text = "a\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x98\x80!";  // aé 中😀!
  std::vector<int32_t> ids = tok.Encode(text, {.add_bos = false}).value();
  ids.insert(ids.begin() + 1, kHello);
  const Streamed streamed = Stream(tok, ids);
  EXPECT_EQ(streamed.text, tok.Decode(ids).value());
  EXPECT_EQ(streamed.text, "a hello\xC3\xA9 \xE4\xB8\xAD\xF0\x9F\x98\x80!");
  const std::vector<std::string> expected = {
      "a", " hello", "", "\xC3\xA9",         " ", "", "", "\xE4\xB8\xAD",
      "",  "",       "", "\xF0\x9F\x98\x80", "!", ""};
  EXPECT_EQ(streamed.pieces, expected);
  for (const std::string& piece : streamed.pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
}

TEST(IncrementalDetokenizerTest, LeadingSpaceRuleFollowsThePreviousToken) {
  FakeByteTokenizer tok;
  EXPECT_EQ(Stream(tok, {kBos, kHello, kHello}).text, "hello hello");
  EXPECT_EQ(Stream(tok, {kHello}).text, "hello");
  EXPECT_EQ(Stream(tok, {'x', kHello}).text, "x hello");
}

TEST(IncrementalDetokenizerTest, IllFormedBytesBecomeReplacementCharacters) {
  FakeByteTokenizer tok;
  EXPECT_EQ(Stream(tok, {0xFF, 'a'}).pieces, (std::vector<std::string>{"\uFFFD", "a", ""}));
  // A lead byte waits until the next byte shows that it cannot complete.
  EXPECT_EQ(Stream(tok, {0xE4, 'a'}).pieces, (std::vector<std::string>{"",
                                                                       "\uFFFD"
                                                                       "a",
                                                                       ""}));
  // Left unfinished at the end: Flush gives U+FFFD.
  EXPECT_EQ(Stream(tok, {'a', 0xE4, 0xB8}).pieces,
            (std::vector<std::string>{"a", "", "", "\uFFFD"}));
}

TEST(IncrementalDetokenizerTest, OutOfRangeIdFailsWithoutLosingState) {
  FakeByteTokenizer tok;
  IncrementalDetokenizer detok(tok);
  EXPECT_EQ(detok.Push(0xE4).value(), "");
  EXPECT_EQ(detok.Push(kBos + 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(detok.Push(0xB8).value(), "");
  EXPECT_EQ(detok.Push(0xAD).value(), "\xE4\xB8\xAD");
  EXPECT_EQ(detok.Flush(), "");
  EXPECT_EQ(detok.Push(kHello).value(), "hello");  // Flush starts a new text
}

}  // namespace
}  // namespace cmoe::engine
