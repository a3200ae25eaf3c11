// The serving engine on the shared tiny models: greedy output equals GenerateTokens alone and in
// a continuously batched crowd (chunked prefill included); the sink contract (one OnFinish, last;
// text equals the detokenized tokens; counts and timings); stop strings, stop token ids and
// min_new_tokens; cancellation, deadlines, the waiting-queue limit, request validation, shutdown
// (drain, immediate, destructor); per-request expert counts on a carved model; step reports.
#include "engine/engine.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <iostream>
#include <limits>
#include <memory>
#include <mutex>
#include <numeric>
#include <optional>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carve_model.h"
#include "engine/carve/carved_checkpoint_writer.h"
#include "engine/generation.h"
#include "engine/incremental_detokenizer.h"
#include "engine/logprobs.h"
#include "engine/model_loader.h"
#include "engine/staged_output_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine {

// gtest prints reasons by name.
void PrintTo(FinishReason reason, std::ostream* os) { *os << FinishReasonName(reason); }

namespace {

using ::testing::HasSubstr;
using Clock = std::chrono::steady_clock;

constexpr int kThreads = 1;  // tiny models: no pool workers spinning against the step thread
constexpr auto kWait = std::chrono::seconds(10);  // a bug fails the test instead of hanging it

std::string ModelDir(const std::string& name) {
  absl::StatusOr<std::string> dir = testing::SharedModelDir(name);
  CMOE_CHECK(dir.ok()) << dir.status();
  return *dir;
}

LoadedModel LoadDir(const std::string& dir, int64_t kv_cache_tokens = 4096) {
  absl::StatusOr<LoadedModel> m =
      LoadModel({.model_dir = dir, .threads = kThreads, .kv_cache_tokens = kv_cache_tokens});
  CMOE_CHECK(m.ok()) << m.status();
  return std::move(*m);
}

LoadedModel Load(const std::string& name, int64_t kv_cache_tokens = 4096) {
  return LoadDir(ModelDir(name), kv_cache_tokens);
}

std::unique_ptr<Engine> MakeEngine(LoadedModel m, const EngineOptions& options = {},
                                   std::function<void(const StepReport&)> on_step = nullptr) {
  absl::StatusOr<std::unique_ptr<Engine>> e =
      Engine::Create(std::move(m), options, std::move(on_step));
  CMOE_CHECK(e.ok()) << e.status();
  return std::move(*e);
}

// Tokens of the TinyStories validation sample (BOS first).
std::vector<int32_t> SampleTokens(const Tokenizer& tok, size_t bytes = 3000) {
  absl::StatusOr<std::vector<int32_t>> ids =
      tok.Encode(testing::TinyStoriesSample(bytes), {.add_dummy_prefix = tok.DefaultDummyPrefix()});
  CMOE_CHECK(ids.ok()) << ids.status();
  return *ids;
}

std::vector<int32_t> Slice(const std::vector<int32_t>& all, size_t begin, size_t n) {
  CMOE_CHECK(begin + n <= all.size()) << begin << "+" << n << " > " << all.size();
  return {all.begin() + static_cast<std::ptrdiff_t>(begin),
          all.begin() + static_cast<std::ptrdiff_t>(begin + n)};
}

std::vector<int32_t> Encode(const Tokenizer& tok, const std::string& text) {
  absl::StatusOr<std::vector<int32_t>> ids =
      tok.Encode(text, {.add_dummy_prefix = tok.DefaultDummyPrefix()});
  CMOE_CHECK(ids.ok()) << ids.status();
  return *ids;
}

// Streaming text of `tokens` continuing after the prompt's last token `previous` (what the
// engine's events must add up to: a continuation keeps its leading space).
std::string Detokenize(const Tokenizer& tok, std::span<const int32_t> tokens, int32_t previous) {
  IncrementalDetokenizer detok(tok, previous);
  std::string text;
  for (int32_t t : tokens) {
    absl::StatusOr<std::string> piece = detok.Push(t);
    CMOE_CHECK(piece.ok()) << piece.status();
    text += *piece;
  }
  return text + detok.Flush();
}

GenerateResult Reference(LoadedModel& m, std::span<const int32_t> prompt,
                         const GenerateOptions& options) {
  absl::StatusOr<GenerateResult> r = GenerateTokens(*m.model, *m.cache, prompt, options);
  CMOE_CHECK(r.ok()) << r.status();
  return *r;
}

FinishReason ReasonOf(const std::string& generate_reason) {
  if (generate_reason == "length") return FinishReason::kLength;
  if (generate_reason == "stop") return FinishReason::kStopToken;
  if (generate_reason == "context") return FinishReason::kContext;
  ADD_FAILURE() << "unknown GenerateTokens reason " << generate_reason;
  return FinishReason::kError;
}

// A thread-safe sink that records everything and checks the ordering contract as it goes.
class RecordingSink : public RequestSink {
 public:
  // Called on the step thread after an event is recorded (without the sink's lock held).
  std::function<void(const TokenEvent&, int64_t tokens_so_far)> on_tokens_hook;
  std::function<void(const FinishEvent&)> on_finish_hook;  // after the event is recorded

  void OnTokens(const TokenEvent& event) override {
    int64_t n;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (finishes_ > 0) tokens_after_finish_ = true;
      token_events_.push_back(event);
      for (int32_t t : event.tokens) tokens_.push_back(t);
      text_ += event.text;
      n = static_cast<int64_t>(tokens_.size());
    }
    cv_.notify_all();
    if (on_tokens_hook) on_tokens_hook(event, n);
  }

  void OnFinish(const FinishEvent& event) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++finishes_;
      finish_ = event;
    }
    cv_.notify_all();
    if (on_finish_hook) on_finish_hook(event);
  }

  // True once OnFinish came (within kWait).
  bool WaitFinished() {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, kWait, [&] { return finishes_ > 0; });
  }
  bool WaitTokens(int64_t n) {
    std::unique_lock<std::mutex> lock(mutex_);
    return cv_.wait_for(lock, kWait,
                        [&] { return static_cast<int64_t>(tokens_.size()) >= n || finishes_ > 0; });
  }

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
  std::vector<TokenEvent> token_events() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return token_events_;
  }
  std::string streamed_text() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_;
  }
  // All text: the token events' and the finish event's.
  std::string text() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return text_ + (finish_ ? finish_->text : "");
  }
  std::optional<FinishEvent> finish() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return finish_;
  }
  FinishReason reason() const {
    std::lock_guard<std::mutex> lock(mutex_);
    CMOE_CHECK(finish_.has_value());
    return finish_->reason;
  }

 private:
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<TokenEvent> token_events_;
  std::vector<int32_t> tokens_;
  std::string text_;
  std::optional<FinishEvent> finish_;
  int finishes_ = 0;
  bool tokens_after_finish_ = false;
};

