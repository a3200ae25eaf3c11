#include "engine/engine.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/incremental_detokenizer.h"
#include "engine/logprobs.h"
#include "engine/stop_strings.h"

namespace cmoe::engine {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStopString:
      return "stop_string";
    case FinishReason::kStopToken:
      return "stop_token";
    case FinishReason::kContext:
      return "context";
    case FinishReason::kTimeLimit:
      return "time_limit";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kError:
      return "error";
  }
  return "?";
}

namespace {

double SecondsBetween(SteadyTime a, SteadyTime b) {
  return std::chrono::duration<double>(b - a).count();
}

}  // namespace

// One request's state, owned by the step thread once taken from incoming_.
struct Engine::Sequence {
  uint64_t id = 0;
  GenerationRequest request;
  std::shared_ptr<RequestSink> sink;
  SteadyTime submitted;
  SteadyTime first_step;
  SteadyTime first_token;
  bool started = false;
  SequenceBlocks blocks;
  int64_t prefilled = 0;  // prompt tokens already in the cache
  std::vector<int32_t> generated;
  std::unique_ptr<Sampler> sampler;
  std::unique_ptr<IncrementalDetokenizer> detok;
  std::unique_ptr<StopStringMatcher> stops;
  bool finished = false;

  int64_t position() const { return prefilled + static_cast<int64_t>(generated.size()); }
  bool decoding() const { return prefilled == static_cast<int64_t>(request.prompt.size()); }
};

Engine::Engine(LoadedModel model, const EngineOptions& options,
               std::function<void(const StepReport&)> on_step,
               std::function<void(const absl::Status&)> on_fault)
    : model_(std::move(model)),
      options_(options),
      on_step_(std::move(on_step)),
      on_fault_(std::move(on_fault)) {
  stats_.kv_blocks_total = model_.cache->num_blocks();
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    LoadedModel model, const EngineOptions& options, std::function<void(const StepReport&)> on_step,
    std::function<void(const absl::Status&)> on_fault) {
  if (model.model == nullptr || model.cache == nullptr || model.tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        "Engine: the model, its KV cache and its tokenizer are needed");
  }
  if (options.max_batch_tokens < 1 || options.max_running < 1 || options.max_waiting < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Engine: max_batch_tokens (", options.max_batch_tokens, ") and max_running (",
        options.max_running, ") must be >= 1, max_waiting (", options.max_waiting, ") >= 0"));
  }
  std::unique_ptr<Engine> engine(
      new Engine(std::move(model), options, std::move(on_step), std::move(on_fault)));
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

Engine::~Engine() { Shutdown(absl::ZeroDuration()); }

