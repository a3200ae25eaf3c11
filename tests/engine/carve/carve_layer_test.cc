// CarveLayer (steps 2-6 of docs/cmoe-method.md) on random and planted tiny layers.
#include "engine/carve/carve_layer.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <ostream>
#include <random>
#include <tuple>
#include <vector>

#include "common/thread_pool.h"
#include "engine/carve/activation_markers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend_factory.h"

namespace cmoe::engine::carve {
namespace {

using kernels::DType;
using kernels::WeightView;
using ::testing::HasSubstr;

// An owned layer: X (q, d), W_gate and W_up (d_h, d), all f32.
struct Layer {
  int64_t q = 0, d = 0, d_h = 0;
  std::vector<float> x, gate, up;

  WeightView View(const std::vector<float>& w) const {
    return {.data = w.data(), .dtype = DType::kF32, .rows = d_h, .cols = d};
  }
  CarveLayerInputs Inputs() const {
    return {.x = x, .num_tokens = q, .w_gate = View(gate), .w_up = View(up)};
  }
};

Layer RandomLayer(int64_t q, int64_t d, int64_t d_h, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Layer l{.q = q, .d = d, .d_h = d_h};
  l.x.resize(q * d);
  l.gate.resize(d_h * d);
  l.up.resize(d_h * d);
  for (auto* v : {&l.x, &l.gate, &l.up}) {
    for (float& f : *v) f = normal(rng);
  }
  return l;
}

ActivationMarkers MarkersOf(const Layer& l, const CarveConfig& config) {
  auto scores = ComputeScores(l.Inputs(), config.score, nullptr);
  EXPECT_TRUE(scores.ok());
  auto markers = BuildTopKMarkers(
      *scores, {.num_tokens = l.q, .num_neurons = l.d_h, .top_k = config.k_act}, nullptr);
  EXPECT_TRUE(markers.ok());
  return *std::move(markers);
}

double Silu(double z) { return z / (1.0 + std::exp(-z)); }

std::vector<double> Normalized(const float* row, int64_t n, bool normalize) {
  std::vector<double> out(row, row + n);
  double norm = 0;
  for (double v : out) norm += v * v;
  if (normalize && norm > 0) {
    for (double& v : out) v /= std::sqrt(norm);
  }
  return out;
}

double DotD(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

// ---------- config and widths ----------

TEST(ValidateCarveConfigTest, RejectsImpossibleConfigs) {
  struct Case {
    CarveConfig config;
    int64_t d_h;
    const char* message;
  };
  const Case cases[] = {
      {{.num_experts = 0, .num_shared = 0, .num_activated = 1}, 64, "zero experts"},
      {{.num_experts = 8, .num_shared = 8, .num_activated = 1}, 64, "no routed expert"},
      {{.num_experts = 8, .num_shared = 3, .num_activated = 6}, 64, "exceeds num_experts"},
      {{.num_experts = 8, .num_shared = 1, .num_activated = 0}, 64, "num_activated must be"},
      {{.num_experts = 8, .num_shared = -1, .num_activated = 1}, 64, "num_shared must be"},
      {{.num_experts = 80, .num_shared = 1, .num_activated = 1}, 64, "more experts than FFN"},
      {{.num_experts = 8, .num_shared = 1, .num_activated = 1, .k_act = 0}, 64, "k_act = 0"},
      {{.num_experts = 8, .num_shared = 1, .num_activated = 1, .k_act = 65}, 64, "k_act = 65"},
      {{.num_experts = 8, .num_shared = 1, .num_activated = 1, .cluster_iters = 0},
       64,
       "cluster_iters = 0"},
  };
  for (const Case& c : cases) {
    const absl::Status s = ValidateCarveConfig(c.config, c.d_h);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_THAT(s.message(), HasSubstr(c.message));
  }
  EXPECT_TRUE(
      ValidateCarveConfig({.num_experts = 8, .num_shared = 3, .num_activated = 5, .k_act = 8}, 8)
          .ok());
  EXPECT_TRUE(
      ValidateCarveConfig({.num_experts = 4, .num_shared = 0, .num_activated = 1}, 64).ok());
}

TEST(ExpertWidthsTest, NoDropRuleOnAwkwardWidths) {
  // d_h = 172, S1A3E16: m = 10, shared 10, 162 over 15 -> 12 x 11 then 3 x 10.
  ExpertWidthPlan p = ExpertWidths(172, 16, 1);
  EXPECT_EQ(p.shared_width, 10);
  std::vector<int64_t> want(12, 11);
  want.insert(want.end(), 3, 10);
  EXPECT_EQ(p.routed_widths, want);
  // S2A2E16: shared 20, 152 over 14 -> 12 x 11 then 2 x 10.
  p = ExpertWidths(172, 16, 2);
  EXPECT_EQ(p.shared_width, 20);
  want.assign(12, 11);
  want.insert(want.end(), 2, 10);
  EXPECT_EQ(p.routed_widths, want);
  // S3A3E8: m = 21, shared 63, 109 over 5 -> 4 x 22 then 1 x 21.
  p = ExpertWidths(172, 8, 3);
  EXPECT_EQ(p.shared_width, 63);
  EXPECT_EQ(p.routed_widths, (std::vector<int64_t>{22, 22, 22, 22, 21}));
  // Divisible: the paper's widths.
  p = ExpertWidths(384, 16, 2);
  EXPECT_EQ(p.shared_width, 48);
  EXPECT_EQ(p.routed_widths, std::vector<int64_t>(14, 24));
}

TEST(ExpertWidthsTest, PropertiesHoldForManyShapes) {
  for (int64_t d_h : {8, 17, 100, 172, 352, 384, 1000, 11008}) {
    for (int32_t n : {1, 2, 3, 7, 8, 16, 64}) {
      if (n > d_h) continue;
      for (int32_t s = 0; s < n; ++s) {
        const ExpertWidthPlan p = ExpertWidths(d_h, n, s);
        const int64_t m = d_h / n;
        ASSERT_EQ(p.shared_width, s * m);
        ASSERT_EQ(static_cast<int32_t>(p.routed_widths.size()), n - s);
        int64_t total = p.shared_width;
        for (int64_t w : p.routed_widths) total += w;
        ASSERT_EQ(total, d_h) << d_h << " " << n << " " << s;
        ASSERT_GE(p.routed_widths.back(), m);
        ASSERT_LE(p.routed_widths.front() - p.routed_widths.back(), 1);
        ASSERT_TRUE(std::is_sorted(p.routed_widths.rbegin(), p.routed_widths.rend()));
      }
    }
  }
}

// ---------- scores ----------

// The plain loops and both host backends' GEMMs (CarveLayerInputs::backend).
TEST(ComputeScoresTest, MatchesDoubleReferenceForBothVariants) {
  const Layer l = RandomLayer(37, 19, 70, 7);  // sizes off every block boundary
  ThreadPool pool(2);
  auto cpu = kernels::CreateBackend({.device = "cpu", .threads = 2});
  auto reference = kernels::CreateBackend({.device = "reference"});
  ASSERT_TRUE(cpu.ok() && reference.ok());
  for (kernels::Backend* backend :
       {static_cast<kernels::Backend*>(nullptr), cpu->get(), reference->get()})
    for (ScoreVariant v : {ScoreVariant::kNormalized, ScoreVariant::kRaw}) {
      SCOPED_TRACE(backend == nullptr ? "loops" : backend == cpu->get() ? "cpu" : "reference");
      CarveLayerInputs in = l.Inputs();
      in.backend = backend;
      auto h = ComputeScores(in, v, &pool);
      ASSERT_TRUE(h.ok()) << h.status();
      const bool norm = v == ScoreVariant::kNormalized;
      for (int64_t t = 0; t < l.q; ++t) {
        const auto x = Normalized(&l.x[t * l.d], l.d, norm);
        for (int64_t i = 0; i < l.d_h; ++i) {
          const double want = Silu(DotD(x, Normalized(&l.gate[i * l.d], l.d, norm))) *
                              DotD(x, Normalized(&l.up[i * l.d], l.d, norm));
          ASSERT_NEAR((*h)[t * l.d_h + i], want, 1e-4 * (1 + std::abs(want))) << t << " " << i;
        }
      }
    }
}

TEST(ComputeScoresTest, NormalizedIgnoresRowScalesRawDoesNot) {
  const Layer base = RandomLayer(64, 16, 48, 11);
  Layer scaled = base;
  for (int64_t t = 0; t < scaled.q; ++t) {
    for (int64_t k = 0; k < scaled.d; ++k) scaled.x[t * scaled.d + k] *= 0.1f + t;
  }
  for (int64_t k = 0; k < scaled.d; ++k) {
    scaled.gate[5 * scaled.d + k] *= 30.0f;
    scaled.up[5 * scaled.d + k] *= 30.0f;
  }
  auto a = ComputeScores(base.Inputs(), ScoreVariant::kNormalized, nullptr);
  auto b = ComputeScores(scaled.Inputs(), ScoreVariant::kNormalized, nullptr);
  auto c = ComputeScores(base.Inputs(), ScoreVariant::kRaw, nullptr);
  auto e = ComputeScores(scaled.Inputs(), ScoreVariant::kRaw, nullptr);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && e.ok());
  double max_norm_diff = 0, max_raw_diff = 0;
  for (size_t k = 0; k < a->size(); ++k) {
    max_norm_diff = std::max(max_norm_diff, std::abs(double{(*a)[k]} - (*b)[k]));
    max_raw_diff = std::max(max_raw_diff, std::abs(double{(*c)[k]} - (*e)[k]));
  }
  EXPECT_LT(max_norm_diff, 1e-5);
  EXPECT_GT(max_raw_diff, 1.0);
}

TEST(CarveLayerTest, RawScoresLetABigNeuronDominateNormalizedDoNot) {
  Layer l = RandomLayer(256, 16, 64, 3);
  for (int64_t k = 0; k < l.d; ++k) {
    l.gate[5 * l.d + k] *= 30.0f;
    l.up[5 * l.d + k] = l.gate[5 * l.d + k];  // H_5 = silu(z) z: large whenever z > 0
  }
  CarveConfig config{.num_experts = 8, .num_shared = 1, .num_activated = 1, .k_act = 4};
  auto norm = CarveLayer(l.Inputs(), config, nullptr);
  config.score = ScoreVariant::kRaw;
  auto raw = CarveLayer(l.Inputs(), config, nullptr);
  ASSERT_TRUE(norm.ok() && raw.ok());
  EXPECT_GT(raw->activation_rates[5], 0.3);
  EXPECT_LT(norm->activation_rates[5], 0.2);
  EXPECT_TRUE(std::binary_search(raw->shared_neurons.begin(), raw->shared_neurons.end(), 5));
  EXPECT_NE(raw->activation_rates, norm->activation_rates);
}

// ---------- the carve on random layers ----------

struct Shape {
  int64_t d_h;
  CarveConfig config;
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "d_h=" << s.d_h << " S" << s.config.num_shared << "A" << s.config.num_activated << "E"
      << s.config.num_experts << " k_act=" << s.config.k_act << " iters=" << s.config.cluster_iters
      << (s.config.score == ScoreVariant::kRaw ? " raw" : " normalized");
}

class CarveLayerShapeTest : public ::testing::TestWithParam<Shape> {};

void ExpectValidCarve(const LayerCarve& carve, int64_t d_h, const CarveConfig& config) {
  const ExpertWidthPlan plan = ExpertWidths(d_h, config.num_experts, config.num_shared);
  std::vector<int> seen(d_h, 0);
  ASSERT_EQ(static_cast<int64_t>(carve.shared_neurons.size()), plan.shared_width);
  ASSERT_TRUE(std::is_sorted(carve.shared_neurons.begin(), carve.shared_neurons.end()));
  for (int64_t i : carve.shared_neurons) ++seen.at(i);
  ASSERT_EQ(carve.expert_neurons.size(), plan.routed_widths.size());
  ASSERT_EQ(carve.representatives.size(), plan.routed_widths.size());
  for (size_t j = 0; j < carve.expert_neurons.size(); ++j) {
    const auto& e = carve.expert_neurons[j];
    EXPECT_EQ(static_cast<int64_t>(e.size()), plan.routed_widths[j]) << "expert " << j;
    EXPECT_TRUE(std::is_sorted(e.begin(), e.end()));
    EXPECT_TRUE(std::binary_search(e.begin(), e.end(), carve.representatives[j])) << j;
    for (int64_t i : e) ++seen.at(i);
  }
  EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), d_h) << "every neuron exactly once";
}

