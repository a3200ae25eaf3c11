#include "engine/utf8.h"

#include <gtest/gtest.h>

namespace cmoe::engine {
namespace {

TEST(Utf8Test, CharLengthFollowsTable37) {
  EXPECT_EQ(Utf8CharLength("a", 0), 1u);
  EXPECT_EQ(Utf8CharLength("\xC3\xA9", 0), 2u);          // é
  EXPECT_EQ(Utf8CharLength("\xE4\xB8\xAD", 0), 3u);      // 中
  EXPECT_EQ(Utf8CharLength("\xF0\x9F\x98\x80", 0), 4u);  // 😀
  EXPECT_EQ(Utf8CharLength("\xC0\xAF", 0), 0u);          // overlong
  EXPECT_EQ(Utf8CharLength("\xE0\x80\xAF", 0), 0u);      // overlong
  EXPECT_EQ(Utf8CharLength("\xED\xA0\x80", 0), 0u);      // surrogate
  EXPECT_EQ(Utf8CharLength("\xF4\x90\x80\x80", 0), 0u);  // above U+10FFFF
  EXPECT_EQ(Utf8CharLength("\xE4\xB8", 0), 0u);          // cut off
  EXPECT_EQ(Utf8CharLength("\x80", 0), 0u);              // lone continuation
  EXPECT_EQ(Utf8CharLength("a", 1), 0u);                 // past the end
}

TEST(Utf8Test, IsValid) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("h\xC3\xA9llo \xE4\xB8\xAD\xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("ab\xE4\xB8"));
  EXPECT_FALSE(IsValidUtf8(std::string_view("a\xC3(", 3)));
}

TEST(Utf8Test, IncompleteSuffixLength) {
  EXPECT_EQ(IncompleteUtf8SuffixLength(""), 0u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("abc"), 0u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("a\xE4"), 1u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("a\xE4\xB8"), 2u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("a\xE4\xB8\xAD"), 0u);  // complete
  EXPECT_EQ(IncompleteUtf8SuffixLength("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("\xE0\x80"), 0u);  // can never become valid
  EXPECT_EQ(IncompleteUtf8SuffixLength("\xFF"), 0u);
  EXPECT_EQ(IncompleteUtf8SuffixLength("\xB8"), 0u);
}

TEST(Utf8Test, SanitizeReplacesMaximalSubparts) {
  EXPECT_EQ(SanitizeUtf8("abc"), "abc");
  EXPECT_EQ(SanitizeUtf8("a\xFF"
                         "b"),
            "a\uFFFD"
            "b");
  EXPECT_EQ(SanitizeUtf8("a\xE4\xB8"
                         "b"),
            "a\uFFFD"
            "b");  // one U+FFFD for the cut sequence
  EXPECT_EQ(SanitizeUtf8("\xE4\xB8"), "\uFFFD");
  EXPECT_EQ(SanitizeUtf8("\x80\x80"), "\uFFFD\uFFFD");
  EXPECT_EQ(SanitizeUtf8("\xC3\xA9"), "\xC3\xA9");
}

TEST(Utf8Test, BytePieces) {
  EXPECT_EQ(ParseBytePiece("<0x0A>"), 10);
  EXPECT_EQ(ParseBytePiece("<0xff>"), 255);
  EXPECT_EQ(ParseBytePiece("<0xG0>"), std::nullopt);
  EXPECT_EQ(ParseBytePiece("<s>"), std::nullopt);
  EXPECT_EQ(ParseBytePiece("<0x0A"), std::nullopt);
  for (int b = 0; b < 256; ++b) EXPECT_EQ(ParseBytePiece(BytePiece(b)), b);
  EXPECT_EQ(BytePiece(0xAB), "<0xAB>");
}

TEST(Utf8Test, ReplaceAll) {
  EXPECT_EQ(ReplaceAll("a b  c", " ", kMetaspace), "a\u2581b\u2581\u2581c");
  EXPECT_EQ(ReplaceAll("\u2581x\u2581", kMetaspace, " "), " x ");
  EXPECT_EQ(ReplaceAll("", " ", "x"), "");
}

}  // namespace
}  // namespace cmoe::engine
