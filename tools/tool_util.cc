#include "tools/tool_util.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace cmoe::tools {

namespace {

// "--max-new-tokens=5" -> "--max_new_tokens=5" when that names a defined flag, so both spellings
// work (Abseil only knows underscores). Anything else is left as it is.
std::string NormalizeFlagSpelling(const std::string& arg) {
  if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) return arg;
  const size_t eq = arg.find('=');
  std::string name = arg.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
  if (name.find('-') == std::string::npos) return arg;
  for (char& c : name) {
    if (c == '-') c = '_';
  }
  const std::string value = eq == std::string::npos ? "" : arg.substr(eq);
  if (absl::FindCommandLineFlag(name) != nullptr) return "--" + name + value;
  // --no-ignore-eos -> --noignore_eos, Abseil's negation of a boolean flag.
  if (name.compare(0, 3, "no_") == 0 && absl::FindCommandLineFlag(name.substr(3)) != nullptr) {
    return "--no" + name.substr(3) + value;
  }
  return arg;
}

}  // namespace

std::vector<std::string> ParseToolFlags(int argc, char** argv, std::string_view usage) {
  absl::SetProgramUsageMessage(std::string(usage));
  // --help lists the tool's own flags. Abseil looks for a source file named like the binary,
  // which never matches our dashed names (cmoe-generate vs cmoe_generate.cc).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::StrContains(file, "tools/cmoe_") || absl::StrContains(file, "server/cmoe_") ||
           absl::StrContains(file, "client/cmoe_");
  };
  absl::SetFlagsUsageConfig(usage_config);
  std::vector<std::string> normalized;
  for (int i = 0; i < argc; ++i) normalized.push_back(NormalizeFlagSpelling(argv[i]));
  std::vector<char*> args;
  for (std::string& arg : normalized) args.push_back(arg.data());
  std::vector<char*> rest = absl::ParseCommandLine(argc, args.data());
  std::vector<std::string> positional;
  for (size_t i = 1; i < rest.size(); ++i) positional.emplace_back(rest[i]);
  return positional;
}

int Fail(std::string_view tool, const absl::Status& status) {
  std::fprintf(stderr, "%.*s: error: %.*s\n", static_cast<int>(tool.size()), tool.data(),
               static_cast<int>(status.message().size()), status.message().data());
  return 1;
}

absl::Status RequireFlag(std::string_view flag, const std::string& value) {
  if (!value.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", std::string(flag), " is required"));
}

namespace {
double NowSeconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

ProgressLine::ProgressLine(std::string label)
    : label_(std::move(label)), tty_(::isatty(STDERR_FILENO) == 1), start_(NowSeconds()) {}

void ProgressLine::Update(int64_t done, int64_t total) {
  const double now = NowSeconds();
  const bool last = done >= total;
  if (!last && now - last_ < (tty_ ? 0.2 : 5.0)) return;
  last_ = now;
  std::fprintf(stderr, "%s%s %lld/%lld  %.1f s%s", tty_ ? "\r" : "", label_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total), now - start_,
               tty_ && !last ? "" : "\n");
  std::fflush(stderr);
}

absl::StatusOr<std::vector<int64_t>> ParseCountList(std::string_view flag, std::string_view value,
                                                    int64_t max) {
  std::vector<int64_t> list;
  for (absl::string_view item :
       absl::StrSplit(absl::string_view(value.data(), value.size()), ',')) {
    int64_t n = 0;
    if (!absl::SimpleAtoi(item, &n) || n < 1 || n > max) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--", std::string(flag), " '", std::string(value), "': '", std::string(item),
          "' is not a whole number in [1, ", max, "] (a comma-separated list such as 1,8,32)"));
    }
    list.push_back(n);
  }
  return list;
}

absl::Status CheckActiveExperts(int32_t k, int32_t num_routed, std::string_view config_name) {
  if (k == 0) return absl::OkStatus();
  if (num_routed == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--active-experts ", k, ": the model is dense (not carved by cmoe-carve)"));
  }
  if (k < 1 || k > num_routed) {
    return absl::InvalidArgumentError(absl::StrCat("--active-experts ", k, " outside [1, ",
                                                   num_routed, "] (the routed experts of ",
                                                   std::string(config_name), ")"));
  }
  return absl::OkStatus();
}

}  // namespace cmoe::tools
