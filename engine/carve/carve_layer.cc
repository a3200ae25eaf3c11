#include "engine/carve/carve_layer.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <numeric>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/carve/balanced_assignment.h"

namespace cmoe::engine::carve {
namespace {

using kernels::WeightView;

constexpr int64_t kTokenBlock = 16;
constexpr int64_t kNeuronBlock = 64;

void ParallelRange(ThreadPool* pool, int64_t n, int64_t grain,
                   const std::function<void(int64_t, int64_t)>& body) {
  if (pool == nullptr) {
    body(0, n);
  } else {
    pool->ParallelFor(n, grain, body);
  }
}

// (w.rows, w.cols) f32 copy of `w`.
std::vector<float> WidenMatrix(const WeightView& w) {
  std::vector<float> out(static_cast<size_t>(w.elements()));
  WidenToFloat(w, 0, w.elements(), out.data());
  return out;
}

// Scales each row of the (rows, cols) matrix `m` to unit L2 norm; zero rows stay zero.
void NormalizeRows(std::vector<float>& m, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* row = m.data() + r * cols;
    double sum = 0;
    for (int64_t c = 0; c < cols; ++c) sum += static_cast<double>(row[c]) * row[c];
    if (sum == 0) continue;
    const float inv = static_cast<float>(1.0 / std::sqrt(sum));
    for (int64_t c = 0; c < cols; ++c) row[c] *= inv;
  }
}

// Eight independent partial sums so the compiler can vectorise; a fixed summation order.
float Dot(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += a[k + l] * b[k + l];
  }
  for (; k < n; ++k) acc[k & 7] += a[k] * b[k];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

float Silu(float z) { return z / (1.0f + std::exp(-z)); }

struct ScoreOperands {
  const float* x;     // (q, d)
  const float* gate;  // (d_h, d)
  const float* up;    // (d_h, d)
  int64_t d_h;
  int64_t d;
  float* out;  // (q, d_h)
};

// Tokens [t0, t1) x all neurons, tiled so a neuron block's rows stay in cache across tokens.
void ScoreTokens(const ScoreOperands& op, int64_t t0, int64_t t1) {
  for (int64_t tb = t0; tb < t1; tb += kTokenBlock) {
    const int64_t te = std::min(t1, tb + kTokenBlock);
    for (int64_t ib = 0; ib < op.d_h; ib += kNeuronBlock) {
      const int64_t ie = std::min(op.d_h, ib + kNeuronBlock);
      for (int64_t t = tb; t < te; ++t) {
        const float* xt = op.x + t * op.d;
        float* out = op.out + t * op.d_h;
        for (int64_t i = ib; i < ie; ++i) {
          out[i] = Silu(Dot(xt, op.gate + i * op.d, op.d)) * Dot(xt, op.up + i * op.d, op.d);
        }
      }
    }
  }
}

absl::Status ValidateInputs(const CarveLayerInputs& in) {
  const WeightView& g = in.w_gate;
  if (in.num_tokens < 1) return absl::InvalidArgumentError("CarveLayer: no calibration tokens");
  if (g.rows < 1 || g.cols < 1 || g.data == nullptr) {
    return absl::InvalidArgumentError("CarveLayer: empty W_gate");
  }
  if (in.w_up.rows != g.rows || in.w_up.cols != g.cols || in.w_up.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("CarveLayer: W_up is (", in.w_up.rows, ", ",
                                                   in.w_up.cols, "), W_gate is (", g.rows, ", ",
                                                   g.cols, ")"));
  }
  if (static_cast<int64_t>(in.x.size()) != in.num_tokens * g.cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CarveLayer: X has ", in.x.size(), " values, expected ", in.num_tokens, " x ", g.cols));
  }
  return absl::OkStatus();
}

