#include "engine/model_loader.h"

#include <utility>

#include "common/logging.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/safetensors.h"
#include "kernels/backend_factory.h"

namespace cmoe::engine {

absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options) {
  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint,
                        Checkpoint::Open(options.model_dir));
  if (options.populate_weights) {
    Timer timer;
    checkpoint->tensors().Populate();
    if (checkpoint->weight_bytes() > (int64_t{1} << 30)) {
      CMOE_LOG(INFO) << "weights of " << options.model_dir << " mapped in " << timer.Seconds()
                     << " s";
    }
  }
  LoadedModel loaded;
  if (options.load_tokenizer) {
    CMOE_ASSIGN_OR_RETURN(loaded.tokenizer, LoadTokenizer(options.model_dir, checkpoint->config()));
  }
  const ModelConfig config = checkpoint->config();
  CMOE_ASSIGN_OR_RETURN(
      std::unique_ptr<kernels::Backend> backend,
      kernels::CreateBackend({.device = options.device, .threads = options.threads}));
  CMOE_ASSIGN_OR_RETURN(loaded.model, Model::Create(std::move(checkpoint), std::move(backend)));
  const int64_t tokens =
      options.kv_cache_tokens > 0 ? options.kv_cache_tokens : config.max_position_embeddings;
  const int64_t blocks = (tokens + options.kv_block_size - 1) / options.kv_block_size;
  kernels::Backend& backend_ref = loaded.model->backend();
  CMOE_ASSIGN_OR_RETURN(
      loaded.cache,
      KvCache::Create(config, {.block_size = options.kv_block_size,
                               .num_blocks = blocks,
                               .dtype = options.kv_cache_dtype,
                               .memory = backend_ref.IsDevice() ? &backend_ref : nullptr}));
  return loaded;
}

}  // namespace cmoe::engine
