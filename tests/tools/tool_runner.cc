#include "tests/tools/tool_runner.h"

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "gmock/gmock.h"

namespace cmoe::testing {

using ::testing::HasSubstr;
using ::testing::Not;

std::string CommandLine(const std::vector<std::string>& argv) {
  std::string line;
  for (const std::string& arg : argv) line += (line.empty() ? "" : " ") + arg;
  return line;
}

void ExpectNoCrash(const SubprocessResult& r) {
  ASSERT_TRUE(r.spawned) << r.error;
  EXPECT_FALSE(r.timed_out) << "stderr:\n" << r.err;
  EXPECT_EQ(r.term_signal, 0) << "stderr:\n" << r.err;
  EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << r.Describe() << "\nstderr:\n" << r.err;
  for (const char* marker : {"Segmentation", "Aborted", "terminate called", "Sanitizer",
                             "runtime error:", "core dumped"}) {
    EXPECT_THAT(r.err, Not(HasSubstr(marker)));
  }
}

std::string BinDir() {
  const char* env = std::getenv("CMOE_TOOLS_BIN_DIR");
  return env != nullptr && *env != '\0' ? env : CMOE_BIN_DIR;
}

SubprocessResult RunTool(const std::string& tool, const std::vector<std::string>& args) {
  std::vector<std::string> argv{BinDir() + "/" + tool};
  argv.insert(argv.end(), args.begin(), args.end());
  SCOPED_TRACE(CommandLine(argv));
  SubprocessResult r = RunSubprocess({.argv = argv, .timeout_seconds = kToolTimeoutSeconds});
  ExpectNoCrash(r);
  return r;
}

::testing::AssertionResult Succeeded(const SubprocessResult& r) {
  if (r.spawned && !r.timed_out && r.exit_code == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << r.Describe() << "\nstderr:\n" << r.err;
}

void ExpectToolError(const SubprocessResult& r, const std::string& tool,
                     const std::vector<std::string>& mentions) {
  EXPECT_EQ(r.exit_code, 1) << r.Describe() << "\nstdout:\n" << r.out;
  EXPECT_THAT(r.err, HasSubstr(tool + ": error: "));
  for (const std::string& m : mentions) EXPECT_THAT(r.err, HasSubstr(m));
}

Json StdoutJson(const SubprocessResult& r) {
  const size_t newline = r.out.find('\n');
  EXPECT_EQ(newline, r.out.size() - 1) << "want exactly one line on stdout:\n" << r.out;
  Json j = Json::parse(r.out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    ADD_FAILURE() << "stdout is not a JSON object:\n" << r.out << "\nstderr:\n" << r.err;
    return Json();
  }
  return j;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

Json ReadJsonFile(const std::string& path) {
  Json j = Json::parse(ReadBytes(path), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) ADD_FAILURE() << path << " is not JSON";
  return j;
}

bool IsFile(const std::string& path) { return std::filesystem::is_regular_file(path); }

}  // namespace cmoe::testing
