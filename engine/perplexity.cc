#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::engine {
namespace {

// -log softmax(logits)[target], computed in double.
double NegLogProb(std::span<const float> logits, int32_t target) {
  const float max_logit = *std::max_element(logits.begin(), logits.end());
  double total = 0.0;
  for (float l : logits) total += std::exp(static_cast<double>(l) - max_logit);
  return std::log(total) - (static_cast<double>(logits[target]) - max_logit);
}

// Sum of NLL over tokens 1..n-1 of one window (predicted from the tokens before them).
absl::StatusOr<double> WindowNll(Model& model, KvCache& cache, std::span<const int32_t> window,
                                 const PerplexityOptions& options) {
  const int64_t chunk_size = options.chunk;
  SequenceBlocks seq;
  ForwardOutput out;
  double nll = 0.0;
  const auto n = static_cast<int64_t>(window.size());
  absl::Status status = cache.Reserve(seq, n);
  for (int64_t begin = 0; status.ok() && begin < n - 1; begin += chunk_size) {
    // The last token of the window is never an input: nothing after it is scored.
    const int64_t count = std::min(chunk_size, n - 1 - begin);
    const SequenceChunk chunk{.tokens = window.subspan(begin, count),
                              .start_pos = begin,
                              .blocks = &seq,
                              .all_logits = true,
                              .num_activated_experts = options.num_activated_experts};
    status = model.Forward({&chunk, 1}, cache, out);
    for (int64_t i = 0; status.ok() && i < count; ++i) {
      nll += NegLogProb(out.Logits(0, i), window[begin + i + 1]);
    }
  }
  cache.Release(seq);
  if (!status.ok()) return status;
  return nll;
}

}  // namespace

absl::StatusOr<PerplexityResult> EvaluatePerplexity(Model& model, KvCache& cache,
                                                    std::span<const int32_t> tokens,
                                                    const PerplexityOptions& options) {
  const int64_t context = model.config().max_position_embeddings;
  const int64_t ctx = options.ctx > 0 ? options.ctx : context;
  if (ctx < 2 || ctx > context) {
    return absl::InvalidArgumentError(
        absl::StrCat("--ctx ", ctx, " must be in [2, ", context, "] (the model's context)"));
  }
  if (options.chunk <= 0) return absl::InvalidArgumentError("chunk must be > 0");
  int64_t windows = static_cast<int64_t>(tokens.size()) / ctx;
  if (windows == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("the text has ", tokens.size(), " tokens, fewer than one window of ", ctx));
  }
  if (options.max_windows > 0) windows = std::min(windows, options.max_windows);
  PerplexityResult result{.ctx = ctx};
  double total = 0.0;
  for (int64_t w = 0; w < windows; ++w) {
    CMOE_ASSIGN_OR_RETURN(double nll,
                          WindowNll(model, cache, tokens.subspan(w * ctx, ctx), options));
    total += nll;
    if (options.on_window) options.on_window(w + 1, windows);
  }
  result.windows = windows;
  result.tokens_scored = windows * (ctx - 1);
  result.nll = total / static_cast<double>(result.tokens_scored);
  result.ppl = std::exp(result.nll);
  return result;
}

}  // namespace cmoe::engine