// A gate the step thread can be held at (inside a sink) until the test opens it.
class Gate {
 public:
  void Open() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Blocks until opened (at most kWait).
  void Pass() {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait_for(lock, kWait, [&] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

// Checks the sink contract of one finished request: exactly one OnFinish, after every OnTokens;
// every event carries `id`; the events' tokens equal the generated tokens; the text adds up to
// the detokenized tokens (a final stop token excluded); counts and timings.
void ExpectContract(const RecordingSink& sink, uint64_t id, const Tokenizer& tok,
                    std::span<const int32_t> prompt, const std::string& label) {
  const size_t prompt_tokens = prompt.size();
  SCOPED_TRACE(label);
  ASSERT_EQ(sink.finishes(), 1);
  EXPECT_FALSE(sink.tokens_after_finish());
  const FinishEvent f = *sink.finish();
  EXPECT_EQ(f.id, id);
  EXPECT_TRUE(f.status.ok()) << f.status;
  for (const TokenEvent& e : sink.token_events()) {
    EXPECT_EQ(e.id, id);
    EXPECT_FALSE(e.tokens.empty());
  }
  const std::vector<int32_t> tokens = sink.tokens();
  EXPECT_EQ(f.generated_tokens, static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(f.prompt_tokens, static_cast<int64_t>(prompt_tokens));
  if (f.reason != FinishReason::kStopString) {
    std::span<const int32_t> text_tokens(tokens);
    if (f.reason == FinishReason::kStopToken) {
      EXPECT_FALSE(tokens.empty());
      if (!tokens.empty()) text_tokens = text_tokens.first(tokens.size() - 1);
    }
    EXPECT_EQ(sink.text(), Detokenize(tok, text_tokens, prompt.back()));
  }
  EXPECT_GE(f.queue_seconds, 0);
  EXPECT_GE(f.decode_seconds, 0);
  if (!tokens.empty()) {
    EXPECT_GE(f.first_token_seconds, f.queue_seconds);
  } else {
    EXPECT_EQ(f.first_token_seconds, 0);
  }
}

// Waits until the engine is empty and its cache is all free (the stats lag the sinks by a step).
::testing::AssertionResult EventuallyIdle(const Engine& engine) {
  const auto deadline = Clock::now() + kWait;
  EngineStats s;
  while (Clock::now() < deadline) {
    s = engine.Stats();
    if (s.kv_blocks_used == 0 && s.running == 0 && s.waiting == 0) {
      return ::testing::AssertionSuccess();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return ::testing::AssertionFailure() << "not idle: running " << s.running << ", waiting "
                                       << s.waiting << ", kv blocks used " << s.kv_blocks_used;
}

GenerationRequest Greedy(std::vector<int32_t> prompt, int64_t max_new_tokens,
                         bool ignore_eos = false) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new_tokens;
  r.ignore_eos = ignore_eos;
  return r;
}

uint64_t SubmitOk(Engine& engine, GenerationRequest r, std::shared_ptr<RequestSink> sink) {
  absl::StatusOr<uint64_t> id = engine.Submit(std::move(r), std::move(sink));
  CMOE_CHECK(id.ok()) << id.status();
  return *id;
}

// --- 1. One greedy request equals GenerateTokens --------------------------------------------

class EngineSharedModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(EngineSharedModelTest, OneGreedyRequestEqualsGenerateTokens) {
  LoadedModel ref = Load(GetParam());
  std::unique_ptr<Engine> engine = MakeEngine(Load(GetParam()));
  const Tokenizer& tok = engine->tokenizer();
  const std::vector<int32_t> all = SampleTokens(tok);
  struct Case {
    std::vector<int32_t> prompt;
    int64_t max_new;
  };
  const std::vector<Case> cases = {{Encode(tok, "Once upon a time"), 24},
                                   {Slice(all, 0, 40), 16},
                                   {Slice(all, 60, 7), 1},
                                   {Slice(all, 100, 3), 30}};
  for (size_t c = 0; c < cases.size(); ++c) {
    SCOPED_TRACE(absl::StrCat("case ", c));
    const GenerateResult want =
        Reference(ref, cases[c].prompt, {.max_new_tokens = cases[c].max_new});
    auto sink = std::make_shared<RecordingSink>();
    const uint64_t id = SubmitOk(*engine, Greedy(cases[c].prompt, cases[c].max_new), sink);
    ASSERT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->tokens(), want.tokens);
    EXPECT_EQ(sink->reason(), ReasonOf(want.finish_reason));
    if (sink->reason() == FinishReason::kLength) {
      EXPECT_EQ(sink->finish()->generated_tokens, cases[c].max_new);
    }
    ExpectContract(*sink, id, tok, cases[c].prompt, "contract");
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
}

INSTANTIATE_TEST_SUITE_P(Shared, EngineSharedModelTest,
                         ::testing::ValuesIn(testing::SharedModelNames()), [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// --- 2. Batched equals alone; prompt chunking --------------------------------------------------

TEST(EngineTest, BatchedRequestsEqualEachAlone) {
  LoadedModel ref = Load("stories260K");
  std::mutex steps_mutex;
  std::vector<StepReport> steps;
  std::unique_ptr<Engine> engine =
      MakeEngine(Load("stories260K"), {.max_batch_tokens = 32}, [&](const StepReport& r) {
        std::lock_guard<std::mutex> lock(steps_mutex);
        steps.push_back(r);
      });
  const Tokenizer& tok = engine->tokenizer();
  const std::vector<int32_t> all = SampleTokens(tok);
  ASSERT_GE(all.size(), 400u);
  // Prompt lengths (several need more than one 32-token chunk), new-token counts, ignore_eos.
  const std::vector<size_t> lens = {1, 5, 9, 17, 31, 33, 40, 64, 70, 90, 3, 48};
  const std::vector<int64_t> news = {12, 8, 16, 10, 20, 9, 14, 6, 18, 11, 15, 7};
  constexpr int kRequests = 12;
  std::vector<std::vector<int32_t>> prompts(kRequests);
  std::vector<GenerateResult> want(kRequests);
  for (int i = 0; i < kRequests; ++i) {
    prompts[i] = Slice(all, static_cast<size_t>(i) * 25, lens[i]);
    want[i] = Reference(ref, prompts[i], {.max_new_tokens = news[i], .ignore_eos = i % 2 == 0});
  }
  std::vector<std::shared_ptr<RecordingSink>> sinks(kRequests);
  std::vector<uint64_t> ids(kRequests);
  for (auto& s : sinks) s = std::make_shared<RecordingSink>();
  {
    std::vector<std::thread> submitters;
    for (int t = 0; t < 4; ++t) {
      submitters.emplace_back([&, t] {
        for (int i = t; i < kRequests; i += 4) {
          ids[i] = SubmitOk(*engine, Greedy(prompts[i], news[i], i % 2 == 0), sinks[i]);
        }
      });
    }
    for (auto& th : submitters) th.join();
  }
  for (int i = 0; i < kRequests; ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i, " (prompt ", lens[i], ")"));
    ASSERT_TRUE(sinks[i]->WaitFinished());
    EXPECT_EQ(sinks[i]->tokens(), want[i].tokens);
    EXPECT_EQ(sinks[i]->reason(), ReasonOf(want[i].finish_reason));
    ExpectContract(*sinks[i], ids[i], tok, prompts[i], "contract");
  }
  std::vector<uint64_t> sorted = ids;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end()) << "ids must be distinct";
  EXPECT_TRUE(EventuallyIdle(*engine));
  std::lock_guard<std::mutex> lock(steps_mutex);
  int64_t prefill = 0;
  for (const StepReport& r : steps) {
    EXPECT_LE(r.tokens, 32);
    EXPECT_EQ(r.tokens, r.decode_tokens + r.prefill_tokens);
    prefill += r.prefill_tokens;
  }
  EXPECT_EQ(prefill, std::accumulate(lens.begin(), lens.end(), int64_t{0}));
}

TEST(EngineTest, LongPromptIsPrefilledInChunks) {
  LoadedModel ref = Load("stories260K");
  std::mutex steps_mutex;
  std::vector<StepReport> steps;
  std::unique_ptr<Engine> engine =
      MakeEngine(Load("stories260K"), {.max_batch_tokens = 32}, [&](const StepReport& r) {
        std::lock_guard<std::mutex> lock(steps_mutex);
        steps.push_back(r);
      });
  const std::vector<int32_t> prompt = Slice(SampleTokens(engine->tokenizer()), 0, 100);
  const GenerateResult want = Reference(ref, prompt, {.max_new_tokens = 5, .ignore_eos = true});
  auto sink = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 5, true), sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->tokens(), want.tokens);
  EXPECT_EQ(sink->reason(), FinishReason::kLength);
  EXPECT_TRUE(EventuallyIdle(*engine));
  std::lock_guard<std::mutex> lock(steps_mutex);
  // 100 = 32 + 32 + 32 + 4 prompt tokens, then 4 decode steps (the 5th token is not fed back).
  std::vector<int64_t> prefills, decodes;
  for (const StepReport& r : steps) {
    prefills.push_back(r.prefill_tokens);
    decodes.push_back(r.decode_tokens);
  }
  EXPECT_EQ(prefills, (std::vector<int64_t>{32, 32, 32, 4, 0, 0, 0, 0}));
  EXPECT_EQ(decodes, (std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1, 1}));
  EXPECT_EQ(engine->Stats().steps, static_cast<int64_t>(steps.size()));
}

// A prompt that nearly fills the context ends with kContext, its tokens a prefix of the
// single-request reference.
TEST(EngineTest, ContextFullFinishesWithContext) {
  LoadedModel ref = Load("stories260K");
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"), {.max_batch_tokens = 128});
  const int64_t context = engine->model().config().max_position_embeddings;
  std::vector<int32_t> all = SampleTokens(engine->tokenizer(), 6000);
  ASSERT_GE(static_cast<int64_t>(all.size()), context);
  const std::vector<int32_t> prompt = Slice(all, 0, static_cast<size_t>(context - 3));
  const GenerateResult want = Reference(ref, prompt, {.max_new_tokens = 10, .ignore_eos = true});
  auto sink = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 10, true), sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->reason(), FinishReason::kContext);
  const std::vector<int32_t> got = sink->tokens();
  // The sequence may not grow past the context: prompt + generated <= context.
  EXPECT_LE(static_cast<int64_t>(prompt.size() + got.size()), context);
  EXPECT_GE(got.size(), 2u);
  ASSERT_LE(got.size(), want.tokens.size());
  EXPECT_EQ(got, std::vector<int32_t>(want.tokens.begin(), want.tokens.begin() + got.size()));
  EXPECT_TRUE(EventuallyIdle(*engine));
}