TEST_P(CarveLayerShapeTest, PartitionsWidthsSharedAndRepresentatives) {
  const Shape& shape = GetParam();
  const Layer l = RandomLayer(300, 24, shape.d_h, 100 + shape.d_h);
  ThreadPool pool(2);
  auto carve = CarveLayer(l.Inputs(), shape.config, &pool);
  ASSERT_TRUE(carve.ok()) << carve.status();
  ExpectValidCarve(*carve, shape.d_h, shape.config);
  EXPECT_GE(carve->cluster_iters_run, 1);
  EXPECT_LE(carve->cluster_iters_run, shape.config.cluster_iters);

  // Shared = the highest μ; seeds = the next highest, in decreasing μ.
  const auto& mu = carve->activation_rates;
  ASSERT_EQ(static_cast<int64_t>(mu.size()), shape.d_h);
  double min_shared = 2, max_rest = -1;
  std::vector<bool> shared(shape.d_h, false);
  for (int64_t i : carve->shared_neurons) shared[i] = true;
  for (int64_t i = 0; i < shape.d_h; ++i) {
    if (shared[i]) min_shared = std::min(min_shared, mu[i]);
    if (!shared[i]) max_rest = std::max(max_rest, mu[i]);
  }
  if (!carve->shared_neurons.empty()) {
    EXPECT_GE(min_shared, max_rest);
  }
  EXPECT_EQ(mu[carve->seeds.front()], max_rest);
  double sum = 0;
  for (double v : mu) sum += v;
  EXPECT_NEAR(sum, shape.config.k_act, 1e-9);  // each token marks exactly k_act neurons
}

