#include "kernels/cpu/moe_ops_host.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/backend.h"

namespace cmoe::kernels::cpu {
namespace {

double Silu(double g) { return g / (1.0 + std::exp(-g)); }

// a is ranked before b: larger key first, NaN last, ties to the lower index.
bool Before(float key_a, int32_t a, float key_b, int32_t b) {
  const bool nan_a = std::isnan(key_a);
  const bool nan_b = std::isnan(key_b);
  if (nan_a != nan_b) return nan_b;
  if (!nan_a && key_a != key_b) return key_a > key_b;
  return a < b;
}

// One token's probabilities (E) from its gate and up logits.
void TokenProbs(const RouteTopKParams& p, int64_t t, std::vector<double>& probs) {
  const int32_t n = p.num_experts;
  const float* gate = p.logits + t * 2 * n;
  const float* up = gate + n;
  double max_score = -std::numeric_limits<double>::infinity();
  for (int32_t e = 0; e < n; ++e) {
    const double s = static_cast<double>(up[e]) * Silu(gate[e]);
    probs[e] = static_cast<double>(static_cast<float>(p.abs_score ? std::abs(s) : s));
    max_score = std::max(max_score, probs[e]);
  }
  double sum = 0.0;
  for (int32_t e = 0; e < n; ++e) {
    probs[e] = std::exp(probs[e] - max_score);
    sum += probs[e];
  }
  for (int32_t e = 0; e < n; ++e) probs[e] /= sum;
}

}  // namespace

absl::Status RouteTopKHost(const RouteTopKParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateRouteTopK(p));
  const int32_t n = p.num_experts;
  const int32_t k = p.num_activated;
  std::vector<double> probs(n);
  std::vector<float> keys(n);
  std::vector<int32_t> order(n);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    TokenProbs(p, t, probs);
    for (int32_t e = 0; e < n; ++e) {
      keys[e] = static_cast<float>(probs[e]) + (p.bias != nullptr ? p.bias[e] : 0.0f);
    }
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(),
                      [&keys](int32_t a, int32_t b) { return Before(keys[a], a, keys[b], b); });
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = order[j];
      p.selected[t * k + j] = e;
      p.weights[t * k + j] =
          p.scale != nullptr ? 1.0f + static_cast<float>(probs[e]) * p.scale[e] : 1.0f;
    }
  }
  return absl::OkStatus();
}

absl::Status BuildDispatchHost(const DispatchParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateDispatch(p));
  const int32_t n = p.num_experts;
  std::vector<int32_t> counts(n, 0);
  std::vector<int64_t> last_token(n, -1);
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    for (int32_t j = 0; j < p.k; ++j) {
      const int32_t e = p.selected[t * p.k + j];
      if (e < 0 || e >= n) {
        return absl::InvalidArgumentError(
            absl::StrCat("BuildDispatch: token ", t, " selects id ", e, " outside [0, ", n, ")"));
      }
      if (last_token[e] == t) {
        return absl::InvalidArgumentError(
            absl::StrCat("BuildDispatch: token ", t, " selects expert ", e, " twice"));
      }
      last_token[e] = t;
      ++counts[e];
    }
  }
  std::vector<int32_t> next(n);
  p.offsets[0] = 0;
  for (int32_t e = 0; e < n; ++e) {
    p.counts[e] = counts[e];
    next[e] = p.offsets[e];
    p.offsets[e + 1] = p.offsets[e] + counts[e];
  }
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    for (int32_t j = 0; j < p.k; ++j) {
      const int32_t source = static_cast<int32_t>(t * p.k + j);
      const int32_t slot = next[p.selected[source]]++;
      p.slot_token[slot] = static_cast<int32_t>(t);
      p.slot_source[slot] = source;
      p.token_slot[source] = slot;
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateGroupOffsets(const GroupedMatMulParams& p) {
  if (p.offsets[0] != 0 || p.offsets[p.w.groups] != p.num_rows) {
    return absl::InvalidArgumentError(absl::StrCat("GroupedMatMul: offsets run from ", p.offsets[0],
                                                   " to ", p.offsets[p.w.groups],
                                                   ", not from 0 to num_rows ", p.num_rows));
  }
  for (int32_t e = 0; e < p.w.groups; ++e) {
    if (p.offsets[e + 1] < p.offsets[e]) {
      return absl::InvalidArgumentError(
          absl::StrCat("GroupedMatMul: offsets decrease at group ", e));
    }
  }
  if (p.row_index != nullptr) {
    for (int64_t r = 0; r < p.num_rows; ++r) {
      if (p.row_index[r] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("GroupedMatMul: row_index[", r, "] = ", p.row_index[r], " < 0"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status GroupedMatMulHost(const GroupedMatMulParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateGroupedMatMul(p));
  CMOE_RETURN_IF_ERROR(ValidateGroupOffsets(p));
  const int64_t in = p.w.cols;
  const int64_t out = p.w.rows;
  std::vector<float> row(static_cast<size_t>(in));
  for (int32_t e = 0; e < p.w.groups; ++e) {
    const WeightView w = p.w.Group(e);
    for (int64_t o = 0; o < out; ++o) {
      WidenToFloat(w, o * in, in, row.data());
      for (int64_t r = p.offsets[e]; r < p.offsets[e + 1]; ++r) {
        const float* x = p.x + (p.row_index != nullptr ? p.row_index[r] : r) * in;
        double sum = 0.0;
        for (int64_t i = 0; i < in; ++i) sum += static_cast<double>(x[i]) * row[i];
        p.y[r * out + o] = static_cast<float>(sum);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status SiluMulPackedHost(const float* gate_up, int64_t rows, int64_t width, float* out) {
  if (rows < 0 || width < 1) {
    return absl::InvalidArgumentError(absl::StrCat("SiluMulPacked: rows ", rows, ", width ", width,
                                                   " (need rows >= 0, width >= 1)"));
  }
  if (rows > 0 && (gate_up == nullptr || out == nullptr)) {
    return absl::InvalidArgumentError("SiluMulPacked: gate_up or out is null");
  }
  for (int64_t r = 0; r < rows; ++r) {
    const float* gate = gate_up + r * 2 * width;
    const float* up = gate + width;
    for (int64_t i = 0; i < width; ++i) {
      out[r * width + i] = static_cast<float>(Silu(gate[i]) * up[i]);
    }
  }
  return absl::OkStatus();
}

absl::Status CombineExpertsHost(const CombineParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateCombine(p));
  for (int64_t t = 0; t < p.num_tokens; ++t) {
    float* x = p.x + t * p.dim;
    for (int64_t i = 0; i < p.dim; ++i) {
      double sum = x[i];
      for (int32_t j = 0; j < p.k; ++j) {
        const int64_t slot = p.token_slot[t * p.k + j];
        sum += static_cast<double>(p.weights[t * p.k + j]) * p.expert_out[slot * p.dim + i];
      }
      x[i] = static_cast<float>(sum);
    }
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels::cpu