// --- 3. The sink contract (also checked by the tests above) -----------------------------------

TEST(EngineTest, SinkContractOnEveryModelAndReason) {
  for (const std::string& name : testing::SharedModelNames()) {
    SCOPED_TRACE(name);
    std::unique_ptr<Engine> engine = MakeEngine(Load(name), {.max_batch_tokens = 16});
    const Tokenizer& tok = engine->tokenizer();
    const std::vector<int32_t> all = SampleTokens(tok);
    std::vector<std::shared_ptr<RecordingSink>> sinks;
    std::vector<uint64_t> ids;
    std::vector<std::vector<int32_t>> prompts_sent;
    for (int i = 0; i < 6; ++i) {
      GenerationRequest r = Greedy(Slice(all, 10 + 30 * i, 5 + 7 * i), 10 + 3 * i, i % 3 == 0);
      if (i == 4) {
        r.sampling.temperature = 0.8f;
        r.sampling.top_p = 0.9f;
        r.sampling.seed = 7;
      }
      prompts_sent.push_back(r.prompt);
      sinks.push_back(std::make_shared<RecordingSink>());
      ids.push_back(SubmitOk(*engine, std::move(r), sinks.back()));
    }
    for (size_t i = 0; i < sinks.size(); ++i) {
      ASSERT_TRUE(sinks[i]->WaitFinished());
      ExpectContract(*sinks[i], ids[i], tok, prompts_sent[i], absl::StrCat("request ", i));
    }
    EXPECT_TRUE(EventuallyIdle(*engine));
    engine.reset();  // nothing more arrives after the engine is gone
    for (const auto& s : sinks) EXPECT_EQ(s->finishes(), 1);
  }
}

