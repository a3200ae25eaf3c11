// What a client asks the serving engine for, and what the engine reports back (docs/
// architecture.md "Serving core"). Plain data, no gRPC: the server translates its protobuf
// messages into these.
#ifndef CMOE_ENGINE_REQUEST_H_
#define CMOE_ENGINE_REQUEST_H_

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "engine/logprobs.h"
#include "engine/sampler.h"

namespace cmoe::engine {

using SteadyTime = std::chrono::steady_clock::time_point;

enum class FinishReason {
  kLength,      // max_new_tokens generated
  kStopString,  // a stop string appeared in the text (it is not part of the output)
  kStopToken,   // EOS (unless ignore_eos) or one of stop_token_ids
  kContext,     // the sequence filled the model's context
  kTimeLimit,   // the request's deadline passed
  kCancelled,   // Engine::Cancel, or shutdown before it finished
  kError,       // the step failed (the status says why)
};

// "length", "stop_string", "stop_token", "context", "time_limit", "cancelled", "error".
std::string_view FinishReasonName(FinishReason reason);

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included if wanted; 1..context-1 tokens
  SamplingParams sampling;
  int64_t max_new_tokens = 128;  // >= 1
  int64_t min_new_tokens = 0;    // EOS and stop tokens are masked until this many are generated
  std::vector<std::string> stop_strings;  // non-empty strings
  std::vector<int32_t> stop_token_ids;    // besides EOS
  bool ignore_eos = false;
  std::optional<SteadyTime> deadline;  // server-side time limit
  int32_t num_activated_experts = 0;   // carved models: 1..N_r; 0: the checkpoint's default
  // Report each generated token's log-probability (TokenEvent::logprobs), from the distribution
  // it was drawn from after min_new_tokens masking, penalties and temperature (0 counts as 1),
  // before top-k / top-p / min-p truncation. Off: no cost.
  bool logprobs = false;
  int32_t top_logprobs = 0;  // with logprobs: alternatives per token, in [0, kMaxTopLogprobs]
};

// New output of one request after a step (called from the engine's step thread).
struct TokenEvent {
  uint64_t id = 0;
  std::vector<int32_t> tokens;  // new token ids (usually one)
  std::string text;             // new text: whole UTF-8 characters, stop strings held back
  // With GenerationRequest::logprobs: one entry per token of `tokens`, in order; else empty.
  std::vector<TokenLogprob> logprobs;
};

struct FinishEvent {
  uint64_t id = 0;
  FinishReason reason = FinishReason::kLength;
  absl::Status status;  // OK unless reason == kError
  std::string text;     // the last text not yet delivered by a TokenEvent (may be "")
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  double queue_seconds = 0;        // Submit to the first step that ran the request
  double first_token_seconds = 0;  // Submit to the first token (0 when none)
  double decode_seconds = 0;       // first token to the finish
};

// Receives a request's events on the engine's step thread: implementations must not block (queue
// the event and return). OnFinish is called exactly once per accepted request, last.
class RequestSink {
 public:
  virtual ~RequestSink() = default;
  virtual void OnTokens(const TokenEvent& event) = 0;
  virtual void OnFinish(const FinishEvent& event) = 0;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_REQUEST_H_
