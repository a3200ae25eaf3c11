// BpeTokenizer on small synthetic tokenizer.json files, and the pair-merging core.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "engine/bpe_tokenizer.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using Json = nlohmann::json;

// Ids of the synthetic vocabulary: <unk> <s> </s>, 256 byte pieces, then these.
constexpr int32_t kByte0 = 3;
constexpr int32_t kMeta = 259, kA = 260, kB = 261, kC = 262, kAB = 263, kMetaAB = 264, kABC = 265,
                  kEot = 266;

Json TinyTokenizer() {
  Json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  for (int b = 0; b < 256; ++b) vocab[BytePiece(b)] = kByte0 + b;
  for (auto [piece, id] : std::vector<std::pair<std::string, int>>{{"\u2581", kMeta},
                                                                   {"a", kA},
                                                                   {"b", kB},
                                                                   {"c", kC},
                                                                   {"ab", kAB},
                                                                   {"\u2581ab", kMetaAB},
                                                                   {"abc", kABC}}) {
    vocab[piece] = id;
  }
  Json root;
  root["added_tokens"] = Json::array({{{"id", 0}, {"content", "<unk>"}, {"special", true}},
                                      {{"id", 1}, {"content", "<s>"}, {"special", true}},
                                      {{"id", 2}, {"content", "</s>"}, {"special", true}},
                                      {{"id", kEot}, {"content", "<|eot|>"}, {"special", true}}});
  root["normalizer"] = {
      {"type", "Sequence"},
      {"normalizers",
       {{{"type", "Prepend"}, {"prepend", "\u2581"}},
        {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}}}}};
  root["pre_tokenizer"] = nullptr;
  root["post_processor"] = {{"type", "TemplateProcessing"},
                            {"single",
                             {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                              {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  root["decoder"] = {{"type", "Sequence"},
                     {"decoders",
                      {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                       {{"type", "ByteFallback"}},
                       {{"type", "Fuse"}},
                       {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}};
  // Merge ranks: "a b" before "▁ ab" before "ab c"; both spellings of a merge are accepted.
  root["model"] = {{"type", "BPE"},
                   {"unk_token", "<unk>"},
                   {"byte_fallback", true},
                   {"fuse_unk", true},
                   {"vocab", vocab},
                   {"merges", {"a b", Json::array({"\u2581", "ab"}), Json::array({"ab", "c"})}}};
  return root;
}

class BpeTokenizerUnitTest : public ::testing::Test {
 protected:
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> Load(const Json& json,
                                                     const ModelConfig& config = {}) {
    return LoadText(json.dump(), config);
  }
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> LoadText(const std::string& text,
                                                         const ModelConfig& config = {}) {
    testing::WriteFile(path(), text);
    return BpeTokenizer::Open(path(), config);
  }
  std::string path() const { return dir_.Join("tokenizer.json"); }
  std::vector<int32_t> Ids(const Tokenizer& tok, std::string_view text, bool bos = false,
                           bool prefix = true) {
    absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, {bos, prefix});
    EXPECT_TRUE(ids.ok()) << ids.status();
    return ids.ok() ? *ids : std::vector<int32_t>{};
  }

  testing::ScratchDir dir_;
};

TEST_F(BpeTokenizerUnitTest, MergesByRankLeftmostFirst) {
  auto tok = Load(TinyTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(Ids(**tok, "ab", true), ElementsAre(1, kMetaAB));
  // "▁ ab" (rank 1) wins over "ab c" (rank 2), which then has nothing to merge with.
  EXPECT_THAT(Ids(**tok, "abc"), ElementsAre(kMetaAB, kC));
  EXPECT_THAT(Ids(**tok, "abc", false, false), ElementsAre(kABC));
  EXPECT_THAT(Ids(**tok, "ab ab"), ElementsAre(kMetaAB, kMetaAB));
  EXPECT_THAT(Ids(**tok, "ba"), ElementsAre(kMeta, kB, kA));
}

TEST_F(BpeTokenizerUnitTest, ByteFallbackAndDecode) {
  auto tok = Load(TinyTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(Ids(**tok, "\xC3\xA9", false, false), ElementsAre(kByte0 + 0xC3, kByte0 + 0xA9));
  const std::string text = "ab \xE4\xB8\xAD\xF0\x9F\x98\x80 abc";
  const std::vector<int32_t> ids = Ids(**tok, text, true);
  EXPECT_EQ(ids.size(), 1 + 1 + 1 + 3 + 4 + 2u);  // <s> ▁ab ▁ 中 😀 ▁ab c
  EXPECT_EQ((*tok)->Decode(ids).value(), text);
}

TEST_F(BpeTokenizerUnitTest, UnkWithoutByteFallbackIsFused) {
  Json json = TinyTokenizer();
  json["model"]["byte_fallback"] = false;
  auto fused = Load(json);
  ASSERT_TRUE(fused.ok()) << fused.status();
  EXPECT_THAT(Ids(**fused,
                  "a\xC3\xA9\xE4\xB8\xAD"
                  "b",
                  false, false),
              ElementsAre(kA, 0, kB));
  EXPECT_EQ((*fused)
                ->Decode(Ids(**fused,
                             "a\xC3\xA9"
                             "b"))
                .value(),
            "ab");
  json["model"]["fuse_unk"] = false;
  auto unfused = Load(json);
  ASSERT_TRUE(unfused.ok()) << unfused.status();
  EXPECT_THAT(Ids(**unfused, "a\xC3\xA9\xE4\xB8\xAD", false, false), ElementsAre(kA, 0, 0));
}

TEST_F(BpeTokenizerUnitTest, AddedTokensMatchedInRawText) {
  auto tok = Load(TinyTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  // The dummy prefix goes only before the first stretch of text.
  EXPECT_THAT(Ids(**tok, "ab<|eot|>c", true), ElementsAre(1, kMetaAB, kEot, kC));
  EXPECT_THAT(Ids(**tok, "<|eot|><|eot|>ab"), ElementsAre(kEot, kEot, kAB));
  EXPECT_THAT(Ids(**tok, "<s>"), ElementsAre(1));
  EXPECT_THAT(Ids(**tok, "<|eot"), ElementsAre(kMeta, kByte0 + '<', kByte0 + '|', kByte0 + 'e',
                                               kByte0 + 'o', kByte0 + 't'));
  EXPECT_TRUE((*tok)->IsSpecial(kEot));
  EXPECT_EQ((*tok)->TokenBytes(kA, kEot).value(), "");
  EXPECT_EQ((*tok)->PieceToId("<|eot|>"), kEot);
  EXPECT_EQ((*tok)->Piece(kEot), "<|eot|>");
  EXPECT_EQ((*tok)->vocab_size(), kEot + 1);
}

TEST_F(BpeTokenizerUnitTest, EmptyInvalidAndOutOfRange) {
  auto tok = Load(TinyTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(Ids(**tok, "", true), ElementsAre(1));
  EXPECT_THAT(Ids(**tok, "", false), ElementsAre());
  EXPECT_EQ((*tok)->Encode("a\xFF", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->TokenBytes(-1, kEot + 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->TokenBytes(-1, -3).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*tok)->Piece(kEot + 1), "");
}

TEST_F(BpeTokenizerUnitTest, LeadingSpaceDroppedOnlyAtStartOrAfterBos) {
  auto tok = Load(TinyTokenizer());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->TokenBytes(-1, kMetaAB).value(), "ab");
  EXPECT_EQ((*tok)->TokenBytes(1, kMetaAB).value(), "ab");
  EXPECT_EQ((*tok)->TokenBytes(kA, kMetaAB).value(), " ab");
  EXPECT_EQ((*tok)->TokenBytes(-1, kByte0 + 0x41).value(), "A");
  EXPECT_EQ((*tok)->Decode(std::vector<int32_t>{1, kMetaAB, kMetaAB, 2}).value(), "ab ab");
}

TEST_F(BpeTokenizerUnitTest, MetaspacePreTokenizerMatchesPrependNormalizer) {
  auto legacy = Load(TinyTokenizer());
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  Json json = TinyTokenizer();
  json["normalizer"] = nullptr;
  json["pre_tokenizer"] = {{"type", "Metaspace"},
                           {"replacement", "\u2581"},
                           {"prepend_scheme", "first"},
                           {"split", false}};
  auto metaspace = Load(json);
  ASSERT_TRUE(metaspace.ok()) << metaspace.status();
  for (const char* text : {"ab", "abc ab", "a<|eot|> b", "", "\xC3\xA9 ab"}) {
    for (bool prefix : {false, true}) {
      EXPECT_EQ(Ids(**legacy, text, true, prefix), Ids(**metaspace, text, true, prefix)) << text;
    }
  }
  // Metaspace does not prepend to text that already starts with a space; Prepend does.
  EXPECT_THAT(Ids(**legacy, " ab"), ElementsAre(kMeta, kMetaAB));
  EXPECT_THAT(Ids(**metaspace, " ab"), ElementsAre(kMetaAB));
}

TEST_F(BpeTokenizerUnitTest, BosEosResolution) {
  auto from_template = Load(TinyTokenizer());
  ASSERT_TRUE(from_template.ok()) << from_template.status();
  EXPECT_EQ((*from_template)->bos_id(), 1);
  EXPECT_EQ((*from_template)->eos_id(), -1);
  testing::WriteFile(dir_.Join("tokenizer_config.json"),
                     R"({"bos_token": {"content": "</s>"}, "eos_token": "<|eot|>"})");
  auto from_files = Load(TinyTokenizer());
  ASSERT_TRUE(from_files.ok()) << from_files.status();
  EXPECT_EQ((*from_files)->bos_id(), 2);
  EXPECT_EQ((*from_files)->eos_id(), kEot);
  ModelConfig config;
  config.bos_token_id = 0;
  config.eos_token_ids = {1, 2};
  auto from_config = Load(TinyTokenizer(), config);
  ASSERT_TRUE(from_config.ok()) << from_config.status();
  EXPECT_EQ((*from_config)->bos_id(), 0);
  EXPECT_EQ((*from_config)->eos_id(), 1);
  testing::WriteFile(dir_.Join("tokenizer_config.json"), R"({"bos_token": "<nope>"})");
  EXPECT_THAT(Load(TinyTokenizer()).status().message(), HasSubstr("<nope>"));
}

// Every malformed file is InvalidArgument naming the file and the offending part.
TEST_F(BpeTokenizerUnitTest, MalformedFilesNameTheProblem) {
  const auto expect_invalid = [&](const absl::Status& status, const std::string& what) {
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr(path()));
    EXPECT_THAT(status.message(), HasSubstr(what));
  };
  expect_invalid(LoadText("{ not json").status(), "not valid JSON");
  expect_invalid(LoadText("[1, 2]").status(), "not a JSON object");
  Json json = TinyTokenizer();
  json.erase("model");
  expect_invalid(Load(json).status(), "model");
  for (const char* type : {"WordPiece", "Unigram", "WordLevel"}) {
    json = TinyTokenizer();
    json["model"]["type"] = type;
    expect_invalid(Load(json).status(), type);
  }
  json = TinyTokenizer();
  json["model"]["merges"].push_back("a zz");
  expect_invalid(Load(json).status(), "\"zz\"");
  json = TinyTokenizer();
  json["model"]["merges"].push_back("a b c");
  expect_invalid(Load(json).status(), "merges[3]");
  json = TinyTokenizer();
  json["model"]["vocab"] = "oops";
  expect_invalid(Load(json).status(), "vocab");
  json = TinyTokenizer();
  json["normalizer"] = {{"type", "NFKC"}};
  expect_invalid(Load(json).status(), "NFKC");
  json = TinyTokenizer();
  json["normalizer"]["normalizers"][1]["pattern"] = {{"Regex", " +"}};
  expect_invalid(Load(json).status(), "Replace");
  json = TinyTokenizer();
  json["pre_tokenizer"] = {{"type", "ByteLevel"}};
  expect_invalid(Load(json).status(), "ByteLevel");
  json = TinyTokenizer();
  json["added_tokens"][0]["id"] = "zero";
  expect_invalid(Load(json).status(), "added_tokens");
  // A corrupt id far beyond the table must be rejected, not allocated for.
  json = TinyTokenizer();
  json["model"]["vocab"]["huge"] = 1 << 30;
  expect_invalid(Load(json).status(), "model.vocab[\"huge\"]");
  json = TinyTokenizer();
  json["added_tokens"][0]["id"] = 1 << 30;
  expect_invalid(Load(json).status(), "added_tokens");
  EXPECT_EQ(BpeTokenizer::Open(dir_.Join("missing.json"), {}).status().code(),
            absl::StatusCode::kNotFound);
}

TEST(MergeAdjacentPairsTest, LowestPriorityFirstLeftmostOnTies) {
  // 0 0 -> 1 (priority 1); 1 0 -> 2 (priority 0); 0 1 -> 3 (priority 2).
  const auto lookup = [](int32_t l, int32_t r) -> std::optional<PairMerge> {
    if (l == 0 && r == 0) return PairMerge{1, 1};
    if (l == 1 && r == 0) return PairMerge{0, 2};
    if (l == 0 && r == 1) return PairMerge{2, 3};
    return std::nullopt;
  };
  EXPECT_THAT(MergeAdjacentPairs(std::vector<int32_t>{0, 0, 0}, lookup), ElementsAre(2));
  EXPECT_THAT(MergeAdjacentPairs(std::vector<int32_t>{0, 0, 0, 0}, lookup), ElementsAre(2, 0));
  EXPECT_THAT(MergeAdjacentPairs(std::vector<int32_t>{0, 1}, lookup), ElementsAre(3));
  EXPECT_THAT(MergeAdjacentPairs(std::vector<int32_t>{}, lookup), ElementsAre());
  EXPECT_THAT(MergeAdjacentPairs(std::vector<int32_t>{5}, lookup), ElementsAre(5));
}

}  // namespace
}  // namespace cmoe::engine