// --- 4. Stop strings, stop token ids, min_new_tokens -----------------------------------------

TEST(EngineTest, StopStringEndsTheTextJustBeforeIt) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const Tokenizer& tok = engine->tokenizer();
  const std::vector<int32_t> prompt = Encode(tok, "Once upon a time");
  constexpr int64_t kMax = 40;
  // The unstopped output and where each token's text ends.
  auto plain = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, kMax, true), plain);
  ASSERT_TRUE(plain->WaitFinished());
  const std::vector<int32_t> tokens = plain->tokens();
  const std::string text = plain->text();
  std::vector<size_t> ends;  // ends[k]: text length after k+1 tokens
  {
    IncrementalDetokenizer detok(tok, prompt.back());
    size_t len = 0;
    for (int32_t t : tokens) {
      len += detok.Push(t).value().size();
      ends.push_back(len);
    }
  }
  ASSERT_EQ(ends.back(), text.size());
  // A 3-character stop string around a token boundary in the middle of the text.
  std::string stop;
  for (size_t k = tokens.size() / 2; k + 1 < tokens.size() && stop.empty(); ++k) {
    const size_t b = ends[k];
    if (b >= 1 && b + 2 <= text.size()) {
      const std::string cand = text.substr(b - 1, 3);
      if (std::all_of(cand.begin(), cand.end(), [](char c) { return c >= 0x20 && c < 0x7f; })) {
        stop = cand;
      }
    }
  }
  ASSERT_FALSE(stop.empty()) << text;
  const size_t first = text.find(stop);
  ASSERT_NE(first, std::string::npos);
  // The engine stops at the token whose text completes the first occurrence.
  size_t expected_tokens = 0;
  while (ends[expected_tokens] < first + stop.size()) ++expected_tokens;
  ++expected_tokens;
  std::cout << "stop string '" << stop << "' at byte " << first << " of: " << text << "\n";

  GenerationRequest r = Greedy(prompt, kMax, true);
  r.stop_strings = {"never appears \x01", stop};
  auto sink = std::make_shared<RecordingSink>();
  const uint64_t id = SubmitOk(*engine, std::move(r), sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->reason(), FinishReason::kStopString);
  EXPECT_EQ(sink->text(), text.substr(0, first));
  EXPECT_EQ(sink->finish()->text, "");
  EXPECT_EQ(sink->finish()->generated_tokens, static_cast<int64_t>(expected_tokens));
  EXPECT_EQ(sink->tokens(), std::vector<int32_t>(tokens.begin(), tokens.begin() + expected_tokens));
  // Every prefix of what was delivered stays inside the text before the stop string.
  std::string delivered;
  for (const TokenEvent& e : sink->token_events()) {
    delivered += e.text;
    EXPECT_EQ(delivered, text.substr(0, delivered.size()));
    EXPECT_LE(delivered.size(), first) << "delivered part of the stop string: " << delivered;
  }
  ExpectContract(*sink, id, tok, prompt, "contract");
  EXPECT_TRUE(EventuallyIdle(*engine));
}

TEST(EngineTest, StopTokenIdEndsTheRequest) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const Tokenizer& tok = engine->tokenizer();
  const std::vector<int32_t> prompt = Encode(tok, "Once upon a time");
  auto plain = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 12, true), plain);
  ASSERT_TRUE(plain->WaitFinished());
  const std::vector<int32_t> tokens = plain->tokens();
  ASSERT_GE(tokens.size(), 3u);
  const int32_t stop_id = tokens[2];
  const size_t expected = static_cast<size_t>(std::find(tokens.begin(), tokens.end(), stop_id) -
                                              tokens.begin() + 1);  // <= 3

  GenerationRequest r = Greedy(prompt, 12, true);  // ignore_eos does not disable stop ids
  r.stop_token_ids = {stop_id};
  auto sink = std::make_shared<RecordingSink>();
  const uint64_t id = SubmitOk(*engine, std::move(r), sink);
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->reason(), FinishReason::kStopToken);
  EXPECT_EQ(sink->tokens(), std::vector<int32_t>(tokens.begin(), tokens.begin() + expected));
  ExpectContract(*sink, id, tok, prompt, "contract");  // the stop token's text excluded

  // min_new_tokens masks the stop id: none of the first 5 tokens is it, and at least 5 come.
  GenerationRequest m = Greedy(prompt, 12, true);
  m.stop_token_ids = {stop_id};
  m.min_new_tokens = 5;
  auto masked = std::make_shared<RecordingSink>();
  SubmitOk(*engine, std::move(m), masked);
  ASSERT_TRUE(masked->WaitFinished());
  const std::vector<int32_t> got = masked->tokens();
  ASSERT_GE(got.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_NE(got[i], stop_id) << "token " << i;
  if (masked->reason() == FinishReason::kStopToken) {
    EXPECT_EQ(got.back(), stop_id);
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
}

TEST(EngineTest, MinNewTokensHoldsBackEos) {
  // Find a prompt whose greedy continuation ends with EOS early (the end of a story).
  LoadedModel ref = Load("tinystories-656k");
  std::unique_ptr<Engine> engine = MakeEngine(Load("tinystories-656k"));
  const Tokenizer& tok = engine->tokenizer();
  const std::vector<int32_t>& eos = engine->model().config().eos_token_ids;
  ASSERT_FALSE(eos.empty());
  const std::vector<int32_t> all = SampleTokens(tok, 8000);
  std::vector<int32_t> prompt;
  int64_t eos_at = -1;
  for (size_t end = 8; end < all.size() && eos_at < 0; end += 1) {
    // Prompts that end right after a full stop (a story may end there).
    if (tok.Piece(all[end - 1]).find('.') == std::string::npos) continue;
    std::vector<int32_t> p = Slice(all, end > 60 ? end - 60 : 0, std::min<size_t>(end, 60));
    const GenerateResult r = Reference(ref, p, {.max_new_tokens = 12});
    if (r.finish_reason == "stop" && r.tokens.size() <= 8) {
      prompt = p;
      eos_at = static_cast<int64_t>(r.tokens.size()) - 1;
    }
  }
  if (eos_at < 0) GTEST_SKIP() << "no prompt found whose greedy output reaches EOS early";
  std::cout << "EOS at generated index " << eos_at << "\n";
  const int64_t min_new = eos_at + 4;
  GenerationRequest r = Greedy(prompt, min_new + 8);
  r.min_new_tokens = min_new;
  auto sink = std::make_shared<RecordingSink>();
  const uint64_t id = SubmitOk(*engine, std::move(r), sink);
  ASSERT_TRUE(sink->WaitFinished());
  const std::vector<int32_t> got = sink->tokens();
  ASSERT_GE(static_cast<int64_t>(got.size()), min_new);
  for (int64_t i = 0; i < min_new; ++i) {
    EXPECT_EQ(std::count(eos.begin(), eos.end(), got[static_cast<size_t>(i)]), 0) << "EOS at " << i;
  }
  ExpectContract(*sink, id, tok, prompt, "contract");
  // Without min_new_tokens the same request stops at EOS.
  auto plain = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, min_new + 8), plain);
  ASSERT_TRUE(plain->WaitFinished());
  EXPECT_EQ(plain->reason(), FinishReason::kStopToken);
  EXPECT_EQ(static_cast<int64_t>(plain->tokens().size()), eos_at + 1);
  EXPECT_TRUE(EventuallyIdle(*engine));
}