TEST_P(CarveLayerShapeTest, CostAndRepresentativesMatchDefinitions) {
  const Shape& shape = GetParam();
  const Layer l = RandomLayer(300, 24, shape.d_h, 100 + shape.d_h);
  auto carve = CarveLayer(l.Inputs(), shape.config, nullptr);
  ASSERT_TRUE(carve.ok()) << carve.status();
  const ActivationMarkers markers = MarkersOf(l, shape.config);
  int64_t cost = 0;
  for (size_t j = 0; j < carve->expert_neurons.size(); ++j) {
    const auto& members = carve->expert_neurons[j];
    for (int64_t i : members) cost += L1Distance(markers, i, markers.Column(carve->seeds[j]));
    const std::vector<float> centroid = MeanColumn(markers, members);
    const double rep = L1Distance(markers, carve->representatives[j], centroid);
    for (int64_t i : members) EXPECT_LE(rep, L1Distance(markers, i, centroid) + 1e-3);
  }
  // With one round the final clusters are the first (optimal) assignment.
  if (shape.config.cluster_iters == 1) {
    EXPECT_EQ(cost, carve->assignment_cost);
  }
  EXPECT_LE(carve->assignment_cost, cost);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, CarveLayerShapeTest,
    ::testing::Values(
        Shape{172, {.num_experts = 16, .num_shared = 1, .num_activated = 3}},
        Shape{172, {.num_experts = 16, .num_shared = 2, .num_activated = 2}},
        Shape{172, {.num_experts = 8, .num_shared = 3, .num_activated = 3}},
        Shape{172, {.num_experts = 8, .num_shared = 3, .num_activated = 3, .cluster_iters = 4}},
        Shape{384, {.num_experts = 16, .num_shared = 2, .num_activated = 2}},
        Shape{352, {.num_experts = 16, .num_shared = 1, .num_activated = 3, .cluster_iters = 3}},
        Shape{128, {.num_experts = 4, .num_shared = 1, .num_activated = 1, .k_act = 20}},
        Shape{96,
              {.num_experts = 6,
               .num_shared = 0,
               .num_activated = 2,
               .score = ScoreVariant::kRaw,
               .cluster_iters = 2}}));

