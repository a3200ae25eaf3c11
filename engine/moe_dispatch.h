// MoE routing and the dispatch plan of one step (docs/cmoe-method.md steps 6-8).
//
// - RouterScores: the analytical router's score s (T, N_r) on the CPU, a plain-loop reference.
// - RouteTokens: p = softmax(s), idx = topk(p + b, k), gate weights w = 1 + p * u.
// - BuildDispatchPlan: groups the T * k (token, expert) pairs of a step by expert with a stable
//   counting sort, so that each expert's rows are contiguous. The CPU MoE layer and the CUDA
//   backend both consume this layout; DispatchPlan is plain vectors a kernel can mirror.
// - ExpertLoad / UpdateBalanceBias: per-expert counts across steps and the auxiliary-loss-free
//   load-balancing bias (step 8).
//
// Usage for one MoE layer and T tokens (all host memory, caller-owned):
//
//   std::vector<float> scores(T * n_r), probs(T * n_r), weights(T * k);
//   std::vector<int32_t> selected(T * k);
//   CMOE_RETURN_IF_ERROR(RouterScores({.x = x, .wr_gate = wr_gate, .wr_up = wr_up,
//                                      .num_tokens = T, .dim = d, .num_experts = n_r},
//                                     scores));
//   CMOE_RETURN_IF_ERROR(RouteTokens(scores, T, {.bias = bias, .scale = scale,
//                                                .num_experts = n_r, .num_activated = k},
//                                    {.probs = probs, .selected = selected, .weights = weights}));
//   CMOE_ASSIGN_OR_RETURN(DispatchPlan plan, BuildDispatchPlan(selected, T, k, n_r));
//   for (int32_t e = 0; e < n_r; ++e) {
//     for (int64_t p = plan.offsets[e]; p < plan.offsets[e + 1]; ++p) {
//       // row p of expert e: input x[plan.slot_token[p]], gate weight weights[plan.slot_source[p]]
//     }
//   }
//   CMOE_RETURN_IF_ERROR(load.Add(plan.counts));  // ExpertLoad load(n_r), one per layer
//
// Nothing here keeps state between calls except ExpertLoad; every function is safe to call from
// several threads on distinct outputs.
#ifndef CMOE_ENGINE_MOE_DISPATCH_H_
#define CMOE_ENGINE_MOE_DISPATCH_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cmoe::engine {

// --router: the reference code takes |.| of the score; the paper's formula does not.
enum class RouterVariant { kReference, kPaper };

struct RouterScoresArgs {
  std::span<const float> x;        // (T, d) f32 row-major, read; FFN input, NOT normalised
  std::span<const float> wr_gate;  // (N_r, d) f32 row-major, read; normalised gate rows
  std::span<const float> wr_up;    // (N_r, d) f32 row-major, read; normalised up rows
  int64_t num_tokens = 0;          // T >= 0
  int64_t dim = 0;                 // d >= 1
  int32_t num_experts = 0;         // N_r >= 1
  RouterVariant variant = RouterVariant::kReference;
};

// scores[t, j] = (Wr_up[j] . x[t]) * silu(Wr_gate[j] . x[t]), with |.| for kReference.
// scores: (T, N_r) f32, written. Dot products accumulate in double (a reference, not a fast path).
// Size mismatches are InvalidArgument naming the operand; nothing is written then.
absl::Status RouterScores(const RouterScoresArgs& args, std::span<float> scores);

struct RouterParams {
  std::span<const float> bias;   // (N_r) b, read; empty means all zero (the initial bias)
  std::span<const float> scale;  // (N_r) u, read; empty means all zero (training-free: w = 1)
  int32_t num_experts = 0;       // N_r >= 1
  int32_t num_activated = 0;     // k in [1, N_r], the same for every token of the step
};