// Calls fn(t) for every set bit t of a marker column.
template <typename Fn>
void ForEachSetBit(std::span<const uint64_t> column, Fn fn) {
  for (size_t w = 0; w < column.size(); ++w) {
    for (uint64_t bits = column[w]; bits != 0; bits &= bits - 1) {
      fn(static_cast<int64_t>(w * 64) + std::countr_zero(bits));
    }
  }
}

// Neuron indices ordered by activation count descending, ties to the lower index.
std::vector<int64_t> OrderByRate(const ActivationMarkers& markers) {
  std::vector<int64_t> order(static_cast<size_t>(markers.num_neurons()));
  std::iota(order.begin(), order.end(), 0);
  std::vector<int64_t> count(order.size());
  for (int64_t i : order) count[i] = markers.ActivationCount(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return count[a] > count[b]; });
  return order;
}

// Per-cluster member counts per token: counts[j * q + t] = Σ_{i ∈ cluster j} A[t, i]. With the
// sizes this is the exact centroid: ĉ_j[t] = counts[j * q + t] / size[j].
struct Centroids {
  int64_t num_tokens = 0;
  std::vector<int32_t> counts;  // (N_r, q)
  std::vector<int64_t> sizes;   // (N_r)
  std::vector<int64_t> totals;  // (N_r) Σ_t counts
};

Centroids ComputeCentroids(const ActivationMarkers& markers, std::span<const int64_t> routed,
                           std::span<const int32_t> cluster_of, int64_t num_clusters) {
  Centroids c{.num_tokens = markers.num_tokens(),
              .counts = std::vector<int32_t>(num_clusters * markers.num_tokens(), 0),
              .sizes = std::vector<int64_t>(num_clusters, 0),
              .totals = std::vector<int64_t>(num_clusters, 0)};
  for (size_t r = 0; r < routed.size(); ++r) {
    const int64_t j = cluster_of[r];
    int32_t* counts = c.counts.data() + j * c.num_tokens;
    ++c.sizes[j];
    c.totals[j] += markers.ActivationCount(routed[r]);
    ForEachSetBit(markers.Column(routed[r]), [&](int64_t t) { ++counts[t]; });
  }
  return c;
}

// size_j * L1(c_i, ĉ_j) = Σ_t |s_j A[t,i] - cnt_j[t]| = total_j + s_j |c_i| - 2 Σ_{t ∈ c_i}
// cnt_j[t] (cnt_j[t] <= s_j). Exact.
int64_t ScaledL1(const ActivationMarkers& markers, int64_t i, const Centroids& c, int64_t j) {
  const int32_t* counts = c.counts.data() + j * c.num_tokens;
  int64_t ones = 0;
  int64_t overlap = 0;
  ForEachSetBit(markers.Column(i), [&](int64_t t) {
    ++ones;
    overlap += counts[t];
  });
  return c.totals[j] + c.sizes[j] * ones - 2 * overlap;
}

// cost[r, j] = L * L1(c_routed[r], ĉ_j), L = lcm of the cluster sizes: an exact integer.
absl::StatusOr<CostMatrix> CentroidCosts(const ActivationMarkers& markers,
                                         std::span<const int64_t> routed, const Centroids& c,
                                         ThreadPool* pool) {
  const int64_t k = static_cast<int64_t>(c.sizes.size());
  int64_t lcm = 1;
  for (int64_t s : c.sizes) lcm = std::lcm(lcm, std::max<int64_t>(s, 1));
  if (static_cast<double>(lcm) * static_cast<double>(c.num_tokens) >
      static_cast<double>(kMaxAbsAssignmentCost)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("CarveLayer: exact centroid costs need lcm(sizes) * q = ", lcm, " * ",
                     c.num_tokens, " > 2^40; use cluster_iters = 1"));
  }
  const int64_t n = static_cast<int64_t>(routed.size());
  CostMatrix cost{.rows = n, .cols = k, .values = std::vector<int64_t>(n * k)};
  ParallelRange(pool, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t j = 0; j < k; ++j) {
        const int64_t s = std::max<int64_t>(c.sizes[j], 1);
        cost.values[r * k + j] = (lcm / s) * ScaledL1(markers, routed[r], c, j);
      }
    }
  });
  return cost;
}

