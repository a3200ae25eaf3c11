// StopStringMatcher: text passes through untouched without stops; a stop string split over
// several pushes is found and no byte of it is ever returned; text that only looks like the start
// of a stop string is released once it cannot be one; UTF-8 characters are never split; the
// earliest of several stops wins; Flush returns what is held; after a match nothing more comes.
#include "engine/stop_strings.h"

#include <string>
#include <string_view>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

// Pushes `pieces` one by one; returns the concatenated output (stops at the first match, but
// keeps pushing to check that nothing more comes out).
std::string PushAll(StopStringMatcher& m, const std::vector<std::string>& pieces,
                    std::vector<std::string>* outputs = nullptr) {
  std::string all;
  for (const std::string& p : pieces) {
    const bool was_matched = m.matched();
    std::string out = m.Push(p);
    if (was_matched) {
      EXPECT_EQ(out, "") << "output after a match for push '" << p << "'";
    }
    if (outputs != nullptr) outputs->push_back(out);
    all += out;
  }
  return all;
}

// Whole, well-formed UTF-8 characters only.
bool IsWholeUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = 0;
    if (c < 0x80) {
      n = 1;
    } else if ((c & 0xE0) == 0xC0) {
      n = 2;
    } else if ((c & 0xF0) == 0xE0) {
      n = 3;
    } else if ((c & 0xF8) == 0xF0) {
      n = 4;
    } else {
      return false;
    }
    if (i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    }
    i += n;
  }
  return true;
}

TEST(StopStringMatcherTest, NoStopsPassesTextThrough) {
  StopStringMatcher m({});
  EXPECT_EQ(m.Push("Hello"), "Hello");
  EXPECT_EQ(m.Push(", wor"), ", wor");
  EXPECT_EQ(m.Push(""), "");
  EXPECT_EQ(m.Push("ld\n\n"), "ld\n\n");
  EXPECT_FALSE(m.matched());
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, EmptyStopStringsAreIgnored) {
  StopStringMatcher m({"", ""});
  EXPECT_EQ(m.Push("abc"), "abc");
  EXPECT_EQ(m.Push(""), "");
  EXPECT_FALSE(m.matched());
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, TextWithoutAnyStopPrefixIsNotHeld) {
  StopStringMatcher m({"The end"});
  EXPECT_EQ(m.Push("Once upon a time"), "Once upon a time");
  EXPECT_EQ(m.Push(" there was"), " there was");
  EXPECT_FALSE(m.matched());
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, StopInsideOnePushCutsBeforeIt) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.Push("abcSTOPdef"), "abc");
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(m.Push("more"), "");
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, StopAtTheVeryStart) {
  StopStringMatcher m({"\n"});
  EXPECT_EQ(m.Push("\nabc"), "");
  EXPECT_TRUE(m.matched());
}

TEST(StopStringMatcherTest, StopSplitAcrossPushesIsFoundAndNeverEmitted) {
  StopStringMatcher m({"The end"});
  std::vector<std::string> outs;
  const std::string all = PushAll(m, {"Hello. T", "he", " e", "n", "d", "! And then"}, &outs);
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(all, "Hello. ");
  ASSERT_EQ(outs.size(), 6u);
  EXPECT_EQ(outs[0], "Hello. ");
  for (size_t i = 1; i < outs.size(); ++i) EXPECT_EQ(outs[i], "") << "push " << i;
  EXPECT_EQ(m.Flush(), "");
}

TEST(StopStringMatcherTest, StopSplitCharacterByCharacter) {
  StopStringMatcher m({"\n\n"});
  const std::string all = PushAll(m, {"a", "b", "\n", "\n", "c"});
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(all, "ab");
}

TEST(StopStringMatcherTest, ResemblingPrefixIsReleasedOnceDisambiguated) {
  StopStringMatcher m({"The end"});
  EXPECT_EQ(m.Push("The"), "");                 // may become "The end"
  EXPECT_EQ(m.Push(" en"), "");                 // still may
  EXPECT_EQ(m.Push("ormous"), "The enormous");  // cannot any more
  EXPECT_FALSE(m.matched());
  EXPECT_EQ(m.Push(" dog. Th"), " dog. ");
  EXPECT_EQ(m.Flush(), "Th");
  EXPECT_FALSE(m.matched());
}

