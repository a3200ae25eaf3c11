// The balanced assignment against independent exact solvers: brute-force enumeration on tiny
// instances and a Hungarian algorithm on the slot-expanded square problem on medium ones.
#include "engine/carve/balanced_assignment.h"

#include <algorithm>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "common/thread_pool.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cmoe::engine::carve {
namespace {

using ::testing::HasSubstr;

CostMatrix RandomCost(int64_t n, int64_t k, int64_t max_cost, std::mt19937_64& rng) {
  std::uniform_int_distribution<int64_t> dist(0, max_cost);
  CostMatrix cost{.rows = n, .cols = k, .values = std::vector<int64_t>(n * k)};
  for (int64_t& v : cost.values) v = dist(rng);
  return cost;
}

// Random capacities >= 0 summing to n (some clusters may get 0).
std::vector<int64_t> RandomCapacities(int64_t n, int64_t k, std::mt19937_64& rng) {
  std::vector<int64_t> caps(k, 0);
  std::uniform_int_distribution<int64_t> pick(0, k - 1);
  for (int64_t i = 0; i < n; ++i) ++caps[pick(rng)];
  return caps;
}

// Minimum over every assignment respecting the capacities, by enumeration.
int64_t BruteForceOptimum(const CostMatrix& cost, std::vector<int64_t> remaining) {
  int64_t best = std::numeric_limits<int64_t>::max();
  std::function<void(int64_t, int64_t)> recurse = [&](int64_t i, int64_t sum) {
    if (i == cost.rows) {
      best = std::min(best, sum);
      return;
    }
    for (int64_t j = 0; j < cost.cols; ++j) {
      if (remaining[j] == 0) continue;
      --remaining[j];
      recurse(i + 1, sum + cost.at(i, j));
      ++remaining[j];
    }
  };
  recurse(0, 0);
  return best;
}

// O(N^3) Hungarian algorithm (potentials + shortest augmenting paths) on an N x N matrix.
int64_t HungarianMinCost(const std::vector<std::vector<int64_t>>& a) {
  const int64_t n = static_cast<int64_t>(a.size());
  const int64_t kInf = std::numeric_limits<int64_t>::max() / 4;
  std::vector<int64_t> u(n + 1, 0), v(n + 1, 0), p(n + 1, 0), way(n + 1, 0);
  for (int64_t i = 1; i <= n; ++i) {
    p[0] = i;
    int64_t j0 = 0;
    std::vector<int64_t> minv(n + 1, kInf);
    std::vector<bool> used(n + 1, false);
    do {
      used[j0] = true;
      const int64_t i0 = p[j0];
      int64_t delta = kInf, j1 = 0;
      for (int64_t j = 1; j <= n; ++j) {
        if (used[j]) continue;
        const int64_t cur = a[i0 - 1][j - 1] - u[i0] - v[j];
        if (cur < minv[j]) minv[j] = cur, way[j] = j0;
        if (minv[j] < delta) delta = minv[j], j1 = j;
      }
      for (int64_t j = 0; j <= n; ++j) {
        if (used[j]) {
          u[p[j]] += delta, v[j] -= delta;
        } else {
          minv[j] -= delta;
        }
      }
      j0 = j1;
    } while (p[j0] != 0);
    do {
      const int64_t j1 = way[j0];
      p[j0] = p[j1];
      j0 = j1;
    } while (j0 != 0);
  }
  int64_t total = 0;
  for (int64_t j = 1; j <= n; ++j) total += a[p[j] - 1][j - 1];
  return total;
}

// The reference formulation: each cluster j repeated capacities[j] times as a column.
int64_t SlotExpandedOptimum(const CostMatrix& cost, const std::vector<int64_t>& capacities) {
  std::vector<std::vector<int64_t>> square(cost.rows);
  for (int64_t i = 0; i < cost.rows; ++i) {
    for (int64_t j = 0; j < cost.cols; ++j) {
      square[i].insert(square[i].end(), capacities[j], cost.at(i, j));
    }
  }
  return HungarianMinCost(square);
}

// The assignment is complete, respects the capacities exactly, and its cost recomputed from the
// matrix equals the reported total.
void ExpectConsistent(const BalancedAssignment& a, const CostMatrix& cost,
                      const std::vector<int64_t>& capacities) {
  ASSERT_EQ(static_cast<int64_t>(a.cluster_of.size()), cost.rows);
  std::vector<int64_t> sizes(cost.cols, 0);
  int64_t total = 0;
  for (int64_t i = 0; i < cost.rows; ++i) {
    ASSERT_GE(a.cluster_of[i], 0);
    ASSERT_LT(a.cluster_of[i], cost.cols);
    ++sizes[a.cluster_of[i]];
    total += cost.at(i, a.cluster_of[i]);
  }
  EXPECT_EQ(sizes, capacities);
  EXPECT_EQ(a.cluster_sizes, capacities);
  EXPECT_EQ(a.total_cost, total);
}

void CheckAgainstBruteForce(const CostMatrix& cost, const std::vector<int64_t>& capacities) {
  absl::StatusOr<BalancedAssignment> a = SolveBalancedAssignment(cost, capacities);
  ASSERT_TRUE(a.ok()) << a.status();
  ExpectConsistent(*a, cost, capacities);
  EXPECT_EQ(a->total_cost, BruteForceOptimum(cost, capacities));
}

TEST(BalancedAssignmentTest, MatchesBruteForceOnSmallRandomInstances) {
  std::mt19937_64 rng(1);
  for (int trial = 0; trial < 600; ++trial) {
    const int64_t n = 1 + trial % 8;
    const int64_t k = 1 + (trial / 8) % 3;
    const int64_t max_cost = (trial % 3 == 0) ? 1 : (trial % 3 == 1 ? 5 : 1000);  // {0,1}: ties
    const CostMatrix cost = RandomCost(n, k, max_cost, rng);
    SCOPED_TRACE(testing::Message() << "trial " << trial << " n=" << n << " k=" << k);
    CheckAgainstBruteForce(cost, RandomCapacities(n, k, rng));
  }
}

TEST(BalancedAssignmentTest, UnevenAndZeroCapacitiesAndSingleCluster) {
  std::mt19937_64 rng(2);
  const std::vector<std::vector<int64_t>> cases = {{3, 2, 2}, {0, 7, 0}, {4, 0, 3},
                                                   {7},       {1, 1, 6}, {0, 0, 8}};
  for (const std::vector<int64_t>& caps : cases) {
    int64_t n = 0;
    for (int64_t c : caps) n += c;
    for (int rep = 0; rep < 20; ++rep) {
      CheckAgainstBruteForce(RandomCost(n, static_cast<int64_t>(caps.size()), rep % 2 ? 1 : 9, rng),
                             caps);
    }
  }
}

TEST(BalancedAssignmentTest, NegativeCostsAreAllowed) {
  std::mt19937_64 rng(3);
  for (int rep = 0; rep < 50; ++rep) {
    CostMatrix cost = RandomCost(7, 3, 20, rng);
    for (int64_t& v : cost.values) v -= 10;
    CheckAgainstBruteForce(cost, {3, 2, 2});
  }
}

TEST(BalancedAssignmentTest, MatchesHungarianOnMediumInstances) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 24; ++trial) {
    const int64_t n = 60 + (trial * 37) % 141;  // 60..200
    const int64_t k = 4 + trial % 11;           // 4..14
    const int64_t max_cost = trial % 2 ? 3 : 10000;
    const CostMatrix cost = RandomCost(n, k, max_cost, rng);
    // Balanced capacities (widths differ by at most one), as the carving uses.
    std::vector<int64_t> caps(k, n / k);
    for (int64_t j = 0; j < n % k; ++j) ++caps[j];
    SCOPED_TRACE(testing::Message() << "trial " << trial << " n=" << n << " k=" << k);
    for (PivotRule rule :
         {PivotRule::kBlockSearch, PivotRule::kFirstEligible, PivotRule::kBestEligible,
          PivotRule::kCandidateList, PivotRule::kAlteringList}) {
      absl::StatusOr<BalancedAssignment> a = SolveBalancedAssignment(cost, caps, {.pivot = rule});
      ASSERT_TRUE(a.ok()) << a.status();
      ExpectConsistent(*a, cost, caps);
      EXPECT_EQ(a->total_cost, SlotExpandedOptimum(cost, caps));
    }
  }
}

