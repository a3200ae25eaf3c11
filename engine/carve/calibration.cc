#include "engine/carve/calibration.h"

#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"

namespace cmoe::engine::carve {
namespace {

bool IsContinuationByte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

absl::StatusOr<int64_t> ParseOffset(std::string_view s, std::string_view whole) {
  int64_t v = 0;
  if (!absl::SimpleAtoi(std::string(s), &v) || v < 0) {
    return absl::InvalidArgumentError(absl::StrCat("byte range '", std::string(whole), "': '",
                                                   std::string(s),
                                                   "' is not a non-negative byte offset"));
  }
  return v;
}

}  // namespace

absl::StatusOr<std::pair<int64_t, int64_t>> ParseByteRange(std::string_view text) {
  const size_t colon = text.find(':');
  if (colon == std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("byte range '", std::string(text), "' is not START:END (e.g. 0:400000)"));
  }
  const std::string_view a = text.substr(0, colon), b = text.substr(colon + 1);
  int64_t begin = 0, end = -1;
  if (!a.empty()) {
    CMOE_ASSIGN_OR_RETURN(begin, ParseOffset(a, text));
  }
  if (!b.empty() && b != "end") {
    CMOE_ASSIGN_OR_RETURN(end, ParseOffset(b, text));
    if (end <= begin) {
      return absl::InvalidArgumentError(
          absl::StrCat("byte range '", std::string(text), "' is empty (END must exceed START)"));
    }
  }
  return std::pair{begin, end};
}

absl::StatusOr<CalibrationSet> MakeCalibration(std::string_view text, std::string_view name_view,
                                               const CalibrationOptions& o,
                                               const Tokenizer& tokenizer) {
  const std::string name(name_view);
  if (o.seqs < 1 || o.len < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration needs at least one sequence of at "
                     "least one token (got ",
                     o.seqs, " x ", o.len, ")"));
  }
  const auto size = static_cast<int64_t>(text.size());
  int64_t begin = o.range_begin;
  int64_t end = o.range_end < 0 ? size : o.range_end;
  if (begin < 0 || begin >= size || end > size || end <= begin) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration byte range [", o.range_begin, ", ",
                     o.range_end < 0 ? std::string("end") : absl::StrCat(o.range_end),
                     ") does not fit ", name, " (", size, " bytes)"));
  }
  // Never cut a UTF-8 character in two.
  while (begin < end && IsContinuationByte(text[begin])) ++begin;
  while (end < size && end > begin && IsContinuationByte(text[end])) --end;
  CalibrationSet set;
  set.range_begin = begin;
  set.range_end = end;
  const absl::StatusOr<std::vector<int32_t>> ids =
      tokenizer.Encode(text.substr(begin, end - begin),
                       {.add_bos = true, .add_dummy_prefix = tokenizer.DefaultDummyPrefix()});
  if (!ids.ok()) {
    return Annotate(ids.status(), absl::StrCat("calibration text ", name));
  }
  set.text_tokens = static_cast<int64_t>(ids->size());
  if (set.text_tokens < o.len) {
    return absl::InvalidArgumentError(absl::StrCat(
        "calibration text ", name, " bytes [", begin, ", ", end, ") has ", set.text_tokens,
        " tokens, fewer than one window of ", o.len, " (--calib-len); give more text"));
  }
  std::mt19937_64 rng(o.seed);
  const auto starts = static_cast<uint64_t>(set.text_tokens - o.len + 1);
  for (int64_t s = 0; s < o.seqs; ++s) {
    const auto start = static_cast<int64_t>(rng() % starts);
    set.windows.emplace_back(ids->begin() + start, ids->begin() + start + o.len);
  }
  return set;
}

absl::StatusOr<CalibrationSet> LoadCalibration(const CalibrationOptions& options,
                                               const Tokenizer& tokenizer) {
  if (options.file.empty()) return absl::InvalidArgumentError("no calibration file given");
  CMOE_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(options.file));
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("calibration file ", options.file, " is empty"));
  }
  return MakeCalibration(text, options.file, options, tokenizer);
}

}  // namespace cmoe::engine::carve
