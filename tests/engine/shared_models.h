// The three shared tiny models as Hugging Face directories, for tests: tinystories-656k is used
// where it lies; stories260K and babyllama-tok105 are converted from llama2.c on first use into a
// scratch directory that lives until the test binary exits.
#ifndef CMOE_TESTS_ENGINE_SHARED_MODELS_H_
#define CMOE_TESTS_ENGINE_SHARED_MODELS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace cmoe::testing {

// "stories260K", "tinystories-656k", "babyllama-tok105". Cheap: touches no file, so test
// discovery (gtest_list_tests) works even where ../shared is missing.
const std::vector<std::string>& SharedModelNames();

// A loadable Hugging Face directory of the shared model `name`; converts it on the first call.
// NotFound (naming the file) when ../shared lacks the model.
absl::StatusOr<std::string> SharedModelDir(const std::string& name);

// Carves the shared model `name` into `out_dir` (which must not exist) with `experts` experts,
// `shared` of them shared and `active` routed ones per token, calibrated on 2 x 64 tokens of
// bytes [0, 20000) of the TinyStories validation text (2 threads). Returns out_dir; aborts the
// test binary on failure (test setup).
std::string CarveSharedModel(const std::string& name, int32_t experts, int32_t shared,
                             int32_t active, const std::string& out_dir);

// A few lines of TinyStories validation text (the first `bytes` bytes, cut at a space).
std::string TinyStoriesSample(size_t bytes);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_ENGINE_SHARED_MODELS_H_
