// The serving engine over expert-parallel ranks (Engine::Create over LoadExpertParallelModels):
// carved stories260K (S2A2E8: 6 routed experts, k = 2) on W CPU ranks joined by a
// ThreadedCommunicator group, as cmoe-serve --expert-parallel W runs it on GPUs with NCCL.
// - Greedy output equals one engine without parallelism for W = 1, 2, 3, 4 with the requests
//   spread over every rank (W = 4: rank 3 owns one expert).
// - Ranks without sequences join every step (ForwardIdle): one request on three ranks.
// - A rank whose forward fails mid-step aborts the group: its peers, waiting in a collective,
//   return, every request finishes with an error, the engine stops serving, nothing hangs.
// - Engine::Create and LoadExpertParallelModels refuse what is not a group.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "engine/checkpoint.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/tokenizer.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/threaded_communicator.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/shared_models.h"
#include "tests/kernels/delegating_backend.h"
#include "tests/test_util.h"

namespace cmoe::testing {
namespace {

using engine::FinishReason;
using engine::LoadedModel;

// The carved checkpoint, made once for the whole test program.
const std::string& CarvedDir() {
  static ScratchDir* scratch = new ScratchDir();
  static const std::string dir = CarveSharedModel("stories260K", 8, 2, 2, scratch->Join("S2A2E8"));
  return dir;
}

std::vector<LoadedModel> LoadRanks(int32_t world, const std::string& dir = CarvedDir()) {
  auto ranks = engine::LoadExpertParallelModels(
      {.model_dir = dir, .device = "cpu", .threads = world, .kv_cache_tokens = 2048}, world);
  EXPECT_TRUE(ranks.ok()) << ranks.status();
  return ranks.ok() ? std::move(ranks).value() : std::vector<LoadedModel>();
}

// Rows of each rank, summed over the steps (from StepReport::rank_tokens).
struct RankLoad {
  std::mutex mutex;
  std::vector<int64_t> tokens;
  int64_t steps = 0;
  bool idle_ranks_every_step = true;  // some rank had no rows in every step

  void Add(const engine::StepReport& report) {
    std::lock_guard<std::mutex> lock(mutex);
    tokens.resize(report.rank_tokens.size());
    bool idle = false;
    for (size_t r = 0; r < report.rank_tokens.size(); ++r) {
      tokens[r] += report.rank_tokens[r];
      idle = idle || report.rank_tokens[r] == 0;
    }
    idle_ranks_every_step = idle_ranks_every_step && idle;
    ++steps;
  }
};

// The greedy tokens of `prompts` (max_new_tokens each) on `engine`, in submission order.
std::vector<std::vector<int32_t>> GenerateAll(engine::Engine& engine,
                                              const std::vector<std::vector<int32_t>>& prompts,
                                              int64_t max_new_tokens) {
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const std::vector<int32_t>& prompt : prompts) {
    sinks.push_back(std::make_shared<RecordingSink>());
    SubmitOk(engine, Greedy(prompt, max_new_tokens, /*ignore_eos=*/true), sinks.back());
  }
  std::vector<std::vector<int32_t>> tokens;
  for (size_t i = 0; i < sinks.size(); ++i) {
    EXPECT_TRUE(sinks[i]->WaitFinished()) << "request " << i;
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kLength) << "request " << i;
    tokens.push_back(sinks[i]->tokens());
  }
  return tokens;
}

std::vector<std::vector<int32_t>> Prompts(const engine::Tokenizer& tok, int n) {
  const std::vector<int32_t> sample = SampleTokens(tok);
  std::vector<std::vector<int32_t>> prompts;
  for (int i = 0; i < n; ++i) prompts.push_back(Slice(sample, 37 * i, 5 + 3 * i));
  return prompts;
}

TEST(EngineExpertParallelTest, GreedyOutputMatchesOneRank) {
  constexpr int kRequests = 8;
  constexpr int64_t kNewTokens = 16;
  std::unique_ptr<engine::Engine> single = MakeEngine(LoadDir(CarvedDir(), 2048));
  const std::vector<std::vector<int32_t>> prompts = Prompts(single->tokenizer(), kRequests);
  const std::vector<std::vector<int32_t>> expected = GenerateAll(*single, prompts, kNewTokens);
  single->Shutdown(absl::ZeroDuration());

  for (int32_t world : {1, 2, 3, 4}) {
    SCOPED_TRACE(absl::StrCat(world, " ranks"));
    RankLoad load;
    auto engine = engine::Engine::Create(LoadRanks(world), {.max_running = 8},
                                         [&](const auto& r) { load.Add(r); });
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_EQ((*engine)->num_ranks(), world);
    const std::vector<std::vector<int32_t>> got = GenerateAll(**engine, prompts, kNewTokens);
    for (int i = 0; i < kRequests; ++i) EXPECT_EQ(got[i], expected[i]) << "request " << i;
    EXPECT_TRUE(EventuallyIdle(**engine));
    (*engine)->Shutdown(absl::ZeroDuration());
    // Every request's prompt and new tokens (the last one is sampled, not fed back) ran on one of
    // the ranks, and admission spread them over all ranks.
    std::lock_guard<std::mutex> lock(load.mutex);
    ASSERT_EQ(load.tokens.size(), static_cast<size_t>(world));
    int64_t total = 0, expected_total = 0;
    for (int32_t r = 0; r < world; ++r) {
      EXPECT_GT(load.tokens[r], 0) << "rank " << r << " never ran a token";
      total += load.tokens[r];
    }
    for (const auto& p : prompts) expected_total += static_cast<int64_t>(p.size()) + kNewTokens - 1;
    EXPECT_EQ(total, expected_total);
  }
}

