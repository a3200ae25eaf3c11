// LoadTokenizer (declared in tokenizer.h): picks the implementation from a model directory.
#include <filesystem>

#include "engine/bpe_tokenizer.h"
#include "engine/sentencepiece_tokenizer.h"
#include "engine/tokenizer.h"

namespace cmoe::engine {

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizer(const std::string& model_dir,
                                                         const ModelConfig& config) {
  const std::string json_path = model_dir + "/tokenizer.json";
  if (std::filesystem::exists(json_path)) return BpeTokenizer::Open(json_path, config);
  const std::string model_path = model_dir + "/tokenizer.model";
  if (std::filesystem::exists(model_path)) return SentencePieceTokenizer::Open(model_path, config);
  return absl::NotFoundError("no tokenizer in " + model_dir +
                             ": neither tokenizer.json nor tokenizer.model exists");
}

}  // namespace cmoe::engine
