// Calibration windows for carving (engine/carve/calibration.h): byte-range parsing, windows drawn
// from the encoded range with a seeded Mersenne Twister, UTF-8 safe range edges, and the errors.
// Uses the real SentencePiece tokenizer of stories260K.
#include "engine/carve/calibration.h"

#include <algorithm>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine::carve {
namespace {

using ::testing::HasSubstr;

// --- ParseByteRange ---------------------------------------------------------------------------

TEST(ParseByteRangeTest, AcceptsBothSidesAndEitherSideEmpty) {
  using Range = std::pair<int64_t, int64_t>;
  const std::vector<std::pair<std::string, Range>> cases = {
      {"0:100", {0, 100}}, {":100", {0, 100}}, {"5:", {5, -1}},
      {":", {0, -1}},      {"5:end", {5, -1}}, {"400000:800000", {400000, 800000}},
      {"0:end", {0, -1}},  {":end", {0, -1}},
  };
  for (const auto& [text, expected] : cases) {
    absl::StatusOr<Range> r = ParseByteRange(text);
    ASSERT_TRUE(r.ok()) << text << ": " << r.status();
    EXPECT_EQ(*r, expected) << text;
  }
}

TEST(ParseByteRangeTest, RejectsMalformedRangesNamingTheText) {
  for (const std::string text :
       {"abc", "10:5", "-1:3", "5", "5:5", "3:-1", "1:2:3", "x:10", "", "10:abc", "1.5:3"}) {
    absl::StatusOr<std::pair<int64_t, int64_t>> r = ParseByteRange(text);
    ASSERT_FALSE(r.ok()) << "'" << text << "' parsed as " << r->first << ", " << r->second;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << text;
    EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("'", text, "'"))) << text;
  }
}

// --- MakeCalibration / LoadCalibration --------------------------------------------------------

class CalibrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::string> dir = testing::SharedModelDir("stories260K");
    CMOE_CHECK(dir.ok()) << dir.status();
    absl::StatusOr<ModelConfig> config = LoadModelConfig(*dir);
    CMOE_CHECK(config.ok()) << config.status();
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok = LoadTokenizer(*dir, *config);
    CMOE_CHECK(tok.ok()) << tok.status();
    tokenizer_ = tok->release();
    text_ = new std::string(testing::TinyStoriesSample(6000));
  }

  // The ids MakeCalibration works on: the range encoded as one text (BOS first).
  static std::vector<int32_t> Encode(std::string_view text) {
    absl::StatusOr<std::vector<int32_t>> ids = tokenizer_->Encode(
        text, {.add_bos = true, .add_dummy_prefix = tokenizer_->DefaultDummyPrefix()});
    CMOE_CHECK(ids.ok()) << ids.status();
    return *ids;
  }

  static const Tokenizer& tok() { return *tokenizer_; }
  static const std::string& text() { return *text_; }

  static Tokenizer* tokenizer_;
  static std::string* text_;
};

Tokenizer* CalibrationTest::tokenizer_ = nullptr;
std::string* CalibrationTest::text_ = nullptr;

// Where `window` occurs contiguously in `ids` (all starts), or empty.
std::vector<size_t> Occurrences(const std::vector<int32_t>& ids,
                                const std::vector<int32_t>& window) {
  std::vector<size_t> starts;
  if (window.size() > ids.size()) return starts;
  for (size_t s = 0; s + window.size() <= ids.size(); ++s) {
    if (std::equal(window.begin(), window.end(), ids.begin() + static_cast<ptrdiff_t>(s))) {
      starts.push_back(s);
    }
  }
  return starts;
}

TEST_F(CalibrationTest, WindowsAreSeededSubsequencesOfTheEncodedRange) {
  const CalibrationOptions o{
      .range_begin = 1000, .range_end = 4000, .seqs = 6, .len = 50, .seed = 7};
  absl::StatusOr<CalibrationSet> set = MakeCalibration(text(), "sample", o, tok());
  ASSERT_TRUE(set.ok()) << set.status();
  // TinyStoriesSample is ASCII: no boundary adjustment.
  EXPECT_EQ(set->range_begin, 1000);
  EXPECT_EQ(set->range_end, 4000);
  const std::vector<int32_t> ids = Encode(std::string_view(text()).substr(1000, 3000));
  EXPECT_EQ(set->text_tokens, static_cast<int64_t>(ids.size()));
  ASSERT_EQ(set->windows.size(), 6u);
  // The documented draw: start = mt19937_64(seed)() mod (tokens - len + 1), one per window.
  std::mt19937_64 rng(7);
  const uint64_t starts = ids.size() - 50 + 1;
  for (size_t w = 0; w < set->windows.size(); ++w) {
    ASSERT_EQ(set->windows[w].size(), 50u) << "window " << w;
    EXPECT_FALSE(Occurrences(ids, set->windows[w]).empty())
        << "window " << w << " is not a contiguous piece of the encoded range";
    const auto start = static_cast<ptrdiff_t>(rng() % starts);
    EXPECT_TRUE(std::equal(set->windows[w].begin(), set->windows[w].end(), ids.begin() + start))
        << "window " << w << " does not start at token " << start;
  }
}

