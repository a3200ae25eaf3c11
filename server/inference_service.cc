#include "server/inference_service.h"

#include <algorithm>
#include <iterator>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "engine/utf8.h"
#include "server/metrics.h"

namespace cmoe::server {

using Clock = std::chrono::steady_clock;

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

namespace {

constexpr const char* kLoading = "the model is still loading; retry shortly";

uint64_t DrawSeed() {
  thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

v1::FinishReason ToProto(engine::FinishReason reason) {
  switch (reason) {
    case engine::FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case engine::FinishReason::kStopString:
      return v1::FINISH_REASON_STOP_STRING;
    case engine::FinishReason::kStopToken:
      return v1::FINISH_REASON_STOP_TOKEN;
    case engine::FinishReason::kContext:
      return v1::FINISH_REASON_CONTEXT;
    case engine::FinishReason::kTimeLimit:
      return v1::FINISH_REASON_TIME_LIMIT;
    case engine::FinishReason::kCancelled:
    case engine::FinishReason::kError:
      return v1::FINISH_REASON_CANCELLED;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void FillFinishInfo(const engine::FinishEvent& e, uint64_t seed, Clock::time_point received,
                    v1::FinishInfo* f) {
  f->set_reason(ToProto(e.reason));
  f->set_seed(seed);
  f->mutable_usage()->set_prompt_tokens(e.prompt_tokens);
  f->mutable_usage()->set_generated_tokens(e.generated_tokens);
  v1::Timings* t = f->mutable_timings();
  t->set_queue_ms(e.queue_seconds * 1e3);
  t->set_time_to_first_token_ms(e.first_token_seconds * 1e3);
  t->set_decode_ms(e.decode_seconds * 1e3);
  t->set_total_ms(Ms(Clock::now() - received));
}

// The status an accepted request ends its RPC with.
grpc::Status EndStatus(const engine::FinishEvent& e, bool client_deadline) {
  if (e.reason == engine::FinishReason::kError) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        e.status.ok() ? "the model failed" : std::string(e.status.message()));
  }
  if (e.reason == engine::FinishReason::kTimeLimit && client_deadline) {
    return grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline passed");
  }
  return grpc::Status::OK;
}

// The canonical name of a gRPC code ("INVALID_ARGUMENT"), from the metrics' label set.
std::string_view CodeName(grpc::StatusCode code) {
  const std::vector<std::string_view>& names = ServerMetrics::CodeNames();
  const int i = static_cast<int>(code);
  return i >= 0 && i < static_cast<int>(names.size()) ? names[i] : std::string_view("UNKNOWN");
}

void LogFinished(const char* rpc, const engine::FinishEvent& e, std::string_view finish_reason,
                 Clock::time_point received, const grpc::Status& status) {
  CMOE_LOG(INFO) << rpc << " id=" << e.id << " prompt_tokens=" << e.prompt_tokens
                 << " generated_tokens=" << e.generated_tokens
                 << " queue_ms=" << e.queue_seconds * 1e3
                 << " ttft_ms=" << e.first_token_seconds * 1e3
                 << " total_ms=" << Ms(Clock::now() - received)
                 << " status=" << CodeName(status.error_code()) << " finish=" << finish_reason;
}

void LogRejected(const char* rpc, const grpc::Status& status) {
  CMOE_LOG(INFO) << rpc << " rejected status=" << CodeName(status.error_code()) << " ("
                 << status.error_message() << ")";
}

// The bytes token `id` stands for after `previous`, as Tokenize reports them: special tokens
// (BOS, EOS) give their literal text, e.g. "</s>".
std::string PieceBytes(const engine::Tokenizer& tokenizer, int32_t previous, int32_t id) {
  if (tokenizer.IsSpecial(id)) return tokenizer.Piece(id);
  absl::StatusOr<std::string> bytes = tokenizer.TokenBytes(previous, id);
  return bytes.ok() ? *std::move(bytes) : std::string();
}

// The engine's log-probabilities of the tokens of one event, with pieces. `*previous` is the
// token before the event's first one; it is left at the event's last token.
std::vector<v1::TokenLogprob> ToProto(const engine::Tokenizer& tokenizer,
                                      const std::vector<engine::TokenLogprob>& logprobs,
                                      int32_t* previous) {
  std::vector<v1::TokenLogprob> out(logprobs.size());
  for (size_t i = 0; i < logprobs.size(); ++i) {
    const engine::TokenLogprob& lp = logprobs[i];
    v1::TokenLogprob& o = out[i];
    o.set_token_id(lp.token);
    o.set_piece(PieceBytes(tokenizer, *previous, lp.token));
    o.set_logprob(lp.logprob);
    for (const engine::TopLogprob& t : lp.top) {
      v1::TopLogprob* top = o.add_top_logprobs();
      top->set_token_id(t.token);
      top->set_piece(PieceBytes(tokenizer, *previous, t.token));
      top->set_logprob(t.logprob);
    }
    *previous = lp.token;
  }
  return out;
}

// What Generate and GenerateStream share: submission, cancellation and the engine-side state.
// Derived classes guard their own state with mu_.
class GenerationCallBase : public engine::RequestSink {
 protected:
  GenerationCallBase(engine::Engine* engine, ServerMetrics* metrics, const char* rpc)
      : engine_(engine), metrics_(metrics), rpc_(rpc) {
    if (metrics_ != nullptr) metrics_->OnRequestStart(rpc_);
  }

  // What OnRequestDone reports, taken under mu_ when the RPC finishes.
  struct DoneInfo {
    std::string_view finish_reason;  // "" when the request never reached the engine
    int64_t prompt_tokens = 0;
    int64_t generated_tokens = 0;
  };

  // Under mu_: the finish reason and counts when the engine finished, else "cancelled" (or
  // "time_limit") and the tokens seen so far for a submitted request, else nothing.
  DoneInfo DoneInfoLocked() const {
    if (engine_finished_) return {ReasonLocked(finish_reason_), prompt_tokens_, generated_tokens_};
    if (submitted_) {
      return {ReasonLocked(engine::FinishReason::kCancelled), prompt_tokens_, generated_tokens_};
    }
    return {};
  }

  // Under mu_: the name of `reason` as reported, a cancellation that was the deadline's counting
  // as the time limit.
  std::string_view ReasonLocked(engine::FinishReason reason) const {
    if (reason == engine::FinishReason::kCancelled && expired_.value_or(false)) {
      reason = engine::FinishReason::kTimeLimit;
    }
    return engine::FinishReasonName(reason);
  }

  // Under mu_, at the first sign that the call ended early (OnCancel, a failed write): decides,
  // once, whether that was its gRPC deadline. gRPC reports an expired deadline as a
  // cancellation, and the client's own cancel at its deadline can arrive before the server's
  // timer fires (the server's copy of the deadline is later by the request's transit), so a
  // cancellation within a margin of the deadline (a quarter of the call's budget, at most
  // 250 ms) counts as expiry.
  void NoteEndedEarlyLocked() {
    if (expired_.has_value()) return;
    expired_ = deadline_ != std::chrono::system_clock::time_point::max() &&
               std::chrono::system_clock::now() >= deadline_ - deadline_margin_;
  }

  // Under mu_: the status of a call that ended early: DEADLINE_EXCEEDED when that was its
  // deadline, else CANCELLED.
  grpc::Status CancelledStatusLocked() {
    NoteEndedEarlyLocked();
    return *expired_ ? grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "deadline exceeded")
                     : grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
  }

  // Under mu_, from OnTokens: token timings for the metrics.
  void NoteTokensLocked(const engine::TokenEvent& e) {
    if (e.tokens.empty()) return;
    generated_tokens_ += static_cast<int64_t>(e.tokens.size());
    const Clock::time_point now = Clock::now();
    if (metrics_ != nullptr) {
      size_t gaps = e.tokens.size();
      if (!seen_token_) {
        metrics_->OnFirstToken(Seconds(now - received_));
        --gaps;
      }
      if (gaps > 0) {
        // Tokens delivered together share the gap since the previous delivery.
        const double gap = seen_token_ ? Seconds(now - last_token_) / static_cast<double>(gaps) : 0;
        for (size_t i = 0; i < gaps; ++i) metrics_->OnToken(gap);
      }
    }
    seen_token_ = true;
    last_token_ = now;
  }

  // Under mu_, from OnFinish.
  void NoteFinishLocked(const engine::FinishEvent& e) {
    finish_reason_ = e.reason;
    prompt_tokens_ = e.prompt_tokens;
    generated_tokens_ = e.generated_tokens;
    if (metrics_ != nullptr) metrics_->OnQueue(e.queue_seconds);
  }

  // Once per RPC, just before its Finish.
  void RecordDone(const grpc::Status& status, const DoneInfo& info) const {
    if (metrics_ == nullptr) return;
    metrics_->OnRequestDone(rpc_, CodeName(status.error_code()), info.finish_reason,
                            Seconds(Clock::now() - received_), info.prompt_tokens,
                            info.generated_tokens);
  }

  // The start both generation RPCs share: validates and converts the request, fills `echo` (when
  // the request asks for it; written under mu_, together with `*echo_written` = true when that
  // is given), and submits to the engine with `sink` (the reactor itself). A non-OK status means
  // the RPC must finish early with it.
  grpc::Status PrepareAndSubmit(grpc::CallbackServerContext* context,
                                const v1::GenerateRequest& request, int32_t default_max_new_tokens,
                                v1::PromptEcho* echo, bool* echo_written,
                                std::shared_ptr<engine::RequestSink> sink) {
    deadline_ = context->deadline();
    if (deadline_ != std::chrono::system_clock::time_point::max()) {
      const auto budget = deadline_ - std::chrono::system_clock::now();
      deadline_margin_ = std::clamp<std::chrono::system_clock::duration>(
          budget / 4, std::chrono::system_clock::duration::zero(), std::chrono::milliseconds(250));
    }
    if (engine_ == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, kLoading);
    absl::StatusOr<PreparedRequest> prepared =
        PrepareRequest(request, *engine_, default_max_new_tokens, received_, context->deadline());
    if (!prepared.ok()) return ToGrpcStatus(prepared.status());
    return_token_ids_ = request.output().return_token_ids();
    engine::GenerationRequest engine_request = std::move(prepared->request);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (echo != nullptr) {
        echo->set_text(prepared->echo_text);
        if (return_token_ids_) {
          for (int32_t id : engine_request.prompt) echo->add_token_ids(id);
        }
        if (echo_written != nullptr) *echo_written = true;
      }
      prompt_tokens_ = static_cast<int64_t>(engine_request.prompt.size());
    }
    // PrepareRequest rejects empty prompts; the guard keeps a missed case from being UB.
    previous_token_ = engine_request.prompt.empty() ? -1 : engine_request.prompt.back();
    prepared_ = std::move(*prepared);
    absl::StatusOr<uint64_t> id = engine_->Submit(std::move(engine_request), std::move(sink));
    if (!id.ok()) return ToGrpcStatus(id.status());
    Submitted(*id);
    return grpc::Status::OK;
  }

