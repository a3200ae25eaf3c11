// stories260K's vocabulary in its two forms: tok512.bin (Llama2cTokenizer) and tok512.model
// (libsentencepiece) agree piece by piece and encode the same (integration: reads ../shared).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>

#include "common/mapped_file.h"
#include "engine/llama2c_tokenizer.h"
#include "engine/sentencepiece_tokenizer.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;

class Tok512Test : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing::SharedModel("stories260K");
    auto bin = Llama2cTokenizer::Open(dir + "/tok512.bin", {});
    ASSERT_TRUE(bin.ok()) << bin.status();
    bin_ = *std::move(bin);
    auto sp = SentencePieceTokenizer::Open(dir + "/tok512.model", {});
    ASSERT_TRUE(sp.ok()) << sp.status();
    sp_ = *std::move(sp);
  }

  static std::vector<int32_t> Ids(const Tokenizer& tok, std::string_view text, bool prefix) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, {true, prefix});
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  std::unique_ptr<Llama2cTokenizer> bin_;
  std::unique_ptr<SentencePieceTokenizer> sp_;
};

// libsentencepiece trims and collapses spaces (remove_extra_whitespaces); run.c does not.
std::string CollapseSpaces(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  if (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

TEST_F(Tok512Test, SamePiecesAndScores) {
  ASSERT_EQ(bin_->vocab_size(), 512);
  ASSERT_EQ(sp_->vocab_size(), 512);
  size_t longest = 0;
  for (int32_t id = 0; id < 512; ++id) {
    // llama2.c's export writes "▁" as " " and spells BOS and EOS with newlines.
    std::string expected = ReplaceAll(sp_->Piece(id), kMetaspace, " ");
    if (id == 1) expected = "\n<s>\n";
    if (id == 2) expected = "\n</s>\n";
    EXPECT_EQ(bin_->Piece(id), expected) << id;
    EXPECT_EQ(bin_->Score(id), sp_->Score(id)) << id;  // bit-identical floats
    EXPECT_EQ(bin_->IsSpecial(id), sp_->IsSpecial(id)) << id;
    longest = std::max(longest, bin_->Piece(id).size());
  }
  EXPECT_EQ(static_cast<size_t>(bin_->max_token_length()), longest);
}

// Expected ids from a naive Python port of run.c's encode over tok512.bin.
TEST_F(Tok512Test, KnownEncodings) {
  EXPECT_THAT(Ids(*bin_, "Once upon a time", true), ElementsAre(1, 403, 407, 261, 378));
  EXPECT_THAT(Ids(*bin_, "Once upon a time", false), ElementsAre(1, 441, 416, 331, 407, 261, 378));
  EXPECT_THAT(Ids(*bin_, "<s>", true), ElementsAre(1, 410, 504, 419, 505));
  EXPECT_EQ(bin_->Decode(Ids(*bin_, "Once upon a time", true)).value(), "Once upon a time");
}

// Every line and paragraph of tinystories_val.txt and the first lines of wiki.test.raw: the same
// ids from both, once the spaces libsentencepiece would remove are removed for run.c too (no
// difference at all for lines without leading, trailing or doubled spaces).
TEST_F(Tok512Test, SameIdsAsSentencePiece) {
  for (const char* name : {"tinystories_val.txt", "wiki.test.raw"}) {
    const std::string text = ReadFileToString(testing::SharedData(name)).value();
    const size_t limit = std::string(name) == "wiki.test.raw" ? 300000 : text.size();
    size_t lines = 0, identical = 0;
    for (size_t pos = 0; pos < limit;) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      const std::string line = text.substr(pos, end - pos);
      pos = end + 1;
      for (bool prefix : {true, false}) {
        const std::vector<int32_t> sp_ids = Ids(*sp_, line, prefix);
        ASSERT_EQ(Ids(*bin_, CollapseSpaces(line), prefix), sp_ids) << name << ": " << line;
        identical += Ids(*bin_, line, prefix) == sp_ids;
      }
      ++lines;
    }
    EXPECT_GT(lines, 500u);
    // TinyStories lines rarely have extra spaces; every wiki line starts with one.
    if (std::string(name) == "tinystories_val.txt") {
      EXPECT_GT(identical, lines);  // out of 2 * lines encodings
    }
  }
  // One large multi-line sample in a single call.
  const std::string stories = ReadFileToString(testing::SharedData("tinystories_val.txt")).value();
  const std::string sample = CollapseSpaces(stories.substr(0, 400000));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int32_t> bin_ids = Ids(*bin_, sample, true);
  const double bin_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const std::vector<int32_t> sp_ids = Ids(*sp_, sample, true);
  std::printf("tok512.bin: %zu bytes -> %zu tokens in %.3f s\n", sample.size(), bin_ids.size(),
              bin_s);
  EXPECT_EQ(bin_ids, sp_ids);
}

}  // namespace
}  // namespace cmoe::engine
