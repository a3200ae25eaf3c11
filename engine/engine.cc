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
  int32_t rank = 0;  // the expert-parallel rank holding its KV cache
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

Engine::Engine(std::vector<LoadedModel> ranks, const EngineOptions& options,
               std::function<void(const StepReport&)> on_step,
               std::function<void(const absl::Status&)> on_fault)
    : ranks_(std::move(ranks)),
      options_(options),
      on_step_(std::move(on_step)),
      on_fault_(std::move(on_fault)),
      steps_(ranks_.size()),
      rank_tokens_(ranks_.size()) {
  for (const LoadedModel& r : ranks_) stats_.kv_blocks_total += r.cache->num_blocks();
  if (ranks_.size() > 1) rank_threads_ = std::make_unique<RankThreads>(num_ranks());
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    LoadedModel model, const EngineOptions& options, std::function<void(const StepReport&)> on_step,
    std::function<void(const absl::Status&)> on_fault) {
  std::vector<LoadedModel> ranks;
  ranks.push_back(std::move(model));
  return Create(std::move(ranks), options, std::move(on_step), std::move(on_fault));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(
    std::vector<LoadedModel> ranks, const EngineOptions& options,
    std::function<void(const StepReport&)> on_step,
    std::function<void(const absl::Status&)> on_fault) {
  if (ranks.empty()) return absl::InvalidArgumentError("Engine: no model");
  for (size_t r = 0; r < ranks.size(); ++r) {
    if (ranks[r].model == nullptr || ranks[r].cache == nullptr ||
        (r == 0 && ranks[r].tokenizer == nullptr)) {
      return absl::InvalidArgumentError(
          absl::StrCat("Engine: rank ", r,
                       ": the model, its KV cache (and on rank 0 the tokenizer) are needed"));
    }
  }
  const auto world = static_cast<int32_t>(ranks.size());
  if (world > 1 || ranks[0].model->expert_parallel() != nullptr) {
    for (int32_t r = 0; r < world; ++r) {
      const kernels::Communicator* comm = ranks[r].model->expert_parallel();
      if (comm == nullptr || comm->rank() != r || comm->world_size() != world) {
        return absl::InvalidArgumentError(
            absl::StrCat("Engine: model ", r, " of ", world, " is not rank ", r,
                         " of an expert-parallel group of ", world,
                         comm == nullptr ? " (it has no communicator)"
                                         : absl::StrCat(" (its communicator is rank ", comm->rank(),
                                                        " of ", comm->world_size(), ")")));
      }
      // The same checkpoint: the same collectives, layer by layer, and the same positions.
      const ModelConfig& a = ranks[r].model->config();
      const ModelConfig& b = ranks[0].model->config();
      if (a.max_position_embeddings != b.max_position_embeddings ||
          a.num_hidden_layers != b.num_hidden_layers || a.vocab_size != b.vocab_size ||
          a.cmoe.has_value() != b.cmoe.has_value() ||
          (a.cmoe.has_value() && a.cmoe->Name() != b.cmoe->Name()) ||
          ranks[r].cache->num_blocks() != ranks[0].cache->num_blocks() ||
          ranks[r].cache->block_size() != ranks[0].cache->block_size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("Engine: rank ", r, "'s model or KV cache differs from rank 0's"));
      }
    }
  }
  if (options.max_batch_tokens < 1 || options.max_running < 1 || options.max_waiting < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Engine: max_batch_tokens (", options.max_batch_tokens, ") and max_running (",
        options.max_running, ") must be >= 1, max_waiting (", options.max_waiting, ") >= 0"));
  }
  std::unique_ptr<Engine> engine(
      new Engine(std::move(ranks), options, std::move(on_step), std::move(on_fault)));
  CMOE_RETURN_IF_ERROR(engine->ConnectRanks());
  engine->thread_ = std::thread([e = engine.get()] { e->Loop(); });
  return engine;
}

