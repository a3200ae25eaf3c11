// ComputeTokenLogprob against a naive double-precision log-softmax and a full sort, on random and
// awkward logits: ties, -inf entries, a single finite entry, none, huge magnitudes, vocabulary 1,
// more alternatives asked for than tokens exist.
#include "engine/logprobs.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// log softmax(logits)[i] over the finite entries, the plain way in double (-inf for the others).
std::vector<double> NaiveLogSoftmax(std::span<const float> logits) {
  double max = -std::numeric_limits<double>::infinity();
  for (float l : logits) {
    if (std::isfinite(l)) max = std::max(max, static_cast<double>(l));
  }
  double total = 0.0;
  for (float l : logits) {
    if (std::isfinite(l)) total += std::exp(static_cast<double>(l) - max);
  }
  std::vector<double> out(logits.size(), -std::numeric_limits<double>::infinity());
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isfinite(logits[i])) out[i] = static_cast<double>(logits[i]) - max - std::log(total);
  }
  return out;
}

// The n best finite ids by a full stable sort: higher logit first, lower id on ties.
std::vector<int32_t> NaiveTop(std::span<const float> logits, size_t n) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isfinite(logits[i])) ids.push_back(static_cast<int32_t>(i));
  }
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  ids.resize(std::min(n, ids.size()));
  return ids;
}

// Every property the result must have, for every token of `logits` as the chosen one.
void ExpectMatchesNaive(std::span<const float> logits, int32_t top_n, const std::string& label) {
  SCOPED_TRACE(label);
  const std::vector<double> want = NaiveLogSoftmax(logits);
  double mass = 0.0;
  for (size_t token = 0; token < logits.size(); ++token) {
    const TokenLogprob got = ComputeTokenLogprob(logits, static_cast<int32_t>(token), 0);
    EXPECT_EQ(got.token, static_cast<int32_t>(token));
    EXPECT_TRUE(got.top.empty());
    ASSERT_FALSE(std::isnan(got.logprob)) << "token " << token;
    EXPECT_LE(got.logprob, 0.0f);
    if (want[token] < std::numeric_limits<float>::lowest()) {  // -inf, or beyond float
      EXPECT_EQ(got.logprob, -kInf) << "token " << token;
    } else {
      EXPECT_NEAR(got.logprob, want[token], 1e-6 * std::max(1.0, std::abs(want[token])))
          << "token " << token;
    }
    mass += std::exp(static_cast<double>(got.logprob));
  }
  if (std::any_of(logits.begin(), logits.end(), [](float l) { return std::isfinite(l); })) {
    EXPECT_NEAR(mass, 1.0, 1e-5);
  }
  // The alternatives: the naive order, each with the value it has as the chosen token, whichever
  // token is chosen.
  const std::vector<int32_t> want_top = NaiveTop(logits, static_cast<size_t>(top_n));
  for (int32_t chosen : {0, static_cast<int32_t>(logits.size()) - 1}) {
    const TokenLogprob got = ComputeTokenLogprob(logits, chosen, top_n);
    ASSERT_EQ(got.top.size(), want_top.size()) << "chosen " << chosen;
    for (size_t k = 0; k < want_top.size(); ++k) {
      EXPECT_EQ(got.top[k].token, want_top[k]) << "rank " << k;
      EXPECT_EQ(got.top[k].logprob, ComputeTokenLogprob(logits, want_top[k], 0).logprob)
          << "rank " << k;
      if (k > 0) {
        EXPECT_LE(got.top[k].logprob, got.top[k - 1].logprob) << "rank " << k;
      }
    }
  }
}

std::vector<float> RandomLogits(size_t vocab, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab);
  for (float& l : logits) l = normal(rng);
  return logits;
}

TEST(LogprobsTest, RandomLogitsMatchTheNaiveLogSoftmax) {
  for (size_t vocab : {2u, 7u, 33u, 512u, 2048u}) {
    for (float scale : {0.1f, 3.0f, 30.0f}) {
      for (int32_t n : {0, 1, 5, 20}) {
        ExpectMatchesNaive(RandomLogits(vocab, scale, static_cast<uint32_t>(vocab + n)), n,
                           "vocab " + std::to_string(vocab) + " scale " + std::to_string(scale) +
                               " n " + std::to_string(n));
      }
    }
  }
}

TEST(LogprobsTest, TiesAreBrokenByLowerId) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  ExpectMatchesNaive(logits, 5, "ties");
  const TokenLogprob got = ComputeTokenLogprob(logits, 5, 5);
  const std::vector<int32_t> order = {1, 3, 5, 2, 4};
  ASSERT_EQ(got.top.size(), order.size());
  for (size_t k = 0; k < order.size(); ++k) EXPECT_EQ(got.top[k].token, order[k]) << k;
  EXPECT_EQ(got.top[0].logprob, got.top[2].logprob);
  EXPECT_EQ(got.logprob, got.top[0].logprob);
  // All equal: uniform, ids in order.
  const std::vector<float> flat(10, -4.0f);
  const TokenLogprob uniform = ComputeTokenLogprob(flat, 9, 3);
  EXPECT_NEAR(uniform.logprob, -std::log(10.0), 1e-6);
  ASSERT_EQ(uniform.top.size(), 3u);
  EXPECT_EQ(uniform.top[0].token, 0);
  EXPECT_EQ(uniform.top[2].token, 2);
}

