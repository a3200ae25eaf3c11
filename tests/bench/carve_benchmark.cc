// Benchmarks of the carving's balanced assignment (Google Benchmark) at the Llama-2-7B shape
// after the shared experts: n = 9,632 routed neurons, 14 clusters of 688, q = 16,384 tokens,
// K_a = 10 markers per token (over d_h = 11,008 neurons; the 1,376 shared ones are dropped).
//
//   build/bin/carve_benchmark --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Target (docs/performance.md): cost matrix + solve < 0.5 s on a 2-core CPU. Markers are
// synthetic and seeded: "clustered" draws each token's marks mostly from one of 14 latent neuron
// groups with a skewed popularity inside each group (plus uniform noise); "uniform" draws them
// uniformly. Every benchmark uses a 2-thread pool.
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <unordered_set>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/thread_pool.h"
#include "engine/carve/activation_markers.h"
#include "engine/carve/balanced_assignment.h"

namespace cmoe::engine::carve {
namespace {

constexpr int64_t kTokens = 16384;
constexpr int64_t kHidden = 11008;
constexpr int64_t kRouted = 9632;
constexpr int64_t kClusters = 14;
constexpr int64_t kTopK = 10;
constexpr int kThreads = 2;

// Picks one neuron of a token: 80 % from the token's latent group, skewed towards the group's
// first neurons (u^3), 20 % uniformly from every neuron.
int64_t DrawNeuron(int64_t group, std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const int64_t group_size = kHidden / kClusters;
  if (u(rng) < 0.2) return std::min<int64_t>(kHidden - 1, static_cast<int64_t>(u(rng) * kHidden));
  const double x = u(rng);
  return group * group_size + static_cast<int64_t>(x * x * x * group_size);
}

ActivationMarkers SyntheticMarkers(bool clustered) {
  std::mt19937_64 rng(clustered ? 7 : 8);
  std::uniform_int_distribution<int64_t> any(0, kHidden - 1), group(0, kClusters - 1);
  ActivationMarkers markers(kTokens, kHidden);
  std::unordered_set<int64_t> chosen;
  for (int64_t t = 0; t < kTokens; ++t) {
    const int64_t g = group(rng);
    chosen.clear();
    while (static_cast<int64_t>(chosen.size()) < kTopK) {
      chosen.insert(clustered ? DrawNeuron(g, rng) : any(rng));
    }
    for (int64_t i : chosen) markers.Set(t, i);
  }
  return markers;
}

// The carving's inputs: routed neurons = all but the kHidden - kRouted most active; seeds = the
// kClusters most active routed neurons.
struct Problem {
  ActivationMarkers markers;
  std::vector<int64_t> routed;
  std::vector<int64_t> seeds;
  std::vector<int64_t> capacities = std::vector<int64_t>(kClusters, kRouted / kClusters);
};

const Problem& GetProblem(bool clustered) {
  static std::map<bool, std::unique_ptr<Problem>> cache;
  std::unique_ptr<Problem>& p = cache[clustered];
  if (p != nullptr) return *p;
  p = std::make_unique<Problem>(Problem{.markers = SyntheticMarkers(clustered)});
  std::vector<int64_t> order(kHidden);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return p->markers.ActivationCount(a) > p->markers.ActivationCount(b);
  });
  p->routed.assign(order.begin() + (kHidden - kRouted), order.end());
  p->seeds.assign(p->routed.begin(), p->routed.begin() + kClusters);
  return *p;
}

ThreadPool& Pool() {
  static ThreadPool pool(kThreads);
  return pool;
}

void BM_CostMatrix(benchmark::State& state) {
  const Problem& p = GetProblem(state.range(0) != 0);
  for (auto _ : state) {
    CostMatrix cost = ComputeCostMatrix(p.markers, p.routed, p.seeds, &Pool()).value();
    benchmark::DoNotOptimize(cost.values.data());
  }
}

void BM_Solve(benchmark::State& state) {
  const Problem& p = GetProblem(state.range(0) != 0);
  const CostMatrix cost = ComputeCostMatrix(p.markers, p.routed, p.seeds, &Pool()).value();
  const auto rule = static_cast<PivotRule>(state.range(1));
  int64_t total = 0;
  for (auto _ : state) {
    total = SolveBalancedAssignment(cost, p.capacities, {.pivot = rule}).value().total_cost;
    benchmark::DoNotOptimize(total);
  }
  state.counters["total_cost"] = static_cast<double>(total);
}

void BM_CostMatrixAndSolve(benchmark::State& state) {
  const Problem& p = GetProblem(state.range(0) != 0);
  for (auto _ : state) {
    CostMatrix cost = ComputeCostMatrix(p.markers, p.routed, p.seeds, &Pool()).value();
    benchmark::DoNotOptimize(SolveBalancedAssignment(cost, p.capacities).value().total_cost);
  }
}

// Arg 0: 1 = clustered, 0 = uniform. BM_Solve arg 1: PivotRule (0 = block search, default);
// best eligible (2) is left out: about 7 s per solve at this shape.
BENCHMARK(BM_CostMatrix)->ArgName("clustered")->Arg(1)->Arg(0)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Solve)
    ->ArgNames({"clustered", "pivot"})
    ->ArgsProduct({{1, 0}, {0, 1, 3, 4}})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_CostMatrixAndSolve)
    ->ArgName("clustered")
    ->Arg(1)
    ->Arg(0)
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace cmoe::engine::carve

BENCHMARK_MAIN();
