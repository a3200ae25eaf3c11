// Exact balanced assignment (step 5 of the CMoE carving, docs/cmoe-method.md).
//
// Given an n x k cost matrix D and per-cluster capacities m_j with Σ m_j = n, find
// j(i) minimising Σ_i D[i, j(i)] subject to |{i : j(i) = j}| = m_j for every j. This is a
// transportation problem: n supply nodes of 1, k demand nodes of m_j, n*k arcs. It is solved
// exactly with LEMON's network simplex (the same optimum as the reference's n x n linear
// assignment with each centroid repeated m_j times, at a fraction of the time and memory).
// Costs are integers with many ties: any optimal assignment may be returned; the total cost is
// the invariant.
//
//   CMOE_ASSIGN_OR_RETURN(CostMatrix cost,
//                         ComputeCostMatrix(markers, routed_neurons, seed_neurons, &pool));
//   std::vector<int64_t> capacities(seed_neurons.size(), m);
//   CMOE_ASSIGN_OR_RETURN(BalancedAssignment a, SolveBalancedAssignment(cost, capacities));
//   // a.cluster_of[r] is the cluster of routed_neurons[r].
#ifndef CMOE_ENGINE_CARVE_BALANCED_ASSIGNMENT_H_
#define CMOE_ENGINE_CARVE_BALANCED_ASSIGNMENT_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/carve/activation_markers.h"

namespace cmoe::engine::carve {

// A dense (rows, cols) int64 matrix, row-major: values[r * cols + c]. Owns its values.
struct CostMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<int64_t> values;

  int64_t at(int64_t r, int64_t c) const { return values[r * cols + c]; }
};

// Largest |cost| accepted: keeps every sum the network simplex forms (potentials, the total
// over n items) far from int64 overflow for any n < 2^20.
inline constexpr int64_t kMaxAbsAssignmentCost = int64_t{1} << 40;

enum class PivotRule { kBlockSearch, kFirstEligible, kBestEligible, kCandidateList, kAlteringList };

struct BalancedAssignmentOptions {
  // LEMON's pivot rule; block search is the fastest on carving-shaped problems (measured in
  // tests/bench/carve_benchmark.cc). Any rule gives the same optimal cost.
  PivotRule pivot = PivotRule::kBlockSearch;
};

struct BalancedAssignment {
  std::vector<int32_t> cluster_of;     // (n): the cluster of item i, in [0, k)
  std::vector<int64_t> cluster_sizes;  // (k): equals the capacities
  int64_t total_cost = 0;              // Σ_i cost[i, cluster_of[i]], minimal
};

// Solves the balanced assignment exactly. `cost`: (n items, k clusters); `capacities`: (k).
// Rules (InvalidArgument otherwise, the message names the problem):
//   k = cost.cols = capacities.size() >= 1; cost.values.size() == n * k; every capacity >= 0;
//   Σ capacities == n; |cost| <= kMaxAbsAssignmentCost. n == 0 is allowed (empty result, cost 0)
//   and zero-capacity clusters are allowed (they get no item).
absl::StatusOr<BalancedAssignment> SolveBalancedAssignment(
    const CostMatrix& cost, std::span<const int64_t> capacities,
    const BalancedAssignmentOptions& options = {});

// D[r, j] = Hamming(A[:, member_columns[r]], A[:, centroid_columns[j]]) = the L1 distance of
// binary columns. Result (member_columns.size(), centroid_columns.size()). Parallel over members
// on `pool` (nullptr: calling thread only). InvalidArgument if a column index is out of range.
absl::StatusOr<CostMatrix> ComputeCostMatrix(const ActivationMarkers& markers,
                                             std::span<const int64_t> member_columns,
                                             std::span<const int64_t> centroid_columns,
                                             ThreadPool* pool);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_BALANCED_ASSIGNMENT_H_
