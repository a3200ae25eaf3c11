// Log-probabilities of a generated token and of the most likely alternatives at its position,
// from the logits of the distribution it was drawn from (for the engine: Sampler::ScaledLogits,
// i.e. after masking, penalties and temperature, before top-k / top-p / min-p truncation).
//
//   TokenLogprob lp = ComputeTokenLogprob(sampler.ScaledLogits(), token, /*top_n=*/5);
//   // lp.logprob == log softmax(logits)[token]; lp.top: the 5 most likely, most likely first
//
// Numerics: the largest logit is subtracted and the normaliser summed in double, so huge or tiny
// logits neither overflow nor lose the small terms. One pass over the vocabulary plus a heap of
// top_n candidates (O(V log n), no sort of the vocabulary). Non-finite logits (masked tokens are
// -inf) have probability 0: their log-probability is -inf (never NaN) and they are never listed
// among the alternatives.
#ifndef CMOE_ENGINE_LOGPROBS_H_
#define CMOE_ENGINE_LOGPROBS_H_

#include <cstdint>
#include <span>
#include <vector>

namespace cmoe::engine {

// The largest number of alternatives a request may ask for (GenerationRequest::top_logprobs;
// what GetModelInfo reports as max_top_logprobs). OpenAI and vLLM use the same bound.
inline constexpr int32_t kMaxTopLogprobs = 20;

// One candidate token and the natural log of its probability.
struct TopLogprob {
  int32_t token = 0;
  float logprob = 0.0f;

  bool operator==(const TopLogprob&) const = default;
};

// A generated token's log-probability and the most likely tokens at its position.
struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;         // <= 0; -inf when the token had probability 0
  std::vector<TopLogprob> top;  // most likely first, ties by lower id; empty unless asked for

  bool operator==(const TokenLogprob&) const = default;
};

// log softmax(`logits`) at `token`, and the `top_n` most likely tokens (fewer when fewer logits
// are finite; top_n <= 0: none). `logits` (vocab), host f32, read only. A token outside
// [0, vocab) or with a non-finite logit gets -inf; so does every token when no logit is finite.
TokenLogprob ComputeTokenLogprob(std::span<const float> logits, int32_t token, int32_t top_n);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_LOGPROBS_H_
