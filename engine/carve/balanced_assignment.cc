#include "engine/carve/balanced_assignment.h"

#include <bit>
#include <cstdlib>
#include <utility>

#include <lemon/network_simplex.h>
#include <lemon/static_graph.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace cmoe::engine::carve {
namespace {

using Graph = lemon::StaticDigraph;
using Simplex = lemon::NetworkSimplex<Graph, int64_t, int64_t>;

absl::Status InvalidArgument(const auto&... parts) {
  return absl::InvalidArgumentError(absl::StrCat("SolveBalancedAssignment: ", parts...));
}

absl::Status ValidateCapacities(int64_t n, std::span<const int64_t> capacities) {
  if (capacities.empty()) return InvalidArgument("no clusters (k == 0)");
  int64_t sum = 0;
  for (size_t j = 0; j < capacities.size(); ++j) {
    if (capacities[j] < 0) {
      return InvalidArgument("negative capacity ", capacities[j], " for cluster ", j);
    }
    if (capacities[j] > n) return InvalidArgument("capacity of cluster ", j, " exceeds n = ", n);
    sum += capacities[j];
  }
  if (sum != n)
    return InvalidArgument("capacities sum to ", sum, " but there are n = ", n, " items");
  return absl::OkStatus();
}

absl::Status ValidateCost(const CostMatrix& cost, std::span<const int64_t> capacities) {
  if (cost.rows < 0 || cost.cols < 0) {
    return InvalidArgument("negative cost shape (", cost.rows, ", ", cost.cols, ")");
  }
  if (cost.cols != static_cast<int64_t>(capacities.size())) {
    return InvalidArgument("cost has ", cost.cols, " columns but there are ", capacities.size(),
                           " capacities");
  }
  if (cost.rows * cost.cols + cost.rows + cost.cols > (int64_t{1} << 30)) {
    return InvalidArgument("problem too large: ", cost.rows, " x ", cost.cols, " arcs");
  }
  if (static_cast<int64_t>(cost.values.size()) != cost.rows * cost.cols) {
    return InvalidArgument("cost size mismatch: ", cost.values.size(), " values for ", cost.rows,
                           " x ", cost.cols);
  }
  for (size_t e = 0; e < cost.values.size(); ++e) {
    if (std::llabs(cost.values[e]) > kMaxAbsAssignmentCost) {
      return InvalidArgument("cost[", e / cost.cols, ", ", e % cost.cols, "] = ", cost.values[e],
                             " exceeds the limit 2^40 in magnitude");
    }
  }
  return absl::OkStatus();
}

Simplex::PivotRule ToLemon(PivotRule rule) {
  switch (rule) {
    case PivotRule::kFirstEligible:
      return Simplex::FIRST_ELIGIBLE;
    case PivotRule::kBestEligible:
      return Simplex::BEST_ELIGIBLE;
    case PivotRule::kCandidateList:
      return Simplex::CANDIDATE_LIST;
    case PivotRule::kAlteringList:
      return Simplex::ALTERING_LIST;
    case PivotRule::kBlockSearch:
      break;
  }
  return Simplex::BLOCK_SEARCH;
}

// Nodes 0..n-1 are items, n..n+k-1 clusters; arc i*k + j is item i -> cluster j (StaticDigraph
// numbers arcs in the order given, which is sorted by source as it requires).
void BuildTransportGraph(int n, int k, Graph& graph) {
  std::vector<std::pair<int, int>> arcs;
  arcs.reserve(static_cast<size_t>(n) * k);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < k; ++j) arcs.emplace_back(i, n + j);
  }
  graph.build(n + k, arcs.begin(), arcs.end());
}

// Reads the assignment back from an optimal integral flow.
BalancedAssignment ExtractAssignment(const CostMatrix& cost, const Simplex& simplex) {
  const int64_t n = cost.rows;
  const int64_t k = cost.cols;
  BalancedAssignment result{.cluster_of = std::vector<int32_t>(n, -1),
                            .cluster_sizes = std::vector<int64_t>(k, 0)};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      if (simplex.flow(Graph::arc(static_cast<int>(i * k + j))) <= 0) continue;
      result.cluster_of[i] = static_cast<int32_t>(j);
      ++result.cluster_sizes[j];
      result.total_cost += cost.at(i, j);
      break;
    }
  }
  return result;
}

}  // namespace

absl::StatusOr<BalancedAssignment> SolveBalancedAssignment(
    const CostMatrix& cost, std::span<const int64_t> capacities,
    const BalancedAssignmentOptions& options) {
  if (absl::Status s = ValidateCapacities(cost.rows, capacities); !s.ok()) return s;
  if (absl::Status s = ValidateCost(cost, capacities); !s.ok()) return s;
  const int n = static_cast<int>(cost.rows);
  const int k = static_cast<int>(cost.cols);
  if (n == 0) return BalancedAssignment{.cluster_sizes = std::vector<int64_t>(k, 0)};

  Graph graph;
  BuildTransportGraph(n, k, graph);
  Graph::ArcMap<int64_t> arc_cost(graph);
  for (int a = 0; a < n * k; ++a) arc_cost[Graph::arc(a)] = cost.values[a];
  Graph::NodeMap<int64_t> supply(graph);
  for (int i = 0; i < n; ++i) supply[Graph::node(i)] = 1;
  for (int j = 0; j < k; ++j) supply[Graph::node(n + j)] = -capacities[j];

  Simplex simplex(graph);
  simplex.costMap(arc_cost).supplyMap(supply);
  if (Simplex::ProblemType type = simplex.run(ToLemon(options.pivot)); type != Simplex::OPTIMAL) {
    return absl::InternalError(
        absl::StrCat("SolveBalancedAssignment: network simplex returned problem type ", type,
                     " on a validated balanced transportation problem"));
  }
  return ExtractAssignment(cost, simplex);
}

absl::StatusOr<CostMatrix> ComputeCostMatrix(const ActivationMarkers& markers,
                                             std::span<const int64_t> member_columns,
                                             std::span<const int64_t> centroid_columns,
                                             ThreadPool* pool) {
  for (auto columns : {member_columns, centroid_columns}) {
    for (int64_t c : columns) {
      if (c < 0 || c >= markers.num_neurons()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ComputeCostMatrix: column ", c, " is outside [0, ", markers.num_neurons(), ")"));
      }
    }
  }
  const int64_t k = static_cast<int64_t>(centroid_columns.size());
  CostMatrix cost{.rows = static_cast<int64_t>(member_columns.size()),
                  .cols = k,
                  .values = std::vector<int64_t>(member_columns.size() * k)};
  // Each member column is read once and compared against all centroids while in L1 cache.
  auto body = [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const std::span<const uint64_t> member = markers.Column(member_columns[r]);
      for (int64_t j = 0; j < k; ++j) {
        cost.values[r * k + j] = HammingDistance(member, markers.Column(centroid_columns[j]));
      }
    }
  };
  if (pool != nullptr) {
    pool->ParallelFor(cost.rows, /*grain=*/16, body);
  } else {
    body(0, cost.rows);
  }
  return cost;
}

}  // namespace cmoe::engine::carve