TEST_F(CalibrationTest, SameSeedSameWindowsOtherSeedOtherWindows) {
  CalibrationOptions o{.seqs = 4, .len = 64, .seed = 0};
  absl::StatusOr<CalibrationSet> a = MakeCalibration(text(), "sample", o, tok());
  absl::StatusOr<CalibrationSet> b = MakeCalibration(text(), "sample", o, tok());
  o.seed = 1;
  absl::StatusOr<CalibrationSet> c = MakeCalibration(text(), "sample", o, tok());
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->windows, b->windows);
  EXPECT_NE(a->windows, c->windows);
  // Windows within one set are drawn independently (not all the same start).
  EXPECT_NE(a->windows[0], a->windows[1]);
  // Whole text, to the end: range_end -1 means the size.
  EXPECT_EQ(a->range_begin, 0);
  EXPECT_EQ(a->range_end, static_cast<int64_t>(text().size()));
}

TEST_F(CalibrationTest, WindowAsLongAsTheTextIsTheWholeText) {
  const std::string piece = text().substr(0, 300);
  const std::vector<int32_t> ids = Encode(piece);
  absl::StatusOr<CalibrationSet> set = MakeCalibration(
      piece, "piece", {.seqs = 3, .len = static_cast<int64_t>(ids.size()), .seed = 5}, tok());
  ASSERT_TRUE(set.ok()) << set.status();
  for (const auto& w : set->windows) EXPECT_EQ(w, ids);
}

TEST_F(CalibrationTest, RangeEdgesInsideUtf8CharactersMoveToBoundaries) {
  // "é" is 2 bytes (C3 A9), "€" is 3 (E2 82 AC), "😀" is 4 (F0 9F 98 80).
  const std::string head = "Once upon a time, a caf";  // 23 bytes
  const std::string text = head + "\xC3\xA9" + " sold " + "\xE2\x82\xAC" + "5 cakes to a " +
                           "\xF0\x9F\x98\x80" + " happy girl named Lily. " +
                           this->text().substr(0, 2000);
  const int64_t e_acute = static_cast<int64_t>(head.size());  // 23: C3, 24: A9
  const int64_t euro = e_acute + 2 + 6;                       // 31: E2 82 AC
  const int64_t emoji = euro + 3 + 13;                        // 47: F0 9F 98 80
  ASSERT_EQ(text.substr(euro, 3), "\xE2\x82\xAC");
  ASSERT_EQ(text.substr(emoji, 4), "\xF0\x9F\x98\x80");
  struct Case {
    int64_t begin, end, want_begin, want_end;
  };
  const int64_t size = static_cast<int64_t>(text.size());
  for (const Case& c : {Case{e_acute + 1, -1, e_acute + 2, size},  // begin inside é: forward
                        Case{euro + 1, -1, euro + 3, size},        // begin inside €
                        Case{euro + 2, -1, euro + 3, size}, Case{emoji + 3, -1, emoji + 4, size},
                        Case{e_acute, -1, e_acute, size},  // on a boundary: unchanged
                        Case{0, 1000, 0, 1000}}) {
    absl::StatusOr<CalibrationSet> set = MakeCalibration(
        text, "utf8", {.range_begin = c.begin, .range_end = c.end, .seqs = 2, .len = 8}, tok());
    ASSERT_TRUE(set.ok()) << c.begin << ":" << c.end << " " << set.status();
    EXPECT_EQ(set->range_begin, c.want_begin) << c.begin;
    EXPECT_EQ(set->range_end, c.want_end) << c.end;
  }
  // End inside a character: moved back to its first byte (the character is left out).
  const std::string short_text = text.substr(0, 2000);
  for (const Case& c : {Case{0, euro + 1, 0, euro}, Case{0, euro + 2, 0, euro},
                        Case{0, emoji + 1, 0, emoji}, Case{0, emoji + 3, 0, emoji},
                        Case{0, e_acute + 1, 0, e_acute}, Case{2, emoji + 4, 2, emoji + 4}}) {
    absl::StatusOr<CalibrationSet> set =
        MakeCalibration(short_text, "utf8",
                        {.range_begin = c.begin, .range_end = c.end, .seqs = 2, .len = 4}, tok());
    ASSERT_TRUE(set.ok()) << c.begin << ":" << c.end << " " << set.status();
    EXPECT_EQ(set->range_begin, c.want_begin) << c.begin << ":" << c.end;
    EXPECT_EQ(set->range_end, c.want_end) << c.begin << ":" << c.end;
    // The windows come from the adjusted range's own encoding.
    const std::vector<int32_t> ids =
        Encode(std::string_view(short_text).substr(c.want_begin, c.want_end - c.want_begin));
    EXPECT_EQ(set->text_tokens, static_cast<int64_t>(ids.size()));
    for (const auto& w : set->windows) EXPECT_FALSE(Occurrences(ids, w).empty());
  }
}

