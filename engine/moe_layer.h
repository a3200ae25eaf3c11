// The MoE FFN forward of one carved layer (docs/cmoe-method.md step 7, docs/architecture.md "The
// MoE layer"): F(h) = Shared(h) + sum_{j in idx(h)} w_j * E_j(h), every expert a SwiGLU MLP over
// its carved rows of gate/up and columns of down, accumulated into the residual stream.
//
// One step with T tokens:
//   1. router scores (RouterScores on h), RouteTokens (softmax, top-k of p + b, w = 1 + p * u),
//      BuildDispatchPlanInto (token slots grouped by expert);
//   2. the shared expert as one dense pass over all T rows: gate, up, silu*up, down into x;
//   3. per routed expert with tokens: gather its rows of h, gate/up, silu*up, down into a per-slot
//      buffer, then x[token] += w * out[slot].
// Arithmetic runs on the backend (MatMul, SiluMul); routing, gather and scatter run on the host,
// so h and x must be host memory (the "cpu" and "reference" backends). A device backend needs
// device-side gather/scatter; this class does not provide them yet.
//
// Usage:
//
//   MoeLayer layer;  // one per step thread; its buffers grow to the largest step, then stay
//   MoeStepStats stats;
//   CMOE_RETURN_IF_ERROR(layer.Forward(backend, weights,
//                                      {.h = h, .num_tokens = T, .num_activated = k, .x = x},
//                                      &stats));
#ifndef CMOE_ENGINE_MOE_LAYER_H_
#define CMOE_ENGINE_MOE_LAYER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "engine/model_weights.h"
#include "engine/moe_dispatch.h"
#include "kernels/backend.h"
#include "kernels/weight_view.h"

namespace cmoe::engine {

// What one Forward computed, for the activation-ratio and per-expert metrics.
struct MoeStepStats {
  int64_t neurons_computed = 0;            // T * m_s + sum_e count_e * m_e
  int64_t neurons_dense = 0;               // T * (m_s + sum_e m_e), the dense FFN's work
  std::vector<int64_t> tokens_per_expert;  // (N_r) tokens routed to each expert; sums to T * k
};

struct MoeForwardArgs {
  const float* h = nullptr;   // (T, d) f32 host, read: the normed FFN input
  int64_t num_tokens = 0;     // T >= 0
  int32_t num_activated = 0;  // k in [1, N_r], routed experts per token
  float* x = nullptr;         // (T, d) f32 host, read/written: the residual, x += F(h)
};

// Holds the step's workspace (scores, routing, plan, gathered rows, activations); not
// thread-safe, one per step thread. No allocation once the buffers fit the largest step seen.
class MoeLayer {
 public:
  // x += F(h). stats may be null; when given it is overwritten. InvalidArgument (naming the
  // operand) for num_activated outside [1, N_r], inconsistent weight shapes or null pointers
  // with T > 0; x is untouched then. Backend errors propagate; x may be partly updated then.
  absl::Status Forward(kernels::Backend& backend, const MoeLayerWeights& weights,
                       const MoeForwardArgs& args, MoeStepStats* stats);

 private:
  absl::Status Route(const MoeLayerWeights& weights, const MoeForwardArgs& args, int64_t dim);
  absl::Status RunShared(kernels::Backend& backend, const ExpertWeights& shared,
                         const MoeForwardArgs& args);
  absl::Status RunExpert(kernels::Backend& backend, const ExpertWeights& expert, int32_t e,
                         const MoeForwardArgs& args, int64_t dim);
  void FillStats(const MoeLayerWeights& weights, int64_t num_tokens, MoeStepStats* stats) const;

  std::vector<float> scores_;      // (T, N_r) router scores
  std::vector<float> probs_;       // (T, N_r) softmax of the scores
  std::vector<int32_t> selected_;  // (T, k) expert ids
  std::vector<float> route_w_;     // (T, k) gate weights 1 + p * u
  DispatchPlan plan_;
  std::vector<float> rows_;  // (count_e, d) gathered input rows of one expert
  std::vector<float> gate_;  // (rows, m) gate activations, then silu(gate) * up
  std::vector<float> up_;    // (rows, m) up activations
  std::vector<float> out_;   // (count_e, d) one expert's output per slot before weighting
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MOE_LAYER_H_