absl::Status Engine::Validate(const GenerationRequest& r) const {
  const ModelConfig& c = model_.model->config();
  const auto n = static_cast<int64_t>(r.prompt.size());
  if (n == 0) return absl::InvalidArgumentError("prompt: empty");
  if (n >= c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", n, " tokens leave no room in the ",
                                                   c.max_position_embeddings, "-token context"));
  }
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= c.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("prompt: token ", i, " has id ", r.prompt[i],
                                                     " outside the vocabulary [0, ", c.vocab_size,
                                                     ")"));
    }
  }
  if (r.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: ", r.max_new_tokens, " must be >= 1"));
  }
  if (r.min_new_tokens < 0 || r.min_new_tokens > r.max_new_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_new_tokens: ", r.min_new_tokens,
                     " must be in [0, max_new_tokens = ", r.max_new_tokens, "]"));
  }
  for (int32_t id : r.stop_token_ids) {
    if (id < 0 || id >= c.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop_token_ids: ", id, " outside the vocabulary [0, ", c.vocab_size, ")"));
    }
  }
  for (const std::string& s : r.stop_strings) {
    if (s.empty()) return absl::InvalidArgumentError("stop_strings: empty string");
  }
  if (absl::Status s = ValidateSamplingParams(r.sampling); !s.ok()) {
    return Annotate(s, "sampling");
  }
  if (r.top_logprobs < 0 || r.top_logprobs > kMaxTopLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs: ", r.top_logprobs, " outside [0, ", kMaxTopLogprobs, "]"));
  }
  if (r.top_logprobs > 0 && !r.logprobs) {
    return absl::InvalidArgumentError("top_logprobs: only applies with logprobs on");
  }
  if (r.num_activated_experts != 0) {
    if (!c.cmoe.has_value()) {
      return absl::InvalidArgumentError(
          "num_activated_experts: the model is dense (not carved); leave it 0");
    }
    if (r.num_activated_experts < 1 || r.num_activated_experts > c.cmoe->num_routed()) {
      return absl::InvalidArgumentError(
          absl::StrCat("num_activated_experts: ", r.num_activated_experts, " outside [1, ",
                       c.cmoe->num_routed(), "] (the routed experts of ", c.cmoe->Name(), ")"));
    }
  }
  const int64_t need = std::min(n + r.max_new_tokens, c.max_position_embeddings);
  if (model_.cache->BlocksFor(need) > model_.cache->num_blocks()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: prompt + max_new_tokens = ", need,
                     " positions can never fit the KV cache (",
                     model_.cache->num_blocks() * model_.cache->block_size(), " positions)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Engine::Submit(GenerationRequest request,
                                        std::shared_ptr<RequestSink> sink) {
  if (sink == nullptr) return absl::InvalidArgumentError("Submit: no sink");
  CMOE_RETURN_IF_ERROR(Validate(request));
  auto s = std::make_unique<Sequence>();
  s->submitted = std::chrono::steady_clock::now();
  s->sampler = std::make_unique<Sampler>(request.sampling);
  // Primed with the prompt's last token: the continuation keeps its leading space.
  s->detok = std::make_unique<IncrementalDetokenizer>(*model_.tokenizer, request.prompt.back());
  s->stops = std::make_unique<StopStringMatcher>(request.stop_strings);
  s->request = std::move(request);
  s->sink = std::move(sink);
  std::lock_guard<std::mutex> lock(mutex_);
  if (!fault_.ok()) return fault_;
  if (draining_ || stop_) {
    return absl::UnavailableError("the server is shutting down and takes no new requests");
  }
  // Requests beyond the free running slots wait; at most max_waiting of them.
  const int64_t queued = stats_.waiting + static_cast<int64_t>(incoming_.size());
  const int64_t free_slots = std::max<int64_t>(0, options_.max_running - stats_.running);
  if (queued >= options_.max_waiting + free_slots) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the waiting queue is full (", options_.max_waiting, " requests); retry later"));
  }
  s->id = next_id_++;
  const uint64_t id = s->id;
  incoming_.push_back(std::move(s));
  wake_.notify_one();
  return id;
}

void Engine::Cancel(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  cancelled_.insert(id);
  wake_.notify_one();
}

EngineStats Engine::Stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  EngineStats s = stats_;
  s.waiting += static_cast<int64_t>(incoming_.size());
  s.draining = draining_;
  s.failed = !fault_.ok();
  return s;
}

absl::Status Engine::Health() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return fault_;
}

void Engine::Shutdown(absl::Duration drain) {
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!thread_.joinable()) return;
    draining_ = true;
    const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoNanoseconds(drain);
    idle_.wait_until(lock, deadline, [&] {
      return incoming_.empty() && stats_.running == 0 && stats_.waiting == 0;
    });
    stop_ = true;
    wake_.notify_one();
  }
  thread_.join();
}

void Engine::TakeIncoming() {
  std::lock_guard<std::mutex> lock(mutex_);
  while (!incoming_.empty()) {
    waiting_.push_back(std::move(incoming_.front()));
    incoming_.pop_front();
  }
  // In the same critical section, so that Stats() and Shutdown's drain never see a request in
  // neither queue.
  stats_.waiting = static_cast<int64_t>(waiting_.size());
}

void Engine::ExpireAndCancel() {
  std::unordered_set<uint64_t> cancelled;
  bool stopping = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    cancelled.swap(cancelled_);
    stopping = stop_;
  }
  const SteadyTime now = std::chrono::steady_clock::now();
  const auto check = [&](Sequence& s) {
    if (s.finished) return;
    if (stopping || cancelled.contains(s.id)) {
      Finish(s, FinishReason::kCancelled);
    } else if (s.request.deadline.has_value() && now >= *s.request.deadline) {
      Finish(s, FinishReason::kTimeLimit);
    }
  };
  for (auto& s : running_) check(*s);
  for (auto& s : waiting_) check(*s);
}

void Engine::Admit() {
  const int64_t context = model_.model->config().max_position_embeddings;
  while (!waiting_.empty() && static_cast<int64_t>(running_.size()) < options_.max_running) {
    Sequence& s = *waiting_.front();
    const int64_t need =
        std::min(static_cast<int64_t>(s.request.prompt.size()) + s.request.max_new_tokens, context);
    if (!model_.cache->Reserve(s.blocks, need).ok()) break;  // FIFO: wait for blocks
    running_.push_back(std::move(waiting_.front()));
    waiting_.pop_front();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size());
}