struct RouteOutputs {
  std::span<float> probs;       // (T, N_r) f32, written: softmax of the scores; may be empty
  std::span<int32_t> selected;  // (T, k) int32, written: expert ids, by descending p + b
  std::span<float> weights;     // (T, k) f32, written: w = 1 + p * u of the selected expert
};

// For each token t: p = softmax(scores[t]) (max-subtracted, fp32), selected[t] = the k experts
// with the largest p + b (ties to the lower expert index), weights[t, j] = 1 + p_e * u_e for
// e = selected[t, j]. scores: (T, N_r) f32, read. InvalidArgument naming the parameter for bad
// sizes or k; InvalidArgument naming the token when a score or p + b is not finite.
absl::Status RouteTokens(std::span<const float> scores, int64_t num_tokens,
                         const RouterParams& params, const RouteOutputs& out);

// The tokens of one step grouped by routed expert. With P = T * k slots (one per (token, j) pair
// of `selected`), slots are ordered by expert, and within an expert by increasing token.
// Host vectors; a device copy mirrors the same arrays.
struct DispatchPlan {
  int64_t num_tokens = 0;            // T
  int32_t k = 0;                     // experts per token
  int32_t num_experts = 0;           // E = N_r
  std::vector<int64_t> counts;       // (E) number of tokens routed to expert e
  std::vector<int64_t> offsets;      // (E + 1) exclusive prefix sum of counts; offsets[E] = P
  std::vector<int32_t> slot_token;   // (P) token of sorted row p; rows of e: [off[e], off[e+1])
  std::vector<int32_t> slot_source;  // (P) index t * k + j in `selected` of sorted row p
  std::vector<int32_t> token_slot;   // (P) inverse of slot_source: token_slot[t * k + j] = p
};

// Builds the plan by counting sort, O(T * k + E). selected: (T, k) int32, read.
// InvalidArgument: sizes, k outside [1, E], T * k beyond int32, an id outside [0, E) (naming the
// token and the id), a token selecting one expert twice (naming the token and the expert).
absl::StatusOr<DispatchPlan> BuildDispatchPlan(std::span<const int32_t> selected,
                                               int64_t num_tokens, int32_t k, int32_t num_experts);

// As above, reusing `plan`'s vectors (no allocation once they are large enough). On error `plan`
// is left in an unspecified but valid state.
absl::Status BuildDispatchPlanInto(std::span<const int32_t> selected, int64_t num_tokens, int32_t k,
                                   int32_t num_experts, DispatchPlan* plan);

// Checks every invariant of `plan` against `selected` (T, k): field sizes, counts, offsets,
// slot order and stability, and that token_slot inverts slot_source. Internal on violation,
// naming the first broken invariant. For tests and debug builds.
absl::Status ValidateDispatchPlan(const DispatchPlan& plan, std::span<const int32_t> selected,
                                  int64_t num_tokens, int32_t k, int32_t num_experts);

// Per-expert routed-token counts summed over steps (metrics and the balancing bias).
// Not thread-safe; one per layer, owned by the step thread.
struct ExpertLoad {
  explicit ExpertLoad(int32_t num_experts) : counts(num_experts, 0) {}

  // counts += step_counts (E). InvalidArgument on a size mismatch.
  absl::Status Add(std::span<const int64_t> step_counts);
  void Reset();
  int64_t Total() const;
  // max_e counts[e] / mean(counts): 1 is perfectly balanced; 0 before any token.
  double MaxOverMean() const;

  std::vector<int64_t> counts;  // (E)
  int64_t steps = 0;            // calls to Add since construction or Reset
};

// Step 8: with mean n = sum(counts) / E, bias[j] -= gamma if counts[j] > mean, += gamma if
// counts[j] < mean, unchanged if equal (compared exactly in integers). counts, bias: (E);
// bias is read and written. Sizes must match (CHECK).
void UpdateBalanceBias(std::span<const int64_t> counts, float gamma, std::span<float> bias);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MOE_DISPATCH_H_