TEST(BalancedAssignmentTest, EmptyProblemIsAllowed) {
  absl::StatusOr<BalancedAssignment> a =
      SolveBalancedAssignment({.rows = 0, .cols = 2}, std::vector<int64_t>{0, 0});
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_TRUE(a->cluster_of.empty());
  EXPECT_EQ(a->cluster_sizes, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(a->total_cost, 0);
}

void ExpectInvalid(const CostMatrix& cost, const std::vector<int64_t>& caps,
                   const std::string& message) {
  absl::StatusOr<BalancedAssignment> a = SolveBalancedAssignment(cost, caps);
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(a.status().message()), HasSubstr(message));
}

TEST(BalancedAssignmentTest, RejectsInvalidInputs) {
  const CostMatrix cost{.rows = 3, .cols = 2, .values = {1, 2, 3, 4, 5, 6}};
  ExpectInvalid({.rows = 3, .cols = 0}, {}, "k == 0");
  ExpectInvalid(cost, {-1, 4}, "negative capacity");
  ExpectInvalid(cost, {4, -1}, "exceeds n = 3");
  ExpectInvalid(cost, {1, 1}, "capacities sum to 2");
  ExpectInvalid(cost, {2, 1, 0}, "columns");
  ExpectInvalid({.rows = 3, .cols = 2, .values = {1, 2, 3}}, {2, 1}, "cost size mismatch");
  ExpectInvalid({.rows = 3, .cols = 2, .values = {1, 2, 3, int64_t{1} << 41, 5, 6}}, {2, 1},
                "exceeds the limit");
}