  // From OnTokens (the engine's step thread): the event's log-probabilities with pieces, each
  // token's piece in the context of the token before it. Empty unless the request asked.
  std::vector<v1::TokenLogprob> EventLogprobs(const engine::TokenEvent& e) {
    if (e.logprobs.empty()) return {};
    return ToProto(engine_->tokenizer(), e.logprobs, &previous_token_);
  }

  // Cancels the engine request if it was submitted and has not finished.
  void CancelEngineRequest() {
    uint64_t id = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (submitted_ && !engine_finished_) id = id_;
    }
    if (id != 0) engine_->Cancel(id);
  }

  // After a successful Submit: records the id, and cancels at once if the call was cancelled in
  // the meantime.
  void Submitted(uint64_t id) {
    bool cancel_now = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      id_ = id;
      submitted_ = true;
      cancel_now = (cancelled_ || write_failed_) && !engine_finished_;
    }
    if (cancel_now) engine_->Cancel(id);
  }

  engine::Engine* const engine_;
  ServerMetrics* const metrics_;
  const char* const rpc_;
  const Clock::time_point received_ = Clock::now();
  // The call's gRPC deadline (max(): none) and how early a cancellation counts as its expiry;
  // written before Submit, read-only after.
  std::chrono::system_clock::time_point deadline_ = std::chrono::system_clock::time_point::max();
  std::chrono::system_clock::duration deadline_margin_{0};
  std::mutex mu_;
  std::optional<bool> expired_;  // NoteEndedEarlyLocked's decision
  uint64_t id_ = 0;
  bool submitted_ = false;
  bool engine_finished_ = false;
  bool cancelled_ = false;  // gRPC OnCancel
  bool write_failed_ = false;
  bool rpc_finished_ = false;  // Finish called
  PreparedRequest prepared_;
  bool return_token_ids_ = false;
  // The last token whose piece was made (the prompt's last at first): written before Submit,
  // then only by OnTokens on the engine's step thread.
  int32_t previous_token_ = -1;
  // For the metrics (under mu_).
  engine::FinishReason finish_reason_ = engine::FinishReason::kLength;
  int64_t prompt_tokens_ = 0;
  int64_t generated_tokens_ = 0;
  bool seen_token_ = false;
  Clock::time_point last_token_;
};