TEST(EngineExpertParallelTest, RanksWithoutSequencesJoinEveryStep) {
  std::unique_ptr<engine::Engine> single = MakeEngine(LoadDir(CarvedDir(), 2048));
  const std::vector<std::vector<int32_t>> prompts = Prompts(single->tokenizer(), 1);
  const std::vector<std::vector<int32_t>> expected = GenerateAll(*single, prompts, 24);
  single->Shutdown(absl::ZeroDuration());

  RankLoad load;
  auto engine = engine::Engine::Create(LoadRanks(3), {}, [&](const auto& r) { load.Add(r); });
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_EQ(GenerateAll(**engine, prompts, 24), expected);
  (*engine)->Shutdown(absl::ZeroDuration());
  std::lock_guard<std::mutex> lock(load.mutex);
  EXPECT_GE(load.steps, 24);
  EXPECT_TRUE(load.idle_ranks_every_step);
  EXPECT_EQ(load.tokens[0] + load.tokens[1] + load.tokens[2],
            static_cast<int64_t>(prompts[0].size()) + 23);
}

// Serving churn over three ranks: requests arrive from three threads while others run, some are
// cancelled mid-stream (from inside their own token callback, on the step thread) or while still
// waiting (from a client thread), some arrive with a deadline already passed, and lengths differ,
// so ranks keep emptying and refilling (ForwardIdle in between) and admission keeps rebalancing.
// Every request finishes once with the right reason; the requests that ran to their length give
// exactly one engine's greedy tokens, the cancelled ones a prefix of them; afterwards the engine
// is idle with its KV caches free and still serves.
TEST(EngineExpertParallelTest, ChurnOfArrivalsCancelsAndDeadlinesKeepsTheGroupServing) {
  constexpr int kRequests = 18;
  constexpr int kClients = 3;
  std::unique_ptr<engine::Engine> single = MakeEngine(LoadDir(CarvedDir(), 4096));
  const std::vector<std::vector<int32_t>> prompts = Prompts(single->tokenizer(), kRequests);
  const auto length = [](int i) -> int64_t { return 3 + (i * 7) % 17; };
  std::vector<std::vector<int32_t>> expected;
  for (int i = 0; i < kRequests; ++i) {
    expected.push_back(GenerateAll(*single, {prompts[i]}, length(i))[0]);
  }
  single->Shutdown(absl::ZeroDuration());

  enum class Fate { kRuns, kCancelledRunning, kCancelledWaiting, kExpired };
  const auto fate = [](int i) {
    switch (i % 6) {
      case 1:
        return Fate::kCancelledRunning;
      case 4:
        return i % 12 == 4 ? Fate::kExpired : Fate::kCancelledWaiting;
      default:
        return Fate::kRuns;
    }
  };
  RankLoad load;
  auto created = engine::Engine::Create(LoadRanks(3), {.max_running = 2, .max_waiting = 64},
                                        [&](const auto& r) { load.Add(r); });
  ASSERT_TRUE(created.ok()) << created.status();
  engine::Engine& engine = **created;

  std::vector<std::shared_ptr<RecordingSink>> sinks(kRequests);
  std::vector<std::atomic<uint64_t>> ids(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    sinks[i] = std::make_shared<RecordingSink>();
    if (fate(i) == Fate::kCancelledRunning) {
      // Cancelled by its own callback after 1-3 tokens (the id is stored before the first step
      // can deliver a token: Submit returns it first, and the hook waits for it).
      const int64_t after = 1 + i % 3;
      sinks[i]->on_tokens_hook = [&engine, &ids, i, after](const engine::TokenEvent&, int64_t n) {
        if (n == after) {
          while (ids[i].load() == 0) std::this_thread::yield();
          engine.Cancel(ids[i].load());
        }
      };
    }
  }
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      for (int i = c; i < kRequests; i += kClients) {
        engine::GenerationRequest r = Greedy(prompts[i], length(i), /*ignore_eos=*/true);
        if (fate(i) == Fate::kExpired) {
          r.deadline = std::chrono::steady_clock::now() - std::chrono::seconds(1);
        }
        auto id = engine.Submit(std::move(r), sinks[i]);
        ASSERT_TRUE(id.ok()) << id.status();
        ids[i].store(*id);
        if (fate(i) == Fate::kCancelledWaiting) engine.Cancel(*id);
        std::this_thread::sleep_for(std::chrono::milliseconds(1 + (i * 5) % 7));
      }
    });
  }
  for (std::thread& t : clients) t.join();

  for (int i = 0; i < kRequests; ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i));
    ASSERT_TRUE(sinks[i]->WaitFinished()) << "hangs";
    EXPECT_EQ(sinks[i]->finishes(), 1);
    EXPECT_FALSE(sinks[i]->tokens_after_finish());
    ExpectContract(*sinks[i], ids[i].load(), engine.tokenizer(), prompts[i], "churn");
    const std::vector<int32_t> got = sinks[i]->tokens();
    ASSERT_LE(got.size(), expected[i].size());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), expected[i].begin()))
        << "not a prefix of one engine's greedy tokens";
    switch (fate(i)) {
      case Fate::kRuns:
        EXPECT_EQ(sinks[i]->reason(), FinishReason::kLength);
        EXPECT_EQ(got, expected[i]);
        break;
      case Fate::kCancelledRunning:
        EXPECT_EQ(sinks[i]->reason(), FinishReason::kCancelled);
        EXPECT_EQ(static_cast<int64_t>(got.size()), 1 + i % 3);
        break;
      case Fate::kCancelledWaiting:
        // Cancelled right after Submit: usually before its first step, but the step thread may
        // have admitted it and delivered a token or two in between.
        EXPECT_EQ(sinks[i]->reason(), FinishReason::kCancelled);
        break;
      case Fate::kExpired:
        EXPECT_EQ(sinks[i]->reason(), FinishReason::kTimeLimit);
        EXPECT_TRUE(got.empty());
        break;
    }
  }
  EXPECT_TRUE(EventuallyIdle(engine));
  EXPECT_FALSE(engine.Stats().failed);
  EXPECT_TRUE(engine.Health().ok()) << engine.Health();
  {
    std::lock_guard<std::mutex> lock(load.mutex);
    ASSERT_EQ(load.tokens.size(), 3u);
    for (int r = 0; r < 3; ++r) EXPECT_GT(load.tokens[r], 0) << "rank " << r << " never ran";
  }
  // Still serving, on whichever rank admission picks.
  EXPECT_EQ(GenerateAll(engine, {prompts[0]}, length(0))[0], expected[0]);
  EXPECT_TRUE(EventuallyIdle(engine));
  engine.Shutdown(absl::ZeroDuration());
}

