// Llama2cTokenizer on small synthetic tokenizer .bin files.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "engine/llama2c_tokenizer.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

struct BinToken {
  float score;
  std::string bytes;
};

template <typename T>
void AppendRaw(T value, std::string* out) {
  char raw[sizeof(T)];
  std::memcpy(raw, &value, sizeof(T));
  out->append(raw, sizeof(T));
}

std::string SerializeBin(int32_t max_token_length, const std::vector<BinToken>& tokens) {
  std::string out;
  AppendRaw(max_token_length, &out);
  for (const BinToken& token : tokens) {
    AppendRaw(token.score, &out);
    AppendRaw(static_cast<int32_t>(token.bytes.size()), &out);
    out += token.bytes;
  }
  return out;
}

constexpr int32_t kByte0 = 3;
constexpr int32_t kSpace = 259, kA = 260, kB = 261, kAB = 262, kSpaceA = 263, kSpaceAB = 264,
                  kBA = 265;

std::vector<BinToken> TinyVocab() {
  std::vector<BinToken> tokens = {{0, "<unk>"}, {0, "\n<s>\n"}, {0, "\n</s>\n"}};
  for (int b = 0; b < 256; ++b) tokens.push_back({0, BytePiece(b)});
  for (const BinToken& token : std::vector<BinToken>{
           {-10, " "}, {-10, "a"}, {-10, "b"}, {-1, "ab"}, {-2, " a"}, {-3, " ab"}, {-1, "ba"}}) {
    tokens.push_back(token);
  }
  return tokens;
}

class Llama2cTokenizerUnitTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<Llama2cTokenizer>> Load(const std::string& bytes,
                                                         const ModelConfig& config = {}) {
    testing::WriteFile(path(), bytes);
    return Llama2cTokenizer::Open(path(), config);
  }
  std::string path() const { return dir_.Join("tok.bin"); }
  static std::vector<int32_t> Ids(const Tokenizer& tok, std::string_view text, bool bos = false,
                                  bool prefix = true) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, {bos, prefix});
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  testing::ScratchDir dir_;
};

TEST_F(Llama2cTokenizerUnitTest, MergesHighestScoreLeftmostOnTies) {
  auto tok = Load(SerializeBin(6, TinyVocab()));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), kBA + 1);
  EXPECT_EQ((*tok)->max_token_length(), 6);
  // "ab" (-1) merges before " a" (-2), then " " + "ab" -> " ab".
  EXPECT_THAT(Ids(**tok, "ab", true), ElementsAre(1, kSpaceAB));
  EXPECT_THAT(Ids(**tok, "a"), ElementsAre(kSpaceA));
  // "ab" and "ba" tie at -1: the leftmost pair merges.
  EXPECT_THAT(Ids(**tok, "aba", false, false), ElementsAre(kAB, kA));
  EXPECT_THAT(Ids(**tok, "bab", false, false), ElementsAre(kBA, kB));
  EXPECT_THAT(Ids(**tok, "\xC3\xA9", false, false), ElementsAre(kByte0 + 0xC3, kByte0 + 0xA9));
  EXPECT_THAT(Ids(**tok, "", true), ElementsAre(1));
  EXPECT_THAT(Ids(**tok, "", false), ElementsAre());
  EXPECT_EQ((*tok)->Encode("\xC3", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(Llama2cTokenizerUnitTest, TokenBytes) {
  auto tok = Load(SerializeBin(6, TinyVocab()));
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_EQ((*tok)->TokenBytes(-1, kSpaceAB).value(), "ab");
  EXPECT_EQ((*tok)->TokenBytes(1, kSpaceAB).value(), "ab");
  EXPECT_EQ((*tok)->TokenBytes(kA, kSpaceAB).value(), " ab");
  EXPECT_EQ((*tok)->TokenBytes(kA, 1).value(), "");
  EXPECT_EQ((*tok)->TokenBytes(kA, 2).value(), "");
  EXPECT_EQ((*tok)->TokenBytes(kA, 0).value(), "");
  EXPECT_EQ((*tok)->TokenBytes(kA, kByte0 + 10).value(), "\n");
  EXPECT_EQ((*tok)->Piece(1), "\n<s>\n");
  EXPECT_TRUE((*tok)->IsSpecial(0));
  EXPECT_FALSE((*tok)->IsSpecial(kA));
  EXPECT_EQ((*tok)->TokenBytes(kA, kBA + 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->Decode(Ids(**tok, "ab ba\xC3\xA9", true)).value(), "ab ba\xC3\xA9");
}

TEST_F(Llama2cTokenizerUnitTest, MalformedFilesNameTheFile) {
  const auto expect_invalid = [&](const std::string& bytes, const std::string& what,
                                  const ModelConfig& config = {}) {
    const absl::Status status = Load(bytes, config).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(path()));
    EXPECT_THAT(status.message(), HasSubstr(what));
  };
  const std::string good = SerializeBin(6, TinyVocab());
  expect_invalid(good.substr(0, 2), "truncated header");
  expect_invalid(good.substr(0, good.size() - 1), "token 265 is truncated");
  expect_invalid(good.substr(0, 4 + 6), "token 0 is truncated");
  expect_invalid(SerializeBin(6, {}), "no tokens");
  expect_invalid(SerializeBin(-1, {{0, "a"}}), "negative max_token_length");
  expect_invalid(SerializeBin(2, {{0, "abc"}}), "longer than max_token_length");
  std::string negative = SerializeBin(6, {{0, "a"}});
  const int32_t minus_five = -5;
  std::memcpy(negative.data() + 8, &minus_five, 4);
  expect_invalid(negative, "negative length -5");
  expect_invalid(SerializeBin(6, {{std::numeric_limits<float>::quiet_NaN(), "a"}}), "non-finite");
  ModelConfig config;
  config.vocab_size = 300;
  expect_invalid(good, "vocab_size is 300", config);
  EXPECT_EQ(Llama2cTokenizer::Open(dir_.Join("missing.bin"), {}).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace cmoe::engine
