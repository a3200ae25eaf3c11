// Single-request generation on a Model: chunked prefill of the prompt, then one decode step per
// token until EOS, the token limit or the end of the context. The offline tools and tests use it;
// the server's scheduler batches many requests with the same Model::Forward instead.
//
//   GenerateOptions options{.max_new_tokens = 64};
//   CMOE_ASSIGN_OR_RETURN(GenerateResult r, GenerateTokens(*model, *cache, prompt, options));
#ifndef CMOE_ENGINE_GENERATION_H_
#define CMOE_ENGINE_GENERATION_H_

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/sampler.h"

namespace cmoe::engine {

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplingParams sampling;
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids (unless ignore_eos)
  bool ignore_eos = false;
  int64_t prefill_chunk = 512;  // prompt tokens per forward step
  // Carved models: routed experts per token (1..N_r); 0: the checkpoint's default.
  int32_t num_activated_experts = 0;
  // Called with each new token as soon as it is sampled (may be empty).
  std::function<void(int32_t)> on_token;
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated tokens (a stop token included)
  // "length" (max_new_tokens), "stop" (EOS or a stop token id), "context" (context full).
  std::string finish_reason;
  double prefill_seconds = 0.0;
  double decode_seconds = 0.0;  // time of all steps after the first token
};

// InvalidArgument for an empty prompt, a prompt that fills the context, or bad sampling params;
// ResourceExhausted when the cache cannot hold the sequence. The sequence's cache blocks are
// released before returning, whatever the outcome.
absl::StatusOr<GenerateResult> GenerateTokens(Model& model, KvCache& cache,
                                              std::span<const int32_t> prompt,
                                              const GenerateOptions& options);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_GENERATION_H_