// Generate: accumulates the text and tokens, replies at OnFinish.
class GenerateReactor final : public grpc::ServerUnaryReactor,
                              public GenerationCallBase,
                              public std::enable_shared_from_this<GenerateReactor> {
 public:
  GenerateReactor(engine::Engine* engine, ServerMetrics* metrics, v1::GenerateResponse* response)
      : GenerationCallBase(engine, metrics, "Generate"), response_(response) {}

  void Start(grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
             int32_t default_max_new_tokens) {
    self_ = shared_from_this();
    const grpc::Status status =
        PrepareAndSubmit(context, request, default_max_new_tokens,
                         request.output().echo_prompt() ? response_->mutable_prompt() : nullptr,
                         /*echo_written=*/nullptr, shared_from_this());
    if (!status.ok()) FinishEarly(status);
  }

  void OnTokens(const engine::TokenEvent& e) override {
    std::vector<v1::TokenLogprob> logprobs = EventLogprobs(e);
    std::lock_guard<std::mutex> lock(mu_);
    NoteTokensLocked(e);
    text_ += e.text;
    tokens_.insert(tokens_.end(), e.tokens.begin(), e.tokens.end());
    std::move(logprobs.begin(), logprobs.end(), std::back_inserter(logprobs_));
  }

  void OnFinish(const engine::FinishEvent& e) override {
    grpc::Status status = EndStatus(e, prepared_.client_deadline_set);
    bool finish = false;
    DoneInfo info;
    std::string_view reason;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_finished_ = true;
      NoteFinishLocked(e);
      if (rpc_finished_) status = CancelledStatusLocked();
      info = DoneInfoLocked();
      reason = ReasonLocked(e.reason);
      if (!rpc_finished_) {
        rpc_finished_ = finish = true;
        if (status.ok()) {
          text_ += e.text;
          response_->set_text(std::move(text_));
          if (return_token_ids_) {
            for (int32_t id : tokens_) response_->add_token_ids(id);
          }
          for (v1::TokenLogprob& lp : logprobs_) *response_->add_logprobs() = std::move(lp);
          FillFinishInfo(e, prepared_.seed, received_, response_->mutable_finish());
        }
      }
    }
    LogFinished("Generate", e, reason, received_, status);
    if (finish) {
      RecordDone(status, info);
      Finish(status);
    }
  }

  void OnCancel() override {
    bool finish = false;
    DoneInfo info;
    grpc::Status status;
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      finish = !rpc_finished_;
      rpc_finished_ = true;
      status = CancelledStatusLocked();
      info = DoneInfoLocked();
    }
    CancelEngineRequest();
    if (finish) {
      RecordDone(status, info);
      Finish(status);
    }
  }

  void OnDone() override {
    std::shared_ptr<GenerateReactor> self;
    std::lock_guard<std::mutex> lock(mu_);
    self = std::move(self_);  // released after the lock (may delete this)
    // `self` is destroyed after `lock` (declared first, destroyed last).
  }

 private:
  void FinishEarly(const grpc::Status& status) {
    LogRejected("Generate", status);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (rpc_finished_) return;  // already finished by OnCancel
      rpc_finished_ = true;
    }
    RecordDone(status, {});
    Finish(status);
  }

  v1::GenerateResponse* const response_;
  std::shared_ptr<GenerateReactor> self_;  // held until OnDone
  std::string text_;
  std::vector<int32_t> tokens_;
  std::vector<v1::TokenLogprob> logprobs_;
};