TEST(ComputeCostMatrixTest, MatchesNaiveHammingAndRejectsBadColumns) {
  std::mt19937_64 rng(5);
  ActivationMarkers markers(/*num_tokens=*/200, /*num_neurons=*/50);
  std::bernoulli_distribution coin(0.2);
  for (int64_t t = 0; t < 200; ++t) {
    for (int64_t i = 0; i < 50; ++i) {
      if (coin(rng)) markers.Set(t, i);
    }
  }
  const std::vector<int64_t> members = {0, 3, 7, 49, 12, 12, 30};
  const std::vector<int64_t> centroids = {7, 1, 40};
  ThreadPool pool(2);
  absl::StatusOr<CostMatrix> cost = ComputeCostMatrix(markers, members, centroids, &pool);
  ASSERT_TRUE(cost.ok()) << cost.status();
  ASSERT_EQ(cost->rows, 7);
  ASSERT_EQ(cost->cols, 3);
  for (size_t r = 0; r < members.size(); ++r) {
    for (size_t j = 0; j < centroids.size(); ++j) {
      int64_t naive = 0;
      for (int64_t t = 0; t < 200; ++t) {
        naive += markers.Get(t, members[r]) != markers.Get(t, centroids[j]);
      }
      EXPECT_EQ(cost->at(r, j), naive) << r << "," << j;
    }
  }
  EXPECT_EQ(cost->at(2, 0), 0);  // neuron 7 against itself
  const std::vector<int64_t> bad = {50};
  EXPECT_EQ(ComputeCostMatrix(markers, bad, centroids, &pool).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeCostMatrix(markers, members, bad, nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cmoe::engine::carve
