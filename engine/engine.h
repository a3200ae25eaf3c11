// The serving engine: requests in, tokens out, with continuous batching on one step thread
// (docs/architecture.md "Serving core"). No gRPC here; the server adapts its RPCs to Submit and
// a RequestSink.
//
//   CMOE_ASSIGN_OR_RETURN(auto engine, Engine::Create(std::move(loaded), {.max_running = 64}));
//   CMOE_ASSIGN_OR_RETURN(uint64_t id, engine->Submit(std::move(request), sink));
//   engine->Cancel(id);                 // the sink then gets OnFinish(kCancelled)
//   engine->Shutdown(absl::Seconds(30)); // drain, then stop
//
// Each step packs the decode token of every running sequence and then chunks of prompts still
// being prefilled, up to max_batch_tokens, so long prompts are prefilled in chunks and never
// starve the decodes. A request is admitted (FIFO) when a running slot is free and the KV cache
// can hold its prompt plus max_new_tokens (capped at the context); until then it waits. Its
// blocks return to the pool the moment it finishes, is cancelled or expires. Greedy output does
// not depend on what else is in the batch.
#ifndef CMOE_ENGINE_ENGINE_H_
#define CMOE_ENGINE_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model_loader.h"
#include "engine/rank_threads.h"
#include "engine/request.h"

namespace cmoe::engine {

struct EngineOptions {
  // Per rank (expert parallelism: each rank's batch is its own).
  int64_t max_batch_tokens = 512;  // tokens per step (decodes + prefill chunks), >= 1
  int64_t max_running = 64;        // sequences in the batch, >= 1
  // For the whole engine.
  int64_t max_waiting = 256;  // admitted-later requests; beyond: ResourceExhausted
};

// What one step did, for metrics (called on the step thread; must not block).
struct StepReport {
  int64_t tokens = 0;  // rows of the step
  int64_t decode_tokens = 0;
  int64_t prefill_tokens = 0;
  double forward_seconds = 0;  // Model::Forward of the step
  double step_seconds = 0;     // the whole step: packing, forward, sampling, delivery to sinks
  const FfnStepStats* ffn = nullptr;  // the model's counters of this step
  bool graph = false;  // the step's layers ran as one device graph (Model::last_step_graphed)
  // (ranks) rows of each expert-parallel rank in the step; one entry without parallelism.
  std::span<const int64_t> rank_tokens;
};

// A consistent snapshot of the engine's queues and cache.
struct EngineStats {
  int64_t running = 0;
  int64_t waiting = 0;
  int64_t kv_blocks_used = 0;
  int64_t kv_blocks_total = 0;
  int64_t steps = 0;
  bool draining = false;
  bool failed = false;  // a sticky device error stopped the engine (see Engine::Health)
};

class Engine {
 public:
  // Takes the model, its cache and its tokenizer (needed for stop strings). InvalidArgument for
  // bad options or a model without a tokenizer.
  //
  // A step whose forward fails finishes its sequences with kError. When the backend then reports
  // a sticky device error (Backend::Health), the engine fails for good: every running, waiting
  // and queued request finishes with kError and an Unavailable status naming the device error,
  // Submit answers that status from then on, Health() returns it, and `on_fault` is called once
  // with it on the step thread before any request hears of the failure (the server turns its
  // health to NOT_SERVING there).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      LoadedModel model, const EngineOptions& options,
      std::function<void(const StepReport&)> on_step = nullptr,
      std::function<void(const absl::Status&)> on_fault = nullptr);

