#include "engine/moe_dispatch.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"

namespace cmoe::engine {
namespace {

absl::Status SizeError(const char* op, const char* operand, size_t got, int64_t want) {
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", operand, " has ", got, " elements, expected ", want));
}

absl::Status CheckSize(const char* op, const char* operand, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) == want) return absl::OkStatus();
  return SizeError(op, operand, got, want);
}

// Empty is allowed and means "all zero".
absl::Status CheckOptionalSize(const char* op, const char* operand, size_t got, int64_t want) {
  if (got == 0) return absl::OkStatus();
  return CheckSize(op, operand, got, want);
}

double Silu(double v) { return v / (1.0 + std::exp(-v)); }

double Dot(const float* a, const float* b, int64_t n) {
  double acc = 0.0;
  for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return acc;
}

absl::Status ValidateScoresArgs(const RouterScoresArgs& a, size_t scores_size) {
  constexpr char kOp[] = "RouterScores";
  if (a.num_tokens < 0) return absl::InvalidArgumentError("RouterScores: num_tokens < 0");
  if (a.dim < 1) return absl::InvalidArgumentError("RouterScores: dim < 1");
  if (a.num_experts < 1) return absl::InvalidArgumentError("RouterScores: num_experts < 1");
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "x", a.x.size(), a.num_tokens * a.dim));
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "wr_gate", a.wr_gate.size(), a.num_experts * a.dim));
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "wr_up", a.wr_up.size(), a.num_experts * a.dim));
  return CheckSize(kOp, "scores", scores_size, a.num_tokens * a.num_experts);
}

absl::Status ValidateRouteArgs(size_t scores_size, int64_t num_tokens, const RouterParams& p,
                               const RouteOutputs& out) {
  constexpr char kOp[] = "RouteTokens";
  const int64_t n = p.num_experts;
  if (num_tokens < 0) return absl::InvalidArgumentError("RouteTokens: num_tokens < 0");
  if (n < 1) return absl::InvalidArgumentError("RouteTokens: num_experts < 1");
  if (p.num_activated < 1 || p.num_activated > n) {
    return absl::InvalidArgumentError(
        absl::StrCat("RouteTokens: num_activated ", p.num_activated, " outside [1, ", n, "]"));
  }
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "scores", scores_size, num_tokens * n));
  CMOE_RETURN_IF_ERROR(CheckOptionalSize(kOp, "bias", p.bias.size(), n));
  CMOE_RETURN_IF_ERROR(CheckOptionalSize(kOp, "scale", p.scale.size(), n));
  CMOE_RETURN_IF_ERROR(CheckOptionalSize(kOp, "probs", out.probs.size(), num_tokens * n));
  CMOE_RETURN_IF_ERROR(
      CheckSize(kOp, "selected", out.selected.size(), num_tokens * p.num_activated));
  return CheckSize(kOp, "weights", out.weights.size(), num_tokens * p.num_activated);
}

// probs = softmax(scores), max-subtracted. Returns false if a score is not finite.
bool Softmax(std::span<const float> scores, std::span<float> probs) {
  float max_score = -std::numeric_limits<float>::infinity();
  for (float s : scores) {
    if (!std::isfinite(s)) return false;
    max_score = std::max(max_score, s);
  }
  double sum = 0.0;
  for (size_t i = 0; i < scores.size(); ++i) {
    probs[i] = std::exp(scores[i] - max_score);
    sum += probs[i];
  }
  const float inv = static_cast<float>(1.0 / sum);
  for (float& p : probs) p *= inv;
  return true;
}