void Engine::Loop() {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] {
        return stop_ || !incoming_.empty() || !cancelled_.empty() || !running_.empty() ||
               !waiting_.empty();
      });
    }
    TakeIncoming();
    ExpireAndCancel();
    RemoveFinished();
    Admit();
    bool stopping;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping = stop_;
    }
    if (!running_.empty()) Step();
    RemoveFinished();
    if (stopping && running_.empty() && waiting_.empty()) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (incoming_.empty()) return;
    }
  }
}

void Engine::Step() {
  // Decodes first (one token each), then prompt chunks in admission order, under the budget.
  std::vector<SequenceChunk> chunks;
  std::vector<Sequence*> owners;
  // The rows a device samples itself (SequenceChunk::sample points into this: no reallocation).
  std::vector<kernels::RowSampling> device_sampling;
  device_sampling.reserve(running_.size());
  int64_t budget = options_.max_batch_tokens, decode_tokens = 0, prefill_tokens = 0;
  for (auto& s : running_) {
    if (!s->decoding() || budget == 0) continue;
    chunks.push_back({.tokens = {&s->generated.back(), 1},
                      .start_pos = s->position() - 1,
                      .blocks = &s->blocks,
                      .num_activated_experts = s->request.num_activated_experts});
    owners.push_back(s.get());
    --budget;
    ++decode_tokens;
  }
  for (auto& s : running_) {
    if (s->decoding() || budget == 0) continue;
    const auto prompt = std::span<const int32_t>(s->request.prompt);
    const int64_t n = std::min<int64_t>(budget, static_cast<int64_t>(prompt.size()) - s->prefilled);
    chunks.push_back({.tokens = prompt.subspan(static_cast<size_t>(s->prefilled), n),
                      .start_pos = s->prefilled,
                      .blocks = &s->blocks,
                      .num_activated_experts = s->request.num_activated_experts});
    owners.push_back(s.get());
    budget -= n;
    prefill_tokens += n;
  }
  if (chunks.empty()) return;
  // On a device, the chunks that end in a sampled token get it sampled there (only the id comes
  // back) unless the token needs the logits on the host: penalties, log-probabilities, or the
  // stop tokens masked until min_new_tokens.
  if (model_.model->backend().IsDevice()) {
    for (size_t i = 0; i < chunks.size(); ++i) {
      Sequence& s = *owners[i];
      const GenerationRequest& r = s.request;
      const bool samples =
          s.decoding() || s.prefilled + static_cast<int64_t>(chunks[i].tokens.size()) ==
                              static_cast<int64_t>(r.prompt.size());
      if (!samples || r.logprobs || static_cast<int64_t>(s.generated.size()) < r.min_new_tokens) {
        continue;
      }
      std::optional<kernels::RowSampling> row = s.sampler->TakeBackendSampling();
      if (!row.has_value()) continue;
      device_sampling.push_back(*row);
      chunks[i].sample = &device_sampling.back();
    }
  }
  Timer step_timer;
  const SteadyTime now = std::chrono::steady_clock::now();
  for (Sequence* s : owners) {
    if (!s->started) {
      s->started = true;
      s->first_step = now;
    }
  }
  Timer forward_timer;
  ForwardOutput out;
  const absl::Status status = model_.model->Forward(chunks, *model_.cache, out);
  const double forward_seconds = forward_timer.Seconds();
  // Sampling and delivering the tokens below is serial (and the server's threads want the cores
  // now): the backend's workers may sleep until the next step.
  model_.model->backend().Idle();
  if (!status.ok()) {
    CMOE_LOG(ERROR) << "step of " << chunks.size() << " sequences failed: " << status;
    for (Sequence* s : owners) Finish(*s, FinishReason::kError, status);
    if (absl::Status health = model_.model->backend().Health(); !health.ok()) Fail(health);
    return;
  }
  for (size_t i = 0; i < owners.size(); ++i) {
    Sequence& s = *owners[i];
    if (!s.decoding()) {
      s.prefilled += static_cast<int64_t>(chunks[i].tokens.size());
      if (!s.decoding()) continue;  // more prompt to go
    }
    Advance(s, out.tokens[i] >= 0 ? std::span<const float>() : out.Logits(i), out.tokens[i]);
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.steps;
  }
  if (on_step_) {
    on_step_({.tokens = decode_tokens + prefill_tokens,
              .decode_tokens = decode_tokens,
              .prefill_tokens = prefill_tokens,
              .forward_seconds = forward_seconds,
              .step_seconds = step_timer.Seconds(),
              .ffn = &model_.model->last_step_stats(),
              .graph = model_.model->last_step_graphed()});
  }
}