TEST(LogprobsTest, MaskedEntriesAreMinusInfinityAndNeverListed) {
  std::vector<float> logits = RandomLogits(40, 2.0f, 7);
  for (size_t i = 0; i < logits.size(); i += 3) logits[i] = -kInf;
  logits[1] = 100.0f;  // the best is finite
  ExpectMatchesNaive(logits, 20, "every third masked");
  const TokenLogprob masked = ComputeTokenLogprob(logits, 0, 20);
  EXPECT_EQ(masked.logprob, -kInf);
  for (const TopLogprob& t : masked.top) {
    EXPECT_NE(t.token % 3, 0) << "masked token " << t.token << " listed";
    EXPECT_TRUE(std::isfinite(t.logprob));
  }
}

TEST(LogprobsTest, SingleFiniteEntryHasProbabilityOne) {
  std::vector<float> logits(16, -kInf);
  logits[11] = -3.5f;
  ExpectMatchesNaive(logits, 5, "one finite");
  const TokenLogprob got = ComputeTokenLogprob(logits, 11, 5);
  EXPECT_EQ(got.logprob, 0.0f);
  ASSERT_EQ(got.top.size(), 1u);  // fewer than asked: only finite entries are listed
  EXPECT_EQ(got.top[0], (TopLogprob{.token = 11, .logprob = 0.0f}));
  EXPECT_EQ(ComputeTokenLogprob(logits, 3, 5).logprob, -kInf);
}

TEST(LogprobsTest, NoFiniteEntryGivesMinusInfinityNotNan) {
  const std::vector<float> masked(8, -kInf);
  const TokenLogprob got = ComputeTokenLogprob(masked, 2, 5);
  EXPECT_EQ(got.logprob, -kInf);
  EXPECT_TRUE(got.top.empty());
  const std::vector<float> nans(4, std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(ComputeTokenLogprob(nans, 0, 2).logprob, -kInf);
  EXPECT_TRUE(ComputeTokenLogprob(nans, 0, 2).top.empty());
  EXPECT_EQ(ComputeTokenLogprob({}, 0, 2).logprob, -kInf);
}

TEST(LogprobsTest, HugeMagnitudesNeitherOverflowNorUnderflow) {
  // exp of these in float (or of their differences) overflows; the result must not.
  const std::vector<float> huge = {3e38f, -3e38f, 2.9e38f, 3e38f, 1e30f};
  ExpectMatchesNaive(huge, 4, "huge");
  const TokenLogprob top = ComputeTokenLogprob(huge, 0, 2);
  EXPECT_NEAR(top.logprob, -std::log(2.0), 1e-6);  // two tied at the top, the rest ~0
  EXPECT_EQ(top.top[1].token, 3);
  EXPECT_LT(ComputeTokenLogprob(huge, 1, 0).logprob, -1e38f);
  // Tiny differences among large values are kept (no catastrophic loss in the normaliser).
  const std::vector<float> close = {1e4f, 1e4f + 1.0f, 1e4f - 1.0f};
  ExpectMatchesNaive(close, 3, "close");
  // Many small terms: the normaliser is summed in double.
  std::vector<float> many(100000, -20.0f);
  many[0] = 0.0f;
  const double want = -std::log(1.0 + 99999.0 * std::exp(-20.0));
  EXPECT_NEAR(ComputeTokenLogprob(many, 0, 1).logprob, want, 1e-9);
}

TEST(LogprobsTest, FiniteLogitsOfProbabilityZeroAreNotListed) {
  // -3e38 is finite but 6e38 below the max: its probability is 0 in float, its logprob -inf.
  const std::vector<float> logits = {3e38f, -3e38f, 0.0f};
  const TokenLogprob got = ComputeTokenLogprob(logits, 1, 3);
  EXPECT_EQ(got.logprob, -std::numeric_limits<float>::infinity());
  ASSERT_EQ(got.top.size(), 2u);
  EXPECT_EQ(got.top[0].token, 0);
  EXPECT_EQ(got.top[1].token, 2);
  for (const TopLogprob& t : got.top) EXPECT_TRUE(std::isfinite(t.logprob)) << t.token;
}

TEST(LogprobsTest, VocabularyOfOneAndMoreAlternativesThanTokens) {
  const std::vector<float> one = {-7.0f};
  const TokenLogprob got = ComputeTokenLogprob(one, 0, 20);
  EXPECT_EQ(got.logprob, 0.0f);
  ASSERT_EQ(got.top.size(), 1u);
  EXPECT_EQ(got.top[0].token, 0);
  ExpectMatchesNaive(RandomLogits(6, 1.0f, 3), 20, "n > vocab");
  EXPECT_EQ(ComputeTokenLogprob(RandomLogits(6, 1.0f, 3), 0, 20).top.size(), 6u);
}

TEST(LogprobsTest, OutOfRangeTokenAndNegativeCount) {
  const std::vector<float> logits = {0.0f, 1.0f};
  EXPECT_EQ(ComputeTokenLogprob(logits, -1, 1).logprob, -kInf);
  EXPECT_EQ(ComputeTokenLogprob(logits, 2, 1).logprob, -kInf);
  EXPECT_EQ(ComputeTokenLogprob(logits, 2, 1).top.size(), 1u);
  EXPECT_TRUE(ComputeTokenLogprob(logits, 1, -3).top.empty());
  EXPECT_TRUE(ComputeTokenLogprob(logits, 1, 0).top.empty());
}

}  // namespace
}  // namespace cmoe::engine