// The CPU backend; its `fail_at`-th MatMul (counting from 1) fails, and every later one.
class FailingBackend final : public DelegatingBackend {
 public:
  FailingBackend(std::unique_ptr<kernels::Backend> inner, int64_t fail_at)
      : DelegatingBackend(std::move(inner)), fail_at_(fail_at) {}

  absl::Status MatMul(const float* x, int64_t rows, const kernels::WeightView& w, float* y,
                      kernels::Accumulate acc) override {
    if (++calls_ >= fail_at_) return absl::InternalError("rank 1's MatMul failed on purpose");
    return DelegatingBackend::MatMul(x, rows, w, y, acc);
  }
  int64_t calls() const { return calls_; }

 private:
  const int64_t fail_at_;
  std::atomic<int64_t> calls_{0};
};

TEST(EngineExpertParallelTest, FailingRankAbortsTheGroupAndStopsServing) {
  constexpr int32_t kWorld = 3;
  std::vector<std::unique_ptr<kernels::ThreadedCommunicator>> comms =
      kernels::ThreadedCommunicator::MakeGroup(kWorld);
  std::vector<LoadedModel> ranks(kWorld);
  FailingBackend* failing = nullptr;
  for (int32_t r = 0; r < kWorld; ++r) {
    auto checkpoint = engine::Checkpoint::Open(CarvedDir());
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    const engine::ModelConfig config = (*checkpoint)->config();
    if (r == 0) {
      auto tok = engine::LoadTokenizer(CarvedDir(), config);
      ASSERT_TRUE(tok.ok()) << tok.status();
      ranks[r].tokenizer = std::move(tok).value();
    }
    auto cpu = kernels::cpu::MakeCpuBackend({.threads = 1});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    std::unique_ptr<kernels::Backend> backend = std::move(cpu).value();
    if (r == 1) {
      // Fails in the middle of a later step: after the first layers' exchanges.
      auto f = std::make_unique<FailingBackend>(std::move(backend), /*fail_at=*/40);
      failing = f.get();
      backend = std::move(f);
    }
    ranks[r].comm = std::move(comms[r]);
    auto model = engine::Model::Create(std::move(checkpoint).value(), std::move(backend),
                                       {.expert_parallel = ranks[r].comm.get()});
    ASSERT_TRUE(model.ok()) << model.status();
    ranks[r].model = std::move(model).value();
    auto cache = engine::KvCache::Create(config, {.block_size = 16, .num_blocks = 64});
    ASSERT_TRUE(cache.ok()) << cache.status();
    ranks[r].cache = std::move(cache).value();
  }
  std::atomic<int> faults{0};
  absl::Status fault;
  auto engine = engine::Engine::Create(std::move(ranks), {}, nullptr, [&](const absl::Status& s) {
    fault = s;
    faults.fetch_add(1);
  });
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<std::vector<int32_t>> prompts = Prompts((*engine)->tokenizer(), 3);
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const auto& prompt : prompts) {
    sinks.push_back(std::make_shared<RecordingSink>());
    SubmitOk(**engine, Greedy(prompt, 100, /*ignore_eos=*/true), sinks.back());
  }
  for (size_t i = 0; i < sinks.size(); ++i) {
    ASSERT_TRUE(sinks[i]->WaitFinished()) << "request " << i << " hangs";
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kError) << "request " << i;
    EXPECT_LT(sinks[i]->finish()->generated_tokens, 100) << "request " << i;
  }
  EXPECT_GE(failing->calls(), 40);
  EXPECT_EQ(faults.load(), 1);
  EXPECT_EQ(fault.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(fault.message(), "rank 1")) << fault;
  EXPECT_TRUE(absl::StrContains(fault.message(), "failed on purpose")) << fault;
  EXPECT_EQ((*engine)->Health(), fault);
  EXPECT_TRUE((*engine)->Stats().failed);
  auto refused = (*engine)->Submit(Greedy(prompts[0], 4), std::make_shared<RecordingSink>());
  EXPECT_EQ(refused.status(), fault);
  (*engine)->Shutdown(absl::ZeroDuration());
}

