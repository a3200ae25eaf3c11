// Calibration text for carving: a byte range of a text file, tokenized once, and `seqs` random
// windows of `len` tokens drawn from it with a seed (the GPTQ/CMoE data loader: a window starts
// at a uniformly random token, windows may overlap, no BOS is inserted at window starts).
// Calibrating on one byte range and evaluating on another keeps the two texts apart.
//
//   CMOE_ASSIGN_OR_RETURN(CalibrationSet calib,
//                         LoadCalibration({.file = "val.txt", .range_end = 400000, .seqs = 8,
//                                          .len = 512, .seed = 0}, *tokenizer));
#ifndef CMOE_ENGINE_CARVE_CALIBRATION_H_
#define CMOE_ENGINE_CARVE_CALIBRATION_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/tokenizer.h"

namespace cmoe::engine::carve {

struct CalibrationOptions {
  std::string file;
  int64_t range_begin = 0;  // bytes; moved forward to the next UTF-8 character start
  int64_t range_end = -1;   // bytes, exclusive; -1: the end of the file; moved back likewise
  int64_t seqs = 8;         // windows
  int64_t len = 2048;       // tokens per window
  uint64_t seed = 0;
};

struct CalibrationSet {
  std::vector<std::vector<int32_t>> windows;  // (seqs, len) token ids
  int64_t range_begin = 0;                    // the byte range actually used
  int64_t range_end = 0;
  int64_t text_tokens = 0;  // tokens of the whole range
};

// Parses "START:END" (either side may be empty: ":END", "START:", ":"; END may be "end") into
// (begin, end) with end = -1 for "to the end". InvalidArgument naming the text otherwise.
absl::StatusOr<std::pair<int64_t, int64_t>> ParseByteRange(std::string_view text);

// Window starts are drawn from a 64-bit Mersenne Twister seeded with `seed` (start = draw mod
// (tokens - len + 1)), so a seed gives the same windows on every platform.
// Errors: NotFound for a missing file; InvalidArgument for seqs or len < 1, a range outside the
// file or empty, text that is not valid for the tokenizer, and text with fewer than `len`
// tokens (naming the file, the range and both counts).
absl::StatusOr<CalibrationSet> LoadCalibration(const CalibrationOptions& options,
                                               const Tokenizer& tokenizer);

// The same on text already in memory (`name` only labels errors).
absl::StatusOr<CalibrationSet> MakeCalibration(std::string_view text, std::string_view name,
                                               const CalibrationOptions& options,
                                               const Tokenizer& tokenizer);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_CALIBRATION_H_