  // Expert parallelism (LoadExpertParallelModels): ranks[r] is rank r of a group of
  // ranks.size() models of one carved checkpoint, each with its communicator
  // (Model::expert_parallel) and its own KV cache; ranks[0] carries the tokenizer. Each request
  // is admitted to one rank (the one with the fewest running sequences that can hold it) and
  // stays there. Every step runs all ranks' Forward at once, one thread per rank, a rank without
  // sequences joining with ForwardIdle, so the ranks' collectives line up. A step that fails on
  // any rank aborts the communicators (the peers' collectives return) and fails the engine for
  // good, as a sticky device error does: the group's state is unknown. Before serving, every
  // rank takes one empty step, so that each pair has exchanged once (NCCL connects on first use,
  // and a connection waiting for a peer cannot be aborted); its error is returned. One rank
  // without a communicator is the plain engine above. InvalidArgument for ranks that do not form
  // a group (models of different checkpoints, caches of different sizes).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::vector<LoadedModel> ranks, const EngineOptions& options,
      std::function<void(const StepReport&)> on_step = nullptr,
      std::function<void(const absl::Status&)> on_fault = nullptr);
  ~Engine();  // Shutdown(absl::ZeroDuration()) if not done
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request; returns its id. InvalidArgument (naming the field) for an
  // empty prompt, unknown token ids, a prompt that leaves no room in the context, bad sampling
  // parameters, max_new_tokens < 1, min_new_tokens > max_new_tokens, top_logprobs outside
  // [0, kMaxTopLogprobs] (or set without logprobs), num_activated_experts out of range (or set
  // for a dense model, or other than the checkpoint's under expert parallelism), or a prompt plus
  // max_new_tokens that could never fit in the KV cache; ResourceExhausted when max_waiting
  // requests already wait; Unavailable while draining or after Shutdown or a device failure. On
  // error the sink is never called.
  absl::StatusOr<uint64_t> Submit(GenerationRequest request, std::shared_ptr<RequestSink> sink);

  // The request leaves the batch at the next step and its sink gets OnFinish(kCancelled).
  // Unknown or finished ids are ignored.
  void Cancel(uint64_t id);

  // Stops accepting requests (Unavailable), lets running and waiting ones finish for up to
  // `drain`, cancels the rest, and stops the step thread. Idempotent.
  void Shutdown(absl::Duration drain);

  EngineStats Stats() const;
  // OK, or the Unavailable status of the device failure that stopped the engine.
  absl::Status Health() const;
  // Rank 0's model (every rank runs the same checkpoint).
  const Model& model() const { return *ranks_[0].model; }
  const Tokenizer& tokenizer() const { return *ranks_[0].tokenizer; }
  int32_t num_ranks() const { return static_cast<int32_t>(ranks_.size()); }

 private:
  struct Sequence;

  // What one rank runs in a step.
  struct RankStep {
    std::vector<SequenceChunk> chunks;
    std::vector<Sequence*> owners;
    // The rows a device samples itself (SequenceChunk::sample points into this).
    std::vector<kernels::RowSampling> device_sampling;
    ForwardOutput out;
    absl::Status status;
    int64_t decode_tokens = 0;
    int64_t prefill_tokens = 0;
  };

  Engine(std::vector<LoadedModel> ranks, const EngineOptions& options,
         std::function<void(const StepReport&)> on_step,
         std::function<void(const absl::Status&)> on_fault);
  absl::Status Validate(const GenerationRequest& r) const;
  void Loop();
  void TakeIncoming();
  void ExpireAndCancel();
  void Admit();
  void Step();
  // Under expert parallelism, an empty step on every rank before serving (see Create).
  absl::Status ConnectRanks();
  // Packs rank `rank`'s decodes, then prompt chunks, under the per-rank token budget.
  void PackRank(int32_t rank, RankStep& step);
  // Runs every rank's Forward (ForwardIdle for an empty rank under parallelism).
  void RunRanks();
  // The rank a waiting sequence needing `need` positions is admitted to, its blocks reserved
  // there; -1 when no rank can take it now.
  int32_t PlaceOnRank(Sequence& s, int64_t need);
  KvCache& cache(const Sequence& s);
  int64_t KvBlocksUsed() const;
  void Advance(Sequence& s, std::span<const float> logits, int32_t sampled);
  void Finish(Sequence& s, FinishReason reason, absl::Status status = absl::OkStatus());
  void RemoveFinished();
  // The engine fails for good (see Create): fault_ is set and on_fault_ called, then the
  // sequences of the failed step finish with `step_error`, every other one with the engine's
  // Unavailable status.
  void Fail(const absl::Status& device_error, std::span<Sequence* const> step_owners,
            const absl::Status& step_error);

  std::vector<LoadedModel> ranks_;  // one without expert parallelism
  const EngineOptions options_;
  std::function<void(const StepReport&)> on_step_;
  std::function<void(const absl::Status&)> on_fault_;

  // Shared with Submit/Cancel/Stats callers, under mutex_.
  mutable std::mutex mutex_;
  std::condition_variable wake_;  // the step thread waits for work
  std::condition_variable idle_;  // Shutdown waits for the queues to empty
  std::deque<std::unique_ptr<Sequence>> incoming_;
  std::unordered_set<uint64_t> cancelled_;
  uint64_t next_id_ = 1;
  bool draining_ = false;
  bool stop_ = false;
  absl::Status fault_;  // set once by Fail
  EngineStats stats_;

  // Step thread only.
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<float> masked_;         // logits with stop tokens masked (min_new_tokens)
  std::vector<RankStep> steps_;       // (ranks)
  std::vector<int64_t> rank_tokens_;  // (ranks) for StepReport
  FfnStepStats ffn_;                  // the ranks' counters of a step, summed (expert parallelism)
  std::unique_ptr<RankThreads> rank_threads_;  // expert parallelism only
  std::thread thread_;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_ENGINE_H_