TEST_F(CalibrationTest, TooShortTextNamesBothCounts) {
  const std::string piece = text().substr(0, 200);
  const int64_t tokens = static_cast<int64_t>(Encode(piece).size());
  ASSERT_GT(tokens, 5);
  absl::StatusOr<CalibrationSet> set =
      MakeCalibration(piece, "tiny.txt", {.seqs = 1, .len = tokens + 1}, tok());
  ASSERT_FALSE(set.ok());
  EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(set.status().message(), HasSubstr("tiny.txt"));
  EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat(" ", tokens, " tokens")));
  EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat(tokens + 1)));
  // Exactly enough is fine.
  EXPECT_TRUE(MakeCalibration(piece, "tiny.txt", {.seqs = 1, .len = tokens}, tok()).ok());
}

TEST_F(CalibrationTest, RejectsRangesOutsideTheTextAndBadCounts) {
  const std::string piece = text().substr(0, 500);
  const int64_t size = static_cast<int64_t>(piece.size());
  struct Case {
    int64_t begin, end;
  };
  for (const Case& c : {Case{0, size + 1}, Case{size, -1}, Case{size + 10, size + 20}, Case{-1, 10},
                        Case{100, 100}, Case{100, 50}}) {
    absl::StatusOr<CalibrationSet> set =
        MakeCalibration(piece, "piece.txt",
                        {.range_begin = c.begin, .range_end = c.end, .seqs = 1, .len = 4}, tok());
    ASSERT_FALSE(set.ok()) << c.begin << ":" << c.end;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument) << set.status();
    EXPECT_THAT(set.status().message(), HasSubstr("piece.txt"));
    EXPECT_THAT(set.status().message(), HasSubstr(absl::StrCat(size)));
  }
  for (const auto& [seqs, len] : {std::pair{0, 8}, std::pair{2, 0}, std::pair{-1, 8}}) {
    absl::StatusOr<CalibrationSet> set =
        MakeCalibration(piece, "piece.txt", {.seqs = seqs, .len = len}, tok());
    ASSERT_FALSE(set.ok()) << seqs << " x " << len;
    EXPECT_EQ(set.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Invalid UTF-8 is not text for the tokenizer.
  absl::StatusOr<CalibrationSet> bad =
      MakeCalibration(piece + "\xFF\xFE" + piece, "bad.txt", {.seqs = 1, .len = 4}, tok());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("bad.txt"));
}

TEST_F(CalibrationTest, LoadCalibrationReadsTheFileRange) {
  testing::ScratchDir scratch;
  const std::string path = scratch.Join("calib.txt");
  const std::string piece = text().substr(0, 3000);
  testing::WriteFile(path, piece);
  const CalibrationOptions o{
      .file = path, .range_begin = 100, .range_end = 2500, .seqs = 3, .len = 40, .seed = 11};
  absl::StatusOr<CalibrationSet> from_file = LoadCalibration(o, tok());
  ASSERT_TRUE(from_file.ok()) << from_file.status();
  absl::StatusOr<CalibrationSet> from_text = MakeCalibration(piece, path, o, tok());
  ASSERT_TRUE(from_text.ok());
  EXPECT_EQ(from_file->windows, from_text->windows);
  EXPECT_EQ(from_file->range_begin, 100);
  EXPECT_EQ(from_file->range_end, 2500);

  CalibrationOptions beyond = o;
  beyond.range_end = 3001;
  absl::StatusOr<CalibrationSet> r = LoadCalibration(beyond, tok());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr(path));
  EXPECT_THAT(r.status().message(), HasSubstr("3000"));

  CalibrationOptions missing = o;
  missing.file = scratch.Join("nope.txt");
  r = LoadCalibration(missing, tok());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr("nope.txt"));

  testing::WriteFile(scratch.Join("empty.txt"), "");
  CalibrationOptions empty = o;
  empty.file = scratch.Join("empty.txt");
  empty.range_begin = 0;
  empty.range_end = -1;
  r = LoadCalibration(empty, tok());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("empty.txt"));
}

}  // namespace
}  // namespace cmoe::engine::carve