// GenerateStream: the engine's events are queued in `pending_` (coalesced while a write is in
// flight) and written one message at a time; the last message carries FinishInfo.
class StreamReactor final : public grpc::ServerWriteReactor<v1::GenerateStreamResponse>,
                            public GenerationCallBase,
                            public std::enable_shared_from_this<StreamReactor> {
 public:
  // `writer` runs the pumps the engine's step thread asks for (not owned; outlives the call).
  StreamReactor(engine::Engine* engine, ServerMetrics* metrics, SerialExecutor* writer)
      : GenerationCallBase(engine, metrics, "GenerateStream"), writer_(writer) {}

  void Start(grpc::CallbackServerContext* context, const v1::GenerateRequest& request,
             int32_t default_max_new_tokens) {
    self_ = shared_from_this();
    const grpc::Status status =
        PrepareAndSubmit(context, request, default_max_new_tokens,
                         request.output().echo_prompt() ? pending_.mutable_prompt() : nullptr,
                         &has_pending_, shared_from_this());
    if (!status.ok()) return FinishEarly(status);
    Pump();
  }

  void OnTokens(const engine::TokenEvent& e) override {
    std::vector<v1::TokenLogprob> logprobs = EventLogprobs(e);
    {
      std::lock_guard<std::mutex> lock(mu_);
      NoteTokensLocked(e);
      if (rpc_finished_ || (e.text.empty() && !return_token_ids_ && logprobs.empty())) return;
      pending_.mutable_text()->append(e.text);
      if (return_token_ids_) {
        for (int32_t id : e.tokens) pending_.add_token_ids(id);
      }
      for (v1::TokenLogprob& lp : logprobs) *pending_.add_logprobs() = std::move(lp);
      has_pending_ = true;
    }
    SchedulePump();
  }

  void OnFinish(const engine::FinishEvent& e) override {
    grpc::Status status = EndStatus(e, prepared_.client_deadline_set);
    std::string_view reason;
    {
      std::lock_guard<std::mutex> lock(mu_);
      engine_finished_ = true;
      NoteFinishLocked(e);
      if (cancelled_ || write_failed_) status = CancelledStatusLocked();
      reason = ReasonLocked(e.reason);
      end_status_ = status;
      if (status.ok()) {
        pending_.mutable_text()->append(e.text);
        FillFinishInfo(e, prepared_.seed, received_, pending_.mutable_finish());
        has_pending_ = true;
      } else {
        pending_.Clear();
        has_pending_ = false;
      }
    }
    LogFinished("GenerateStream", e, reason, received_, status);
    SchedulePump();
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) {
        write_failed_ = true;
        NoteEndedEarlyLocked();
      }
    }
    if (!ok) CancelEngineRequest();
    Pump();
  }

  void OnCancel() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      cancelled_ = true;
      NoteEndedEarlyLocked();
    }
    CancelEngineRequest();
    Pump();
  }

  void OnDone() override {
    std::shared_ptr<StreamReactor> self;
    std::lock_guard<std::mutex> lock(mu_);
    self = std::move(self_);
  }

 private:
  // From the engine's step thread: has the writer thread Pump (once for any number of events
  // that arrive before it gets to it), so the step thread never starts a gRPC write itself.
  void SchedulePump() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (pump_scheduled_ || writing_ || rpc_finished_) return;  // OnWriteDone pumps next
      pump_scheduled_ = true;
    }
    writer_->Post([self = shared_from_this()] {
      {
        std::lock_guard<std::mutex> lock(self->mu_);
        self->pump_scheduled_ = false;
      }
      self->Pump();
    });
  }

  // Starts the next write, or finishes the RPC when everything was written (or the call broke).
  // Decides under the lock; only one thread can win a write or the Finish.
  void Pump() {
    enum { kNone, kWrite, kFinish } action = kNone;
    grpc::Status status;
    DoneInfo info;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (rpc_finished_ || writing_) return;
      if (cancelled_ || write_failed_) {
        action = kFinish;
        status = CancelledStatusLocked();
      } else if (has_pending_) {
        current_ = std::move(pending_);
        pending_.Clear();
        has_pending_ = false;
        writing_ = true;
        action = kWrite;
      } else if (engine_finished_) {
        action = kFinish;
        status = end_status_;
      }
      if (action == kFinish) {
        rpc_finished_ = true;
        info = DoneInfoLocked();
      }
    }
    if (action == kWrite) StartWrite(&current_);
    if (action == kFinish) {
      RecordDone(status, info);
      Finish(status);
    }
  }

  void FinishEarly(const grpc::Status& status) {
    LogRejected("GenerateStream", status);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (rpc_finished_) return;  // already finished by OnCancel
      rpc_finished_ = true;
    }
    RecordDone(status, {});
    Finish(status);
  }

  std::shared_ptr<StreamReactor> self_;  // held until OnDone
  v1::GenerateStreamResponse current_;   // being written (untouched while writing_)
  v1::GenerateStreamResponse pending_;   // the next message
  bool has_pending_ = false;
  bool writing_ = false;
  bool pump_scheduled_ = false;  // a Pump is queued on writer_
  grpc::Status end_status_;
  SerialExecutor* const writer_;
};

}  // namespace

