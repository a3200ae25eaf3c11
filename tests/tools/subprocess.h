// Runs a program as a child process for end-to-end tests: stdout and stderr captured separately,
// stdin from /dev/null, killed (SIGKILL) when it runs past its deadline.
//
//   SubprocessResult r = RunSubprocess({.argv = {"/bin/echo", "hi"}});
//   EXPECT_EQ(r.exit_code, 0);
//   EXPECT_EQ(r.out, "hi\n");
#ifndef CMOE_TESTS_TOOLS_SUBPROCESS_H_
#define CMOE_TESTS_TOOLS_SUBPROCESS_H_

#include <string>
#include <vector>

namespace cmoe::testing {

struct SubprocessOptions {
  std::vector<std::string> argv;  // argv[0] is the path of the program (no PATH lookup)
  double timeout_seconds = 60.0;
};

struct SubprocessResult {
  int exit_code = -1;   // the exit status when the child exited, else -1
  int term_signal = 0;  // the signal that ended the child, else 0
  bool timed_out = false;
  bool spawned = false;  // false when the program could not be started (see `error`)
  std::string out;       // everything written to stdout
  std::string err;       // everything written to stderr
  std::string error;     // why spawning failed

  // "exit 1" / "signal 11" / "timed out" / "not started: ..." for failure messages.
  std::string Describe() const;
};

// Runs `options.argv` to completion (or to the deadline) and returns what it wrote. Blocks the
// calling thread; safe to call from one thread at a time per child.
SubprocessResult RunSubprocess(const SubprocessOptions& options);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_TOOLS_SUBPROCESS_H_