TEST(StopStringMatcherTest, OverlappingSelfPrefixIsHandled) {
  // "aab": after "aa" + "a" the first "a" can no longer start the stop, the last two still can.
  StopStringMatcher m({"aab"});
  std::vector<std::string> outs;
  const std::string all = PushAll(m, {"a", "a", "a", "b", "x"}, &outs);
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(all, "a");
  EXPECT_EQ(outs, (std::vector<std::string>{"", "", "a", "", ""}));
}

TEST(StopStringMatcherTest, ReleasedTextReassemblesTheInput) {
  // No stop ever completes: everything pushed comes back, in order, across Push and Flush.
  StopStringMatcher m({"<|end|>", "###"});
  const std::vector<std::string> pieces = {"a <", "|en", "d| b ", "#", "#", " c <|", "end"};
  std::string all = PushAll(m, pieces);
  EXPECT_FALSE(m.matched());
  all += m.Flush();
  std::string input;
  for (const auto& p : pieces) input += p;
  EXPECT_EQ(all, input);
}

TEST(StopStringMatcherTest, MultibyteUtf8IsNeverSplit) {
  // The stop begins with a 3-byte character; the held text must start at a character boundary and
  // everything returned must be whole characters.
  StopStringMatcher m({"€uro", "日本"});
  std::vector<std::string> outs;
  const std::string all =
      PushAll(m, {"Preis 5", "€", "s ", "und ", "日", "曜", "日", "本", "語"}, &outs);
  for (size_t i = 0; i < outs.size(); ++i) {
    EXPECT_TRUE(IsWholeUtf8(outs[i])) << "push " << i << ": '" << outs[i] << "'";
  }
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(all, "Preis 5€s und 日曜");
  EXPECT_EQ(outs[1], "");     // "€" held: may become "€uro"
  EXPECT_EQ(outs[2], "€s ");  // released whole
}

TEST(StopStringMatcherTest, MultibyteStopFoundAcrossPushes) {
  StopStringMatcher m({"é!"});
  std::vector<std::string> outs;
  const std::string all = PushAll(m, {"caf", "é", "!", "x"}, &outs);
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(all, "caf");
  for (const auto& o : outs) EXPECT_TRUE(IsWholeUtf8(o)) << o;
}

TEST(StopStringMatcherTest, EarliestOfSeveralStopsWins) {
  {
    StopStringMatcher m({"world", "lo w"});
    EXPECT_EQ(m.Push("hello world"), "hel");
    EXPECT_TRUE(m.matched());
  }
  {
    StopStringMatcher m({"lo w", "world"});  // order of the list does not matter
    EXPECT_EQ(m.Push("hello world"), "hel");
  }
  {
    // The longer stop starts earlier although the shorter one completes first.
    StopStringMatcher m({"cd", "abcdef"});
    EXPECT_EQ(m.Push("xxabcdef"), "xx");
  }
  {
    // Across pushes: both complete in the same push; the one that starts first wins.
    StopStringMatcher m({"abcd", "c"});
    std::string all = PushAll(m, {"xab", "cd"});
    EXPECT_TRUE(m.matched());
    EXPECT_EQ(all, "x");
  }
}

TEST(StopStringMatcherTest, FlushReturnsHeldTextOnce) {
  StopStringMatcher m({"STOP"});
  EXPECT_EQ(m.Push("abc ST"), "abc ");
  EXPECT_EQ(m.Flush(), "ST");
  EXPECT_EQ(m.Flush(), "");
  EXPECT_FALSE(m.matched());
}

TEST(StopStringMatcherTest, AfterAMatchPushAndFlushReturnNothing) {
  StopStringMatcher m({"END"});
  EXPECT_EQ(m.Push("fooEN"), "foo");
  EXPECT_EQ(m.Push("Dbar"), "");
  EXPECT_TRUE(m.matched());
  EXPECT_EQ(m.Push("baz"), "");
  EXPECT_EQ(m.Push("END"), "");
  EXPECT_EQ(m.Flush(), "");
  EXPECT_TRUE(m.matched());
}

}  // namespace
}  // namespace cmoe::engine
