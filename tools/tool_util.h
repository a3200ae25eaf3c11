// What every command-line tool shares: flag parsing with a usage line, error reporting with a
// non-zero exit, and stderr progress lines.
#ifndef CMOE_TOOLS_TOOL_UTIL_H_
#define CMOE_TOOLS_TOOL_UTIL_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cmoe::tools {

// Parses Abseil flags (unknown flags and bad values exit 1 with a message); returns the
// positional arguments after the program name. Flags may be spelled with dashes or underscores
// (--max-new-tokens or --max_new_tokens).
std::vector<std::string> ParseToolFlags(int argc, char** argv, std::string_view usage);

// Prints "<tool>: error: <message>" to stderr and returns the exit code 1.
int Fail(std::string_view tool, const absl::Status& status);

// InvalidArgument "--<flag> is required" when `value` is empty.
absl::Status RequireFlag(std::string_view flag, const std::string& value);

// A comma-separated list of whole numbers in [1, max] ("1,8,32"), as --batch takes it;
// InvalidArgument naming --<flag>, the value and the entry that is not one.
absl::StatusOr<std::vector<int64_t>> ParseCountList(std::string_view flag, std::string_view value,
                                                    int64_t max);

// For --active-experts K of a tool: OK for K == 0 (the default); otherwise InvalidArgument naming
// the flag when the model is dense (`num_routed` == 0) or K is outside [1, num_routed].
absl::Status CheckActiveExperts(int32_t k, int32_t num_routed, std::string_view config_name);

// A progress line on stderr for work that takes more than a few seconds: rewritten in place on a
// terminal, one line every few seconds otherwise (logs stay readable).
//
//   ProgressLine progress("window");
//   for (...) progress.Update(done, total);
class ProgressLine {
 public:
  explicit ProgressLine(std::string label);
  void Update(int64_t done, int64_t total);

 private:
  std::string label_;
  bool tty_;
  double start_;
  double last_ = -1.0;
};

}  // namespace cmoe::tools

#endif  // CMOE_TOOLS_TOOL_UTIL_H_
