#include "engine/moe_layer.h"

#include <algorithm>
#include <span>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/status.h"

namespace cmoe::engine {
namespace {

using kernels::Accumulate;

// Grows `v` to at least n elements; never shrinks, so a warmed-up workspace does not allocate.
template <typename T>
void Fit(std::vector<T>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
}

bool IsEmpty(const ExpertWeights& e) {
  return e.gate.rows == 0 && e.up.rows == 0 && (e.down.cols == 0 || e.down.rows == 0);
}

// gate/up (m, d) and down (d, m) with m >= 1 and data present.
absl::Status ValidateExpert(const ExpertWeights& e, int64_t dim, absl::string_view name) {
  const int64_t m = e.width();
  if (m < 1 || e.gate.cols != dim || e.up.rows != m || e.up.cols != dim || e.down.rows != dim ||
      e.down.cols != m) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeLayer: ", name, " has gate (", e.gate.rows, ", ", e.gate.cols, "), up (",
                     e.up.rows, ", ", e.up.cols, "), down (", e.down.rows, ", ", e.down.cols,
                     "); want gate/up (m, ", dim, ") and down (", dim, ", m) with m >= 1"));
  }
  if (e.gate.data == nullptr || e.up.data == nullptr || e.down.data == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("MoeLayer: ", name, " has a null weight"));
  }
  return absl::OkStatus();
}

// Checks every shape of `w`; returns d.
absl::StatusOr<int64_t> ValidateWeights(const MoeLayerWeights& w) {
  if (w.experts.empty()) return absl::InvalidArgumentError("MoeLayer: no routed experts");
  const int64_t dim = w.experts[0].gate.cols;
  const auto n_r = static_cast<int64_t>(w.experts.size());
  if (dim < 1) return absl::InvalidArgumentError("MoeLayer: expert 0 has gate cols (d) < 1");
  if (!IsEmpty(w.shared)) CMOE_RETURN_IF_ERROR(ValidateExpert(w.shared, dim, "shared expert"));
  for (int64_t e = 0; e < n_r; ++e) {
    CMOE_RETURN_IF_ERROR(ValidateExpert(w.experts[e], dim, absl::StrCat("expert ", e)));
  }
  if (static_cast<int64_t>(w.router_gate.size()) != n_r * dim ||
      static_cast<int64_t>(w.router_up.size()) != n_r * dim) {
    return absl::InvalidArgumentError(absl::StrCat("MoeLayer: router_gate/router_up have ",
                                                   w.router_gate.size(), "/", w.router_up.size(),
                                                   " floats; want N_r * d = ", n_r * dim));
  }
  return dim;
}

absl::Status ValidateArgs(const MoeForwardArgs& args, int64_t num_experts) {
  if (args.num_activated < 1 || args.num_activated > num_experts) {
    return absl::InvalidArgumentError(absl::StrCat("MoeLayer: num_activated ", args.num_activated,
                                                   " outside [1, ", num_experts, "]"));
  }
  if (args.num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("MoeLayer: num_tokens ", args.num_tokens, " < 0"));
  }
  if (args.num_tokens > 0 && (args.h == nullptr || args.x == nullptr)) {
    return absl::InvalidArgumentError("MoeLayer: h or x is null");
  }
  return absl::OkStatus();
}

// rows[p, :] = h[slot_token[p], :] for the `count` slots of one expert.
void GatherRows(const float* h, std::span<const int32_t> slot_token, int64_t dim, float* rows) {
  for (size_t p = 0; p < slot_token.size(); ++p) {
    const float* src = h + static_cast<int64_t>(slot_token[p]) * dim;
    std::copy(src, src + dim, rows + static_cast<int64_t>(p) * dim);
  }
}

// x[slot_token[p], :] += route_w[slot_source[p]] * out[p, :].
void ScatterAdd(const float* out, std::span<const int32_t> slot_token,
                std::span<const int32_t> slot_source, const float* route_w, int64_t dim, float* x) {
  for (size_t p = 0; p < slot_token.size(); ++p) {
    const float w = route_w[slot_source[p]];
    const float* src = out + static_cast<int64_t>(p) * dim;
    float* dst = x + static_cast<int64_t>(slot_token[p]) * dim;
    for (int64_t i = 0; i < dim; ++i) dst[i] += w * src[i];
  }
}