// Member of cluster j closest (L1) to ĉ_j; ties to the lower index. Members sorted ascending.
int64_t Representative(const ActivationMarkers& markers, std::span<const int64_t> members,
                       const Centroids& c, int64_t j) {
  int64_t best = -1;
  int64_t best_cost = 0;
  for (int64_t i : members) {
    const int64_t cost = ScaledL1(markers, i, c, j);
    if (best < 0 || cost < best_cost) {
      best = i;
      best_cost = cost;
    }
  }
  return best;
}

// Splits neurons into shared / seeds / routed by activation rate; fills the carve's rates.
struct Partition {
  std::vector<int64_t> routed;  // non-shared neurons, ascending
};

Partition SplitByRate(const ActivationMarkers& markers, const ExpertWidthPlan& plan,
                      LayerCarve& carve) {
  const std::vector<int64_t> order = OrderByRate(markers);
  const auto shared_end = order.begin() + plan.shared_width;
  const auto seeds_end = shared_end + static_cast<int64_t>(plan.routed_widths.size());
  carve.shared_neurons.assign(order.begin(), shared_end);
  std::sort(carve.shared_neurons.begin(), carve.shared_neurons.end());
  carve.seeds.assign(shared_end, seeds_end);
  Partition p{.routed = std::vector<int64_t>(shared_end, order.end())};
  std::sort(p.routed.begin(), p.routed.end());
  carve.activation_rates.resize(order.size());
  for (size_t i = 0; i < order.size(); ++i) carve.activation_rates[i] = markers.ActivationRate(i);
  return p;
}

// Rounds of centroid update + reassignment (while rounds remain and the assignment changes).
absl::StatusOr<Centroids> RefineClusters(const ActivationMarkers& markers,
                                         std::span<const int64_t> routed,
                                         std::span<const int64_t> capacities,
                                         const CarveConfig& config, ThreadPool* pool,
                                         std::vector<int32_t>& cluster_of, LayerCarve& carve) {
  const int64_t k = static_cast<int64_t>(capacities.size());
  for (int32_t round = 0;; ++round) {
    Timer centroid_timer;
    Centroids centroids = ComputeCentroids(markers, routed, cluster_of, k);
    carve.timings.centroid_s += centroid_timer.Seconds();
    carve.cluster_iters_run = round + 1;
    if (round + 1 >= config.cluster_iters) return centroids;
    Timer assign_timer;
    CMOE_ASSIGN_OR_RETURN(CostMatrix cost, CentroidCosts(markers, routed, centroids, pool));
    CMOE_ASSIGN_OR_RETURN(BalancedAssignment next, SolveBalancedAssignment(cost, capacities));
    carve.timings.assignment_s += assign_timer.Seconds();
    if (next.cluster_of == cluster_of) return centroids;
    cluster_of = std::move(next.cluster_of);
  }
}

// Fills expert_neurons (sorted) and representatives from the final assignment.
void CollectExperts(const ActivationMarkers& markers, std::span<const int64_t> routed,
                    std::span<const int32_t> cluster_of, const Centroids& centroids,
                    LayerCarve& carve) {
  const int64_t k = static_cast<int64_t>(centroids.sizes.size());
  carve.expert_neurons.assign(k, {});
  for (size_t r = 0; r < routed.size(); ++r)
    carve.expert_neurons[cluster_of[r]].push_back(routed[r]);
  Timer timer;
  carve.representatives.resize(k);
  for (int64_t j = 0; j < k; ++j) {
    carve.representatives[j] = Representative(markers, carve.expert_neurons[j], centroids, j);
  }
  carve.timings.centroid_s += timer.Seconds();
}

}  // namespace