// --- 5. Cancel ---------------------------------------------------------------------------------

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

// --- 6. Deadlines ------------------------------------------------------------------------------

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

// --- 7. The waiting queue is bounded ------------------------------------------------------------

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

// --- 8. Validation ------------------------------------------------------------------------------

TEST(EngineTest, InvalidRequestsNameTheField) {
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const int32_t vocab = engine->model().config().vocab_size;
  const int64_t context = engine->model().config().max_position_embeddings;
  const std::vector<int32_t> ok_prompt = Encode(engine->tokenizer(), "Once upon a time");
  struct Case {
    std::string name;
    std::function<void(GenerationRequest&)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty prompt", [](GenerationRequest& r) { r.prompt.clear(); }, "prompt"},
      {"token -1", [](GenerationRequest& r) { r.prompt[1] = -1; }, "prompt"},
      {"token vocab", [&](GenerationRequest& r) { r.prompt.back() = vocab; }, "prompt"},
      {"prompt fills the context",
       [&](GenerationRequest& r) { r.prompt.assign(static_cast<size_t>(context), 5); }, "prompt"},
      {"max_new_tokens 0", [](GenerationRequest& r) { r.max_new_tokens = 0; }, "max_new_tokens"},
      {"max_new_tokens -3", [](GenerationRequest& r) { r.max_new_tokens = -3; }, "max_new_tokens"},
      {"min_new_tokens > max",
       [](GenerationRequest& r) {
         r.max_new_tokens = 4;
         r.min_new_tokens = 5;
       },
       "min_new_tokens"},
      {"min_new_tokens < 0", [](GenerationRequest& r) { r.min_new_tokens = -1; }, "min_new_tokens"},
      {"temperature", [](GenerationRequest& r) { r.sampling.temperature = -0.5f; }, "temperature"},
      {"top_p 0", [](GenerationRequest& r) { r.sampling.top_p = 0.0f; }, "top_p"},
      {"top_p 1.5", [](GenerationRequest& r) { r.sampling.top_p = 1.5f; }, "top_p"},
      {"empty stop string",
       [](GenerationRequest& r) {
         r.stop_strings = {"ok", ""};
       },
       "stop_strings"},
      {"stop_token_id -1",
       [](GenerationRequest& r) {
         r.stop_token_ids = {2, -1};
       },
       "stop_token_ids"},
      {"stop_token_id vocab", [&](GenerationRequest& r) { r.stop_token_ids = {vocab}; },
       "stop_token_ids"},
      {"num_activated_experts on a dense model",
       [](GenerationRequest& r) { r.num_activated_experts = 1; }, "num_activated_experts"},
      {"top_logprobs without logprobs", [](GenerationRequest& r) { r.top_logprobs = 3; },
       "top_logprobs"},
      {"top_logprobs beyond the max",
       [](GenerationRequest& r) {
         r.logprobs = true;
         r.top_logprobs = kMaxTopLogprobs + 1;
       },
       "top_logprobs"},
      {"top_logprobs -1",
       [](GenerationRequest& r) {
         r.logprobs = true;
         r.top_logprobs = -1;
       },
       "top_logprobs"},
  };
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    GenerationRequest r = Greedy(ok_prompt, 8);
    c.edit(r);
    sinks.push_back(std::make_shared<RecordingSink>());
    absl::StatusOr<uint64_t> id = engine->Submit(std::move(r), sinks.back());
    ASSERT_FALSE(id.ok());
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr(c.field));
  }
  {
    absl::StatusOr<uint64_t> id = engine->Submit(Greedy(ok_prompt, 8), nullptr);
    ASSERT_FALSE(id.ok());
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr("sink"));
  }
  // The edges that are valid: a prompt of context - 1 tokens, min_new_tokens == max_new_tokens.
  {
    GenerationRequest r = Greedy(std::vector<int32_t>(static_cast<size_t>(context - 1), 5), 4);
    auto sink = std::make_shared<RecordingSink>();
    ASSERT_TRUE(engine->Submit(std::move(r), sink).ok());
    ASSERT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->reason(), FinishReason::kContext);
    EXPECT_EQ(sink->finish()->generated_tokens, 1);
  }
  {
    GenerationRequest r = Greedy(ok_prompt, 4);
    r.min_new_tokens = 4;
    auto sink = std::make_shared<RecordingSink>();
    ASSERT_TRUE(engine->Submit(std::move(r), sink).ok());
    ASSERT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->reason(), FinishReason::kLength);
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
  engine.reset();
  for (size_t i = 0; i < sinks.size(); ++i) EXPECT_FALSE(sinks[i]->called()) << cases[i].name;
}

