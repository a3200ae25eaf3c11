// Perplexity by the GPTQ protocol: tokenize the whole text once with one BOS at the start, cut it
// into consecutive non-overlapping windows of `ctx` tokens, drop the last partial window, predict
// every token of each window but its first; ppl = exp(mean NLL).
//
//   CMOE_ASSIGN_OR_RETURN(PerplexityResult r, EvaluatePerplexity(*model, *cache, ids, {.ctx =
//   512}));
#ifndef CMOE_ENGINE_PERPLEXITY_H_
#define CMOE_ENGINE_PERPLEXITY_H_

#include <cstdint>
#include <functional>
#include <span>

#include "absl/status/statusor.h"
#include "engine/kv_cache.h"
#include "engine/model.h"

namespace cmoe::engine {

struct PerplexityOptions {
  int64_t ctx = 0;          // window length in tokens; 0: the model's context
  int64_t max_windows = 0;  // 0: all full windows
  int64_t chunk = 512;      // tokens per forward step inside a window
  // Carved models: routed experts per token (1..N_r); 0: the checkpoint's default.
  int32_t num_activated_experts = 0;
  // Called after each window with (windows done, windows total); may be empty.
  std::function<void(int64_t, int64_t)> on_window;
};

struct PerplexityResult {
  double ppl = 0.0;
  double nll = 0.0;  // mean negative log-likelihood per scored token (nats)
  int64_t tokens_scored = 0;
  int64_t windows = 0;
  int64_t ctx = 0;
};

// InvalidArgument when ctx exceeds the model's context or is < 2, or the text is shorter than one
// window; ResourceExhausted when the cache cannot hold a window.
absl::StatusOr<PerplexityResult> EvaluatePerplexity(Model& model, KvCache& cache,
                                                    std::span<const int32_t> tokens,
                                                    const PerplexityOptions& options);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_PERPLEXITY_H_
