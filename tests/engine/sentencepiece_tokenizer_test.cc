// SentencePieceTokenizer on stories260K's tok512.model (byte fallback) and babyllama-tok105's
// character-level tok105.model (no byte fallback); integration: reads ../shared.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "common/mapped_file.h"
#include "engine/incremental_detokenizer.h"
#include "engine/protobuf_wire.h"
#include "engine/sentencepiece_tokenizer.h"
#include "engine/utf8.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<SentencePieceTokenizer> LoadModel(const std::string& relative) {
  auto tok = SentencePieceTokenizer::Open(testing::SharedModel(relative), {});
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *std::move(tok) : nullptr;
}

std::vector<int32_t> Ids(const Tokenizer& tok, std::string_view text, bool bos, bool prefix) {
  absl::StatusOr<std::vector<int32_t>> ids = tok.Encode(text, {bos, prefix});
  EXPECT_TRUE(ids.ok()) << ids.status();
  return ids.ok() ? *ids : std::vector<int32_t>{};
}

// What SentencePiece's remove_extra_whitespaces leaves of `text`: no leading or trailing
// spaces, runs of spaces collapsed to one (only ' ' counts; newlines are kept).
std::string CollapseSpaces(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == ' ' && (out.empty() || out.back() == ' ')) continue;
    out += c;
  }
  if (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

std::vector<std::string> Lines(const std::string& text, size_t limit) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < text.size() && out.size() < limit) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    out.push_back(text.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

// Expected ids from a naive Python port of llama2.c's encode over tok512.bin (the same
// vocabulary): " Once" " upon" " a" " time".
TEST(SentencePieceTok512Test, KnownEncodingsAndDummyPrefix) {
  auto tok = LoadModel("stories260K/tok512.model");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->DefaultDummyPrefix());
  EXPECT_THAT(Ids(*tok, "Once upon a time", true, true), ElementsAre(1, 403, 407, 261, 378));
  // Without the prefix "Once" is no longer "▁Once": O n ce.
  EXPECT_THAT(Ids(*tok, "Once upon a time", false, false),
              ElementsAre(441, 416, 331, 407, 261, 378));
  EXPECT_THAT(Ids(*tok, "Hello world", false, true), ElementsAre(346, 306, 414, 263, 304, 341));
  EXPECT_EQ(tok->Decode(Ids(*tok, "Once upon a time", true, false)).value(), "Once upon a time");
  EXPECT_EQ(tok->Piece(403), "\u2581Once");
  EXPECT_EQ(tok->Piece(3), "<0x00>");
  EXPECT_EQ(tok->Piece(512), "");
}

