// The serving engine's request lifecycle on the shared tiny models: cancellation (from inside a
// sink, from another thread, running or waiting), deadlines, the waiting-queue limit, and
// shutdown (drain, a request taken but not yet scheduled, immediate, destructor).
#include "engine/engine.h"

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/request.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"

namespace cmoe::engine {
namespace {

using ::cmoe::testing::Encode;
using ::cmoe::testing::EventuallyIdle;
using ::cmoe::testing::ExpectContract;
using ::cmoe::testing::Gate;
using ::cmoe::testing::Greedy;
using ::cmoe::testing::kWait;
using ::cmoe::testing::Load;
using ::cmoe::testing::MakeEngine;
using ::cmoe::testing::RecordingSink;
using ::cmoe::testing::SampleTokens;
using ::cmoe::testing::Slice;
using ::cmoe::testing::SubmitOk;
using Clock = std::chrono::steady_clock;

// --- 1. Cancel ---------------------------------------------------------------------------------

TEST(EngineTest, CancelFromInsideOnTokens) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  Engine* e = engine.get();
  auto sink = std::make_shared<RecordingSink>();
  sink->on_tokens_hook = [e](const TokenEvent& event, int64_t n) {
    if (n == 3) e->Cancel(event.id);
  };
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  const uint64_t id = SubmitOk(*engine, Greedy(prompt, 400, true), sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->reason(), FinishReason::kCancelled);
  EXPECT_EQ(sink->finish()->generated_tokens, 3);  // it leaves at the next step
  ExpectContract(*sink, id, engine->tokenizer(), prompt, "contract");
  EXPECT_TRUE(EventuallyIdle(*engine));
  engine->Cancel(id);      // finished: ignored
  engine->Cancel(123456);  // unknown: ignored
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_EQ(sink->finishes(), 1);
}

TEST(EngineTest, CancelFromAnotherThreadMidStreamAndWhileWaiting) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"), {.max_running = 1});
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  // The running request's first token holds the step thread until the test has cancelled both.
  Gate gate;
  auto running = std::make_shared<RecordingSink>();
  running->on_tokens_hook = [&gate](const TokenEvent&, int64_t n) {
    if (n == 1) gate.Pass();
  };
  auto waiting = std::make_shared<RecordingSink>();
  const uint64_t a = SubmitOk(*engine, Greedy(prompt, 400, true), running);
  ASSERT_TRUE(running->WaitTokens(1));
  const uint64_t b = SubmitOk(*engine, Greedy(prompt, 400, true), waiting);
  engine->Cancel(a);
  engine->Cancel(b);
  gate.Open();
  ASSERT_TRUE(running->WaitFinished());
  ASSERT_TRUE(waiting->WaitFinished());
  EXPECT_EQ(running->reason(), FinishReason::kCancelled);
  EXPECT_EQ(running->finish()->generated_tokens, 1);
  EXPECT_EQ(waiting->reason(), FinishReason::kCancelled);
  EXPECT_EQ(waiting->finish()->generated_tokens, 0);
  ExpectContract(*running, a, engine->tokenizer(), prompt, "running");
  ExpectContract(*waiting, b, engine->tokenizer(), prompt, "waiting");
  EXPECT_TRUE(EventuallyIdle(*engine));
  // The engine still serves.
  auto after = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 4, true), after);
  ASSERT_TRUE(after->WaitFinished());
  EXPECT_EQ(after->reason(), FinishReason::kLength);
  EXPECT_TRUE(EventuallyIdle(*engine));
}

// --- 2. Deadlines ------------------------------------------------------------------------------

TEST(EngineTest, DeadlinePassedOrShortGivesTimeLimit) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  {
    GenerationRequest r = Greedy(prompt, 50, true);
    r.deadline = Clock::now() - std::chrono::seconds(1);
    auto sink = std::make_shared<RecordingSink>();
    const uint64_t id = SubmitOk(*engine, std::move(r), sink);
    ASSERT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->reason(), FinishReason::kTimeLimit);
    EXPECT_EQ(sink->finish()->generated_tokens, 0);
    ExpectContract(*sink, id, engine->tokenizer(), prompt, "passed");
    EXPECT_TRUE(EventuallyIdle(*engine));
  }
  {
    // A 30 ms deadline; the first token holds the step thread for 60 ms.
    GenerationRequest r = Greedy(prompt, 400, true);
    r.deadline = Clock::now() + std::chrono::milliseconds(30);
    auto sink = std::make_shared<RecordingSink>();
    sink->on_tokens_hook = [](const TokenEvent&, int64_t n) {
      if (n == 1) std::this_thread::sleep_for(std::chrono::milliseconds(60));
    };
    const uint64_t id = SubmitOk(*engine, std::move(r), sink);
    ASSERT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->reason(), FinishReason::kTimeLimit);
    EXPECT_GE(sink->finish()->generated_tokens, 1);
    EXPECT_LT(sink->finish()->generated_tokens, 400);
    ExpectContract(*sink, id, engine->tokenizer(), prompt, "short");
    EXPECT_TRUE(EventuallyIdle(*engine));
  }
}

