#include "engine/model_loader.h"

#include <algorithm>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/safetensors.h"
#include "kernels/backend_factory.h"
#include "kernels/communicator_factory.h"

namespace cmoe::engine {

namespace {

// LoadModel, with rank `comm` of expert parallelism when not null.
absl::StatusOr<LoadedModel> Load(const LoadOptions& options,
                                 std::unique_ptr<kernels::Communicator> comm) {
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
  loaded.comm = std::move(comm);
  if (options.load_tokenizer) {
    CMOE_ASSIGN_OR_RETURN(loaded.tokenizer, LoadTokenizer(options.model_dir, checkpoint->config()));
  }
  const ModelConfig config = checkpoint->config();
  CMOE_ASSIGN_OR_RETURN(
      std::unique_ptr<kernels::Backend> backend,
      kernels::CreateBackend({.device = options.device, .threads = options.threads}));
  CMOE_ASSIGN_OR_RETURN(loaded.model, Model::Create(std::move(checkpoint), std::move(backend),
                                                    {.expert_parallel = loaded.comm.get()}));
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

}  // namespace

absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options) { return Load(options, nullptr); }

absl::StatusOr<std::vector<LoadedModel>> LoadExpertParallelModels(const LoadOptions& options,
                                                                  int32_t world_size) {
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert parallelism over ", world_size, " ranks: need at least one"));
  }
  std::vector<LoadOptions> rank_options(static_cast<size_t>(world_size), options);
  const bool cuda = options.device == "cuda" || absl::StartsWith(options.device, "cuda:");
  if (cuda) {
    CMOE_ASSIGN_OR_RETURN(const int first, kernels::ParseCudaDevice(options.device));
    for (int32_t r = 0; r < world_size; ++r) {
      rank_options[r].device = absl::StrCat("cuda:", first + r);
    }
  } else {
    const int threads = options.threads > 0 ? options.threads : ThreadPool::HardwareThreads();
    for (LoadOptions& o : rank_options) o.threads = std::max(1, threads / world_size);
  }
  for (int32_t r = 1; r < world_size; ++r) rank_options[r].load_tokenizer = false;
  std::vector<std::string> devices;
  for (const LoadOptions& o : rank_options) devices.push_back(o.device);
  CMOE_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<kernels::Communicator>> comms,
                        kernels::CreateCommunicators(devices));
  std::vector<LoadedModel> ranks;
  for (int32_t r = 0; r < world_size; ++r) {
    absl::StatusOr<LoadedModel> rank = Load(rank_options[r], std::move(comms[r]));
    if (!rank.ok()) {
      return Annotate(rank.status(), absl::StrCat("expert-parallel rank ", r, " of ", world_size,
                                                  " on ", rank_options[r].device));
    }
    ranks.push_back(std::move(rank).value());
  }
  return ranks;
}

}  // namespace cmoe::engine