absl::Status Engine::ConnectRanks() {
  if (ranks_[0].model->expert_parallel() == nullptr) return absl::OkStatus();
  // One empty step on every rank: every pair of ranks exchanges once, so the connections a
  // communicator makes on first use (NCCL's, which block until the peer joins and cannot be
  // aborted) exist before a rank can fail in a step.
  for (RankStep& step : steps_) step.chunks.clear();
  RunRanks();
  for (int32_t r = 0; r < num_ranks(); ++r) {
    if (!steps_[r].status.ok()) {
      return Annotate(steps_[r].status,
                      absl::StrCat("connecting expert-parallel rank ", r, " to its peers"));
    }
  }
  return absl::OkStatus();
}

KvCache& Engine::cache(const Sequence& s) { return *ranks_[s.rank].cache; }

int64_t Engine::KvBlocksUsed() const {
  int64_t used = 0;
  for (const LoadedModel& r : ranks_) used += r.cache->num_blocks() - r.cache->num_free_blocks();
  return used;
}

Engine::~Engine() { Shutdown(absl::ZeroDuration()); }

absl::Status Engine::Validate(const GenerationRequest& r) const {
  const ModelConfig& c = model().config();
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
    if (model().expert_parallel() != nullptr &&
        r.num_activated_experts != c.cmoe->num_activated_experts) {
      return absl::InvalidArgumentError(
          absl::StrCat("num_activated_experts: this server spreads the experts over ", num_ranks(),
                       " expert-parallel ranks, where every request uses the checkpoint's ",
                       c.cmoe->num_activated_experts, "; leave it 0"));
    }
  }
  const int64_t need = std::min(n + r.max_new_tokens, c.max_position_embeddings);
  const KvCache& kv = *ranks_[0].cache;  // every rank's is the same size
  if (kv.BlocksFor(need) > kv.num_blocks()) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_new_tokens: prompt + max_new_tokens = ", need,
                     " positions can never fit the KV cache (", kv.num_blocks() * kv.block_size(),
                     " positions", ranks_.size() > 1 ? " per rank" : "", ")"));
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
  s->detok = std::make_unique<IncrementalDetokenizer>(tokenizer(), request.prompt.back());
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
  const int64_t free_slots =
      std::max<int64_t>(0, options_.max_running * num_ranks() - stats_.running);
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

int32_t Engine::PlaceOnRank(Sequence& s, int64_t need) {
  std::vector<int64_t> running(ranks_.size(), 0);
  for (const auto& r : running_) ++running[r->rank];
  // The ranks with a free slot, fewest running sequences first, then most free KV blocks.
  std::vector<int32_t> order;
  for (int32_t r = 0; r < num_ranks(); ++r) {
    if (running[r] < options_.max_running) order.push_back(r);
  }
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    if (running[a] != running[b]) return running[a] < running[b];
    return ranks_[a].cache->num_free_blocks() > ranks_[b].cache->num_free_blocks();
  });
  for (int32_t r : order) {
    if (ranks_[r].cache->Reserve(s.blocks, need).ok()) {
      s.rank = r;
      return r;
    }
  }
  return -1;
}

