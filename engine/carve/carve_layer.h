// Carving ONE dense SwiGLU FFN layer into a shared expert and balanced routed experts
// (steps 2-6 of the CMoE carving, docs/cmoe-method.md). Pure: no model, no I/O.
//
//   CarveConfig config{.num_experts = 16, .num_shared = 2, .num_activated = 2};
//   CMOE_ASSIGN_OR_RETURN(LayerCarve carve,
//                         CarveLayer({.x = x, .num_tokens = q, .w_gate = g, .w_up = u}, config,
//                                    &pool));
//   CMOE_ASSIGN_OR_RETURN(RouterWeights router,
//                         RouterRows(g, u, carve.representatives, RouterVariant::kReference));
//
// Steps: scores H (q x d_h) -> ATopK markers (k_act per token) -> activation rates μ ->
// shared = the N_s*m highest-μ neurons -> seeds = the N_r next highest-μ neurons -> exact
// balanced assignment of the remaining neurons to the seeds (Hamming costs) -> cluster_iters
// rounds of centroid update (+ reassignment against the centroids while rounds remain) ->
// representative per cluster. Ties everywhere go to the LOWER neuron index, so the result is a
// pure function of the inputs (independent of the thread count).
#ifndef CMOE_ENGINE_CARVE_CARVE_LAYER_H_
#define CMOE_ENGINE_CARVE_CARVE_LAYER_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/thread_pool.h"
#include "engine/carve/activation_markers.h"
#include "engine/moe_dispatch.h"
#include "kernels/backend.h"
#include "kernels/weight_view.h"

