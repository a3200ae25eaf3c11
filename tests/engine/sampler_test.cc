#include "engine/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <span>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

const std::vector<float> kLogits = {1.0f, 3.0f, 2.0f, 0.5f, 2.9f};

int32_t SampleOnce(const SamplingParams& params, std::span<const float> logits = kLogits,
                   std::span<const int32_t> prompt = {}, std::span<const int32_t> gen = {}) {
  Sampler sampler(params);
  return sampler.Sample(logits, prompt, gen);
}

TEST(SamplerTest, GreedyPicksArgmaxAndLowestIdOnTies) {
  EXPECT_EQ(SampleOnce({}), 1);
  const std::vector<float> tied = {0.0f, 5.0f, 5.0f};
  EXPECT_EQ(SampleOnce({}, tied), 1);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDiffers) {
  const SamplingParams p{.temperature = 1.0f, .seed = 42};
  Sampler a(p), b(p), c({.temperature = 1.0f, .seed = 43});
  std::vector<int32_t> ta, tb, tc;
  for (int i = 0; i < 200; ++i) {
    ta.push_back(a.Sample(kLogits, {}, {}));
    tb.push_back(b.Sample(kLogits, {}, {}));
    tc.push_back(c.Sample(kLogits, {}, {}));
  }
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(SamplerTest, TemperatureSamplingFollowsSoftmax) {
  Sampler sampler({.temperature = 1.0f, .seed = 1});
  std::vector<int> counts(kLogits.size(), 0);
  const int n = 40000;
  for (int i = 0; i < n; ++i) ++counts[sampler.Sample(kLogits, {}, {})];
  double total = 0.0;
  for (float l : kLogits) total += std::exp(l);
  for (size_t i = 0; i < kLogits.size(); ++i) {
    const double expected = std::exp(kLogits[i]) / total;
    EXPECT_NEAR(counts[i] / static_cast<double>(n), expected, 0.01) << "token " << i;
  }
}

TEST(SamplerTest, TinyTemperatureIsGreedyNotGarbage) {
  for (float t : {1e-39f, 1e-20f, 1e-6f}) {
    Sampler sampler({.temperature = t, .seed = 4});
    for (int i = 0; i < 50; ++i) EXPECT_EQ(sampler.Sample(kLogits, {}, {}), 1) << t;
  }
}

TEST(SamplerTest, TopKRestrictsToTheKBest) {
  Sampler sampler({.temperature = 1.0f, .top_k = 2, .seed = 3});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[sampler.Sample(kLogits, {}, {})];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(1) && seen.count(4));
  EXPECT_EQ(SampleOnce({.temperature = 5.0f, .top_k = 1, .seed = 9}), 1);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // softmax(kLogits): token 1 ~0.39, token 4 ~0.35, token 2 ~0.14 ...; top_p 0.5 keeps {1, 4}.
  Sampler sampler({.temperature = 1.0f, .top_p = 0.5f, .seed = 5});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[sampler.Sample(kLogits, {}, {})];
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(seen.count(1) && seen.count(4));
  EXPECT_EQ(SampleOnce({.temperature = 1.0f, .top_p = 0.01f, .seed = 5}), 1);
}

TEST(SamplerTest, MinPDropsUnlikelyTokens) {
  // p_i / p_max = exp(l_i - 3): token 4 0.90, token 2 0.37, token 0 0.14, token 3 0.08.
  Sampler sampler({.temperature = 1.0f, .min_p = 0.3f, .seed = 11});
  std::map<int32_t, int> seen;
  for (int i = 0; i < 3000; ++i) ++seen[sampler.Sample(kLogits, {}, {})];
  EXPECT_EQ(seen.size(), 3u);
  EXPECT_FALSE(seen.count(0) || seen.count(3));
}