absl::Status ValidateCarveConfig(const CarveConfig& c, int64_t ffn_width) {
  auto bad = [&](auto... parts) {
    return absl::InvalidArgumentError(absl::StrCat("carve config S", c.num_shared, "A",
                                                   c.num_activated, "E", c.num_experts,
                                                   " (d_h = ", ffn_width, "): ", parts...));
  };
  if (c.num_experts < 1) return bad("zero experts (num_experts must be >= 1)");
  if (c.num_shared < 0) return bad("num_shared must be >= 0");
  if (c.num_shared >= c.num_experts) return bad("num_shared >= num_experts: no routed expert");
  if (c.num_activated < 1) return bad("num_activated must be >= 1");
  if (c.num_shared + c.num_activated > c.num_experts) {
    return bad("num_shared + num_activated exceeds num_experts");
  }
  if (c.num_experts > ffn_width) return bad("more experts than FFN neurons");
  if (c.k_act < 1 || c.k_act > ffn_width) return bad("k_act = ", c.k_act, " outside [1, d_h]");
  if (c.cluster_iters < 1) return bad("cluster_iters = ", c.cluster_iters, " must be >= 1");
  return absl::OkStatus();
}

ExpertWidthPlan ExpertWidths(int64_t ffn_width, int32_t num_experts, int32_t num_shared) {
  const int64_t m = ffn_width / num_experts;
  const int64_t num_routed = num_experts - num_shared;
  ExpertWidthPlan plan{.shared_width = num_shared * m};
  const int64_t n = ffn_width - plan.shared_width;
  plan.routed_widths.assign(num_routed, n / num_routed);
  for (int64_t j = 0; j < n % num_routed; ++j) ++plan.routed_widths[j];
  return plan;
}

absl::StatusOr<std::vector<float>> ComputeScores(const CarveLayerInputs& in, ScoreVariant variant,
                                                 ThreadPool* pool) {
  CMOE_RETURN_IF_ERROR(ValidateInputs(in));
  const int64_t q = in.num_tokens;
  const int64_t d_h = in.w_gate.rows;
  const int64_t d = in.w_gate.cols;
  std::vector<float> x(in.x.begin(), in.x.end());
  std::vector<float> gate = WidenMatrix(in.w_gate);
  std::vector<float> up = WidenMatrix(in.w_up);
  if (variant == ScoreVariant::kNormalized) {
    NormalizeRows(x, q, d);
    NormalizeRows(gate, d_h, d);
    NormalizeRows(up, d_h, d);
  }
  std::vector<float> scores(static_cast<size_t>(q * d_h));
  if (in.backend != nullptr) {
    // H = silu(X Gᵀ) * (X Uᵀ) as two GEMMs per block of tokens; the block bounds the memory of
    // the U activations.
    const WeightView gv{.data = gate.data(), .dtype = kernels::DType::kF32, .rows = d_h, .cols = d};
    const WeightView uv{.data = up.data(), .dtype = kernels::DType::kF32, .rows = d_h, .cols = d};
    constexpr int64_t kBlock = 2048;
    std::vector<float> u(static_cast<size_t>(std::min(q, kBlock) * d_h));
    for (int64_t t0 = 0; t0 < q; t0 += kBlock) {
      const int64_t n = std::min(kBlock, q - t0);
      float* h = scores.data() + t0 * d_h;
      CMOE_RETURN_IF_ERROR(
          in.backend->MatMul(x.data() + t0 * d, n, gv, h, kernels::Accumulate::kNo));
      CMOE_RETURN_IF_ERROR(
          in.backend->MatMul(x.data() + t0 * d, n, uv, u.data(), kernels::Accumulate::kNo));
      CMOE_RETURN_IF_ERROR(in.backend->SiluMul(h, u.data(), n * d_h, h));
    }
    return scores;
  }
  const ScoreOperands op{.x = x.data(),
                         .gate = gate.data(),
                         .up = up.data(),
                         .d_h = d_h,
                         .d = d,
                         .out = scores.data()};
  ParallelRange(pool, q, kTokenBlock, [&](int64_t t0, int64_t t1) { ScoreTokens(op, t0, t1); });
  return scores;
}

