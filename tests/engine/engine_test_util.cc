#include "tests/engine/engine_test_util.h"

#include <thread>
#include <utility>

#include "absl/status/statusor.h"
#include "common/logging.h"
#include "engine/incremental_detokenizer.h"
#include "tests/engine/shared_models.h"

namespace cmoe::engine {

void PrintTo(FinishReason reason, std::ostream* os) { *os << FinishReasonName(reason); }

}  // namespace cmoe::engine

namespace cmoe::testing {

using engine::Engine;
using engine::EngineOptions;
using engine::EngineStats;
using engine::FinishEvent;
using engine::FinishReason;
using engine::GenerateOptions;
using engine::GenerateResult;
using engine::GenerationRequest;
using engine::IncrementalDetokenizer;
using engine::LoadedModel;
using engine::RequestSink;
using engine::StepReport;
using engine::TokenEvent;
using engine::Tokenizer;
using Clock = std::chrono::steady_clock;

std::string ModelDir(const std::string& name) {
  absl::StatusOr<std::string> dir = SharedModelDir(name);
  CMOE_CHECK(dir.ok()) << dir.status();
  return *dir;
}

LoadedModel LoadDir(const std::string& dir, int64_t kv_cache_tokens) {
  absl::StatusOr<LoadedModel> m = engine::LoadModel(
      {.model_dir = dir, .threads = kThreads, .kv_cache_tokens = kv_cache_tokens});
  CMOE_CHECK(m.ok()) << m.status();
  return std::move(*m);
}

LoadedModel Load(const std::string& name, int64_t kv_cache_tokens) {
  return LoadDir(ModelDir(name), kv_cache_tokens);
}

std::unique_ptr<Engine> MakeEngine(LoadedModel m, const EngineOptions& options,
                                   std::function<void(const StepReport&)> on_step) {
  absl::StatusOr<std::unique_ptr<Engine>> e =
      Engine::Create(std::move(m), options, std::move(on_step));
  CMOE_CHECK(e.ok()) << e.status();
  return std::move(*e);
}

std::vector<int32_t> SampleTokens(const Tokenizer& tok, size_t bytes) {
  absl::StatusOr<std::vector<int32_t>> ids =
      tok.Encode(TinyStoriesSample(bytes), {.add_dummy_prefix = tok.DefaultDummyPrefix()});
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
  absl::StatusOr<GenerateResult> r = engine::GenerateTokens(*m.model, *m.cache, prompt, options);
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

// --- RecordingSink ----------------------------------------------------------------------------

void RecordingSink::OnTokens(const TokenEvent& event) {
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

void RecordingSink::OnFinish(const FinishEvent& event) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++finishes_;
    finish_ = event;
  }
  cv_.notify_all();
  if (on_finish_hook) on_finish_hook(event);
}

bool RecordingSink::WaitFinished() {
  std::unique_lock<std::mutex> lock(mutex_);
  return cv_.wait_for(lock, kWait, [&] { return finishes_ > 0; });
}

bool RecordingSink::WaitTokens(int64_t n) {
  std::unique_lock<std::mutex> lock(mutex_);
  return cv_.wait_for(lock, kWait,
                      [&] { return static_cast<int64_t>(tokens_.size()) >= n || finishes_ > 0; });
}

std::string RecordingSink::text() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return text_ + (finish_ ? finish_->text : "");
}

FinishReason RecordingSink::reason() const {
  std::lock_guard<std::mutex> lock(mutex_);
  CMOE_CHECK(finish_.has_value());
  return finish_->reason;
}

// --- Gate -------------------------------------------------------------------------------------

void Gate::Open() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    open_ = true;
  }
  cv_.notify_all();
}

void Gate::Pass() {
  std::unique_lock<std::mutex> lock(mutex_);
  cv_.wait_for(lock, kWait, [&] { return open_; });
}

// --- Checks and requests ----------------------------------------------------------------------

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

GenerationRequest Greedy(std::vector<int32_t> prompt, int64_t max_new_tokens, bool ignore_eos) {
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

}  // namespace cmoe::testing
