// Running the command-line tools as subprocesses in tests: every run checks that the tool did not
// crash (exit status exactly 0 or 1, no signal, no abort or sanitizer report on stderr), and the
// helpers read what the tools print and write.
//
//   SubprocessResult r = RunTool("cmoe-eval", {"ppl", "--model", dir, "--json"});
//   ASSERT_TRUE(Succeeded(r));
//   Json j = StdoutJson(r);
#ifndef CMOE_TESTS_TOOLS_TOOL_RUNNER_H_
#define CMOE_TESTS_TOOLS_TOOL_RUNNER_H_

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/tools/subprocess.h"

namespace cmoe::testing {

using Json = nlohmann::json;

inline constexpr double kToolTimeoutSeconds = 60.0;

// The arguments joined by spaces (for messages).
std::string CommandLine(const std::vector<std::string>& argv);

// The invariants of every run, whatever its arguments.
void ExpectNoCrash(const SubprocessResult& r);

// build/bin of this build (the CMOE_BIN_DIR compile definition of the test target);
// CMOE_TOOLS_BIN_DIR in the environment overrides it (to test the tools of another build).
std::string BinDir();

// Runs <bin dir>/<tool> with `args` and checks that it did not crash.
SubprocessResult RunTool(const std::string& tool, const std::vector<std::string>& args);

// Exit 0; for ASSERT_TRUE / EXPECT_TRUE.
::testing::AssertionResult Succeeded(const SubprocessResult& r);

// Exit 1 with "<tool>: error: ..." on stderr that contains every one of `mentions`.
void ExpectToolError(const SubprocessResult& r, const std::string& tool,
                     const std::vector<std::string>& mentions);

// The one JSON object a --json run prints as its only stdout line (null when it is not one).
Json StdoutJson(const SubprocessResult& r);

std::string ReadBytes(const std::string& path);
Json ReadJsonFile(const std::string& path);
bool IsFile(const std::string& path);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_TOOLS_TOOL_RUNNER_H_