absl::StatusOr<PreparedRequest> PrepareRequest(
    const v1::GenerateRequest& request, const engine::Engine& engine,
    int32_t default_max_new_tokens, Clock::time_point received,
    std::chrono::system_clock::time_point client_deadline) {
  const engine::ModelConfig& config = engine.model().config();
  const engine::Tokenizer& tokenizer = engine.tokenizer();
  PreparedRequest out;
  engine::GenerationRequest& r = out.request;

  switch (request.prompt_case()) {
    case v1::GenerateRequest::kText: {
      if (request.text().empty()) return absl::InvalidArgumentError("prompt.text: empty");
      const engine::EncodeOptions encode{
          .add_bos = request.has_add_bos() ? request.add_bos() : true,
          .add_dummy_prefix = tokenizer.DefaultDummyPrefix()};
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(request.text(), encode);
      if (!ids.ok()) {
        return absl::InvalidArgumentError(absl::StrCat("prompt.text: ", ids.status().message()));
      }
      if (ids->empty()) return absl::InvalidArgumentError("prompt.text: encodes to no tokens");
      r.prompt = std::move(*ids);
      out.echo_text = request.text();
      break;
    }
    case v1::GenerateRequest::kTokenIds: {
      if (request.has_add_bos()) {
        return absl::InvalidArgumentError(
            "add_bos: only applies to a text prompt (add BOS to token_ids yourself)");
      }
      if (request.token_ids().ids().empty()) {
        return absl::InvalidArgumentError("prompt.token_ids: empty");
      }
      r.prompt.assign(request.token_ids().ids().begin(), request.token_ids().ids().end());
      if (request.output().echo_prompt()) {
        absl::StatusOr<std::string> text = tokenizer.Decode(r.prompt);
        if (text.ok()) out.echo_text = engine::SanitizeUtf8(*text);
      }
      break;
    }
    default:
      return absl::InvalidArgumentError("prompt: set text or token_ids");
  }

  const v1::SamplingParams& s = request.sampling();
  engine::SamplingParams& p = r.sampling;  // engine defaults for unset fields
  if (s.has_temperature()) p.temperature = s.temperature();
  if (s.has_top_k()) p.top_k = s.top_k();
  if (s.has_top_p()) p.top_p = s.top_p();
  if (s.has_min_p()) p.min_p = s.min_p();
  if (s.has_repetition_penalty()) p.repetition_penalty = s.repetition_penalty();
  if (s.has_presence_penalty()) p.presence_penalty = s.presence_penalty();
  if (s.has_frequency_penalty()) p.frequency_penalty = s.frequency_penalty();
  p.seed = s.has_seed() ? s.seed() : DrawSeed();
  out.seed = p.seed;

  const v1::StoppingCriteria& stop = request.stopping();
  const int64_t context = config.max_position_embeddings;
  if (stop.max_new_tokens() > context) {
    return absl::InvalidArgumentError(
        absl::StrCat("stopping.max_new_tokens: ", stop.max_new_tokens(),
                     " exceeds the model's context length ", context));
  }
  r.max_new_tokens =
      stop.max_new_tokens() != 0
          ? stop.max_new_tokens()
          : std::min<int64_t>(default_max_new_tokens, std::max<int64_t>(context - 1, 1));
  r.min_new_tokens = stop.min_new_tokens();
  r.stop_strings.assign(stop.stop_strings().begin(), stop.stop_strings().end());
  r.stop_token_ids.assign(stop.stop_token_ids().begin(), stop.stop_token_ids().end());
  r.ignore_eos = stop.ignore_eos();
  r.num_activated_experts = request.num_activated_experts();
  // The engine checks the range of top_logprobs and that it comes with logprobs.
  r.logprobs = request.output().logprobs();
  r.top_logprobs = request.output().top_logprobs();

  // Deadlines: time_limit_ms ends with OK and FINISH_REASON_TIME_LIMIT; the call's gRPC deadline
  // with DEADLINE_EXCEEDED. The engine gets the earlier one.
  std::optional<Clock::time_point> limit;
  if (stop.time_limit_ms() > 0) limit = received + std::chrono::milliseconds(stop.time_limit_ms());
  const auto sys_now = std::chrono::system_clock::now();
  if (client_deadline != std::chrono::system_clock::time_point::max() &&
      client_deadline < sys_now + std::chrono::hours(24 * 365)) {
    const Clock::time_point d =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(client_deadline - sys_now);
    if (!limit.has_value() || d <= *limit) {
      limit = d;
      out.client_deadline_set = true;
    }
  }
  r.deadline = limit;
  return out;
}