TEST(EngineExpertParallelTest, RefusesWhatIsNotAGroup) {
  // Two models without communicators.
  std::vector<LoadedModel> plain;
  plain.push_back(LoadDir(CarvedDir(), 256));
  plain.push_back(LoadDir(CarvedDir(), 256));
  auto engine = engine::Engine::Create(std::move(plain), {});
  ASSERT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "has no communicator"))
      << engine.status();

  // Ranks out of order.
  std::vector<LoadedModel> ranks = LoadRanks(2);
  ASSERT_EQ(ranks.size(), 2u);
  std::swap(ranks[0].model, ranks[1].model);
  engine = engine::Engine::Create(std::move(ranks), {});
  ASSERT_EQ(engine.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(engine.status().message(), "is not rank 0")) << engine.status();

  // A dense checkpoint, no ranks, a mix of devices.
  auto dense = engine::LoadExpertParallelModels({.model_dir = ModelDir("stories260K")}, 2);
  ASSERT_EQ(dense.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(dense.status().message(), "carved")) << dense.status();
  EXPECT_TRUE(absl::StrContains(dense.status().message(), "rank 0")) << dense.status();
  auto none = engine::LoadExpertParallelModels({.model_dir = CarvedDir()}, 0);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  auto tpu = engine::LoadExpertParallelModels({.model_dir = CarvedDir(), .device = "tpu"}, 2);
  EXPECT_EQ(tpu.status().code(), absl::StatusCode::kInvalidArgument) << tpu.status();
}

TEST(EngineExpertParallelTest, RefusesPerRequestActivatedExperts) {
  // Every rank must exchange the same rounds: a request with its own k is refused at Submit
  // (InvalidArgument) instead of failing the group's step; the checkpoint's k is accepted.
  auto engine = engine::Engine::Create(LoadRanks(2), {});
  ASSERT_TRUE(engine.ok()) << engine.status();
  const std::vector<std::vector<int32_t>> prompts = Prompts((*engine)->tokenizer(), 1);
  engine::GenerationRequest r = Greedy(prompts[0], 4);
  r.num_activated_experts = 1;
  auto refused = (*engine)->Submit(r, std::make_shared<RecordingSink>());
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "expert-parallel")) << refused.status();
  r.num_activated_experts = 2;  // S2A2E8's own
  auto sink = std::make_shared<RecordingSink>();
  SubmitOk(**engine, r, sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_NE(sink->reason(), FinishReason::kError);
  EXPECT_FALSE((*engine)->Stats().failed);
  (*engine)->Shutdown(absl::ZeroDuration());
}

}  // namespace
}  // namespace cmoe::testing
