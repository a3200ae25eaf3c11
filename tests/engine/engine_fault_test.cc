// A sticky device error stops the engine for good: every request in flight, waiting or queued
// finishes with an Unavailable error naming the device error, Submit refuses from then on,
// Health() reports it and the fault callback runs once. A forward error that is not sticky fails
// only the step's requests. The device is simulated by a backend that wraps the CPU backend and
// fails on command.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "engine/checkpoint.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/engine_test_util.h"
#include "tests/kernels/delegating_backend.h"

namespace cmoe::testing {
namespace {

using engine::FinishReason;

// The CPU backend; once armed, MatMul fails (sticky or not).
class FaultyBackend final : public DelegatingBackend {
 public:
  using DelegatingBackend::DelegatingBackend;

  // The next MatMul fails; with sticky, Health() reports the error from then on.
  void Arm(bool sticky) {
    sticky_ = sticky;
    armed_ = true;
  }

  std::string_view Name() const override { return "faulty-cpu"; }
  absl::Status Health() const override { return health_; }

  absl::Status MatMul(const float* x, int64_t rows, const kernels::WeightView& w, float* y,
                      kernels::Accumulate acc) override {
    if (armed_.exchange(false)) {
      const absl::Status error =
          absl::InternalError(sticky_ ? "an illegal memory access was encountered (sticky)"
                                      : "a transient launch error");
      if (sticky_) health_ = error;
      return error;
    }
    if (!health_.ok()) return health_;
    return DelegatingBackend::MatMul(x, rows, w, y, acc);
  }

 private:
  std::atomic<bool> armed_{false};
  bool sticky_ = false;
  absl::Status health_;
};

struct FaultyEngine {
  FaultyBackend* backend = nullptr;  // owned by the engine's model
  std::unique_ptr<engine::Engine> engine;
  std::atomic<int> faults{0};
  absl::Status fault;
};

// stories260K on a FaultyBackend. The fault callback records what it got.
void MakeFaultyEngine(FaultyEngine& f, const engine::EngineOptions& options = {}) {
  engine::LoadedModel m = Load("stories260K");
  auto checkpoint = engine::Checkpoint::Open(ModelDir("stories260K"));
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  auto cpu = kernels::cpu::MakeCpuBackend({.threads = kThreads});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  auto backend = std::make_unique<FaultyBackend>(std::move(cpu).value());
  f.backend = backend.get();
  auto model = engine::Model::Create(std::move(checkpoint).value(), std::move(backend));
  ASSERT_TRUE(model.ok()) << model.status();
  m.model = std::move(model).value();
  auto engine =
      engine::Engine::Create(std::move(m), options, nullptr, [&f](const absl::Status& status) {
        f.fault = status;
        f.faults.fetch_add(1);
      });
  ASSERT_TRUE(engine.ok()) << engine.status();
  f.engine = std::move(engine).value();
}

TEST(EngineFaultTest, StickyDeviceErrorFailsEveryRequestAndStopsServing) {
  FaultyEngine f;
  ASSERT_NO_FATAL_FAILURE(MakeFaultyEngine(f, {.max_running = 2}));
  const engine::Tokenizer& tok = f.engine->tokenizer();
  const std::vector<int32_t> prompt = Slice(SampleTokens(tok), 0, 8);
  // Two run, two wait (max_running 2); once all are in, a token of the first arms the fault.
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 4; ++i) sinks.push_back(std::make_shared<RecordingSink>());
  std::atomic<bool> all_submitted{false};
  std::atomic<bool> armed{false};
  sinks[0]->on_tokens_hook = [&](const engine::TokenEvent&, int64_t n) {
    if (n >= 3 && all_submitted.load() && !armed.exchange(true)) f.backend->Arm(/*sticky=*/true);
  };
  for (auto& sink : sinks) SubmitOk(*f.engine, Greedy(prompt, 200, /*ignore_eos=*/true), sink);
  all_submitted = true;

  for (size_t i = 0; i < sinks.size(); ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished()) << "request " << i;
    const auto finish = sinks[i]->finish();
    EXPECT_EQ(finish->reason, FinishReason::kError) << "request " << i;
    EXPECT_LT(finish->generated_tokens, 200) << "request " << i;
    EXPECT_FALSE(finish->status.ok()) << "request " << i;
  }
  // The requests of the failing step carry the device error; the others the engine's verdict.
  EXPECT_TRUE(absl::StrContains(sinks[0]->finish()->status.message(), "illegal memory access"));
  EXPECT_EQ(sinks[3]->finish()->status.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(sinks[3]->finish()->status.message(), "device failed"));

  EXPECT_EQ(f.faults.load(), 1);
  EXPECT_EQ(f.fault.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(f.fault.message(), "illegal memory access"));
  EXPECT_EQ(f.engine->Health(), f.fault);
  EXPECT_TRUE(f.engine->Stats().failed);

  auto refused = f.engine->Submit(Greedy(prompt, 4), std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status(), f.fault);
  EXPECT_TRUE(EventuallyIdle(*f.engine));
  f.engine->Shutdown(absl::ZeroDuration());
  EXPECT_EQ(f.faults.load(), 1);
}

TEST(EngineFaultTest, TransientForwardErrorFailsOnlyThatStep) {
  FaultyEngine f;
  ASSERT_NO_FATAL_FAILURE(MakeFaultyEngine(f));
  const engine::Tokenizer& tok = f.engine->tokenizer();
  const std::vector<int32_t> prompt = Slice(SampleTokens(tok), 0, 8);
  auto first = std::make_shared<RecordingSink>();
  first->on_tokens_hook = [&f](const engine::TokenEvent&, int64_t n) {
    if (n == 2) f.backend->Arm(/*sticky=*/false);
  };
  SubmitOk(*f.engine, Greedy(prompt, 50, /*ignore_eos=*/true), first);
  ASSERT_TRUE(first->WaitFinished());
  EXPECT_EQ(first->reason(), FinishReason::kError);
  EXPECT_TRUE(absl::StrContains(first->finish()->status.message(), "transient"));

  EXPECT_TRUE(f.engine->Health().ok());
  EXPECT_FALSE(f.engine->Stats().failed);
  auto second = std::make_shared<RecordingSink>();
  SubmitOk(*f.engine, Greedy(prompt, 5, /*ignore_eos=*/true), second);
  ASSERT_TRUE(second->WaitFinished());
  EXPECT_EQ(second->reason(), FinishReason::kLength);
  EXPECT_EQ(second->tokens().size(), 5u);
  EXPECT_EQ(f.faults.load(), 0);
}

}  // namespace
}  // namespace cmoe::testing
