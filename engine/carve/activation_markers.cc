#include "engine/carve/activation_markers.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace cmoe::engine::carve {
namespace {

// Ranking key of a score: |score|, NaN below every number.
float RankKey(float score) { return std::isnan(score) ? -1.0f : std::fabs(score); }

// Top-k of one row by one pass over a small sorted buffer. Neurons are visited in increasing
// index order, so a later neuron displaces the current k-th only with a strictly larger key:
// that is exactly "equal |score| -> lower index wins".
void TopKOfRow(std::span<const float> row, int64_t k, std::vector<std::pair<float, int64_t>>& buf) {
  buf.clear();
  if (k == 0) return;
  for (int64_t i = 0; i < static_cast<int64_t>(row.size()); ++i) {
    const float key = RankKey(row[i]);
    if (static_cast<int64_t>(buf.size()) == k) {
      if (!(key > buf.back().first)) continue;
      buf.pop_back();
    }
    auto pos = buf.end();
    while (pos != buf.begin() && key > std::prev(pos)->first) --pos;
    buf.insert(pos, {key, i});
  }
}

absl::Status ValidateTopKParams(std::span<const float> scores, const TopKMarkerParams& p) {
  if (p.num_tokens < 0 || p.num_neurons < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("BuildTopKMarkers: negative shape (", p.num_tokens, ", ", p.num_neurons, ")"));
  }
  if (p.top_k < 0 || p.top_k > p.num_neurons) {
    return absl::InvalidArgumentError(absl::StrCat("BuildTopKMarkers: top_k = ", p.top_k,
                                                   " is outside [0, num_neurons = ", p.num_neurons,
                                                   "]"));
  }
  if (static_cast<int64_t>(scores.size()) != p.num_tokens * p.num_neurons) {
    return absl::InvalidArgumentError(absl::StrCat("BuildTopKMarkers: scores has ", scores.size(),
                                                   " floats, expected ", p.num_tokens, " x ",
                                                   p.num_neurons));
  }
  return absl::OkStatus();
}

}  // namespace

ActivationMarkers::ActivationMarkers(int64_t num_tokens, int64_t num_neurons)
    : num_tokens_(std::max<int64_t>(num_tokens, 0)),
      num_neurons_(std::max<int64_t>(num_neurons, 0)),
      words_per_column_((num_tokens_ + 63) / 64),
      bits_(static_cast<size_t>(num_neurons_ * words_per_column_), 0) {}

int64_t ActivationMarkers::ActivationCount(int64_t i) const {
  int64_t count = 0;
  for (uint64_t w : Column(i)) count += std::popcount(w);
  return count;
}

double ActivationMarkers::ActivationRate(int64_t i) const {
  if (num_tokens_ == 0) return 0.0;
  return static_cast<double>(ActivationCount(i)) / static_cast<double>(num_tokens_);
}

std::span<const uint64_t> ActivationMarkers::Column(int64_t i) const {
  return std::span<const uint64_t>(bits_).subspan(i * words_per_column_, words_per_column_);
}

absl::StatusOr<ActivationMarkers> BuildTopKMarkers(std::span<const float> scores,
                                                   const TopKMarkerParams& params,
                                                   ThreadPool* pool) {
  if (absl::Status s = ValidateTopKParams(scores, params); !s.ok()) return s;
  ActivationMarkers markers(params.num_tokens, params.num_neurons);
  const int64_t n = params.num_neurons;
  auto body = [&](int64_t begin, int64_t end) {
    std::vector<std::pair<float, int64_t>> buf;
    buf.reserve(params.top_k + 1);
    for (int64_t t = begin; t < end; ++t) {
      TopKOfRow(scores.subspan(t * n, n), params.top_k, buf);
      for (const auto& [key, i] : buf) markers.Set(t, i);
    }
  };
  // Chunks are multiples of 64 tokens, so no two threads write the same word.
  if (pool != nullptr) {
    pool->ParallelFor(params.num_tokens, /*grain=*/64, body);
  } else {
    body(0, params.num_tokens);
  }
  return markers;
}

// The x86-64 baseline has no POPCNT instruction (std::popcount becomes a libgcc call, ~5x
// slower on the cost matrix); clone the loop for CPUs that have it, chosen at load time. Not
// under ThreadSanitizer: its instrumented resolver would run at relocation, before TSan is up.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_THREAD__)
__attribute__((target_clones("popcnt", "default")))
#endif
int64_t
HammingDistance(std::span<const uint64_t> a, std::span<const uint64_t> b) {
  int64_t d = 0;
  for (size_t w = 0; w < a.size(); ++w) d += std::popcount(a[w] ^ b[w]);
  return d;
}

int64_t L1Distance(const ActivationMarkers& markers, int64_t i,
                   std::span<const uint64_t> centroid) {
  return HammingDistance(markers.Column(i), centroid);
}

double L1Distance(const ActivationMarkers& markers, int64_t i, std::span<const float> centroid) {
  // Σ_t |A - c_t| = Σ_{bit 0} |c_t| + Σ_{bit 1} |1 - c_t|.
  const std::span<const uint64_t> column = markers.Column(i);
  double sum = 0.0;
  for (int64_t t = 0; t < markers.num_tokens(); ++t) {
    const bool bit = (column[t >> 6] >> (t & 63)) & 1;
    sum += std::fabs(static_cast<double>(bit) - static_cast<double>(centroid[t]));
  }
  return sum;
}

std::vector<float> MeanColumn(const ActivationMarkers& markers, std::span<const int64_t> members) {
  std::vector<int64_t> counts(static_cast<size_t>(markers.num_tokens()), 0);
  for (int64_t i : members) {
    const std::span<const uint64_t> column = markers.Column(i);
    for (int64_t w = 0; w < static_cast<int64_t>(column.size()); ++w) {
      for (uint64_t bits = column[w]; bits != 0; bits &= bits - 1) {
        ++counts[w * 64 + std::countr_zero(bits)];
      }
    }
  }
  std::vector<float> mean(counts.size(), 0.0f);
  if (members.empty()) return mean;
  const double inv = 1.0 / static_cast<double>(members.size());
  for (size_t t = 0; t < counts.size(); ++t) mean[t] = static_cast<float>(counts[t] * inv);
  return mean;
}

}  // namespace cmoe::engine::carve