InferenceService::InferenceService(ServiceOptions options, ServerMetrics* metrics)
    : options_(std::move(options)), metrics_(metrics) {}

grpc::ServerUnaryReactor* InferenceService::Generate(grpc::CallbackServerContext* context,
                                                     const v1::GenerateRequest* request,
                                                     v1::GenerateResponse* response) {
  auto reactor = std::make_shared<GenerateReactor>(engine(), metrics_, response);
  reactor->Start(context, *request, options_.default_max_new_tokens);
  return reactor.get();  // kept alive by its self-reference until OnDone
}

grpc::ServerWriteReactor<v1::GenerateStreamResponse>* InferenceService::GenerateStream(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  auto reactor = std::make_shared<StreamReactor>(engine(), metrics_, &writer_);
  reactor->Start(context, *request, options_.default_max_new_tokens);
  return reactor.get();
}

namespace {

// The reactor of a unary RPC answered at once, reporting to the metrics (nullable).
class InstantCall {
 public:
  InstantCall(grpc::CallbackServerContext* context, ServerMetrics* metrics, const char* rpc)
      : reactor_(context->DefaultReactor()), metrics_(metrics), rpc_(rpc) {
    if (metrics_ != nullptr) metrics_->OnRequestStart(rpc_);
  }
  grpc::ServerUnaryReactor* Finish(const grpc::Status& status) {
    if (metrics_ != nullptr) {
      metrics_->OnRequestDone(rpc_, CodeName(status.error_code()), "",
                              Seconds(Clock::now() - received_), 0, 0);
    }
    reactor_->Finish(status);
    return reactor_;
  }