TEST(EngineTest, RequestThatCanNeverFitTheCacheIsInvalid) {
  // 64 cache positions (4 blocks of 16).
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K", /*kv_cache_tokens=*/64));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  auto sink = std::make_shared<RecordingSink>();
  absl::StatusOr<uint64_t> id = engine->Submit(Greedy(prompt, 100, true), sink);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
  EXPECT_THAT(id.status().message(), HasSubstr("max_new_tokens"));
  // What fits runs, even several that only fit one after another.
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (int i = 0; i < 3; ++i) {
    sinks.push_back(std::make_shared<RecordingSink>());
    ASSERT_TRUE(
        engine->Submit(Greedy(prompt, 60 - static_cast<int64_t>(prompt.size()), true), sinks.back())
            .ok());
  }
  for (auto& s : sinks) {
    ASSERT_TRUE(s->WaitFinished());
    EXPECT_EQ(s->reason(), FinishReason::kLength);
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
  engine.reset();
  EXPECT_FALSE(sink->called());
}

TEST(EngineTest, CreateRejectsBadOptions) {
  EXPECT_EQ(Engine::Create(Load("stories260K"), {.max_batch_tokens = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Engine::Create(Load("stories260K"), {.max_running = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
  LoadedModel no_tok = Load("stories260K");
  no_tok.tokenizer.reset();
  EXPECT_EQ(Engine::Create(std::move(no_tok), {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- 9. Shutdown -----------------------------------------------------------------------------

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

// --- 10. A carved model: per-request expert counts in one batch --------------------------------

TEST(EngineTest, CarvedModelBatchesDifferentExpertCounts) {
  testing::ScratchDir scratch;
  const std::string carved_dir = scratch.Join("carved");
  {
    LoadedModel dense = Load("stories260K", 1024);
    absl::StatusOr<std::string> val = ReadFileToString(testing::SharedData("tinystories_val.txt"));
    ASSERT_TRUE(val.ok()) << val.status();
    const carve::CalibrationOptions calib{.file = testing::SharedData("tinystories_val.txt"),
                                          .range_begin = 0,
                                          .range_end = 20000,
                                          .seqs = 2,
                                          .len = 64};
    absl::StatusOr<carve::CalibrationSet> set = carve::MakeCalibration(
        std::string_view(*val).substr(0, 20000), "val", calib, *dense.tokenizer);
    ASSERT_TRUE(set.ok()) << set.status();
    const carve::CarveModelOptions options{
        .layer = {.num_experts = 8, .num_shared = 2, .num_activated = 2},
        .threads = kThreads,
        .calibration = calib};
    absl::StatusOr<carve::CarvedModel> carved = carve::CarveModel(*dense.model, *set, options);
    ASSERT_TRUE(carved.ok()) << carved.status();
    absl::StatusOr<std::unique_ptr<StagedOutputDir>> out =
        StagedOutputDir::Create(carved_dir, /*force=*/false);
    ASSERT_TRUE(out.ok()) << out.status();
    ASSERT_TRUE(carve::WriteCarvedCheckpoint(dense.model->checkpoint(), *carved, **out).ok());
    ASSERT_TRUE((*out)->Commit().ok());
  }
  LoadedModel ref = LoadDir(carved_dir);
  ASSERT_TRUE(ref.model->config().cmoe.has_value());
  const int32_t n_r = ref.model->config().cmoe->num_routed();
  ASSERT_EQ(n_r, 6);
  std::unique_ptr<Engine> engine = MakeEngine(LoadDir(carved_dir), {.max_batch_tokens = 32});
  const std::vector<int32_t> all = SampleTokens(engine->tokenizer());
  const std::vector<int32_t> ks = {1, n_r, 0, 1, n_r, 0};
  std::vector<std::vector<int32_t>> prompts;
  std::vector<GenerateResult> want;
  for (size_t i = 0; i < ks.size(); ++i) {
    // Requests 0..2 share a prompt, so the expert count alone makes their outputs differ.
    prompts.push_back(i < 3 ? Slice(all, 0, 20) : Slice(all, 30 * i, 10 + 9 * i));
    want.push_back(
        Reference(ref, prompts[i],
                  {.max_new_tokens = 16, .ignore_eos = true, .num_activated_experts = ks[i]}));
  }
  EXPECT_TRUE(want[0].tokens != want[1].tokens || want[1].tokens != want[2].tokens)
      << "1, N_r and the default experts give the same output: the test cannot tell them apart";
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  for (size_t i = 0; i < ks.size(); ++i) {
    GenerationRequest r = Greedy(prompts[i], 16, true);
    r.num_activated_experts = ks[i];
    sinks.push_back(std::make_shared<RecordingSink>());
    SubmitOk(*engine, std::move(r), sinks.back());
  }
  for (size_t i = 0; i < ks.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("request ", i, " k = ", ks[i]));
    ASSERT_TRUE(sinks[i]->WaitFinished());
    EXPECT_EQ(sinks[i]->reason(), FinishReason::kLength);
    EXPECT_EQ(sinks[i]->tokens(), want[i].tokens);
  }
  for (int32_t bad : {n_r + 1, -1}) {
    GenerationRequest r = Greedy(prompts[0], 4);
    r.num_activated_experts = bad;
    auto sink = std::make_shared<RecordingSink>();
    absl::StatusOr<uint64_t> id = engine->Submit(std::move(r), sink);
    ASSERT_FALSE(id.ok()) << bad;
    EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
    EXPECT_THAT(id.status().message(), HasSubstr("num_activated_experts"));
    EXPECT_FALSE(sink->called());
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
}

// --- 11. Step reports ------------------------------------------------------------------------

TEST(EngineTest, StepReportsCountEveryFedTokenAndDecodesBatch) {
  std::mutex steps_mutex;
  std::vector<StepReport> steps;
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"), {}, [&](const StepReport& r) {
    std::lock_guard<std::mutex> lock(steps_mutex);
    steps.push_back(r);
    EXPECT_NE(r.ffn, nullptr);
    if (r.ffn != nullptr) {
      EXPECT_EQ(r.ffn->tokens, r.tokens);
    }
  });
  const std::vector<int32_t> all = SampleTokens(engine->tokenizer());
  constexpr int kRequests = 8;
  std::vector<std::shared_ptr<RecordingSink>> sinks;
  int64_t prompt_total = 0;
  for (int i = 0; i < kRequests; ++i) {
    GenerationRequest r = Greedy(Slice(all, 15 * i, 4 + i), 20 + i, /*ignore_eos=*/i % 2 == 0);
    prompt_total += static_cast<int64_t>(r.prompt.size());
    sinks.push_back(std::make_shared<RecordingSink>());
    SubmitOk(*engine, std::move(r), sinks.back());
  }
  int64_t generated_total = 0;
  for (auto& s : sinks) {
    ASSERT_TRUE(s->WaitFinished());
    generated_total += s->finish()->generated_tokens;
    EXPECT_GE(s->finish()->generated_tokens, 1);
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
  engine->Shutdown(absl::Seconds(5));  // no more reports
  std::lock_guard<std::mutex> lock(steps_mutex);
  int64_t tokens = 0, decode = 0, prefill = 0, decode_steps = 0;
  for (const StepReport& r : steps) {
    EXPECT_EQ(r.tokens, r.decode_tokens + r.prefill_tokens);
    EXPECT_GT(r.forward_seconds, 0);
    EXPECT_GE(r.step_seconds, r.forward_seconds);
    tokens += r.tokens;
    decode += r.decode_tokens;
    prefill += r.prefill_tokens;
    if (r.decode_tokens > 0) ++decode_steps;
  }
  // Every prompt token is prefilled once; every generated token but each request's last is fed
  // back once.
  EXPECT_EQ(prefill, prompt_total);
  EXPECT_EQ(decode, generated_total - kRequests);
  EXPECT_EQ(tokens, prompt_total + generated_total - kRequests);
  ASSERT_GT(decode_steps, 0);
  const double mean = static_cast<double>(decode) / static_cast<double>(decode_steps);
  std::cout << steps.size() << " steps, " << decode_steps << " with decodes, mean decode batch "
            << mean << "\n";
  EXPECT_GT(mean, 1.0) << "decodes are not batched";
  EXPECT_EQ(engine->Stats().steps, static_cast<int64_t>(steps.size()));
}

// --- 12. Log-probabilities -------------------------------------------------------------------

// The log-probabilities of every token a sink received, in order.
std::vector<TokenLogprob> LogprobsOf(const RecordingSink& sink) {
  std::vector<TokenLogprob> all;
  for (const TokenEvent& e : sink.token_events()) {
    EXPECT_EQ(e.logprobs.size(), e.tokens.size());
    for (size_t i = 0; i < e.logprobs.size() && i < e.tokens.size(); ++i) {
      EXPECT_EQ(e.logprobs[i].token, e.tokens[i]);
    }
    all.insert(all.end(), e.logprobs.begin(), e.logprobs.end());
  }
  return all;
}

// What the log-probabilities must be, computed independently of the sampler: one forward of
// prompt + generated with every position's logits, then per generated token the min_new_tokens
// mask, the penalties and the temperature (0 counts as 1) in double, and a log-softmax.
std::vector<std::vector<double>> ExpectedLogprobs(LoadedModel& m, const GenerationRequest& r,
                                                  const std::vector<int32_t>& generated) {
  CMOE_CHECK(!generated.empty());
  std::vector<int32_t> tokens = r.prompt;
  tokens.insert(tokens.end(), generated.begin(), generated.end() - 1);
  SequenceBlocks blocks;
  CMOE_CHECK(m.cache->Reserve(blocks, static_cast<int64_t>(tokens.size())).ok());
  const SequenceChunk chunk{
      .tokens = tokens, .start_pos = 0, .blocks = &blocks, .all_logits = true};
  ForwardOutput out;
  const absl::Status status = m.model->Forward({&chunk, 1}, *m.cache, out);
  m.cache->Release(blocks);
  CMOE_CHECK(status.ok()) << status;
  const SamplingParams& p = r.sampling;
  const double temperature = p.temperature == 0.0f ? 1.0 : p.temperature;
  std::vector<std::vector<double>> want;
  for (size_t i = 0; i < generated.size(); ++i) {
    const std::span<const float> row = out.Logits(0, static_cast<int64_t>(r.prompt.size() + i - 1));
    std::vector<double> l(row.begin(), row.end());
    const auto seen = [&](int32_t t, bool with_prompt) {
      int64_t n = std::count(generated.begin(), generated.begin() + i, t);
      if (with_prompt) n += std::count(r.prompt.begin(), r.prompt.end(), t);
      return n;
    };
    for (size_t t = 0; t < l.size(); ++t) {
      const auto id = static_cast<int32_t>(t);
      if (seen(id, true) > 0 && p.repetition_penalty != 1.0f) {
        l[t] = l[t] > 0 ? l[t] / p.repetition_penalty : l[t] * p.repetition_penalty;
      }
      if (const int64_t n = seen(id, false); n > 0) {
        l[t] -= p.presence_penalty + p.frequency_penalty * static_cast<double>(n);
      }
      l[t] /= temperature;
    }
    if (static_cast<int64_t>(i) < r.min_new_tokens) {
      std::vector<int32_t> masked = r.stop_token_ids;
      if (!r.ignore_eos) {
        const auto& eos = m.model->config().eos_token_ids;
        masked.insert(masked.end(), eos.begin(), eos.end());
      }
      for (int32_t t : masked) l[t] = -std::numeric_limits<double>::infinity();
    }
    const double max = *std::max_element(l.begin(), l.end());
    double total = 0;
    for (double v : l) total += std::exp(v - max);
    for (double& v : l) v = v - max - std::log(total);
    want.push_back(std::move(l));
  }
  return want;
}

// Checks the engine's log-probabilities of a finished request against ExpectedLogprobs: each
// token's, and the alternatives (most likely first, the right count, each at its own value).
void ExpectLogprobs(LoadedModel& ref, const GenerationRequest& r, const RecordingSink& sink,
                    double tolerance) {
  const std::vector<int32_t> tokens = sink.tokens();
  const std::vector<TokenLogprob> got = LogprobsOf(sink);
  ASSERT_EQ(got.size(), tokens.size());
  const std::vector<std::vector<double>> want = ExpectedLogprobs(ref, r, tokens);
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("token ", i));
    EXPECT_NEAR(got[i].logprob, want[i][static_cast<size_t>(tokens[i])], tolerance);
    std::vector<double> sorted = want[i];
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    ASSERT_EQ(got[i].top.size(), static_cast<size_t>(r.top_logprobs));
    for (size_t k = 0; k < got[i].top.size(); ++k) {
      const TopLogprob& t = got[i].top[k];
      EXPECT_TRUE(std::isfinite(t.logprob)) << "rank " << k;
      EXPECT_NEAR(t.logprob, want[i][static_cast<size_t>(t.token)], tolerance) << "rank " << k;
      EXPECT_NEAR(t.logprob, sorted[k], tolerance) << "rank " << k;
    }
  }
}

TEST(EngineTest, GreedyLogprobsListTheGeneratedTokenFirst) {
  LoadedModel ref = Load("stories260K");
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  auto plain = std::make_shared<RecordingSink>();
  SubmitOk(*engine, Greedy(prompt, 20, true), plain);
  GenerationRequest r = Greedy(prompt, 20, true);
  r.logprobs = true;
  r.top_logprobs = 5;
  auto sink = std::make_shared<RecordingSink>();
  SubmitOk(*engine, r, sink);
  ASSERT_TRUE(plain->WaitFinished());
  ASSERT_TRUE(sink->WaitFinished());
  EXPECT_EQ(sink->tokens(), plain->tokens()) << "asking for logprobs changed greedy output";
  for (const TokenEvent& e : plain->token_events()) EXPECT_TRUE(e.logprobs.empty());
  const std::vector<TokenLogprob> got = LogprobsOf(*sink);
  ASSERT_EQ(got.size(), 20u);
  for (size_t i = 0; i < got.size(); ++i) {
    SCOPED_TRACE(absl::StrCat("token ", i));
    ASSERT_EQ(got[i].top.size(), 5u);
    EXPECT_EQ(got[i].top[0].token, got[i].token);
    EXPECT_EQ(got[i].top[0].logprob, got[i].logprob);
    EXPECT_LE(got[i].logprob, 0.0f);
    for (size_t k = 1; k < 5; ++k) EXPECT_LE(got[i].top[k].logprob, got[i].top[k - 1].logprob);
  }
  ExpectLogprobs(ref, r, *sink, 1e-4);
  // logprobs alone: no alternatives; the most alternatives allowed: kMaxTopLogprobs.
  for (int32_t n : {0, kMaxTopLogprobs}) {
    GenerationRequest q = Greedy(prompt, 3, true);
    q.logprobs = true;
    q.top_logprobs = n;
    auto s = std::make_shared<RecordingSink>();
    SubmitOk(*engine, q, s);
    ASSERT_TRUE(s->WaitFinished());
    ExpectLogprobs(ref, q, *s, 1e-4);
  }
  EXPECT_TRUE(EventuallyIdle(*engine));
}

TEST(EngineTest, LogprobsFollowTemperatureAndPenaltiesBeforeTruncation) {
  LoadedModel ref = Load("stories260K");
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  struct Case {
    std::string name;
    SamplingParams sampling;
  };
  const std::vector<Case> cases = {
      {"temperature 2, top-k 3 and top-p 0.5 (truncation does not show)",
       {.temperature = 2.0f, .top_k = 3, .top_p = 0.5f, .seed = 11}},
      {"temperature 0.5, min-p 0.2", {.temperature = 0.5f, .min_p = 0.2f, .seed = 12}},
      {"greedy with every penalty",
       {.repetition_penalty = 1.5f, .presence_penalty = 0.7f, .frequency_penalty = 0.4f}},
  };
  std::vector<std::vector<TokenLogprob>> results;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    GenerationRequest r = Greedy(prompt, 24, true);
    r.sampling = c.sampling;
    r.logprobs = true;
    r.top_logprobs = 4;
    auto sink = std::make_shared<RecordingSink>();
    SubmitOk(*engine, r, sink);
    ASSERT_TRUE(sink->WaitFinished());
    ExpectLogprobs(ref, r, *sink, 1e-4);
    results.push_back(LogprobsOf(*sink));
    // The test must be able to tell: the same tokens at temperature 1 without penalties would
    // have other log-probabilities.
    GenerationRequest plain = r;
    plain.sampling = {};
    const std::vector<std::vector<double>> unscaled = ExpectedLogprobs(ref, plain, sink->tokens());
    double max_diff = 0;
    for (size_t i = 0; i < unscaled.size(); ++i) {
      const auto t = static_cast<size_t>(sink->tokens()[i]);
      max_diff = std::max(max_diff, std::abs(unscaled[i][t] - results.back()[i].logprob));
    }
    EXPECT_GT(max_diff, 0.05);
  }
  // Temperature 2 flattens the distribution: the most likely token is less likely than at 0.5.
  ASSERT_EQ(results.size(), 3u);
  EXPECT_LT(results[0][0].top[0].logprob, results[1][0].top[0].logprob);
  EXPECT_TRUE(EventuallyIdle(*engine));
}

TEST(EngineTest, LogprobsOfMaskedStopTokensAreMinusInfinity) {
  LoadedModel ref = Load("stories260K");
  std::unique_ptr<Engine> engine = MakeEngine(Load("stories260K"));
  const std::vector<int32_t> prompt = Encode(engine->tokenizer(), "Once upon a time");
  // Stop on the tokens the model likes most at the first position, masked until the 6th token.
  GenerationRequest r = Greedy(prompt, 12);
  r.logprobs = true;
  r.top_logprobs = kMaxTopLogprobs;
  {
    GenerationRequest probe = r;
    probe.max_new_tokens = 1;
    auto sink = std::make_shared<RecordingSink>();
    SubmitOk(*engine, probe, sink);
    ASSERT_TRUE(sink->WaitFinished());
    const std::vector<TokenLogprob> first = LogprobsOf(*sink);
    ASSERT_EQ(first.size(), 1u);
    r.stop_token_ids = {first[0].top[0].token, first[0].top[1].token};
  }
  r.min_new_tokens = 6;
  auto sink = std::make_shared<RecordingSink>();
  SubmitOk(*engine, r, sink);
  ASSERT_TRUE(sink->WaitFinished());
  const std::vector<TokenLogprob> got = LogprobsOf(*sink);
  ASSERT_GE(got.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    SCOPED_TRACE(absl::StrCat("token ", i));
    for (const TopLogprob& t : got[i].top) {
      EXPECT_NE(t.token, r.stop_token_ids[0]);
      EXPECT_NE(t.token, r.stop_token_ids[1]);
      EXPECT_TRUE(std::isfinite(t.logprob));
    }
  }
  ExpectLogprobs(ref, r, *sink, 1e-4);
  EXPECT_TRUE(EventuallyIdle(*engine));
}

}  // namespace
}  // namespace cmoe::engine