// Noisy copies of 15 latent token patterns (neuron i follows pattern i % 15 with 25 % of its
// bits flipped), so the highest-μ seeds are poor centroids and round 2 moves neurons.
ActivationMarkers NoisyPatternMarkers(int64_t q, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::bernoulli_distribution dense(0.3), flip(0.25);
  std::vector<std::vector<bool>> patterns(15, std::vector<bool>(q));
  for (auto& p : patterns) {
    for (int64_t t = 0; t < q; ++t) p[t] = dense(rng);
  }
  ActivationMarkers markers(q, n);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t t = 0; t < q; ++t) {
      if (patterns[i % 15][t] != flip(rng)) markers.Set(t, i);
    }
  }
  return markers;
}

// Round 2 reassigns against the round-1 centroids (real-valued L1, clusters of 11 and 10
// neurons): the result must be optimal for those costs, so no swap of two neurons between two
// clusters may lower the total.
struct RoundCase {
  int64_t d_h;
  int32_t experts, shared;
  uint64_t seed;
  bool must_move = false;
};

void PrintTo(const RoundCase& c, std::ostream* os) {
  *os << "d_h=" << c.d_h << " S" << c.shared << "E" << c.experts << " seed=" << c.seed;
}

class SecondRoundTest : public ::testing::TestWithParam<RoundCase> {};

