// The serving engine's log-probabilities on the shared tiny models, checked against one
// independent forward of prompt + generated: the generated token first under greedy decoding,
// temperature and penalties applied before truncation, masked stop tokens at minus infinity.
#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "engine/kv_cache.h"
#include "engine/logprobs.h"
#include "engine/model.h"
#include "engine/model_loader.h"
#include "engine/request.h"
#include "engine/sampler.h"
#include "gtest/gtest.h"
#include "tests/engine/engine_test_util.h"

namespace cmoe::engine {
namespace {

using ::cmoe::testing::Encode;
using ::cmoe::testing::EventuallyIdle;
using ::cmoe::testing::Greedy;
using ::cmoe::testing::Load;
using ::cmoe::testing::MakeEngine;
using ::cmoe::testing::RecordingSink;
using ::cmoe::testing::SubmitOk;

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
