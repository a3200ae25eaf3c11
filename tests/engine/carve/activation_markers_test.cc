// ATopK markers against straightforward references: a full sort per row, naive counts and
// naive per-token distance loops.
#include "engine/carve/activation_markers.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "gtest/gtest.h"

namespace cmoe::engine::carve {
namespace {

// Scores from a small set of magnitudes with random signs: many ties in |score|.
std::vector<float> TiedScores(int64_t q, int64_t n, std::mt19937_64& rng) {
  std::uniform_int_distribution<int> magnitude(0, 6);
  std::bernoulli_distribution negative(0.5);
  std::vector<float> scores(q * n);
  for (float& s : scores) s = (negative(rng) ? -0.25f : 0.25f) * magnitude(rng);
  return scores;
}

// Reference: sort each row's neuron indices by (|score| desc, index asc), mark the first k.
std::vector<std::vector<bool>> SortReference(const std::vector<float>& scores, int64_t q, int64_t n,
                                             int64_t k) {
  std::vector<std::vector<bool>> marked(q, std::vector<bool>(n, false));
  std::vector<int64_t> order(n);
  for (int64_t t = 0; t < q; ++t) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
      return std::fabs(scores[t * n + a]) > std::fabs(scores[t * n + b]);
    });
    for (int64_t r = 0; r < k; ++r) marked[t][order[r]] = true;
  }
  return marked;
}

ActivationMarkers RandomMarkers(int64_t q, int64_t n, double p, std::mt19937_64& rng) {
  ActivationMarkers m(q, n);
  std::bernoulli_distribution coin(p);
  for (int64_t t = 0; t < q; ++t) {
    for (int64_t i = 0; i < n; ++i) {
      if (coin(rng)) m.Set(t, i);
    }
  }
  return m;
}

TEST(ActivationMarkersTest, SetGetAndCountsAcrossWordBoundaries) {
  ActivationMarkers m(/*num_tokens=*/130, /*num_neurons=*/3);
  EXPECT_EQ(m.words_per_column(), 3);
  for (int64_t t : {0, 62, 63, 64, 65, 127, 128, 129}) m.Set(t, 1);
  m.Set(129, 2);
  for (int64_t t = 0; t < 130; ++t) {
    const bool expected =
        t == 0 || t == 62 || t == 63 || t == 64 || t == 65 || t == 127 || t == 128 || t == 129;
    EXPECT_EQ(m.Get(t, 1), expected) << t;
    EXPECT_FALSE(m.Get(t, 0)) << t;
    EXPECT_EQ(m.Get(t, 2), t == 129) << t;
  }
  EXPECT_EQ(m.ActivationCount(0), 0);
  EXPECT_EQ(m.ActivationCount(1), 8);
  EXPECT_EQ(m.ActivationCount(2), 1);
  EXPECT_DOUBLE_EQ(m.ActivationRate(1), 8.0 / 130.0);
  ASSERT_EQ(m.Column(2).size(), 3u);
  EXPECT_EQ(m.Column(2)[2], uint64_t{1} << 1);  // token 129 = word 2, bit 1; padding zero
}

TEST(ActivationMarkersTest, TopKMatchesSortPerRowWithTies) {
  std::mt19937_64 rng(11);
  ThreadPool pool(2);
  for (auto [q, n, k] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                         {130, 37, 5},
                         {64, 20, 0},
                         {200, 20, 20},
                         {333, 100, 10},
                         {65, 8, 3}}) {
    const std::vector<float> scores = TiedScores(q, n, rng);
    const auto reference = SortReference(scores, q, n, k);
    for (ThreadPool* p : {&pool, static_cast<ThreadPool*>(nullptr)}) {
      absl::StatusOr<ActivationMarkers> m =
          BuildTopKMarkers(scores, {.num_tokens = q, .num_neurons = n, .top_k = k}, p);
      ASSERT_TRUE(m.ok()) << m.status();
      for (int64_t t = 0; t < q; ++t) {
        for (int64_t i = 0; i < n; ++i) ASSERT_EQ(m->Get(t, i), reference[t][i]) << t << "," << i;
      }
      for (int64_t i = 0; i < n; ++i) {
        int64_t count = 0;
        for (int64_t t = 0; t < q; ++t) count += reference[t][i];
        EXPECT_EQ(m->ActivationCount(i), count) << i;
      }
    }
  }
}