void Engine::Admit() {
  const int64_t context = model().config().max_position_embeddings;
  while (!waiting_.empty() &&
         static_cast<int64_t>(running_.size()) < options_.max_running * num_ranks()) {
    Sequence& s = *waiting_.front();
    const int64_t need =
        std::min(static_cast<int64_t>(s.request.prompt.size()) + s.request.max_new_tokens, context);
    if (PlaceOnRank(s, need) < 0) break;  // FIFO: wait for blocks
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

void Engine::PackRank(int32_t rank, RankStep& step) {
  step.chunks.clear();
  step.owners.clear();
  step.device_sampling.clear();
  step.device_sampling.reserve(running_.size());  // SequenceChunk::sample points into it
  step.decode_tokens = step.prefill_tokens = 0;
  step.status = absl::OkStatus();
  // Decodes first (one token each), then prompt chunks in admission order, under the budget.
  int64_t budget = options_.max_batch_tokens;
  for (auto& s : running_) {
    if (s->rank != rank || !s->decoding() || budget == 0) continue;
    step.chunks.push_back({.tokens = {&s->generated.back(), 1},
                           .start_pos = s->position() - 1,
                           .blocks = &s->blocks,
                           .num_activated_experts = s->request.num_activated_experts});
    step.owners.push_back(s.get());
    --budget;
    ++step.decode_tokens;
  }
  for (auto& s : running_) {
    if (s->rank != rank || s->decoding() || budget == 0) continue;
    const auto prompt = std::span<const int32_t>(s->request.prompt);
    const int64_t n = std::min<int64_t>(budget, static_cast<int64_t>(prompt.size()) - s->prefilled);
    step.chunks.push_back({.tokens = prompt.subspan(static_cast<size_t>(s->prefilled), n),
                           .start_pos = s->prefilled,
                           .blocks = &s->blocks,
                           .num_activated_experts = s->request.num_activated_experts});
    step.owners.push_back(s.get());
    budget -= n;
    step.prefill_tokens += n;
  }
  // On a device, the chunks that end in a sampled token get it sampled there (only the id comes
  // back) unless the token needs the logits on the host: penalties, log-probabilities, or the
  // stop tokens masked until min_new_tokens.
  if (!ranks_[rank].model->backend().IsDevice()) return;
  for (size_t i = 0; i < step.chunks.size(); ++i) {
    Sequence& s = *step.owners[i];
    const GenerationRequest& r = s.request;
    const bool samples =
        s.decoding() || s.prefilled + static_cast<int64_t>(step.chunks[i].tokens.size()) ==
                            static_cast<int64_t>(r.prompt.size());
    if (!samples || r.logprobs || static_cast<int64_t>(s.generated.size()) < r.min_new_tokens) {
      continue;
    }
    std::optional<kernels::RowSampling> row = s.sampler->TakeBackendSampling();
    if (!row.has_value()) continue;
    step.device_sampling.push_back(*row);
    step.chunks[i].sample = &step.device_sampling.back();
  }
}

void Engine::RunRanks() {
  const auto run = [this](int32_t r) {
    RankStep& step = steps_[r];
    Model& model = *ranks_[r].model;
    step.status = step.chunks.empty() ? model.ForwardIdle()
                                      : model.Forward(step.chunks, *ranks_[r].cache, step.out);
    if (!step.status.ok() && model.expert_parallel() != nullptr) {
      // The peers may be waiting in a collective this rank will never join: tear the group down
      // so that they return.
      for (LoadedModel& peer : ranks_) peer.model->expert_parallel()->Abort();
    }
  };
  if (rank_threads_ == nullptr) {
    run(0);
  } else {
    rank_threads_->Run(run);
  }
}

void Engine::Step() {
  bool any = false;
  for (int32_t r = 0; r < num_ranks(); ++r) {
    PackRank(r, steps_[r]);
    any = any || !steps_[r].chunks.empty();
  }
  if (!any) return;
  Timer step_timer;
  const SteadyTime now = std::chrono::steady_clock::now();
  for (RankStep& step : steps_) {
    for (Sequence* s : step.owners) {
      if (!s->started) {
        s->started = true;
        s->first_step = now;
      }
    }
  }
  Timer forward_timer;
  RunRanks();
  const double forward_seconds = forward_timer.Seconds();
  // Sampling and delivering the tokens below is serial (and the server's threads want the cores
  // now): the backends' workers may sleep until the next step.
  for (LoadedModel& r : ranks_) r.model->backend().Idle();
  // The cause: the first rank's failure that is not the abort it caused on its peers.
  int32_t failed_rank = -1;
  for (int32_t r = 0; r < num_ranks(); ++r) {
    const absl::Status& st = steps_[r].status;
    if (st.ok()) continue;
    if (failed_rank < 0 || (absl::IsAborted(steps_[failed_rank].status) && !absl::IsAborted(st))) {
      failed_rank = r;
    }
  }
  if (failed_rank >= 0) {
    const absl::Status failed = steps_[failed_rank].status;
    int64_t sequences = 0;
    for (const RankStep& step : steps_) sequences += static_cast<int64_t>(step.owners.size());
    CMOE_LOG(ERROR) << "step of " << sequences << " sequences failed"
                    << (ranks_.size() > 1 ? absl::StrCat(" on rank ", failed_rank) : "") << ": "
                    << failed;
    std::vector<Sequence*> owners;
    for (RankStep& step : steps_) {
      owners.insert(owners.end(), step.owners.begin(), step.owners.end());
    }
    if (ranks_.size() > 1 || ranks_[0].model->expert_parallel() != nullptr) {
      // A collective failed or was aborted: the group cannot step again.
      Fail(Annotate(failed, absl::StrCat("expert-parallel rank ", failed_rank)), owners, failed);
    } else if (absl::Status health = ranks_[0].model->backend().Health(); !health.ok()) {
      Fail(health, owners, failed);
    } else {
      for (Sequence* s : owners) Finish(*s, FinishReason::kError, failed);
    }
    return;
  }
  int64_t decode_tokens = 0, prefill_tokens = 0;
  for (int32_t r = 0; r < num_ranks(); ++r) {
    RankStep& step = steps_[r];
    for (size_t i = 0; i < step.owners.size(); ++i) {
      Sequence& s = *step.owners[i];
      if (!s.decoding()) {
        s.prefilled += static_cast<int64_t>(step.chunks[i].tokens.size());
        if (!s.decoding()) continue;  // more prompt to go
      }
      Advance(s, step.out.tokens[i] >= 0 ? std::span<const float>() : step.out.Logits(i),
              step.out.tokens[i]);
    }
    decode_tokens += step.decode_tokens;
    prefill_tokens += step.prefill_tokens;
    rank_tokens_[r] = step.decode_tokens + step.prefill_tokens;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.steps;
  }
  if (on_step_) {
    const FfnStepStats* ffn = &ranks_[0].model->last_step_stats();
    if (ranks_.size() > 1) {  // the ranks' counters, summed
      ffn_ = *ffn;
      for (size_t r = 1; r < ranks_.size(); ++r) {
        const FfnStepStats& o = ranks_[r].model->last_step_stats();
        ffn_.tokens += o.tokens;
        ffn_.neurons_computed += o.neurons_computed;
        ffn_.neurons_dense += o.neurons_dense;
        for (size_t i = 0; i < ffn_.tokens_per_expert.size() && i < o.tokens_per_expert.size();
             ++i) {
          ffn_.tokens_per_expert[i] += o.tokens_per_expert[i];
        }
      }
      ffn = &ffn_;
    }
    on_step_({.tokens = decode_tokens + prefill_tokens,
              .decode_tokens = decode_tokens,
              .prefill_tokens = prefill_tokens,
              .forward_seconds = forward_seconds,
              .step_seconds = step_timer.Seconds(),
              .ffn = ffn,
              .graph = ranks_[0].model->last_step_graphed(),
              .rank_tokens = rank_tokens_});
  }
}

// Samples the next token of `s` from its logits (and computes its log-probabilities when asked)
// unless the model sampled it already (`sampled` >= 0), delivers it, and finishes the request when
// a stop condition holds.
void Engine::Advance(Sequence& s, std::span<const float> logits, int32_t sampled) {
  const GenerationRequest& r = s.request;
  const std::vector<int32_t>& eos = model().config().eos_token_ids;
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
  const int64_t context = model().config().max_position_embeddings;
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
  cache(s).Release(s.blocks);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.kv_blocks_used = KvBlocksUsed();
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
void Engine::Fail(const absl::Status& device_error, std::span<Sequence* const> step_owners,
                  const absl::Status& step_error) {
  const absl::Status status = absl::UnavailableError(absl::StrCat(
      "the device failed and this server must be restarted: ", device_error.message()));
  CMOE_LOG(ERROR) << status;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fault_ = status;  // from here Submit refuses, so nothing joins incoming_
  }
  // Stop serving before the clients hear of the failure (they may retry at once).
  if (on_fault_) on_fault_(status);
  for (Sequence* s : step_owners) Finish(*s, FinishReason::kError, step_error);
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
  stats_.kv_blocks_used = KvBlocksUsed();
  if (incoming_.empty() && running_.empty() && waiting_.empty()) idle_.notify_all();
}

}  // namespace cmoe::engine
