#include "tests/engine/shared_models.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>

#include "common/logging.h"
#include "common/mapped_file.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carve_model.h"
#include "engine/carve/carved_checkpoint_writer.h"
#include "engine/llama2c_import.h"
#include "engine/model_loader.h"
#include "engine/staged_output_dir.h"
#include "tests/test_util.h"

namespace cmoe::testing {
namespace {

struct Llama2cFiles {
  const char* bin;
  const char* tokenizer;
};

const std::map<std::string, Llama2cFiles>& Llama2cModels() {
  static const auto* models = new std::map<std::string, Llama2cFiles>{
      {"stories260K", {"stories260K.bin", "tok512.model"}},
      {"babyllama-tok105", {"model5000.bin", "tok105.model"}}};
  return *models;
}

// The scratch root for converted models, removed at exit (a few MB).
const std::string& ScratchRoot() {
  static const std::string* root = [] {
    const char* tmp = std::getenv("TMPDIR");
    std::string path =
        std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/cmoe_shared_models_XXXXXX";
    CMOE_CHECK(::mkdtemp(path.data()) != nullptr) << path;
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(ScratchRoot(), ec);
    });
    return new std::string(path);
  }();
  return *root;
}

}  // namespace

const std::vector<std::string>& SharedModelNames() {
  static const auto* names =
      new std::vector<std::string>{"stories260K", "tinystories-656k", "babyllama-tok105"};
  return *names;
}

absl::StatusOr<std::string> SharedModelDir(const std::string& name) {
  static std::mutex mutex;
  static auto* converted = new std::map<std::string, std::string>();
  std::lock_guard<std::mutex> lock(mutex);
  const auto llama2c = Llama2cModels().find(name);
  if (llama2c == Llama2cModels().end()) return SharedModel(name);
  if (const auto it = converted->find(name); it != converted->end()) return it->second;
  const std::string out = ScratchRoot() + "/" + name;
  const absl::Status status =
      engine::ConvertLlama2c({.model_path = SharedModel(name) + "/" + llama2c->second.bin,
                              .tokenizer_path = SharedModel(name) + "/" + llama2c->second.tokenizer,
                              .out_dir = out});
  if (!status.ok()) return status;
  converted->emplace(name, out);
  return out;
}

std::string TinyStoriesSample(size_t bytes) {
  absl::StatusOr<std::string> text = ReadFileToString(SharedData("tinystories_val.txt"));
  CMOE_CHECK(text.ok()) << text.status();
  std::string sample = text->substr(0, bytes);
  const size_t space = sample.find_last_of(' ');
  return space == std::string::npos ? sample : sample.substr(0, space);
}

std::string CarveSharedModel(const std::string& name, int32_t experts, int32_t shared,
                             int32_t active, const std::string& out_dir) {
  absl::StatusOr<std::string> dir = SharedModelDir(name);
  CMOE_CHECK(dir.ok()) << dir.status();
  auto dense = engine::LoadModel({.model_dir = *dir, .threads = 2, .kv_cache_tokens = 1024});
  CMOE_CHECK(dense.ok()) << dense.status();
  const engine::carve::CarveModelOptions o{
      .layer = {.num_experts = experts, .num_shared = shared, .num_activated = active},
      .threads = 2,
      .calibration = {.file = SharedData("tinystories_val.txt"),
                      .range_begin = 0,
                      .range_end = 20000,
                      .seqs = 2,
                      .len = 64,
                      .seed = 0}};
  auto calib = engine::carve::LoadCalibration(o.calibration, *dense->tokenizer);
  CMOE_CHECK(calib.ok()) << calib.status();
  auto carved = engine::carve::CarveModel(*dense->model, *calib, o);
  CMOE_CHECK(carved.ok()) << carved.status();
  auto staged = engine::StagedOutputDir::Create(out_dir, /*force=*/false);
  CMOE_CHECK(staged.ok()) << staged.status();
  absl::Status written =
      engine::carve::WriteCarvedCheckpoint(dense->model->checkpoint(), *carved, **staged);
  if (written.ok()) written = (*staged)->Commit();
  CMOE_CHECK(written.ok()) << written;
  return out_dir;
}

}  // namespace cmoe::testing
