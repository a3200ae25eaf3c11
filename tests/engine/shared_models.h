// The three shared tiny models as Hugging Face directories, for tests: tinystories-656k is used
// where it lies; stories260K and babyllama-tok105 are converted from llama2.c once per test binary
// into a scratch directory.
#ifndef CMOE_TESTS_ENGINE_SHARED_MODELS_H_
#define CMOE_TESTS_ENGINE_SHARED_MODELS_H_

#include <ostream>
#include <string>
#include <vector>

namespace cmoe::testing {

struct SharedModelDir {
  std::string name;  // "stories260K", "tinystories-656k", "babyllama-tok105"
  std::string dir;   // a loadable Hugging Face directory
};

inline void PrintTo(const SharedModelDir& model, std::ostream* os) { *os << model.name; }

// All three; converts on the first call (aborts the binary if the conversion fails).
const std::vector<SharedModelDir>& SharedModelDirs();

// A few lines of TinyStories validation text (the first `bytes` bytes, cut at a space).
std::string TinyStoriesSample(size_t bytes);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_ENGINE_SHARED_MODELS_H_
