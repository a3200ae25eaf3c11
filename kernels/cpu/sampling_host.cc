#include "kernels/cpu/sampling_host.h"

#include <algorithm>
#include <array>
#include <optional>
#include <vector>

#include "kernels/backend.h"
#include "kernels/sample_row.h"

namespace cmoe::kernels::cpu {
namespace {

namespace sr = sample_row;

// The key of the first token (largest key first) among those `eligible` where the running total
// of `weight` reaches `need`; nullopt when they fall short.
template <class Eligible, class Weight>
std::optional<uint64_t> Descend(std::span<const uint64_t> keys, uint64_t need, Eligible eligible,
                                Weight weight) {
  const auto vocab = static_cast<int64_t>(keys.size());
  uint64_t prefix = 0, mask = 0, above = 0;
  std::array<uint64_t, sr::kRadixBins> bins;
  for (int d = 0; d < sr::NumDigits(vocab); ++d) {
    const int shift = sr::DigitShift(d, vocab);
    bins.fill(0);
    for (int64_t i = 0; i < vocab; ++i) {
      if ((keys[i] & mask) != prefix || !eligible(i)) continue;
      bins[(keys[i] >> shift) & 0xff] += weight(i);
    }
    const int b = sr::DescendDigit(bins.data(), need, above);
    if (b < 0) return std::nullopt;
    prefix |= static_cast<uint64_t>(b) << shift;
    mask |= uint64_t{0xff} << shift;
  }
  return prefix;
}

}  // namespace

int32_t SampleRowHost(std::span<const float> logits, const RowSampling& p) {
  const auto vocab = static_cast<int64_t>(logits.size());
  uint64_t best_key = 0;
  for (int64_t i = 0; i < vocab; ++i) best_key = std::max(best_key, sr::Key(logits[i], i, vocab));
  const int32_t argmax = sr::TokenOf(best_key, vocab);
  if (p.temperature == 0.0f) return argmax;
  const float best = logits[argmax];

  std::vector<uint64_t> keys(vocab), masses(vocab);
  std::vector<uint8_t> min_p_ok(vocab);
  for (int64_t i = 0; i < vocab; ++i) {
    const float s = sr::ScaledLogit(logits[i], best, p.temperature);
    keys[i] = sr::Key(s, i, vocab);
    masses[i] = sr::FixedMass(s);
    min_p_ok[i] = sr::PassesMinP(s, p.min_p) ? 1 : 0;
  }
  // Candidates: keys >= lower that pass min_p (min_p applies after top-k, which counts all).
  uint64_t lower = 0;
  const auto candidate = [&](int64_t i) { return keys[i] >= lower && min_p_ok[i] != 0; };
  const auto mass = [&](int64_t i) { return masses[i]; };
  const auto candidates_mass = [&] {
    uint64_t total = 0;
    for (int64_t i = 0; i < vocab; ++i) total += candidate(i) ? masses[i] : 0;
    return total;
  };
  if (p.top_k > 0 && p.top_k < vocab) {
    const std::optional<uint64_t> kth = Descend(
        keys, static_cast<uint64_t>(p.top_k), [](int64_t) { return true; },
        [](int64_t) { return uint64_t{1}; });
    if (!kth.has_value()) return argmax;
    lower = *kth;
  }
  uint64_t total = candidates_mass();
  if (total == 0) return argmax;  // every logit NaN
  if (p.top_p < 1.0f) {
    const std::optional<uint64_t> last =
        Descend(keys, sr::TopPNeed(p.top_p, total), candidate, mass);
    if (!last.has_value()) return argmax;
    lower = *last;
    total = candidates_mass();
  }
  const std::optional<uint64_t> drawn =
      Descend(keys, sr::DrawNeed(p.uniform, total), candidate, mass);
  return drawn.has_value() ? sr::TokenOf(*drawn, vocab) : argmax;
}

absl::Status SampleTokensHost(const SampleTokensParams& params) {
  if (absl::Status s = ValidateSampleTokens(params); !s.ok()) return s;
  for (int64_t r = 0; r < params.rows; ++r) {
    params.tokens[r] = SampleRowHost(
        {params.logits + r * params.vocab, static_cast<size_t>(params.vocab)}, params.sampling[r]);
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels::cpu
