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
#include <thread>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model_loader.h"
#include "engine/request.h"

namespace cmoe::engine {

struct EngineOptions {
  int64_t max_batch_tokens = 512;  // tokens per step (decodes + prefill chunks), >= 1
  int64_t max_running = 64;        // sequences in the batch, >= 1
  int64_t max_waiting = 256;       // admitted-later requests; beyond: ResourceExhausted
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
  // with it on the step thread before any of those requests hears of it (the server turns its
  // health to NOT_SERVING there).
  static absl::StatusOr<std::unique_ptr<Engine>> Create(
      LoadedModel model, const EngineOptions& options,
      std::function<void(const StepReport&)> on_step = nullptr,
      std::function<void(const absl::Status&)> on_fault = nullptr);
  ~Engine();  // Shutdown(absl::ZeroDuration()) if not done
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Validates and queues a request; returns its id. InvalidArgument (naming the field) for an
  // empty prompt, unknown token ids, a prompt that leaves no room in the context, bad sampling
  // parameters, max_new_tokens < 1, min_new_tokens > max_new_tokens, top_logprobs outside
  // [0, kMaxTopLogprobs] (or set without logprobs), num_activated_experts out of range (or set
  // for a dense model), or a prompt plus max_new_tokens that could never fit in the KV cache;
  // ResourceExhausted when max_waiting requests already wait; Unavailable while draining or
  // after Shutdown or a device failure. On error the sink is never called.
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
  const Model& model() const { return *model_.model; }
  const Tokenizer& tokenizer() const { return *model_.tokenizer; }

 private:
  struct Sequence;

  Engine(LoadedModel model, const EngineOptions& options,
         std::function<void(const StepReport&)> on_step,
         std::function<void(const absl::Status&)> on_fault);
  absl::Status Validate(const GenerationRequest& r) const;
  void Loop();
  void TakeIncoming();
  void ExpireAndCancel();
  void Admit();
  void Step();
  void Advance(Sequence& s, std::span<const float> logits, int32_t sampled);
  void Finish(Sequence& s, FinishReason reason, absl::Status status = absl::OkStatus());
  void RemoveFinished();
  void Fail(const absl::Status& device_error);

  LoadedModel model_;
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
  std::vector<float> masked_;  // logits with stop tokens masked (min_new_tokens)
  std::thread thread_;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_ENGINE_H_