absl::StatusOr<LayerCarve> CarveFromMarkers(const ActivationMarkers& markers,
                                            const CarveConfig& config, ThreadPool* pool) {
  CMOE_RETURN_IF_ERROR(ValidateCarveConfig(config, markers.num_neurons()));
  const ExpertWidthPlan plan =
      ExpertWidths(markers.num_neurons(), config.num_experts, config.num_shared);
  LayerCarve carve;
  const Partition part = SplitByRate(markers, plan, carve);
  Timer timer;
  CMOE_ASSIGN_OR_RETURN(CostMatrix cost,
                        ComputeCostMatrix(markers, part.routed, carve.seeds, pool));
  CMOE_ASSIGN_OR_RETURN(BalancedAssignment first,
                        SolveBalancedAssignment(cost, plan.routed_widths));
  carve.timings.assignment_s = timer.Seconds();
  carve.assignment_cost = first.total_cost;
  std::vector<int32_t> cluster_of = std::move(first.cluster_of);
  CMOE_ASSIGN_OR_RETURN(
      Centroids centroids,
      RefineClusters(markers, part.routed, plan.routed_widths, config, pool, cluster_of, carve));
  CollectExperts(markers, part.routed, cluster_of, centroids, carve);
  return carve;
}

absl::StatusOr<LayerCarve> CarveLayer(const CarveLayerInputs& in, const CarveConfig& config,
                                      ThreadPool* pool) {
  CMOE_RETURN_IF_ERROR(ValidateInputs(in));
  CMOE_RETURN_IF_ERROR(ValidateCarveConfig(config, in.w_gate.rows));
  Timer timer;
  CMOE_ASSIGN_OR_RETURN(std::vector<float> scores, ComputeScores(in, config.score, pool));
  const double scores_s = timer.Seconds();
  timer.Reset();
  CMOE_ASSIGN_OR_RETURN(ActivationMarkers markers, BuildTopKMarkers(scores,
                                                                    {.num_tokens = in.num_tokens,
                                                                     .num_neurons = in.w_gate.rows,
                                                                     .top_k = config.k_act},
                                                                    pool));
  const double markers_s = timer.Seconds();
  CMOE_ASSIGN_OR_RETURN(LayerCarve carve, CarveFromMarkers(markers, config, pool));
  carve.timings.scores_s = scores_s;
  carve.timings.markers_s = markers_s;
  return carve;
}

absl::StatusOr<RouterWeights> RouterRows(const WeightView& w_gate, const WeightView& w_up,
                                         std::span<const int64_t> representatives,
                                         RouterVariant variant) {
  if (w_gate.rows != w_up.rows || w_gate.cols != w_up.cols) {
    return absl::InvalidArgumentError("RouterRows: W_gate and W_up shapes differ");
  }
  const int64_t k = static_cast<int64_t>(representatives.size());
  const int64_t d = w_gate.cols;
  RouterWeights router{.num_experts = k,
                       .model_width = d,
                       .gate = std::vector<float>(k * d),
                       .up = std::vector<float>(k * d)};
  for (int64_t j = 0; j < k; ++j) {
    const int64_t r = representatives[j];
    if (r < 0 || r >= w_gate.rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("RouterRows: representative ", r, " outside [0, ", w_gate.rows, ")"));
    }
    WidenToFloat(w_gate, r * d, d, router.gate.data() + j * d);
    WidenToFloat(w_up, r * d, d, router.up.data() + j * d);
  }
  if (variant == RouterVariant::kReference) {
    NormalizeRows(router.gate, k, d);
    NormalizeRows(router.up, k, d);
  }
  return router;
}

}  // namespace cmoe::engine::carve