// One token: probs (N_r) already computed; writes selected/weights (k). `keys`, `order`: scratch.
absl::Status SelectTopK(int64_t token, std::span<const float> probs, const RouterParams& params,
                        std::vector<float>& keys, std::vector<int32_t>& order,
                        std::span<int32_t> selected, std::span<float> weights) {
  for (size_t e = 0; e < probs.size(); ++e) {
    keys[e] = probs[e] + (params.bias.empty() ? 0.0f : params.bias[e]);
    if (!std::isfinite(keys[e])) {
      return absl::InvalidArgumentError(
          absl::StrCat("RouteTokens: token ", token, ": p + bias of expert ", e, " not finite"));
    }
  }
  std::iota(order.begin(), order.end(), 0);
  const auto better = [&keys](int32_t a, int32_t b) {
    return keys[a] > keys[b] || (keys[a] == keys[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + params.num_activated, order.end(), better);
  for (int32_t j = 0; j < params.num_activated; ++j) {
    const int32_t e = order[j];
    selected[j] = e;
    weights[j] = params.scale.empty() ? 1.0f : 1.0f + probs[e] * params.scale[e];
  }
  return absl::OkStatus();
}

absl::Status ValidateDispatchArgs(size_t selected_size, int64_t num_tokens, int32_t k,
                                  int32_t num_experts) {
  if (num_tokens < 0) return absl::InvalidArgumentError("BuildDispatchPlan: num_tokens < 0");
  if (num_experts < 1) return absl::InvalidArgumentError("BuildDispatchPlan: num_experts < 1");
  if (k < 1 || k > num_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("BuildDispatchPlan: k ", k, " outside [1, ", num_experts, "]"));
  }
  if (num_tokens > std::numeric_limits<int32_t>::max() / k) {
    return absl::InvalidArgumentError(absl::StrCat(
        "BuildDispatchPlan: num_tokens * k = ", num_tokens, " * ", k, " exceeds int32"));
  }
  return CheckSize("BuildDispatchPlan", "selected", selected_size, num_tokens * k);
}

// counts[e] = number of slots of expert e; rejects bad ids and per-token duplicates.
// `last_token` (E) is scratch: the last token seen selecting e.
absl::Status CountExperts(std::span<const int32_t> selected, int64_t num_tokens, int32_t k,
                          std::vector<int64_t>& counts, std::vector<int64_t>& last_token) {
  const int64_t num_experts = static_cast<int64_t>(counts.size());
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = selected[t * k + j];
      if (e < 0 || e >= num_experts) {
        return absl::InvalidArgumentError(absl::StrCat("BuildDispatchPlan: token ", t,
                                                       " selects expert id ", e, " outside [0, ",
                                                       num_experts, ")"));
      }
      if (last_token[e] == t) {
        return absl::InvalidArgumentError(
            absl::StrCat("BuildDispatchPlan: token ", t, " selects expert ", e, " twice"));
      }
      last_token[e] = t;
      ++counts[e];
    }
  }
  return absl::OkStatus();
}

// Scatters the slots in token order into each expert's range: stable by construction.
void ScatterSlots(std::span<const int32_t> selected, int64_t num_tokens, int32_t k,
                  std::vector<int64_t>& cursor, DispatchPlan& plan) {
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int32_t j = 0; j < k; ++j) {
      const int64_t source = t * k + j;
      const int64_t p = cursor[selected[source]]++;
      plan.slot_token[p] = static_cast<int32_t>(t);
      plan.slot_source[p] = static_cast<int32_t>(source);
      plan.token_slot[source] = static_cast<int32_t>(p);
    }
  }
}

absl::Status PlanError(const std::string& what) {
  return absl::InternalError(absl::StrCat("DispatchPlan invariant broken: ", what));
}

absl::Status ValidatePlanShape(const DispatchPlan& plan, int64_t num_tokens, int32_t k,
                               int32_t num_experts) {
  const auto slots = static_cast<size_t>(num_tokens * k);
  if (plan.num_tokens != num_tokens || plan.k != k || plan.num_experts != num_experts) {
    return PlanError("num_tokens / k / num_experts differ from the arguments");
  }
  if (plan.counts.size() != static_cast<size_t>(num_experts)) return PlanError("counts size");
  if (plan.offsets.size() != static_cast<size_t>(num_experts) + 1) return PlanError("offsets size");
  if (plan.slot_token.size() != slots) return PlanError("slot_token size");
  if (plan.slot_source.size() != slots) return PlanError("slot_source size");
  if (plan.token_slot.size() != slots) return PlanError("token_slot size");
  return absl::OkStatus();
}