TEST(SamplerTest, RepetitionPenaltyDemotesSeenTokens) {
  const std::vector<int32_t> prompt = {1};
  // 3.0 / 2 = 1.5 < 2.9: token 4 wins once token 1 was seen.
  EXPECT_EQ(SampleOnce({.repetition_penalty = 2.0f}, kLogits, prompt), 4);
  const std::vector<float> negative = {-1.0f, -0.5f};
  const std::vector<int32_t> seen_one = {1};
  // -0.5 * 3 = -1.5 < -1.0: the penalty multiplies negative logits.
  EXPECT_EQ(SampleOnce({.repetition_penalty = 3.0f}, negative, seen_one), 0);
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesCountGeneratedTokensOnly) {
  const std::vector<int32_t> prompt = {1, 1, 1};
  EXPECT_EQ(SampleOnce({.presence_penalty = 0.5f}, kLogits, prompt), 1);  // prompt not counted
  const std::vector<int32_t> gen = {1};
  EXPECT_EQ(SampleOnce({.presence_penalty = 0.2f}, kLogits, {}, gen), 4);  // 2.8 < 2.9
  const std::vector<int32_t> gen_twice = {4, 4};
  // token 4: 2.9 - 2 * 0.3 = 2.3; token 1 unchanged at 3.0 -> still 1. Token 1 twice: 2.4 < 2.9.
  EXPECT_EQ(SampleOnce({.frequency_penalty = 0.3f}, kLogits, {}, gen_twice), 1);
  const std::vector<int32_t> one_twice = {1, 1};
  EXPECT_EQ(SampleOnce({.frequency_penalty = 0.3f}, kLogits, {}, one_twice), 4);
}

// ScaledLogits: what Sample drew from, before truncation (log-probabilities are its softmax).
TEST(SamplerTest, ScaledLogitsArePenalisedDividedByTemperatureAndShifted) {
  const std::vector<int32_t> gen = {1, 1};
  // Penalised: token 1 3.0 - 0.5 - 2 * 0.25 = 2.0; the best is now token 4 (2.9).
  std::vector<float> penalised = kLogits;
  penalised[1] = 2.0f;
  for (float temperature : {0.0f, 1.0f, 2.0f, 0.5f}) {
    Sampler sampler({.temperature = temperature,
                     .top_k = 1,  // truncation does not show in ScaledLogits
                     .presence_penalty = 0.5f,
                     .frequency_penalty = 0.25f,
                     .seed = 2});
    EXPECT_EQ(sampler.Sample(kLogits, {}, gen), 4) << temperature;
    const std::span<const float> scaled = sampler.ScaledLogits();
    ASSERT_EQ(scaled.size(), kLogits.size());
    const double t = temperature == 0.0f ? 1.0 : temperature;  // greedy reports temperature 1
    for (size_t i = 0; i < kLogits.size(); ++i) {
      EXPECT_NEAR(scaled[i], (penalised[i] - 2.9) / t, 1e-6) << temperature << " token " << i;
    }
  }
}

TEST(SamplerTest, ScaledLogitsKeepMaskedTokensAtMinusInfinity) {
  std::vector<float> logits = kLogits;
  logits[1] = -std::numeric_limits<float>::infinity();  // masked, e.g. EOS before min_new_tokens
  for (float temperature : {0.0f, 1e-39f, 0.7f}) {
    Sampler sampler({.temperature = temperature, .seed = 3});
    EXPECT_EQ(sampler.Sample(logits, {}, {}), 4) << temperature;
    const std::span<const float> scaled = sampler.ScaledLogits();
    EXPECT_EQ(scaled[1], -std::numeric_limits<float>::infinity()) << temperature;
    EXPECT_EQ(scaled[4], 0.0f) << temperature;
    for (float v : scaled) EXPECT_FALSE(std::isnan(v)) << temperature;
  }
}

TEST(SamplerTest, ValidationNamesTheField) {
  struct Case {
    SamplingParams params;
    const char* field;
  };
  const Case cases[] = {{{.temperature = -1.0f}, "temperature"},
                        {{.temperature = NAN}, "temperature"},
                        {{.top_k = -1}, "top_k"},
                        {{.top_p = 0.0f}, "top_p"},
                        {{.top_p = 1.5f}, "top_p"},
                        {{.min_p = -0.1f}, "min_p"},
                        {{.repetition_penalty = 0.0f}, "repetition_penalty"},
                        {{.presence_penalty = 3.0f}, "presence_penalty"},
                        {{.frequency_penalty = NAN}, "frequency_penalty"}};
  for (const Case& c : cases) {
    const absl::Status status = ValidateSamplingParams(c.params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(status.message().find(c.field), std::string_view::npos) << status;
  }
  EXPECT_TRUE(ValidateSamplingParams({.temperature = 0.7f, .top_k = 40, .top_p = 0.9f}).ok());
}

}  // namespace
}  // namespace cmoe::engine
