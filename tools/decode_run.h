// cmoe-bench decode's measurement of one model at one batch size, on one backend or over the
// ranks of expert parallelism (engine/model_loader.h LoadExpertParallelModels).
//
//   CMOE_ASSIGN_OR_RETURN(auto run, DecodeRun::Create(ranks, "S2A2E16 x2", {.batch = 8, ...}));
//   for (int s = 0; s < steps; ++s) CMOE_RETURN_IF_ERROR(run->Step(/*timed=*/true));
//   nlohmann::json figures = run->Result();
//
// `batch` sequences are prefilled with random prompts (sequence b on rank b % ranks, as the
// serving engine spreads requests, each rank with a KV cache of its own), then every Step is one
// greedy decode step of all of them, timed alone: every rank's Forward at once on a thread of its
// own (ForwardIdle on a rank without sequences), as the engine runs a step.
#ifndef CMOE_TOOLS_DECODE_RUN_H_
#define CMOE_TOOLS_DECODE_RUN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/rank_threads.h"
#include "kernels/dtype.h"
#include "nlohmann/json.hpp"

namespace cmoe::tools {

struct DecodeRunOptions {
  int64_t batch = 1;       // sequences, >= 1
  int64_t prompt_len = 1;  // prompt tokens per sequence before the first step
  int64_t steps = 1;       // decode steps the run will take, warm-up included (sizes the caches)
  int32_t kv_block_size = 16;
  kernels::DType kv_cache_dtype = kernels::DType::kF32;
};

class DecodeRun {
 public:
  // `ranks`: one LoadedModel, or the ranks of one expert-parallel group in rank order (they must
  // outlive the run). Prefills every sequence.
  static absl::StatusOr<std::unique_ptr<DecodeRun>> Create(std::vector<engine::LoadedModel>& ranks,
                                                           std::string label,
                                                           const DecodeRunOptions& options);

  // One decode step of every sequence; `timed` records it.
  absl::Status Step(bool timed);

  // The timed steps' figures: tokens_per_second (over all steps), median_step_ms,
  // median_tokens_per_second, ffn_activation_ratio, ranks, and for carved models cmoe,
  // routed_experts and experts_touched_per_layer (the union over all ranks' tokens). A single
  // backend also gets weight_bytes_per_step / _per_token and achieved_gbps (the weight bytes the
  // step read over its median time): under expert parallelism every rank reads its own share and
  // no single figure describes that.
  nlohmann::json Result() const;

  int32_t ranks() const { return static_cast<int32_t>(ranks_.size()); }
  // Carved layers of the model (0 when dense).
  int64_t carved_layers() const;

 private:
  // What one rank holds: its sequences (every ranks()-th of the batch) and their cache.
  struct Rank {
    engine::Model* model = nullptr;
    kernels::Communicator* comm = nullptr;  // null without expert parallelism
    std::unique_ptr<engine::KvCache> cache;
    std::vector<engine::SequenceBlocks> seqs;
    std::vector<std::vector<int32_t>> prompts;
    std::vector<engine::SequenceChunk> chunks;
    std::vector<int32_t> next;
    engine::ForwardOutput out;
    absl::Status status;
  };

  explicit DecodeRun(int32_t ranks) : threads_(ranks) {}

  // Every rank's Forward of its chunks (ForwardIdle when it has none) at once; a rank that fails
  // aborts every communicator, so that no peer waits for it. The first error, naming the rank.
  absl::Status ForwardAll();

  std::string label_;
  int64_t prompt_len_ = 0;
  int64_t pos_ = 0;
  std::vector<Rank> ranks_;
  engine::RankThreads threads_;
  std::vector<double> step_seconds_, step_bytes_, touched_;
  int64_t neurons_ = 0, neurons_dense_ = 0;
};

// The median of `v` (0 when empty).
double Median(std::vector<double> v);

// `n` token ids drawn from [3, vocab) (every id for tiny vocabularies), the same for a seed.
std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed);

}  // namespace cmoe::tools

#endif  // CMOE_TOOLS_DECODE_RUN_H_