namespace cmoe::engine::carve {

// Step 2 score variant. kNormalized (reference code, default): token rows of X and neuron rows
// of W_gate/W_up scaled to unit L2 norm first (an all-zero row stays zero). kRaw (paper): as is.
enum class ScoreVariant { kNormalized, kRaw };

struct CarveConfig {
  int32_t num_experts = 0;    // N, shared included
  int32_t num_shared = 0;     // N_s (0 allowed: no shared expert)
  int32_t num_activated = 0;  // N_k routed experts per token (validated only; used by the router)
  int32_t k_act = 10;         // K_a, markers per token
  ScoreVariant score = ScoreVariant::kNormalized;
  int32_t cluster_iters = 1;  // centroid updates; rounds after the first also reassign
};

// InvalidArgument naming the problem for: num_experts < 1, num_shared < 0,
// num_shared >= num_experts (no routed expert), num_activated < 1,
// num_shared + num_activated > num_experts, num_experts > ffn_width, k_act outside
// [1, ffn_width], cluster_iters < 1.
absl::Status ValidateCarveConfig(const CarveConfig& config, int64_t ffn_width);

// The no-drop width rule. m = floor(d_h / N); the shared expert takes N_s * m neurons; the
// remaining n = d_h - N_s * m neurons go to the N_r = N - N_s routed experts as n / N_r each,
// and the FIRST n % N_r routed experts get one more. So routed widths differ by at most one,
// each is >= m, and shared + Σ routed == d_h (no neuron is dropped). Divisible d_h gives the
// paper's widths (every expert m). Precondition: ValidateCarveConfig-compatible arguments.
struct ExpertWidthPlan {
  int64_t shared_width = 0;
  std::vector<int64_t> routed_widths;  // (N_r)
};
ExpertWidthPlan ExpertWidths(int64_t ffn_width, int32_t num_experts, int32_t num_shared);

// Read-only, non-owning views; everything must outlive the CarveLayer call.
struct CarveLayerInputs {
  std::span<const float> x;    // (num_tokens, model_width) f32 row-major, host: the FFN input
  int64_t num_tokens = 0;      // q >= 1
  kernels::WeightView w_gate;  // (d_h, model_width), any dtype
  kernels::WeightView w_up;    // (d_h, model_width), same shape as w_gate
  // The scores' two GEMMs run on this backend when set (the fast CPU GEMM is ~10x the plain
  // loops used otherwise); host-memory backends only. Not owned.
  kernels::Backend* backend = nullptr;
};

// Seconds spent per phase (wall clock).
struct CarveTimings {
  double scores_s = 0;
  double markers_s = 0;
  double assignment_s = 0;  // every balanced assignment (cost matrices included)
  double centroid_s = 0;    // centroid updates and representative selection
};

struct LayerCarve {
  std::vector<int64_t> shared_neurons;               // (N_s * m) sorted original indices
  std::vector<std::vector<int64_t>> expert_neurons;  // (N_r) sorted lists; widths as ExpertWidths
  std::vector<int64_t> seeds;                        // (N_r) seed neuron of expert j
  std::vector<int64_t> representatives;              // (N_r) member of expert j
  std::vector<double> activation_rates;              // (d_h) μ_i
  int64_t assignment_cost = 0;  // optimal Σ Hamming(c_i, c_seed(j(i))) of the first assignment
  // Centroid updates done: cluster_iters, or fewer when a reassignment left the clusters
  // unchanged (converged; further rounds could not change anything).
  int32_t cluster_iters_run = 0;
  CarveTimings timings;
};

// Step 2: H = silu(X Gᵀ) * (X Uᵀ) per `variant` (see ScoreVariant), fp32 accumulation.
// Returns (num_tokens, d_h) f32 row-major. Parallel over token blocks on `pool` (nullptr: the
// calling thread), or as two backend GEMMs (in.backend) over blocks of tokens. Each value is
// computed the same way whatever the thread count. Memory: the result plus f32 copies of X,
// W_gate and W_up (q = 16k, d_h = 5.6k: ~0.4 GB of scores), plus one token block of W_up
// activations with a backend.
absl::StatusOr<std::vector<float>> ComputeScores(const CarveLayerInputs& in, ScoreVariant variant,
                                                 ThreadPool* pool);

// Steps 3-5 on precomputed markers (num_tokens x d_h), e.g. for tests or other score sources.
// Seeds only define the first centroids: like the reference, a seed is not pinned to its own
// cluster. Expert j is the cluster seeded by seeds[j] (seeds in decreasing μ), so the wider
// experts of ExpertWidths go to the highest-μ seeds.
// The centroid of cluster j is the mean of its members' columns. Reassignment costs are the
// real-valued L1 distances Σ_t |A[t,i] - cnt_j[t] / s_j| (cnt_j = member counts per token,
// s_j = cluster size) scaled EXACTLY to integers: multiplied by L = lcm of the cluster sizes,
// i.e. (L / s_j) * Σ_t |s_j A[t,i] - cnt_j[t]|. The representative comparison uses the same
// exact integers, so no float rounding decides a tie. ResourceExhausted if a scaled cost would
// exceed kMaxAbsAssignmentCost (needs q * m * (m + 1) > 2^40).
absl::StatusOr<LayerCarve> CarveFromMarkers(const ActivationMarkers& markers,
                                            const CarveConfig& config, ThreadPool* pool);

// Steps 2-5. InvalidArgument on an invalid config or inconsistent shapes. `pool` may be nullptr.
absl::StatusOr<LayerCarve> CarveLayer(const CarveLayerInputs& in, const CarveConfig& config,
                                      ThreadPool* pool);

// Step 6 router rows (RouterVariant of engine/moe_dispatch.h). kReference (default): rows unit-L2
// normalised (a zero row stays zero). kPaper: the raw rows (the paper's formula has no
// normalisation).

struct RouterWeights {
  int64_t num_experts = 0;  // N_r
  int64_t model_width = 0;  // d
  std::vector<float> gate;  // (N_r, d) f32 row-major: row j from W_gate[representatives[j]]
  std::vector<float> up;    // (N_r, d) f32 row-major: row j from W_up[representatives[j]]
};

// InvalidArgument if the shapes differ or a representative is outside [0, d_h).
absl::StatusOr<RouterWeights> RouterRows(const kernels::WeightView& w_gate,
                                         const kernels::WeightView& w_up,
                                         std::span<const int64_t> representatives,
                                         RouterVariant variant = RouterVariant::kReference);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_CARVE_LAYER_H_
