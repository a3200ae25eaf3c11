// Helpers shared by the serving-engine tests (engine_test, engine_lifecycle_test,
// engine_logprobs_test): loading the shared tiny models and an Engine on them, sample prompts,
// the single-request GenerateTokens reference, a recording sink that checks the ordering contract
// as events arrive, a gate to hold the step thread, and the sink-contract and idle checks.
#ifndef CMOE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
#define CMOE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/generation.h"
#include "engine/model_loader.h"
#include "engine/request.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"

namespace cmoe::engine {

// gtest prints reasons by name.
void PrintTo(FinishReason reason, std::ostream* os);

}  // namespace cmoe::engine

namespace cmoe::testing {

inline constexpr int kThreads = 1;  // tiny models: no pool workers spinning against the step thread
inline constexpr auto kWait = std::chrono::seconds(10);  // a bug fails the test instead of hanging

// The loadable directory of the shared model `name` (aborts when it is missing).
std::string ModelDir(const std::string& name);

// The model in `dir` (or the shared model `name`) with kThreads threads.
engine::LoadedModel LoadDir(const std::string& dir, int64_t kv_cache_tokens = 4096);
engine::LoadedModel Load(const std::string& name, int64_t kv_cache_tokens = 4096);

std::unique_ptr<engine::Engine> MakeEngine(
    engine::LoadedModel m, const engine::EngineOptions& options = {},
    std::function<void(const engine::StepReport&)> on_step = nullptr);

// Tokens of the TinyStories validation sample (BOS first).
std::vector<int32_t> SampleTokens(const engine::Tokenizer& tok, size_t bytes = 3000);

std::vector<int32_t> Slice(const std::vector<int32_t>& all, size_t begin, size_t n);

std::vector<int32_t> Encode(const engine::Tokenizer& tok, const std::string& text);

// Streaming text of `tokens` continuing after the prompt's last token `previous` (what the
// engine's events must add up to: a continuation keeps its leading space).
std::string Detokenize(const engine::Tokenizer& tok, std::span<const int32_t> tokens,
                       int32_t previous);

// GenerateTokens alone on `m` (aborts on error).
engine::GenerateResult Reference(engine::LoadedModel& m, std::span<const int32_t> prompt,
                                 const engine::GenerateOptions& options);

// The engine's FinishReason for GenerateTokens' finish_reason string.
engine::FinishReason ReasonOf(const std::string& generate_reason);

// A thread-safe sink that records everything and checks the ordering contract as it goes.
class RecordingSink : public engine::RequestSink {
 public:
  // Called on the step thread after an event is recorded (without the sink's lock held).
  std::function<void(const engine::TokenEvent&, int64_t tokens_so_far)> on_tokens_hook;
  std::function<void(const engine::FinishEvent&)> on_finish_hook;  // after the event is recorded

  void OnTokens(const engine::TokenEvent& event) override;
  void OnFinish(const engine::FinishEvent& event) override;

  // True once OnFinish came (within kWait).
  bool WaitFinished();
  bool WaitTokens(int64_t n);

  int finishes() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finishes_;
  }
  bool called() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finishes_ > 0 || !token_events_.empty();
  }
  bool tokens_after_finish() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return tokens_after_finish_;
  }
  std::vector<int32_t> tokens() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return tokens_;
  }
  std::vector<engine::TokenEvent> token_events() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return token_events_;
  }
  std::string streamed_text() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }
  // All text: the token events' and the finish event's.
  std::string text() const;
  std::optional<engine::FinishEvent> finish() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finish_;
  }
  engine::FinishReason reason() const;

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<engine::TokenEvent> token_events_;
  std::vector<int32_t> tokens_;
  std::string text_;
  std::optional<engine::FinishEvent> finish_;
  int finishes_ = 0;
  bool tokens_after_finish_ = false;
};

// A gate the step thread can be held at (inside a sink) until the test opens it.
class Gate {
 public:
  void Open();
  // Blocks until opened (at most kWait).
  void Pass();

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Checks the sink contract of one finished request: exactly one OnFinish, after every OnTokens;
// every event carries `id`; the events' tokens equal the generated tokens; the text adds up to
// the detokenized tokens (a final stop token excluded); counts and timings.
void ExpectContract(const RecordingSink& sink, uint64_t id, const engine::Tokenizer& tok,
                    std::span<const int32_t> prompt, const std::string& label);

// Waits until the engine is empty and its cache is all free (the stats lag the sinks by a step).
::testing::AssertionResult EventuallyIdle(const engine::Engine& engine);

engine::GenerationRequest Greedy(std::vector<int32_t> prompt, int64_t max_new_tokens,
                                 bool ignore_eos = false);

// Submits `r` (aborts when the engine refuses it) and returns its id.
uint64_t SubmitOk(engine::Engine& engine, engine::GenerationRequest r,
                  std::shared_ptr<engine::RequestSink> sink);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_ENGINE_ENGINE_TEST_UTIL_H_
