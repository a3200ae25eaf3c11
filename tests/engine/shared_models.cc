#include "tests/engine/shared_models.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "common/logging.h"
#include "common/mapped_file.h"
#include "engine/llama2c_import.h"
#include "tests/test_util.h"

namespace cmoe::testing {
namespace {

std::string ConvertedDir(const std::string& root, const std::string& model, const std::string& bin,
                         const std::string& tok) {
  const std::string out = root + "/" + model;
  const absl::Status status =
      engine::ConvertLlama2c({.model_path = SharedModel(model) + "/" + bin,
                              .tokenizer_path = SharedModel(model) + "/" + tok,
                              .out_dir = out});
  CMOE_CHECK(status.ok()) << "converting " << model << ": " << status;
  return out;
}

}  // namespace

const std::vector<SharedModelDir>& SharedModelDirs() {
  static const std::vector<SharedModelDir>* dirs = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string root =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/cmoe_shared_models_XXXXXX";
    CMOE_CHECK(::mkdtemp(root.data()) != nullptr);
    // Removed at exit: the converted models are small (a few MB).
    static const std::string cleanup_root = root;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(cleanup_root, ec);
    });
    return new std::vector<SharedModelDir>{
        {"stories260K", ConvertedDir(root, "stories260K", "stories260K.bin", "tok512.model")},
        {"tinystories-656k", SharedModel("tinystories-656k")},
        {"babyllama-tok105",
         ConvertedDir(root, "babyllama-tok105", "model5000.bin", "tok105.model")}};
  }();
  return *dirs;
}

std::string TinyStoriesSample(size_t bytes) {
  absl::StatusOr<std::string> text = ReadFileToString(SharedData("tinystories_val.txt"));
  CMOE_CHECK(text.ok()) << text.status();
  std::string sample = text->substr(0, bytes);
  const size_t space = sample.find_last_of(' ');
  return space == std::string::npos ? sample : sample.substr(0, space);
}

}  // namespace cmoe::testing