TEST_P(SecondRoundTest, IsOptimalAgainstFirstRoundCentroids) {
  const RoundCase& c = GetParam();
  const ActivationMarkers markers = NoisyPatternMarkers(256, c.d_h, c.seed);
  CarveConfig config{.num_experts = c.experts, .num_shared = c.shared, .num_activated = 1};
  ThreadPool pool(2);
  auto first = CarveFromMarkers(markers, config, &pool);
  config.cluster_iters = 2;
  auto second = CarveFromMarkers(markers, config, &pool);
  ASSERT_TRUE(first.ok() && second.ok());
  ExpectValidCarve(*second, c.d_h, config);
  EXPECT_EQ(second->assignment_cost, first->assignment_cost);
  if (c.must_move) {  // these instances exercise a real reassignment
    ASSERT_EQ(second->cluster_iters_run, 2);
    ASSERT_NE(second->expert_neurons, first->expert_neurons);
  }
  const size_t k = first->expert_neurons.size();
  std::vector<std::vector<float>> centroids;
  for (const auto& members : first->expert_neurons) {
    centroids.push_back(MeanColumn(markers, members));
  }
  auto cost = [&](int64_t i, size_t j) { return L1Distance(markers, i, centroids[j]); };
  double total_first = 0, total_second = 0;
  for (size_t j = 0; j < k; ++j) {
    for (int64_t i : first->expert_neurons[j]) total_first += cost(i, j);
    for (int64_t i : second->expert_neurons[j]) total_second += cost(i, j);
  }
  EXPECT_LE(total_second, total_first + 1e-3);
  for (size_t a = 0; a < k; ++a) {
    for (size_t b = a + 1; b < k; ++b) {
      for (int64_t i : second->expert_neurons[a]) {
        for (int64_t j : second->expert_neurons[b]) {
          ASSERT_LE(cost(i, a) + cost(j, b), cost(i, b) + cost(j, a) + 1e-3) << i << " " << j;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Rounds, SecondRoundTest,
                         ::testing::Values(RoundCase{172, 16, 1, 4, true},
                                           RoundCase{172, 16, 1, 5, true}, RoundCase{22, 4, 0, 1},
                                           RoundCase{22, 4, 0, 2}, RoundCase{22, 4, 0, 3},
                                           RoundCase{60, 8, 1, 1}, RoundCase{60, 8, 1, 2},
                                           RoundCase{60, 8, 1, 3}, RoundCase{33, 4, 1, 1},
                                           RoundCase{33, 4, 1, 2}));

// Minimum of Σ_i cost(i, j(i)) over every assignment with the given cluster sizes.
double BruteForceMin(int64_t n, std::vector<int64_t> remaining,
                     const std::function<double(int64_t, size_t)>& cost) {
  double best = 1e300;
  std::function<void(int64_t, double)> recurse = [&](int64_t i, double sum) {
    if (i == n) {
      best = std::min(best, sum);
      return;
    }
    for (size_t j = 0; j < remaining.size(); ++j) {
      if (remaining[j] == 0) continue;
      --remaining[j];
      recurse(i + 1, sum + cost(i, j));
      ++remaining[j];
    }
  };
  recurse(0, 0.0);
  return best;
}

// Tiny random instances (7 neurons in clusters of 3, 2, 2; many near-ties): the round-2 clusters
// reach the brute-force optimum of the real-valued centroid costs, which needs the exact
// per-cluster scaling of the integer costs.
TEST(CarveFromMarkersTest, SecondRoundMatchesBruteForceOnTinyInstances) {
  std::mt19937_64 rng(17);
  std::bernoulli_distribution bit(0.45);
  const CarveConfig one{.num_experts = 3, .num_shared = 0, .num_activated = 1, .k_act = 1};
  CarveConfig two = one;
  two.cluster_iters = 2;
  for (int trial = 0; trial < 300; ++trial) {
    ActivationMarkers markers(9, 7);
    for (int64_t t = 0; t < 9; ++t) {
      for (int64_t i = 0; i < 7; ++i) {
        if (bit(rng)) markers.Set(t, i);
      }
    }
    auto first = CarveFromMarkers(markers, one, nullptr);
    auto second = CarveFromMarkers(markers, two, nullptr);
    ASSERT_TRUE(first.ok() && second.ok());
    std::vector<std::vector<float>> centroids;
    for (const auto& members : first->expert_neurons) {
      centroids.push_back(MeanColumn(markers, members));
    }
    auto cost = [&](int64_t i, size_t j) { return L1Distance(markers, i, centroids[j]); };
    double total = 0;
    for (size_t j = 0; j < centroids.size(); ++j) {
      for (int64_t i : second->expert_neurons[j]) total += cost(i, j);
    }
    ASSERT_NEAR(total, BruteForceMin(7, {3, 2, 2}, cost), 1e-4) << "trial " << trial;
  }
}

TEST(CarveLayerTest, DeterministicAcrossThreadCounts) {
  const Layer l = RandomLayer(333, 20, 172, 5);
  const CarveConfig config{
      .num_experts = 16, .num_shared = 2, .num_activated = 2, .cluster_iters = 3};
  ThreadPool one(1), two(2);
  auto a = CarveLayer(l.Inputs(), config, nullptr);
  auto b = CarveLayer(l.Inputs(), config, &one);
  auto c = CarveLayer(l.Inputs(), config, &two);
  auto d = CarveLayer(l.Inputs(), config, &two);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok() && d.ok());
  for (const LayerCarve* x : {&*b, &*c, &*d}) {
    EXPECT_EQ(x->shared_neurons, a->shared_neurons);
    EXPECT_EQ(x->expert_neurons, a->expert_neurons);
    EXPECT_EQ(x->seeds, a->seeds);
    EXPECT_EQ(x->representatives, a->representatives);
    EXPECT_EQ(x->activation_rates, a->activation_rates);
    EXPECT_EQ(x->assignment_cost, a->assignment_cost);
    EXPECT_EQ(x->cluster_iters_run, a->cluster_iters_run);
  }
}

// ---------- planted groups ----------

// d_h = d = 40 neurons: a shared group of 8 firing on every token and 4 routed groups of 8
// firing on disjoint token sets (40 tokens each). In group g the leader fires on all its tokens,
// the 7 others on a rotating 4 of 7 (so the leaders are the seeds, one per group). Scores come
// from X = C Qᵀ and weight rows Q e_π(i) (Q a random rotation, π a random neuron permutation):
// H[t, i] = silu(C[t, π(i)]) C[t, π(i)], a monotone function of the planted strength.
struct Planted {
  Layer layer;
  std::vector<std::vector<int64_t>> groups;  // [0] shared, [1..4] routed, sorted indices
  std::vector<int64_t> leaders;              // leader of routed group g-1
};

std::vector<float> RandomRotation(int64_t n, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> q(n * n);
  for (double& v : q) v = normal(rng);
  for (int64_t r = 0; r < n; ++r) {  // Gram-Schmidt on rows
    for (int64_t p = 0; p < r; ++p) {
      double dot = 0;
      for (int64_t k = 0; k < n; ++k) dot += q[r * n + k] * q[p * n + k];
      for (int64_t k = 0; k < n; ++k) q[r * n + k] -= dot * q[p * n + k];
    }
    double norm = 0;
    for (int64_t k = 0; k < n; ++k) norm += q[r * n + k] * q[r * n + k];
    for (int64_t k = 0; k < n; ++k) q[r * n + k] /= std::sqrt(norm);
  }
  return std::vector<float>(q.begin(), q.end());
}

// Planted strengths C (q, 40): slot s = 8 * group + member.
std::vector<float> PlantedStrengths(int64_t tokens_per_group) {
  const int64_t q = 4 * tokens_per_group;
  std::vector<float> c(q * 40, 0.0f);
  for (int64_t t = 0; t < q; ++t) {
    const int64_t g = t / tokens_per_group + 1;
    for (int64_t s = 0; s < 8; ++s) c[t * 40 + s] = 3.0f;  // shared
    c[t * 40 + 8 * g] = 2.0f;                              // leader
    for (int64_t k = 0; k < 4; ++k) c[t * 40 + 8 * g + 1 + (t + k) % 7] = 1.0f;
  }
  return c;
}

Planted MakePlanted(uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t n = 40, per_group = 40;
  std::vector<int64_t> perm(n);  // slot -> neuron index
  for (int64_t i = 0; i < n; ++i) perm[i] = i;
  std::shuffle(perm.begin(), perm.end(), rng);
  const std::vector<float> rot = RandomRotation(n, rng);  // rows = basis vectors
  const std::vector<float> c = PlantedStrengths(per_group);
  Planted p{.layer = {.q = 4 * per_group, .d = n, .d_h = n}};
  Layer& l = p.layer;
  l.x.assign(l.q * n, 0.0f);
  for (int64_t t = 0; t < l.q; ++t) {
    for (int64_t s = 0; s < n; ++s) {
      for (int64_t k = 0; k < n; ++k) l.x[t * n + k] += c[t * n + s] * rot[s * n + k];
    }
  }
  l.gate.assign(n * n, 0.0f);
  for (int64_t s = 0; s < n; ++s) {
    std::copy_n(&rot[s * n], n, &l.gate[perm[s] * n]);
  }
  l.up = l.gate;
  p.groups.resize(5);
  for (int64_t s = 0; s < n; ++s) p.groups[s / 8].push_back(perm[s]);
  for (auto& g : p.groups) std::sort(g.begin(), g.end());
  for (int64_t g = 1; g <= 4; ++g) p.leaders.push_back(perm[8 * g]);
  return p;
}

TEST(CarveLayerTest, RecoversPlantedGroups) {
  for (uint64_t seed : {1, 2, 3}) {
    for (int32_t iters : {1, 3}) {
      const Planted p = MakePlanted(seed);
      const CarveConfig config{.num_experts = 5,
                               .num_shared = 1,
                               .num_activated = 1,
                               .k_act = 13,
                               .cluster_iters = iters};
      ThreadPool pool(2);
      auto carve = CarveLayer(p.layer.Inputs(), config, &pool);
      ASSERT_TRUE(carve.ok()) << carve.status();
      EXPECT_EQ(carve->shared_neurons, p.groups[0]);
      std::vector<std::vector<int64_t>> got = carve->expert_neurons;
      std::vector<std::vector<int64_t>> want(p.groups.begin() + 1, p.groups.end());
      std::sort(got.begin(), got.end());
      std::sort(want.begin(), want.end());
      EXPECT_EQ(got, want) << "seed " << seed << " iters " << iters;
      std::vector<int64_t> reps = carve->representatives, leaders = p.leaders;
      std::sort(reps.begin(), reps.end());
      std::sort(leaders.begin(), leaders.end());
      EXPECT_EQ(reps, leaders);
      // Leader (40 tokens) vs each other member (4/7 of 40, rotating): 40 - |S| per member.
      EXPECT_GT(carve->assignment_cost, 0);
    }
  }
}

// ---------- errors and the router ----------

TEST(CarveLayerTest, RejectsBadShapes) {
  Layer l = RandomLayer(10, 8, 32, 1);
  const CarveConfig config{.num_experts = 4, .num_shared = 1, .num_activated = 1};
  CarveLayerInputs in = l.Inputs();
  in.x = in.x.subspan(1);
  EXPECT_EQ(CarveLayer(in, config, nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  in = l.Inputs();
  in.w_up.rows = 31;
  EXPECT_THAT(CarveLayer(in, config, nullptr).status().message(), HasSubstr("W_up"));
  in = l.Inputs();
  EXPECT_THAT(CarveLayer(in, {.num_experts = 4, .num_shared = 4, .num_activated = 1}, nullptr)
                  .status()
                  .message(),
              HasSubstr("no routed expert"));
}

TEST(RouterRowsTest, ReferenceRowsAreNormalizedRepresentativeRows) {
  const Layer l = RandomLayer(1, 12, 20, 9);
  const std::vector<int64_t> reps = {7, 0, 19};
  auto ref = RouterRows(l.View(l.gate), l.View(l.up), reps);
  auto paper = RouterRows(l.View(l.gate), l.View(l.up), reps, RouterVariant::kPaper);
  ASSERT_TRUE(ref.ok() && paper.ok());
  ASSERT_EQ(ref->num_experts, 3);
  ASSERT_EQ(ref->model_width, 12);
  for (size_t j = 0; j < reps.size(); ++j) {
    for (const auto& [w, got, raw] :
         {std::tuple(&l.gate, &ref->gate, &paper->gate), std::tuple(&l.up, &ref->up, &paper->up)}) {
      const std::vector<double> want = Normalized(&(*w)[reps[j] * l.d], l.d, true);
      double norm = 0;
      for (int64_t k = 0; k < l.d; ++k) {
        const float g = (*got)[j * l.d + k];
        norm += double{g} * g;
        EXPECT_NEAR(g, want[k], 1e-6);
        EXPECT_EQ((*raw)[j * l.d + k], (*w)[reps[j] * l.d + k]);
      }
      EXPECT_NEAR(norm, 1.0, 1e-5);
    }
  }
  const std::vector<int64_t> bad = {20};
  EXPECT_THAT(RouterRows(l.View(l.gate), l.View(l.up), bad).status().message(),
              HasSubstr("outside"));
}

}  // namespace
}  // namespace cmoe::engine::carve