TEST(SentencePieceTok512Test, ByteFallbackSpecialsEmptyInvalid) {
  auto tok = LoadModel("stories260K/tok512.model");
  ASSERT_NE(tok, nullptr);
  const std::string text = "\xC3\xA9 \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87";  // é 😀 中文
  EXPECT_THAT(Ids(*tok, text, false, true),
              ElementsAre(410, 485, 410, 243, 162, 155, 131, 410, 231, 187, 176, 233, 153, 138));
  EXPECT_EQ(tok->Decode(Ids(*tok, text, true, true)).value(), text);
  // Control-token text is encoded literally.
  EXPECT_THAT(Ids(*tok, "<s>", false, true), ElementsAre(410, 504, 419, 505));
  EXPECT_THAT(Ids(*tok, "", true, true), ElementsAre(1));
  EXPECT_THAT(Ids(*tok, "", false, true), ElementsAre());
  EXPECT_EQ(tok->Encode("\xFF", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->TokenBytes(-1, 512).status().code(), absl::StatusCode::kInvalidArgument);
  for (int32_t id : {0, 1, 2}) {
    EXPECT_TRUE(tok->IsSpecial(id));
    EXPECT_EQ(tok->TokenBytes(-1, id).value(), "");
  }
  EXPECT_EQ(tok->TokenBytes(5, 3 + 0x0A).value(), "\n");
  EXPECT_EQ(tok->TokenBytes(-1, 3 + 0x20).value(), " ");  // a byte's space is never dropped
  EXPECT_EQ(tok->TokenBytes(5, 403).value(), " Once");
  EXPECT_EQ(tok->TokenBytes(1, 403).value(), "Once");
}

// remove_extra_whitespaces is on in tok512 and tok105: what round-trips exactly is the text with
// spaces collapsed and trimmed; newlines and everything else survive (tok512 has byte fallback).
TEST(SentencePieceTok512Test, RoundTripsUpToSpaceCollapsing) {
  auto tok = LoadModel("stories260K/tok512.model");
  ASSERT_NE(tok, nullptr);
  for (const char* name : {"tinystories_val.txt", "wiki.test.raw"}) {
    const std::string text = ReadFileToString(testing::SharedData(name)).value();
    size_t changed = 0;
    for (const std::string& line : Lines(text, 3000)) {
      for (bool prefix : {true, false}) {
        const std::string decoded = tok->Decode(Ids(*tok, line, true, prefix)).value();
        ASSERT_EQ(decoded, CollapseSpaces(line)) << name << ": " << line;
        changed += decoded != line;
      }
    }
    if (std::string(name) == "wiki.test.raw") {
      EXPECT_GT(changed, 0u);  // its lines start with ' '
    }
    const std::string sample = text.substr(0, 200000);
    EXPECT_EQ(tok->Decode(Ids(*tok, sample, true, true)).value(), CollapseSpaces(sample)) << name;
  }
}

TEST(SentencePieceTok512Test, StreamingDecodeNeverSplitsCharacters) {
  auto tok = LoadModel("stories260K/tok512.model");
  ASSERT_NE(tok, nullptr);
  const std::string text =
      "Lily saw a \xE7\x8C\xAB (cat) and said \xE2\x80\x9C\xE4\xBD\xA0\xE5\xA5\xBD\xE2\x80\x9D "
      "\xF0\x9F\x98\x80\xF0\x9F\x90\xB1 caf\xC3\xA9.\nThe end.";
  const std::vector<int32_t> ids = Ids(*tok, text, true, true);
  IncrementalDetokenizer detok(*tok);
  std::string streamed;
  size_t held_back = 0;
  for (int32_t id : ids) {
    const std::string piece = detok.Push(id).value();
    EXPECT_TRUE(IsValidUtf8(piece)) << piece;
    held_back += piece.empty();
    streamed += piece;
  }
  streamed += detok.Flush();
  EXPECT_EQ(streamed, tok->Decode(ids).value());
  EXPECT_EQ(streamed, text);
  EXPECT_GT(held_back, 5u);  // the byte-fallback characters were held back while incomplete
}

TEST(SentencePieceTok105Test, CharacterLevelWithUnk) {
  auto tok = LoadModel("babyllama-tok105/tok105.model");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->vocab_size(), 105);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_TRUE(tok->DefaultDummyPrefix());
  // One piece per character; "▁" is id 3, 'e' 4, 'a' 5, 't' 6, 'h' 8.
  EXPECT_THAT(Ids(*tok, "the", true, true), ElementsAre(1, 3, 6, 8, 4));
  EXPECT_THAT(Ids(*tok, "the", false, false), ElementsAre(6, 8, 4));
  // No byte fallback: a run of unknown characters is a single <unk>, which decodes to "".
  EXPECT_THAT(Ids(*tok,
                  "a\xE4\xB8\xAD\xF0\x9F\x98\x80"
                  "a",
                  false, false),
              ElementsAre(5, 0, 5));
  EXPECT_EQ(tok->Decode(Ids(*tok,
                            "a\xE4\xB8\xAD"
                            "a",
                            true, true))
                .value(),
            "aa");
  EXPECT_EQ(tok->Encode("\xC3", {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->TokenBytes(-1, 105).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SentencePieceTok105Test, RoundTripsTextWithinItsVocabulary) {
  auto tok = LoadModel("babyllama-tok105/tok105.model");
  ASSERT_NE(tok, nullptr);
  std::set<std::string> chars = {" "};
  for (int32_t id = 0; id < tok->vocab_size(); ++id) {
    if (!tok->IsSpecial(id)) chars.insert(tok->Piece(id));
  }
  for (const char* name : {"tinystories_val.txt", "wiki.test.raw"}) {
    const std::string text = ReadFileToString(testing::SharedData(name)).value();
    size_t dropped = 0;
    for (const std::string& line : Lines(text, 2000)) {
      std::string known;  // the line restricted to the vocabulary
      for (size_t pos = 0; pos < line.size();) {
        const size_t len = Utf8CharLength(line, pos);
        const std::string c = line.substr(pos, len);
        if (chars.contains(c)) {
          known += c;
        } else {
          ++dropped;
        }
        pos += len;
      }
      ASSERT_EQ(tok->Decode(Ids(*tok, known, true, true)).value(), CollapseSpaces(known)) << line;
      ASSERT_EQ(tok->Decode(Ids(*tok, line, true, true)).value().size() <= line.size(), true);
    }
    if (std::string(name) == "wiki.test.raw") {
      EXPECT_GT(dropped, 0u);
    }
  }
}

// A hand-written ModelProto: pieces <unk> (UNKNOWN), <s> </s> (CONTROL), "▁", "a", "b", "▁a",
// "ab" with scores, plus the given trainer_spec / normalizer_spec payloads.
std::string LengthDelimited(uint32_t field, std::string_view payload) {
  std::string out;
  AppendVarint(field << 3 | kWireLengthDelimited, &out);
  AppendVarint(payload.size(), &out);
  out.append(payload);
  return out;
}

std::string Varint(uint32_t field, uint64_t value) {
  std::string out;
  AppendVarint(field << 3 | kWireVarint, &out);
  AppendVarint(value, &out);
  return out;
}

std::string PieceProto(std::string_view piece, float score, int type) {
  std::string out = LengthDelimited(1, piece);
  out.push_back(static_cast<char>(2 << 3 | 5));  // score: fixed32
  out.append(reinterpret_cast<const char*>(&score), sizeof(score));
  return out + Varint(3, type);
}

std::string ModelProto(const std::string& trainer_spec, const std::string& normalizer_spec) {
  std::string out = LengthDelimited(1, PieceProto("<unk>", 0, 2)) +
                    LengthDelimited(1, PieceProto("<s>", 0, 3)) +
                    LengthDelimited(1, PieceProto("</s>", 0, 3));
  const std::pair<const char*, float> normal[] = {
      {"\u2581", -1}, {"a", -2}, {"b", -3}, {"\u2581a", -4}, {"ab", -0.5f}};
  for (const auto& [piece, score] : normal) out += LengthDelimited(1, PieceProto(piece, score, 1));
  return out + LengthDelimited(2, trainer_spec) + LengthDelimited(3, normalizer_spec);
}

TEST(SentencePieceSyntheticTest, HandWrittenBpeModel) {
  testing::ScratchDir dir;
  const std::string path = dir.Join("bpe.model");
  testing::WriteFile(path, ModelProto(Varint(3, 2), LengthDelimited(1, "identity")));
  auto tok = SentencePieceTokenizer::Open(path, {});
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 8);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  EXPECT_FLOAT_EQ((*tok)->Score(7), -0.5f);
  // "▁ab": "ab" (-0.5) beats "▁a" (-4); "c" is unknown (no byte fallback); runs of unk merge.
  EXPECT_THAT(Ids(**tok, "ab", false, true), ElementsAre(3, 7));
  EXPECT_THAT(Ids(**tok, "a  a", false, false), ElementsAre(4, 6));
  EXPECT_THAT(Ids(**tok, "acc b", true, false), ElementsAre(1, 4, 0, 3, 5));
}

TEST(SentencePieceSyntheticTest, RejectsWhatItDoesNotImplement) {
  testing::ScratchDir dir;
  const auto open_error = [&](const std::string& name, const std::string& contents) {
    testing::WriteFile(dir.Join(name), contents);
    return SentencePieceTokenizer::Open(dir.Join(name), {}).status();
  };
  const std::string identity = LengthDelimited(1, "identity");
  for (const auto& [type, name] :
       {std::pair{1, "UNIGRAM"}, std::pair{3, "WORD"}, std::pair{4, "CHAR"}}) {
    const absl::Status status = open_error("m.model", ModelProto(Varint(3, type), identity));
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(status.message(), HasSubstr("m.model"));
    EXPECT_THAT(status.message(), HasSubstr(name));
  }
  // The proto default model type is UNIGRAM.
  EXPECT_THAT(open_error("d.model", ModelProto("", identity)).message(), HasSubstr("UNIGRAM"));
  const absl::Status nfkc = open_error(
      "n.model",
      ModelProto(Varint(3, 2), LengthDelimited(1, "nmt_nfkc") + LengthDelimited(2, "xxxx")));
  EXPECT_EQ(nfkc.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(nfkc.message(), HasSubstr("nmt_nfkc"));
  EXPECT_EQ(open_error("g.model", "not a protobuf \xFF\xFF\xFF").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(open_error("e.model", "").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SentencePieceTokenizer::Open(dir.Join("missing.model"), {}).status().code(),
            absl::StatusCode::kNotFound);
  ModelConfig small;
  small.vocab_size = 4;
  testing::WriteFile(dir.Join("ok.model"), ModelProto(Varint(3, 2), identity));
  EXPECT_EQ(SentencePieceTokenizer::Open(dir.Join("ok.model"), small).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cmoe::engine