 private:
  grpc::ServerUnaryReactor* const reactor_;
  ServerMetrics* const metrics_;
  const char* const rpc_;
  const Clock::time_point received_ = Clock::now();
};

}  // namespace

grpc::ServerUnaryReactor* InferenceService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  InstantCall call(context, metrics_, "Tokenize");
  engine::Engine* e = engine();
  if (e == nullptr) return call.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kLoading));
  const engine::Tokenizer& tokenizer = e->tokenizer();
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer.Encode(
      request->text(), {.add_bos = request->has_add_bos() ? request->add_bos() : true,
                        .add_dummy_prefix = tokenizer.DefaultDummyPrefix()});
  if (!ids.ok()) {
    return call.Finish(
        ToGrpcStatus(absl::InvalidArgumentError(absl::StrCat("text: ", ids.status().message()))));
  }
  int32_t previous = -1;
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_pieces(PieceBytes(tokenizer, previous, id));
    previous = id;
  }
  return call.Finish(grpc::Status::OK);
}

grpc::ServerUnaryReactor* InferenceService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest* /*request*/,
                                                         v1::GetModelInfoResponse* response) {
  InstantCall call(context, metrics_, "GetModelInfo");
  engine::Engine* e = engine();
  if (e == nullptr) return call.Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kLoading));
  const engine::ModelConfig& c = e->model().config();
  response->set_model_name(options_.model_name);
  response->set_architecture(c.architecture);
  response->set_hidden_size(c.hidden_size);
  response->set_intermediate_size(c.intermediate_size);
  response->set_num_hidden_layers(c.num_hidden_layers);
  response->set_num_attention_heads(c.num_attention_heads);
  response->set_num_key_value_heads(c.num_key_value_heads);
  response->set_head_dim(c.head_dim);
  response->set_vocab_size(c.vocab_size);
  response->set_context_length(c.max_position_embeddings);
  response->set_dtype("float32");  // the CPU backend computes in float32
  response->set_device(options_.device);
  response->set_bos_token_id(c.bos_token_id);
  for (int32_t id : c.eos_token_ids) response->add_eos_token_ids(id);
  if (c.cmoe.has_value()) {
    const engine::CmoeConfig& m = *c.cmoe;
    v1::CmoeConfig* out = response->mutable_cmoe();
    out->set_name(m.Name());
    out->set_num_experts(m.num_experts);
    out->set_num_shared_experts(m.num_shared_experts);
    out->set_num_routed_experts(m.num_routed());
    out->set_num_activated_experts(m.num_activated_experts);
    out->set_shared_width(m.shared_width);
    for (int64_t w : m.expert_widths) out->add_expert_widths(w);
    out->set_activation_ratio(m.ActivationRatio());
    out->set_score(m.score);
    out->set_router(m.router);
  }
  const engine::SamplingParams d;
  v1::SamplingParams* s = response->mutable_default_sampling();
  s->set_temperature(d.temperature);
  s->set_top_k(d.top_k);
  s->set_top_p(d.top_p);
  s->set_min_p(d.min_p);
  s->set_repetition_penalty(d.repetition_penalty);
  s->set_presence_penalty(d.presence_penalty);
  s->set_frequency_penalty(d.frequency_penalty);
  response->set_default_max_new_tokens(static_cast<int32_t>(std::min<int64_t>(
      options_.default_max_new_tokens, std::max<int64_t>(c.max_position_embeddings - 1, 1))));
  response->set_max_top_logprobs(engine::kMaxTopLogprobs);
  return call.Finish(grpc::Status::OK);
}

}  // namespace cmoe::server
