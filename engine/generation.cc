#include "engine/generation.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/timer.h"

namespace cmoe::engine {
namespace {

absl::Status ValidateRequest(const Model& model, std::span<const int32_t> prompt,
                             const GenerateOptions& options) {
  if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
  const int64_t context = model.config().max_position_embeddings;
  if (static_cast<int64_t>(prompt.size()) >= context) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt of ", prompt.size(), " tokens leaves no room in the context of ", context));
  }
  if (options.max_new_tokens < 0) {
    return absl::InvalidArgumentError("max_new_tokens must be >= 0");
  }
  if (options.prefill_chunk <= 0) return absl::InvalidArgumentError("prefill_chunk must be > 0");
  return ValidateSamplingParams(options.sampling);
}

bool IsStop(const Model& model, const GenerateOptions& options, int32_t token) {
  const auto& stops = options.stop_token_ids;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return true;
  const auto& eos = model.config().eos_token_ids;
  return !options.ignore_eos && std::find(eos.begin(), eos.end(), token) != eos.end();
}

// The parameters for sampling the next token in the model (kernels/sampling.h) -- on a device,
// where it saves the logits' trip to the host -- or nullopt to sample from the logits here.
std::optional<kernels::RowSampling> InModelSampling(Model& model, Sampler& sampler) {
  if (!model.backend().IsDevice()) return std::nullopt;
  return sampler.TakeBackendSampling();
}

// The token of the last Forward: sampled in the model, or from its logits by `sampler`.
int32_t NextToken(const ForwardOutput& out, Sampler& sampler, std::span<const int32_t> prompt,
                  std::span<const int32_t> generated) {
  if (out.tokens[0] >= 0) return out.tokens[0];
  return sampler.Sample(out.Logits(0), prompt, generated);
}

// Runs the prompt through the model in chunks; leaves the last chunk's logits (or its sampled
// token) in `out`.
absl::Status Prefill(Model& model, KvCache& cache, SequenceBlocks& seq,
                     std::span<const int32_t> prompt, const GenerateOptions& options,
                     Sampler& sampler, ForwardOutput& out) {
  const int64_t chunk_size = options.prefill_chunk;
  const auto total = static_cast<int64_t>(prompt.size());
  for (int64_t begin = 0; begin < total; begin += chunk_size) {
    const int64_t n = std::min(chunk_size, total - begin);
    CMOE_RETURN_IF_ERROR(cache.Reserve(seq, begin + n));
    SequenceChunk chunk{.tokens = prompt.subspan(begin, n),
                        .start_pos = begin,
                        .blocks = &seq,
                        .num_activated_experts = options.num_activated_experts};
    std::optional<kernels::RowSampling> row;
    if (begin + n == total && options.max_new_tokens > 0) row = InModelSampling(model, sampler);
    if (row.has_value()) chunk.sample = &*row;
    CMOE_RETURN_IF_ERROR(model.Forward({&chunk, 1}, cache, out));
  }
  return absl::OkStatus();
}

absl::Status Decode(Model& model, KvCache& cache, SequenceBlocks& seq,
                    std::span<const int32_t> prompt, const GenerateOptions& options,
                    Sampler& sampler, ForwardOutput& out, GenerateResult& result) {
  const int64_t context = model.config().max_position_embeddings;
  int64_t pos = static_cast<int64_t>(prompt.size());
  result.finish_reason = "length";
  Timer timer;
  while (static_cast<int64_t>(result.tokens.size()) < options.max_new_tokens) {
    if (!result.tokens.empty()) {
      if (pos > context) {
        result.finish_reason = "context";
        break;
      }
      CMOE_RETURN_IF_ERROR(cache.Reserve(seq, pos));
      SequenceChunk chunk{.tokens = {&result.tokens.back(), 1},
                          .start_pos = pos - 1,
                          .blocks = &seq,
                          .num_activated_experts = options.num_activated_experts};
      std::optional<kernels::RowSampling> row = InModelSampling(model, sampler);
      if (row.has_value()) chunk.sample = &*row;
      CMOE_RETURN_IF_ERROR(model.Forward({&chunk, 1}, cache, out));
    } else {
      timer.Reset();
    }
    const int32_t token = NextToken(out, sampler, prompt, result.tokens);
    result.tokens.push_back(token);
    ++pos;
    if (options.on_token) options.on_token(token);
    if (IsStop(model, options, token)) {
      result.finish_reason = "stop";
      break;
    }
  }
  result.decode_seconds = timer.Seconds();
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerateResult> GenerateTokens(Model& model, KvCache& cache,
                                              std::span<const int32_t> prompt,
                                              const GenerateOptions& options) {
  CMOE_RETURN_IF_ERROR(ValidateRequest(model, prompt, options));
  SequenceBlocks seq;
  ForwardOutput out;
  GenerateResult result;
  Timer timer;
  Sampler sampler(options.sampling);
  absl::Status status = Prefill(model, cache, seq, prompt, options, sampler, out);
  result.prefill_seconds = timer.Seconds();
  if (status.ok()) status = Decode(model, cache, seq, prompt, options, sampler, out, result);
  cache.Release(seq);
  if (!status.ok()) return status;
  return result;
}

}  // namespace cmoe::engine