TEST(ActivationMarkersTest, TiesGoToLowerIndexAndNanRanksLast) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> scores = {nan, -2.0f, 2.0f, 1.0f, 2.0f, -3.0f};
  absl::StatusOr<ActivationMarkers> m =
      BuildTopKMarkers(scores, {.num_tokens = 1, .num_neurons = 6, .top_k = 3}, nullptr);
  ASSERT_TRUE(m.ok()) << m.status();
  const std::vector<bool> expected = {false, true, true, false, false, true};
  for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(m->Get(0, i), expected[i]) << i;
}

TEST(ActivationMarkersTest, TopKRejectsInvalidParams) {
  const std::vector<float> scores(12, 1.0f);
  auto code = [&](TopKMarkerParams p) { return BuildTopKMarkers(scores, p, nullptr).status(); };
  EXPECT_EQ(code({.num_tokens = 3, .num_neurons = 4, .top_k = 5}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.num_tokens = 3, .num_neurons = 4, .top_k = -1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.num_tokens = 4, .num_neurons = 4, .top_k = 1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({.num_tokens = -3, .num_neurons = -4, .top_k = 0}).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ActivationMarkersTest, BinaryL1MatchesNaiveLoop) {
  std::mt19937_64 rng(12);
  for (int64_t q : {1, 63, 64, 65, 200}) {
    const ActivationMarkers m = RandomMarkers(q, 6, 0.3, rng);
    for (int64_t i = 0; i < 6; ++i) {
      for (int64_t j = 0; j < 6; ++j) {
        int64_t naive = 0;
        for (int64_t t = 0; t < q; ++t) naive += m.Get(t, i) != m.Get(t, j);
        EXPECT_EQ(L1Distance(m, i, m.Column(j)), naive) << q << ":" << i << "," << j;
        EXPECT_EQ(HammingDistance(m.Column(i), m.Column(j)), naive);
      }
    }
  }
}

TEST(ActivationMarkersTest, RealL1AndMeanColumnMatchNaiveLoops) {
  std::mt19937_64 rng(13);
  for (int64_t q : {1, 65, 130}) {
    const ActivationMarkers m = RandomMarkers(q, 9, 0.4, rng);
    const std::vector<int64_t> members = {0, 2, 3, 8};
    const std::vector<float> mean = MeanColumn(m, members);
    ASSERT_EQ(static_cast<int64_t>(mean.size()), q);
    for (int64_t t = 0; t < q; ++t) {
      double sum = 0;
      for (int64_t i : members) sum += m.Get(t, i);
      EXPECT_FLOAT_EQ(mean[t], static_cast<float>(sum / members.size())) << t;
    }
    std::uniform_real_distribution<float> uniform(-0.5f, 1.5f);
    std::vector<float> centroid(q);
    for (float& c : centroid) c = uniform(rng);
    for (int64_t i = 0; i < 9; ++i) {
      double naive = 0;
      for (int64_t t = 0; t < q; ++t) naive += std::fabs((m.Get(t, i) ? 1.0 : 0.0) - centroid[t]);
      EXPECT_NEAR(L1Distance(m, i, std::span<const float>(centroid)), naive, 1e-9) << i;
    }
  }
  EXPECT_EQ(MeanColumn(ActivationMarkers(5, 2), {}), std::vector<float>(5, 0.0f));
}

}  // namespace
}  // namespace cmoe::engine::carve