// --- 3. The waiting queue is bounded ------------------------------------------------------------

TEST(EngineTest, FullQueueIsResourceExhausted) {
  std::unique_ptr<Engine> engine =
      MakeEngine(Load("stories260K"), {.max_running = 1, .max_waiting = 1});
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  Gate gate;  // the first request's first token holds the step thread
  std::vector<std::shared_ptr<RecordingSink>> accepted;
  std::vector<uint64_t> ids;
  std::shared_ptr<RecordingSink> rejected;
  for (int i = 0; i < 5 && rejected == nullptr; ++i) {
    auto sink = std::make_shared<RecordingSink>();
    if (i == 0) {
      sink->on_tokens_hook = [&gate](const TokenEvent&, int64_t n) {
        if (n == 1) gate.Pass();
      };
    }
    absl::StatusOr<uint64_t> id = engine->Submit(Greedy(prompt, 20, true), sink);
    if (id.ok()) {
      accepted.push_back(sink);
      ids.push_back(*id);
      if (i == 0) {
        ASSERT_TRUE(sink->WaitTokens(1));  // now running, held at the gate
      }
    } else {
      EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted) << id.status();
      rejected = sink;
    }
  }
  ASSERT_NE(rejected, nullptr) << "5 submissions accepted with max_running = max_waiting = 1";
  EXPECT_LE(accepted.size(), 2u);
  gate.Open();
  for (size_t i = 0; i < accepted.size(); ++i) {
    ASSERT_TRUE(accepted[i]->WaitFinished());
    EXPECT_EQ(accepted[i]->reason(), FinishReason::kLength);
    ExpectContract(*accepted[i], ids[i], engine->tokenizer(), prompt, "accepted");
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
  EXPECT_FALSE(rejected->called());
  // Room again.
  auto again = std::make_shared<RecordingSink>();
  ASSERT_TRUE(engine->Submit(Greedy(prompt, 3, true), again).ok());
  ASSERT_TRUE(again->WaitFinished());
}

// --- 4. Shutdown -----------------------------------------------------------------------------

TEST(EngineTest, ShutdownDrainsInFlightRequests) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"), {.max_running = 3});
  const std::vector<int32_t> all = SampleTokens(engine->tokenizer());
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 6; ++i) {  // 3 running, 3 waiting
    sinks.push_back(std::make_shared<RecordingSink>());
    SubmitOk(*engine, Greedy(Slice(all, 20 * i, 6 + i), 16, true), sinks.back());
  }
  ASSERT_TRUE(sinks[0]->WaitTokens(1));
  engine->Shutdown(absl::Seconds(60));
  for (size_t i = 0; i < sinks.size(); ++i) {
    ASSERT_EQ(sinks[i]->finishes(), 1) << "request " << i << " not finished after Shutdown";
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kLength) << "request " << i;
    EXPECT_EQ(sinks[i]->finish()->generated_tokens, 16);
  }
  auto late = std::make_shared<RecordingSink>();
  absl::StatusOr<uint64_t> id = engine->Submit(Greedy(Slice(all, 0, 4), 4), late);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  const EngineStats s = engine->Stats();
  EXPECT_TRUE(s.draining);
  EXPECT_EQ(s.running, 0);
  EXPECT_EQ(s.waiting, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
  engine->Shutdown(absl::Seconds(1));  // idempotent
  engine.reset();
  EXPECT_FALSE(late->called());
}

