// LoadTokenizer picks tokenizer.json, else tokenizer.model (integration: reads ../shared).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/bpe_tokenizer.h"
#include "engine/sentencepiece_tokenizer.h"
#include "engine/tokenizer.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(TokenizerLoaderTest, PrefersTokenizerJson) {
  auto tok = LoadTokenizer(testing::SharedModel("tinystories-656k"), {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_NE(dynamic_cast<BpeTokenizer*>(tok->get()), nullptr);
  EXPECT_THAT((*tok)->Encode("Once upon a time", {true, false}).value(),
              ElementsAre(1, 147, 201, 282, 57));
}

TEST(TokenizerLoaderTest, FallsBackToTokenizerModel) {
  testing::ScratchDir dir;  // a model directory whose tokenizer.model is tok512.model
  std::filesystem::create_symlink(testing::SharedModel("stories260K/tok512.model"),
                                  dir.Join("tokenizer.model"));
  auto tok = LoadTokenizer(dir.path(), {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_NE(dynamic_cast<SentencePieceTokenizer*>(tok->get()), nullptr);
  EXPECT_THAT((*tok)->Encode("Once upon a time", {}).value(), ElementsAre(1, 403, 407, 261, 378));
}

TEST(TokenizerLoaderTest, NotFoundNamesBothFiles) {
  testing::ScratchDir dir;
  const absl::Status status = LoadTokenizer(dir.path(), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.json"));
  EXPECT_THAT(status.message(), HasSubstr("tokenizer.model"));
  EXPECT_THAT(status.message(), HasSubstr(dir.path()));
}

TEST(TokenizerLoaderTest, UnsupportedModelTypeIsInvalidArgument) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.Join("tokenizer.json"),
                     R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  const absl::Status status = LoadTokenizer(dir.path(), {}).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("WordPiece"));
  EXPECT_THAT(status.message(), HasSubstr(dir.Join("tokenizer.json")));
}

}  // namespace
}  // namespace cmoe::engine
