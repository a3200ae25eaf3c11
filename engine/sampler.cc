#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"

namespace cmoe::engine {
namespace {

absl::Status FieldError(std::string_view field, double value, std::string_view rule) {
  return absl::InvalidArgumentError(
      absl::StrCat(std::string(field), " = ", value, ": ", std::string(rule)));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return FieldError("temperature", p.temperature, "must be finite and >= 0");
  }
  if (p.top_k < 0) return FieldError("top_k", p.top_k, "must be >= 0 (0 disables it)");
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) {
    return FieldError("top_p", p.top_p, "must be in (0, 1]");
  }
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) {
    return FieldError("min_p", p.min_p, "must be in [0, 1]");
  }
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0.0f) {
    return FieldError("repetition_penalty", p.repetition_penalty, "must be finite and > 0");
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return FieldError("presence_penalty", p.presence_penalty, "must be in [-2, 2]");
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return FieldError("frequency_penalty", p.frequency_penalty, "must be in [-2, 2]");
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

void Sampler::ApplyPenalties(std::span<const int32_t> prompt, std::span<const int32_t> generated) {
  const auto vocab = static_cast<int32_t>(work_.size());
  if (params_.repetition_penalty != 1.0f) {
    counts_.assign(work_.size(), 0);
    for (auto ids : {prompt, generated}) {
      for (int32_t id : ids) {
        if (id >= 0 && id < vocab) counts_[id] = 1;
      }
    }
    for (int32_t id = 0; id < vocab; ++id) {
      if (counts_[id] == 0) continue;
      work_[id] = work_[id] > 0.0f ? work_[id] / params_.repetition_penalty
                                   : work_[id] * params_.repetition_penalty;
    }
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    counts_.assign(work_.size(), 0);
    for (int32_t id : generated) {
      if (id >= 0 && id < vocab) ++counts_[id];
    }
    for (int32_t id = 0; id < vocab; ++id) {
      if (counts_[id] == 0) continue;
      work_[id] -= params_.presence_penalty + params_.frequency_penalty * counts_[id];
    }
  }
}

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                        std::span<const int32_t> generated) {
  work_.assign(logits.begin(), logits.end());
  ApplyPenalties(prompt, generated);
  scaled_valid_ = false;
  if (params_.temperature == 0.0f) {
    return static_cast<int32_t>(std::max_element(work_.begin(), work_.end()) - work_.begin());
  }
  Scale(params_.temperature);
  cands_.clear();
  for (size_t i = 0; i < scaled_.size(); ++i) {
    cands_.emplace_back(std::max(scaled_[i], static_cast<float>(-1e30)), static_cast<int32_t>(i));
  }
  return SampleFromCandidates();
}

std::span<const float> Sampler::ScaledLogits() {
  if (!scaled_valid_) Scale(1.0);
  return scaled_;
}

void Sampler::Scale(double temperature) {
  // Scaled relative to the best logit, in double: a tiny temperature must sharpen the
  // distribution towards greedy, not overflow to inf (and NaN probabilities). What leaves the
  // float range becomes -inf (explicitly: such a cast is undefined), probability 0 either way.
  scaled_.resize(work_.size());
  scaled_valid_ = true;
  if (work_.empty()) return;
  const double best = *std::max_element(work_.begin(), work_.end());
  constexpr double kLowest = std::numeric_limits<float>::lowest();
  for (size_t i = 0; i < work_.size(); ++i) {
    const double scaled = (work_[i] - best) / temperature;
    scaled_[i] =
        scaled < kLowest ? -std::numeric_limits<float>::infinity() : static_cast<float>(scaled);
  }
}

double Sampler::NextUniform() {
  // What std::uniform_real_distribution<double>(0, total) multiplies by total; below 1 even
  // where an old standard library could round up to 1.
  return std::min(std::generate_canonical<double, 53>(rng_), std::nextafter(1.0, 0.0));
}

std::optional<kernels::RowSampling> Sampler::TakeBackendSampling() {
  if (params_.repetition_penalty != 1.0f || params_.presence_penalty != 0.0f ||
      params_.frequency_penalty != 0.0f) {
    return std::nullopt;
  }
  kernels::RowSampling row{.temperature = params_.temperature,
                           .top_k = params_.top_k,
                           .top_p = params_.top_p,
                           .min_p = params_.min_p};
  if (params_.temperature > 0.0f) row.uniform = NextUniform();
  return row;
}

int32_t Sampler::SampleFromCandidates() {
  // Highest logit first; ties by lower id so results do not depend on the sort's stability.
  const auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t keep = cands_.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < keep) {
    keep = static_cast<size_t>(params_.top_k);
    std::partial_sort(cands_.begin(), cands_.begin() + keep, cands_.end(), by_logit);
  } else {
    std::sort(cands_.begin(), cands_.end(), by_logit);
  }
  cands_.resize(keep);
  const float max_logit = cands_.front().first;
  std::vector<double> probs(keep);
  double total = 0.0;
  for (size_t i = 0; i < keep; ++i) total += probs[i] = std::exp(cands_[i].first - max_logit);
  // min-p: p_i >= min_p * p_max, i.e. exp(l_i - l_max) >= min_p.
  size_t n = keep;
  if (params_.min_p > 0.0f) {
    while (n > 1 && probs[n - 1] < params_.min_p) --n;
  }
  if (params_.top_p < 1.0f) {
    double mass = 0.0, kept_total = 0.0;
    for (size_t i = 0; i < n; ++i) kept_total += probs[i];
    size_t cut = 0;
    while (cut < n && mass < params_.top_p * kept_total) mass += probs[cut++];
    n = std::max<size_t>(cut, 1);
  }
  total = 0.0;
  for (size_t i = 0; i < n; ++i) total += probs[i];
  double r = NextUniform() * total;
  for (size_t i = 0; i < n; ++i) {
    if ((r -= probs[i]) < 0.0) return cands_[i].second;
  }
  return cands_[n - 1].second;
}

}  // namespace cmoe::engine