// A request the step thread has taken from the incoming queue but not yet counted must still
// count: in Stats() (a consistent snapshot) and for Shutdown's drain. Deterministic: X (deadline
// already passed) and Y arrive together while the step thread is held; X's OnFinish, called from
// ExpireAndCancel right after both were taken, holds the step thread while the test looks.
TEST(EngineTest, RequestTakenButNotYetScheduledStillCounts) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = {1, 400, 300};
  Gate hold_z, hold_x;
  auto z = std::make_shared<RecordingSink>();
  z->on_tokens_hook = [&](const TokenEvent&, int64_t) { hold_z.Pass(); };
  SubmitOk(*engine, Greedy(prompt, 1, true), z);  // finishes in the step of its first token
  ASSERT_TRUE(z->WaitTokens(1));                  // the step thread is held inside that step
  auto x = std::make_shared<RecordingSink>();
  std::mutex m;
  std::condition_variable cv;
  bool x_in_finish = false;
  x->on_finish_hook = [&](const FinishEvent&) {
    {
      std::lock_guard<std::mutex> lock(m);
      x_in_finish = true;
    }
    cv.notify_all();
    hold_x.Pass();
  };
  GenerationRequest xr = Greedy(prompt, 4, true);
  xr.deadline = Clock::now() - std::chrono::seconds(1);
  SubmitOk(*engine, std::move(xr), x);
  auto y = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 4, true), y);
  hold_z.Open();
  {
    std::unique_lock<std::mutex> lock(m);
    ASSERT_TRUE(cv.wait_for(lock, kWait, [&] { return x_in_finish; }));
  }
  // Now Y has been taken from the incoming queue and is neither finished nor admitted yet.
  const EngineStats stats = engine->Stats();
  EXPECT_GE(stats.running + stats.waiting, 1)
      << "Stats() shows no running or waiting request while Y is in flight";
  // Shutdown with a generous drain, started now, must let Y finish.
  std::thread shutdown([&] { engine->Shutdown(absl::Seconds(60)); });
  const auto deadline = Clock::now() + kWait;
  while (!engine->Stats().draining && Clock::now() < deadline) {
    std::this_thread::yield();
  }
  hold_x.Open();
  shutdown.join();
  ASSERT_EQ(x->finishes(), 1);
  EXPECT_EQ(x->reason(), FinishReason::kTimeLimit);
  ASSERT_EQ(y->finishes(), 1);
  EXPECT_EQ(y->reason(), FinishReason::kLength) << "a 60 s drain cancelled an in-flight request";
  EXPECT_EQ(y->finish()->generated_tokens, 4);
}

TEST(EngineTest, ShutdownWithoutDrainCancelsPromptly) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 4; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    // 1 ms per token in the sink: 400 tokens would take well over a second.
    sinks.back()->on_tokens_hook = [](const TokenEvent&, int64_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    };
    SubmitOk(*engine, Greedy(prompt, 400, true), sinks.back());
  }
  for (auto& s : sinks) ASSERT_TRUE(s->WaitTokens(1));
  const auto start = Clock::now();
  engine->Shutdown(absl::ZeroDuration());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  EXPECT_LT(seconds, 1.0);
  for (size_t i = 0; i < sinks.size(); ++i) {
    ASSERT_EQ(sinks[i]->finishes(), 1) << "request " << i;
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kCancelled) << "request " << i;
    EXPECT_LT(sinks[i]->finish()->generated_tokens, 400);
    EXPECT_FALSE(sinks[i]->tokens_after_finish());
  }
  EXPECT_EQ(engine->Stats().kv_blocks_used, 0);
  auto late = std::make_shared<RecordingSink>();
  EXPECT_EQ(engine->Submit(Greedy(prompt, 4), late).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST(EngineTest, DestroyingTheEngineWithRequestsInFlightCancelsThem) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"), {.max_running = 2});
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 4; ++i) {  // 2 running, 2 waiting
    sinks.push_back(std::make_shared<RecordingSink>());
    sinks.back()->on_tokens_hook = [](const TokenEvent&, int64_t) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    };
    SubmitOk(*engine, Greedy(prompt, 400, true), sinks.back());
  }
  ASSERT_TRUE(sinks[0]->WaitTokens(2));
  const auto start = Clock::now();
  engine.reset();
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - start).count(), 1.0);
  for (size_t i = 0; i < sinks.size(); ++i) {
    ASSERT_EQ(sinks[i]->finishes(), 1) << "request " << i;
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kCancelled) << "request " << i;
  }
  EXPECT_EQ(sinks[3]->finish()->generated_tokens, 0);
}

}  // namespace
}  // namespace cmoe::engine
