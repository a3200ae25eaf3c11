// SentencePieceTokenizer (our implementation) against libsentencepiece as the oracle: identical
// ids on the whole shared corpora (line by line and in multi-line chunks) and on edge cases, for
// stories260K's tok512.model (byte fallback) and babyllama-tok105's tok105.model (unk runs), with
// and without the dummy prefix. Integration: reads ../shared. Links libsentencepiece (and its
// bundled protobuf-lite) but not gRPC.
#include <gtest/gtest.h>

// libsentencepiece 0.1.97's header declares `namespace absl { using std::string_view; }`, which
// clashes with Debian's Abseil; compile it against a private namespace instead.
#define absl cmoe_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

#include <optional>

#include "common/mapped_file.h"
#include "engine/protobuf_wire.h"
#include "engine/sentencepiece_tokenizer.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

// `model` with NormalizerSpec.add_dummy_prefix (ModelProto field 3, its field 3) forced to
// `value` by appending the field to every normalizer_spec (protobuf keeps the last value).
std::string WithAddDummyPrefix(std::string_view model, bool value) {
  const std::string flag = {static_cast<char>(3 << 3 | kWireVarint), static_cast<char>(value)};
  std::string out;
  bool found = false;
  size_t pos = 0;
  while (pos < model.size()) {
    const size_t begin = pos;
    const std::optional<WireField> field = ReadWireField(model, &pos);
    if (!field) return "";
    if (field->number != 3 || field->wire_type != kWireLengthDelimited) {
      out.append(model.substr(begin, pos - begin));
      continue;
    }
    found = true;
    out.push_back(static_cast<char>(3 << 3 | kWireLengthDelimited));
    AppendVarint(field->payload.size() + flag.size(), &out);
    out.append(field->payload);
    out.append(flag);
  }
  if (!found) {
    out += std::string(1, static_cast<char>(3 << 3 | kWireLengthDelimited)) +
           static_cast<char>(flag.size()) + flag;
  }
  return out;
}

class OracleTest : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override {
    const std::string path = testing::SharedModel(GetParam());
    auto tok = SentencePieceTokenizer::Open(path, {});
    ASSERT_TRUE(tok.ok()) << tok.status();
    ours_ = *std::move(tok);
    const std::string model = ReadFileToString(path).value();
    for (bool prefix : {false, true}) {
      ASSERT_TRUE(oracle_[prefix].LoadFromSerializedProto(WithAddDummyPrefix(model, prefix)).ok());
    }
  }

  // Compares the ids of `text` under both prefix settings; returns the number of ids compared.
  size_t Compare(std::string_view text) {
    size_t count = 0;
    for (bool prefix : {false, true}) {
      std::vector<int> expected;
      EXPECT_TRUE(oracle_[prefix].Encode(text, &expected).ok());
      absl::StatusOr<std::vector<int32_t>> actual = ours_->Encode(text, {false, prefix});
      EXPECT_TRUE(actual.ok()) << actual.status();
      if (!actual.ok()) continue;
      const std::vector<int32_t> want(expected.begin(), expected.end());
      EXPECT_EQ(*actual, want) << GetParam() << " prefix=" << prefix << " text: \"" << text << "\"";
      if (*actual != want) ++mismatches_;
      count += want.size();
    }
    return count;
  }

  std::unique_ptr<SentencePieceTokenizer> ours_;
  sentencepiece::SentencePieceProcessor oracle_[2];
  size_t mismatches_ = 0;
};

TEST_P(OracleTest, SpecialsMatch) {
  EXPECT_EQ(ours_->vocab_size(), oracle_[1].GetPieceSize());
  EXPECT_EQ(ours_->bos_id(), oracle_[1].bos_id());
  EXPECT_EQ(ours_->eos_id(), oracle_[1].eos_id());
  for (int id = 0; id < oracle_[1].GetPieceSize(); ++id) {
    EXPECT_EQ(ours_->Piece(id), oracle_[1].IdToPiece(id));
    EXPECT_EQ(ours_->Score(id), oracle_[1].GetScore(id));
    EXPECT_EQ(ours_->IsSpecial(id), oracle_[1].IsControl(id) || oracle_[1].IsUnknown(id));
  }
}

TEST_P(OracleTest, EdgeCases) {
  for (const char* text : {"",
                           " ",
                           "   ",
                           "\n",
                           " \n ",
                           "a",
                           " a",
                           "a ",
                           "  a  ",
                           "a  b",
                           "a   b  c ",
                           " a b ",
                           "\t",
                           "a\tb",
                           " \t a \t ",
                           "a\n\nb",
                           "a \n b",
                           "\r\n",
                           "Once upon a time",
                           "Once upon a time.\nThe end.",
                           "\xC3\xA9",
                           "caf\xC3\xA9 na\xC3\xAFve",
                           "\xE4\xB8\xAD\xE6\x96\x87",
                           "\xF0\x9F\x98\x80",
                           "a\xF0\x9F\x98\x80\xF0\x9F\x90\xB1z",
                           " \xF0\x9F\x98\x80 ",
                           "\xE2\x96\x81",
                           "a\xE2\x96\x81",
                           "\xE2\x96\x81\xE2\x96\x81 b",
                           "a \xE2\x96\x81 b",
                           "<s>",
                           "</s>",
                           "<unk>",
                           "<0x41>",
                           "<pad>",
                           "\xE2\x80\x8B",
                           "\xC2\xA0"
                           "a\xC2\xA0",
                           "\xEF\xBB\xBFhello",
                           "x\xF4\x8F\xBF\xBFy",
                           "1,234.56 = 78%!?",
                           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                           "                                        x"}) {
    Compare(text);
  }
  EXPECT_EQ(mismatches_, 0u);
  // Invalid UTF-8 is InvalidArgument (libsentencepiece would substitute U+FFFD).
  EXPECT_EQ(ours_->Encode("a\xFF", {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_P(OracleTest, WholeCorpora) {
  for (const char* name : {"tinystories_val.txt", "wiki.test.raw"}) {
    const std::string text = ReadFileToString(testing::SharedData(name)).value();
    ASSERT_TRUE(IsValidUtf8(text));
    size_t lines = 0;
    size_t line_ids = 0;
    for (size_t pos = 0; pos < text.size();) {
      size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      line_ids += Compare(std::string_view(text).substr(pos, end - pos));
      ++lines;
      pos = end + 1;
      ASSERT_LT(mismatches_, 10u) << "stopping after 10 mismatches";
    }
    // Chunks of about 4 KiB (newlines inside), cut at character boundaries.
    size_t chunks = 0;
    size_t chunk_ids = 0;
    for (size_t pos = 0; pos < text.size(); ++chunks) {
      size_t end = std::min(text.size(), pos + 4096);
      while (end < text.size() && Utf8CharLength(text, end) == 0) ++end;
      chunk_ids += Compare(std::string_view(text).substr(pos, end - pos));
      pos = end;
      ASSERT_LT(mismatches_, 10u) << "stopping after 10 mismatches";
    }
    std::printf("%s %s: %zu lines, %zu ids; %zu chunks, %zu ids (both prefix settings)\n",
                GetParam(), name, lines, line_ids, chunks, chunk_ids);
    EXPECT_GT(line_ids, text.size() / 8);
  }
  EXPECT_EQ(mismatches_, 0u);
}

INSTANTIATE_TEST_SUITE_P(SharedModels, OracleTest,
                         ::testing::Values("stories260K/tok512.model",
                                           "babyllama-tok105/tok105.model"));

}  // namespace
}  // namespace cmoe::engine
