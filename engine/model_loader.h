// Everything a tool or the server needs to run a checkpoint directory: the model on its backend,
// a KV cache, and the tokenizer.
//
//   CMOE_ASSIGN_OR_RETURN(LoadedModel m, LoadModel({.model_dir = dir, .threads = 2}));
//   CMOE_ASSIGN_OR_RETURN(auto ids, m.tokenizer->Encode("Once upon a time", {}));
#ifndef CMOE_ENGINE_MODEL_LOADER_H_
#define CMOE_ENGINE_MODEL_LOADER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "kernels/communicator.h"

namespace cmoe::engine {

struct LoadOptions {
  std::string model_dir;
  std::string device = "cpu";  // see kernels::BackendOptions
  int threads = 0;             // <= 0: all cores
  int32_t kv_block_size = 16;
  // Positions the KV cache holds over all sequences; <= 0: one full context.
  int64_t kv_cache_tokens = 0;
  // F32, or BF16 (KvCacheOptions::dtype: half the bytes per position).
  kernels::DType kv_cache_dtype = kernels::DType::kF32;
  bool load_tokenizer = true;
  // Map every weight page at load (the time goes to loading, not to the first requests that
  // touch each routed expert). Off leaves pages to fault in on first use.
  bool populate_weights = true;
};

struct LoadedModel {
  // Expert parallelism: this rank's communicator (the model's ModelOptions::expert_parallel;
  // declared first, so it outlives the model). Null otherwise.
  std::unique_ptr<kernels::Communicator> comm;
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> cache;
  std::unique_ptr<Tokenizer> tokenizer;  // null when not requested
};

// Errors name the directory and what is wrong with it (see Checkpoint::Open, LoadTokenizer).
absl::StatusOr<LoadedModel> LoadModel(const LoadOptions& options);

// The ranks of expert parallelism in this process (Engine::Create over ranks): `world_size`
// models of a carved checkpoint, rank r holding its block of every carved layer's routed experts
// and a KV cache of its own (kv_cache_tokens each), joined by communicators
// (kernels::CreateCommunicators). Devices: "cuda:N" puts rank r on GPU N + r (NCCL); "cpu" and
// "reference" put every rank on the CPU with threads / world_size threads each (at least one; a
// CPU group is for testing the parallel path: the single-rank CPU backend is faster). Only rank
// 0 loads the tokenizer. InvalidArgument for world_size < 1, a dense checkpoint, or more ranks
// than GPUs; errors of LoadModel and CreateCommunicators otherwise.
absl::StatusOr<std::vector<LoadedModel>> LoadExpertParallelModels(const LoadOptions& options,
                                                                  int32_t world_size);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_LOADER_H_