absl::Status ValidatePlanCounts(const DispatchPlan& plan, std::span<const int32_t> selected) {
  std::vector<int64_t> counts(plan.num_experts, 0);
  for (int32_t e : selected) {
    if (e < 0 || e >= plan.num_experts) return PlanError("selected holds an id outside [0, E)");
    ++counts[e];
  }
  if (counts != plan.counts) return PlanError("counts differ from a recount of selected");
  if (plan.offsets[0] != 0) return PlanError("offsets[0] != 0");
  for (int32_t e = 0; e < plan.num_experts; ++e) {
    if (plan.offsets[e + 1] != plan.offsets[e] + plan.counts[e]) {
      return PlanError(absl::StrCat("offsets[", e + 1, "] != offsets[", e, "] + counts[", e, "]"));
    }
  }
  return absl::OkStatus();
}

// One expert's rows: each comes from that expert, from the token it names, in increasing token
// order, and token_slot maps its source back to it (which makes slot_source a bijection).
absl::Status ValidateExpertRows(const DispatchPlan& plan, std::span<const int32_t> selected,
                                int32_t e) {
  const auto num_slots = static_cast<int64_t>(selected.size());
  for (int64_t p = plan.offsets[e]; p < plan.offsets[e + 1]; ++p) {
    const int64_t source = plan.slot_source[p];
    const std::string row = absl::StrCat("row ", p, " of expert ", e, ": ");
    if (source < 0 || source >= num_slots) return PlanError(row + "slot_source out of range");
    if (selected[source] != e) return PlanError(row + "slot_source selects another expert");
    if (plan.slot_token[p] != source / plan.k) return PlanError(row + "slot_token != source / k");
    if (plan.token_slot[source] != p) return PlanError(row + "token_slot[slot_source] != row");
    if (p > plan.offsets[e] && plan.slot_token[p] <= plan.slot_token[p - 1]) {
      return PlanError(row + "tokens not strictly increasing");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RouterScores(const RouterScoresArgs& args, std::span<float> scores) {
  CMOE_RETURN_IF_ERROR(ValidateScoresArgs(args, scores.size()));
  const int64_t d = args.dim;
  for (int64_t t = 0; t < args.num_tokens; ++t) {
    const float* x = args.x.data() + t * d;
    for (int64_t e = 0; e < args.num_experts; ++e) {
      const double gate = Dot(args.wr_gate.data() + e * d, x, d);
      const double up = Dot(args.wr_up.data() + e * d, x, d);
      const double s = up * Silu(gate);
      scores[t * args.num_experts + e] =
          static_cast<float>(args.variant == RouterVariant::kReference ? std::abs(s) : s);
    }
  }
  return absl::OkStatus();
}

absl::Status RouteTokens(std::span<const float> scores, int64_t num_tokens,
                         const RouterParams& params, const RouteOutputs& out) {
  CMOE_RETURN_IF_ERROR(ValidateRouteArgs(scores.size(), num_tokens, params, out));
  const int64_t n = params.num_experts;
  const int64_t k = params.num_activated;
  std::vector<float> probs(n), keys(n);
  std::vector<int32_t> order(n);
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (!Softmax(scores.subspan(t * n, n), probs)) {
      return absl::InvalidArgumentError(
          absl::StrCat("RouteTokens: token ", t, " has a score that is not finite"));
    }
    CMOE_RETURN_IF_ERROR(SelectTopK(t, probs, params, keys, order, out.selected.subspan(t * k, k),
                                    out.weights.subspan(t * k, k)));
    if (!out.probs.empty()) std::copy(probs.begin(), probs.end(), out.probs.begin() + t * n);
  }
  return absl::OkStatus();
}

absl::Status BuildDispatchPlanInto(std::span<const int32_t> selected, int64_t num_tokens, int32_t k,
                                   int32_t num_experts, DispatchPlan* plan) {
  CMOE_RETURN_IF_ERROR(ValidateDispatchArgs(selected.size(), num_tokens, k, num_experts));
  plan->num_tokens = num_tokens;
  plan->k = k;
  plan->num_experts = num_experts;
  plan->counts.assign(num_experts, 0);
  std::vector<int64_t> scratch(num_experts, -1);
  CMOE_RETURN_IF_ERROR(CountExperts(selected, num_tokens, k, plan->counts, scratch));
  plan->offsets.resize(num_experts + 1);
  plan->offsets[0] = 0;
  std::partial_sum(plan->counts.begin(), plan->counts.end(), plan->offsets.begin() + 1);
  const auto slots = static_cast<size_t>(num_tokens * k);
  plan->slot_token.resize(slots);
  plan->slot_source.resize(slots);
  plan->token_slot.resize(slots);
  scratch.assign(plan->offsets.begin(), plan->offsets.end() - 1);
  ScatterSlots(selected, num_tokens, k, scratch, *plan);
  return absl::OkStatus();
}

absl::StatusOr<DispatchPlan> BuildDispatchPlan(std::span<const int32_t> selected,
                                               int64_t num_tokens, int32_t k, int32_t num_experts) {
  DispatchPlan plan;
  CMOE_RETURN_IF_ERROR(BuildDispatchPlanInto(selected, num_tokens, k, num_experts, &plan));
  return plan;
}

absl::Status ValidateDispatchPlan(const DispatchPlan& plan, std::span<const int32_t> selected,
                                  int64_t num_tokens, int32_t k, int32_t num_experts) {
  CMOE_RETURN_IF_ERROR(ValidateDispatchArgs(selected.size(), num_tokens, k, num_experts));
  CMOE_RETURN_IF_ERROR(ValidatePlanShape(plan, num_tokens, k, num_experts));
  CMOE_RETURN_IF_ERROR(ValidatePlanCounts(plan, selected));
  if (plan.offsets[num_experts] != num_tokens * k) return PlanError("offsets[E] != T * k");
  for (int32_t e = 0; e < num_experts; ++e) {
    CMOE_RETURN_IF_ERROR(ValidateExpertRows(plan, selected, e));
  }
  return absl::OkStatus();
}

absl::Status ExpertLoad::Add(std::span<const int64_t> step_counts) {
  CMOE_RETURN_IF_ERROR(
      CheckSize("ExpertLoad::Add", "step_counts", step_counts.size(), counts.size()));
  for (size_t e = 0; e < counts.size(); ++e) counts[e] += step_counts[e];
  ++steps;
  return absl::OkStatus();
}

void ExpertLoad::Reset() {
  std::fill(counts.begin(), counts.end(), 0);
  steps = 0;
}

int64_t ExpertLoad::Total() const {
  return std::accumulate(counts.begin(), counts.end(), int64_t{0});
}

double ExpertLoad::MaxOverMean() const {
  const int64_t total = Total();
  if (total == 0 || counts.empty()) return 0.0;
  const int64_t max_count = *std::max_element(counts.begin(), counts.end());
  return static_cast<double>(max_count) * static_cast<double>(counts.size()) /
         static_cast<double>(total);
}

void UpdateBalanceBias(std::span<const int64_t> counts, float gamma, std::span<float> bias) {
  CMOE_CHECK(counts.size() == bias.size())
      << "counts " << counts.size() << " vs bias " << bias.size();
  const int64_t total = std::accumulate(counts.begin(), counts.end(), int64_t{0});
  const auto num_experts = static_cast<int64_t>(counts.size());
  // n_j > total / E  <=>  n_j * E > total: exact in integers.
  for (size_t j = 0; j < counts.size(); ++j) {
    const int64_t scaled = counts[j] * num_experts;
    if (scaled > total) {
      bias[j] -= gamma;
    } else if (scaled < total) {
      bias[j] += gamma;
    }
  }
}

}  // namespace cmoe::engine
