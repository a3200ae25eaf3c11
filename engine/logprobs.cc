#include "engine/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace cmoe::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Ranks `a` before `b`: higher logit first, then lower id (so results do not depend on the scan).
bool Before(const TopLogprob& a, const TopLogprob& b) {
  return a.logprob > b.logprob || (a.logprob == b.logprob && a.token < b.token);
}

// The `n` best finite (logit, id) pairs, best first; `logprob` holds the logit until normalised.
std::vector<TopLogprob> TopLogits(std::span<const float> logits, size_t n) {
  std::vector<TopLogprob> heap;  // worst kept candidate at the front
  if (n == 0) return heap;
  heap.reserve(n);
  for (size_t i = 0; i < logits.size(); ++i) {
    if (!std::isfinite(logits[i])) continue;
    const TopLogprob c{.token = static_cast<int32_t>(i), .logprob = logits[i]};
    if (heap.size() < n) {
      heap.push_back(c);
      std::push_heap(heap.begin(), heap.end(), Before);
    } else if (Before(c, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), Before);
      heap.back() = c;
      std::push_heap(heap.begin(), heap.end(), Before);
    }
  }
  std::sort_heap(heap.begin(), heap.end(), Before);
  return heap;
}

}  // namespace

TokenLogprob ComputeTokenLogprob(std::span<const float> logits, int32_t token, int32_t top_n) {
  TokenLogprob out{.token = token, .logprob = kNegInf};
  float max_logit = kNegInf;
  for (float l : logits) {
    if (std::isfinite(l)) max_logit = std::max(max_logit, l);
  }
  if (max_logit == kNegInf) return out;  // no finite logit: nothing has a probability
  double total = 0.0;
  for (float l : logits) {
    if (std::isfinite(l)) total += std::exp(static_cast<double>(l) - max_logit);
  }
  // total >= 1 (the largest term is exp(0)). The max is subtracted before log(total): added to a
  // huge max first, log(total) would be rounded away.
  const double log_total = std::log(total);
  // Below the float range is -inf (explicitly: such a cast is undefined).
  const auto log_prob = [&](float l) {
    const double lp = (static_cast<double>(l) - max_logit) - log_total;
    return lp < std::numeric_limits<float>::lowest() ? kNegInf : static_cast<float>(lp);
  };
  const auto vocab = static_cast<int64_t>(logits.size());
  if (token >= 0 && token < vocab && std::isfinite(logits[static_cast<size_t>(token)])) {
    out.logprob = log_prob(logits[static_cast<size_t>(token)]);
  }
  out.top = TopLogits(logits, static_cast<size_t>(std::max(top_n, 0)));
  for (TopLogprob& t : out.top) t.logprob = log_prob(t.logprob);
  // A finite logit can still be probability 0 in float (e.g. 6e38 below the max): never listed.
  std::erase_if(out.top, [](const TopLogprob& t) { return t.logprob == kNegInf; });
  return out;
}

}  // namespace cmoe::engine
