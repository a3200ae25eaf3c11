// Token sampling from logits: greedy, temperature, top-k, top-p, min-p, and the repetition /
// presence / frequency penalties, with a per-request seeded generator (same seed, same tokens).
//
//   CMOE_RETURN_IF_ERROR(ValidateSamplingParams(params, vocab));
//   Sampler sampler(params);
//   int32_t next = sampler.Sample(logits, prompt_ids, generated_ids);
//   std::span<const float> drawn_from = sampler.ScaledLogits();  // for log-probabilities
//
// A Sampler belongs to one request; it is not shared between threads.
#ifndef CMOE_ENGINE_SAMPLER_H_
#define CMOE_ENGINE_SAMPLER_H_

#include <cstdint>
#include <optional>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/sampling.h"

namespace cmoe::engine {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax, lowest id on ties)
  int32_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off; keep the smallest set with probability mass >= top_p
  float min_p = 0.0f;        // 0: off; drop tokens with p < min_p * p_max
  // HF/CTRL style over prompt and generated tokens: positive logits divided, negative multiplied.
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;   // OpenAI style, subtracted once per generated token seen
  float frequency_penalty = 0.0f;  // OpenAI style, subtracted per occurrence in generated tokens
  uint64_t seed = 0;
};

// InvalidArgument naming the field: temperature < 0 or not finite, top_k < 0, top_p not in (0, 1],
// min_p not in [0, 1], repetition_penalty <= 0, penalties not finite or outside [-2, 2].
absl::Status ValidateSamplingParams(const SamplingParams& params);

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token from `logits` (vocab). `prompt` and `generated` feed the penalties.
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                 std::span<const int32_t> generated);

  // The distribution the last Sample drew from, as logits, before top-k / top-p / min-p
  // truncation: its `logits` with the penalties applied, divided by the temperature (0 counts as
  // 1), shifted so that the largest is 0 (a shift leaves the softmax unchanged). (vocab), valid
  // until the next Sample. Computed here on demand when the last Sample was greedy, so greedy
  // decoding pays for it only when asked.
  std::span<const float> ScaledLogits();

  // The parameters with which a backend can draw this request's next token where the logits are
  // (Backend::SampleTokens, kernels/sampling.h), taking the token's uniform from this request's
  // generator exactly as Sample would: same seed, same tokens on either path (up to the
  // backend's fixed-point masses, which may decide differently only when the draw lies within
  // 2^-40 of a boundary). nullopt, drawing nothing, when a penalty is set: penalties read the
  // request's token history, which stays on the host.
  std::optional<kernels::RowSampling> TakeBackendSampling();

 private:
  void ApplyPenalties(std::span<const int32_t> prompt, std::span<const int32_t> generated);
  void Scale(double temperature);
  int32_t SampleFromCandidates();
  // A uniform in [0, 1) from rng_ (53 random bits).
  double NextUniform();

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> work_;                       // (vocab) penalised logits
  std::vector<float> scaled_;                     // (vocab) ScaledLogits()
  bool scaled_valid_ = false;                     // scaled_ belongs to the last Sample
  std::vector<std::pair<float, int32_t>> cands_;  // (logit, id) candidates
  std::vector<int32_t> counts_;                   // (vocab) occurrences in generated tokens
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SAMPLER_H_