// Samples the next token of `s` from its logits (and computes its log-probabilities when asked)
// unless the model sampled it already (`sampled` >= 0), delivers it, and finishes the request when
// a stop condition holds.
void Engine::Advance(Sequence& s, std::span<const float> logits, int32_t sampled) {
  const GenerationRequest& r = s.request;
  const std::vector<int32_t>& eos = model_.model->config().eos_token_ids;
  const auto is_stop = [&](int32_t t) {
    return std::find(r.stop_token_ids.begin(), r.stop_token_ids.end(), t) !=
               r.stop_token_ids.end() ||
           (!r.ignore_eos && std::find(eos.begin(), eos.end(), t) != eos.end());
  };
  if (sampled < 0 && static_cast<int64_t>(s.generated.size()) < r.min_new_tokens) {
    masked_.assign(logits.begin(), logits.end());
    for (int32_t t : r.stop_token_ids) masked_[t] = -std::numeric_limits<float>::infinity();
    if (!r.ignore_eos) {
      for (int32_t t : eos) masked_[t] = -std::numeric_limits<float>::infinity();
    }
    logits = masked_;
  }
  const int32_t token = sampled >= 0 ? sampled : s.sampler->Sample(logits, r.prompt, s.generated);
  s.generated.push_back(token);
  if (s.generated.size() == 1) s.first_token = std::chrono::steady_clock::now();
  TokenEvent event{.id = s.id, .tokens = {token}};
  if (r.logprobs) {
    // The sampler's last distribution: masked, penalised and scaled as above.
    event.logprobs.push_back(ComputeTokenLogprob(s.sampler->ScaledLogits(), token, r.top_logprobs));
  }
  const bool stop_token = is_stop(token);
  if (!stop_token) {
    absl::StatusOr<std::string> text = s.detok->Push(token);
    if (text.ok()) event.text = s.stops->Push(*text);
  }
  s.sink->OnTokens(event);
  const int64_t context = model_.model->config().max_position_embeddings;
  if (stop_token) {
    Finish(s, FinishReason::kStopToken);
  } else if (s.stops->matched()) {
    Finish(s, FinishReason::kStopString);
  } else if (static_cast<int64_t>(s.generated.size()) >= r.max_new_tokens) {
    Finish(s, FinishReason::kLength);
  } else if (s.position() >= context) {
    Finish(s, FinishReason::kContext);
  }
}

void Engine::Finish(Sequence& s, FinishReason reason, absl::Status status) {
  if (s.finished) return;
  s.finished = true;
  model_.cache->Release(s.blocks);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.kv_blocks_used = model_.cache->num_blocks() - model_.cache->num_free_blocks();
  }
  const SteadyTime now = std::chrono::steady_clock::now();
  FinishEvent event{.id = s.id,
                    .reason = reason,
                    .status = std::move(status),
                    .prompt_tokens = static_cast<int64_t>(s.request.prompt.size()),
                    .generated_tokens = static_cast<int64_t>(s.generated.size())};
  if (reason != FinishReason::kStopString) {
    event.text = s.stops->Push(s.detok->Flush());
    event.text += s.stops->Flush();
  }
  event.queue_seconds = SecondsBetween(s.submitted, s.started ? s.first_step : now);
  if (!s.generated.empty()) {
    event.first_token_seconds = SecondsBetween(s.submitted, s.first_token);
    event.decode_seconds = SecondsBetween(s.first_token, now);
  }
  s.sink->OnFinish(event);
}

// The device is gone for this process (a sticky CUDA error): nothing can run any more.
void Engine::Fail(const absl::Status& device_error) {
  const absl::Status status = absl::UnavailableError(absl::StrCat(
      "the device failed and this server must be restarted: ", device_error.message()));
  CMOE_LOG(ERROR) << status;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fault_ = status;  // from here Submit refuses, so nothing joins incoming_
  }
  // Stop serving before the clients hear of the failure (they may retry at once).
  if (on_fault_) on_fault_(status);
  TakeIncoming();
  for (auto& s : running_) Finish(*s, FinishReason::kError, status);
  for (auto& s : waiting_) Finish(*s, FinishReason::kError, status);
  RemoveFinished();
}

void Engine::RemoveFinished() {
  std::erase_if(running_, [](const auto& s) { return s->finished; });
  std::erase_if(waiting_, [](const auto& s) { return s->finished; });
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.running = static_cast<int64_t>(running_.size());
  stats_.waiting = static_cast<int64_t>(waiting_.size());
  stats_.kv_blocks_used = model_.cache->num_blocks() - model_.cache->num_free_blocks();
  if (incoming_.empty() && running_.empty() && waiting_.empty()) idle_.notify_all();
}

}  // namespace cmoe::engine
