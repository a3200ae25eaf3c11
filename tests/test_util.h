// Helpers shared by the tests: where the shared models and data live, and scratch directories.
#ifndef CMOE_TESTS_TEST_UTIL_H_
#define CMOE_TESTS_TEST_UTIL_H_

#include <string>

namespace cmoe::testing {

// ../shared relative to the source tree (CMOE_SHARED_DIR in the environment overrides it).
std::string SharedDir();
std::string SharedModel(const std::string& name);  // SharedDir()/models/<name>
std::string SharedData(const std::string& name);   // SharedDir()/data/<name>

// A fresh empty directory under $TMPDIR (or /tmp) named after the running test; removed with its
// contents when the object dies.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::string& path() const { return path_; }
  std::string Join(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// A TCP port on 127.0.0.1 that nothing listens on right now (0 if none could be found).
int FreePort();

// Writes `contents` to `path` (test setup; aborts the test binary on failure).
void WriteFile(const std::string& path, const std::string& contents);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_TEST_UTIL_H_