// gate_buf = silu(rows · gate^T) * (rows · up^T); (num_rows, m). up_buf is scratch.
absl::Status SwiGluHidden(kernels::Backend& backend, const ExpertWeights& expert, const float* rows,
                          int64_t num_rows, float* gate_buf, float* up_buf) {
  CMOE_RETURN_IF_ERROR(backend.MatMul(rows, num_rows, expert.gate, gate_buf, Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(backend.MatMul(rows, num_rows, expert.up, up_buf, Accumulate::kNo));
  return backend.SiluMul(gate_buf, up_buf, num_rows * expert.width(), gate_buf);
}

}  // namespace

absl::Status MoeLayer::Forward(kernels::Backend& backend, const MoeLayerWeights& weights,
                               const MoeForwardArgs& args, MoeStepStats* stats) {
  CMOE_ASSIGN_OR_RETURN(const int64_t dim, ValidateWeights(weights));
  CMOE_RETURN_IF_ERROR(ValidateArgs(args, static_cast<int64_t>(weights.experts.size())));
  if (args.num_tokens > 0) {
    // Routing writes only the workspace, so a routing error leaves x untouched.
    CMOE_RETURN_IF_ERROR(Route(weights, args, dim));
    if (weights.shared.width() > 0) {
      CMOE_RETURN_IF_ERROR(RunShared(backend, weights.shared, args));
    }
    for (int32_t e = 0; e < static_cast<int32_t>(weights.experts.size()); ++e) {
      if (plan_.counts[e] == 0) continue;
      CMOE_RETURN_IF_ERROR(RunExpert(backend, weights.experts[e], e, args, dim));
    }
  }
  if (stats != nullptr) FillStats(weights, args.num_tokens, stats);
  return absl::OkStatus();
}

absl::Status MoeLayer::Route(const MoeLayerWeights& weights, const MoeForwardArgs& args,
                             int64_t dim) {
  const int64_t t = args.num_tokens;
  const int32_t k = args.num_activated;
  const auto n_r = static_cast<int32_t>(weights.experts.size());
  Fit(scores_, t * n_r);
  Fit(probs_, t * n_r);
  Fit(selected_, t * k);
  Fit(route_w_, t * k);
  const std::span<float> scores(scores_.data(), static_cast<size_t>(t * n_r));
  const std::span<int32_t> selected(selected_.data(), static_cast<size_t>(t * k));
  CMOE_RETURN_IF_ERROR(RouterScores({.x = {args.h, static_cast<size_t>(t * dim)},
                                     .wr_gate = weights.router_gate,
                                     .wr_up = weights.router_up,
                                     .num_tokens = t,
                                     .dim = dim,
                                     .num_experts = n_r,
                                     .variant = weights.variant},
                                    scores));
  CMOE_RETURN_IF_ERROR(RouteTokens(
      scores, t,
      {.bias = weights.bias, .scale = weights.scale, .num_experts = n_r, .num_activated = k},
      {.probs = {probs_.data(), static_cast<size_t>(t * n_r)},
       .selected = selected,
       .weights = {route_w_.data(), static_cast<size_t>(t * k)}}));
  return BuildDispatchPlanInto(selected, t, k, n_r, &plan_);
}

absl::Status MoeLayer::RunShared(kernels::Backend& backend, const ExpertWeights& shared,
                                 const MoeForwardArgs& args) {
  const int64_t t = args.num_tokens;
  Fit(gate_, t * shared.width());
  Fit(up_, t * shared.width());
  CMOE_RETURN_IF_ERROR(SwiGluHidden(backend, shared, args.h, t, gate_.data(), up_.data()));
  return backend.MatMul(gate_.data(), t, shared.down, args.x, Accumulate::kYes);
}

absl::Status MoeLayer::RunExpert(kernels::Backend& backend, const ExpertWeights& expert, int32_t e,
                                 const MoeForwardArgs& args, int64_t dim) {
  const int64_t begin = plan_.offsets[e];
  const int64_t count = plan_.counts[e];
  const std::span<const int32_t> tokens(plan_.slot_token.data() + begin,
                                        static_cast<size_t>(count));
  const std::span<const int32_t> sources(plan_.slot_source.data() + begin,
                                         static_cast<size_t>(count));
  Fit(rows_, count * dim);
  Fit(gate_, count * expert.width());
  Fit(up_, count * expert.width());
  Fit(out_, count * dim);
  GatherRows(args.h, tokens, dim, rows_.data());
  CMOE_RETURN_IF_ERROR(
      SwiGluHidden(backend, expert, rows_.data(), count, gate_.data(), up_.data()));
  CMOE_RETURN_IF_ERROR(
      backend.MatMul(gate_.data(), count, expert.down, out_.data(), Accumulate::kNo));
  ScatterAdd(out_.data(), tokens, sources, route_w_.data(), dim, args.x);
  return absl::OkStatus();
}

void MoeLayer::FillStats(const MoeLayerWeights& weights, int64_t num_tokens,
                         MoeStepStats* stats) const {
  const size_t n_r = weights.experts.size();
  const int64_t shared_width = weights.shared.width();
  stats->neurons_computed = num_tokens * shared_width;
  stats->neurons_dense = num_tokens * shared_width;
  stats->tokens_per_expert.assign(n_r, 0);
  for (size_t e = 0; e < n_r; ++e) {
    const int64_t count = num_tokens > 0 ? plan_.counts[e] : 0;
    stats->tokens_per_expert[e] = count;
    stats->neurons_computed += count * weights.experts[e].width();
    stats->neurons_dense += num_tokens * weights.experts[e].width();
  }
}

}  // namespace cmoe::engine
