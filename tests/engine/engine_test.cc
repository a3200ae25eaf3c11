// The serving engine on the shared tiny models: greedy output equals GenerateTokens alone and in
// a continuously batched crowd (chunked prefill included); a prompt that fills the context; the
// sink contract (one OnFinish, last; text equals the detokenized tokens; counts and timings); stop
// strings, stop token ids and min_new_tokens; request and option validation; per-request expert
// counts on a carved model; step reports. Cancellation, deadlines, the queue limit and shutdown
// are in engine_lifecycle_test.cc, log-probabilities in engine_logprobs_test.cc.
#include "engine/engine.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/mapped_file.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carve_model.h"
#include "engine/carve/carved_checkpoint_writer.h"
#include "engine/generation.h"
#include "engine/incremental_detokenizer.h"
#include "engine/logprobs.h"
#include "engine/model_loader.h"
#include "engine/request.h"
#include "engine/staged_output_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::cmoe::testing::Encode;
using ::cmoe::testing::EventuallyIdle;
using ::cmoe::testing::ExpectContract;
using ::cmoe::testing::Greedy;
using ::cmoe::testing::kThreads;
using ::cmoe::testing::Load;
using ::cmoe::testing::LoadDir;
using ::cmoe::testing::MakeEngine;
using ::cmoe::testing::ReasonOf;
using ::cmoe::testing::RecordingSink;
using ::cmoe::testing::Reference;
using ::cmoe::testing::SampleTokens;
using ::cmoe::testing::Slice;
using ::cmoe::testing::SubmitOk;
using ::testing::HasSubstr;

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

// --- 5. Validation ------------------------------------------------------------------------------

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

// --- 6. A carved model: per-request expert counts in one batch --------------------------------

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

// --- 7. Step reports ------------------------------------------------------------------------

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

}  // namespace
}  // namespace cmoe::engine
