// cmoe-cli: a command-line client of cmoe-serve (cmoe.v1.Inference and grpc.health.v1.Health).
//
//   cmoe-cli --target HOST:PORT generate --prompt TEXT [--max-new-tokens N] [--temperature T]
//            [--top-k K] [--top-p P] [--seed S] [--active-experts K] [--ignore-eos]
//            [--logprobs N] [--json]
//   cmoe-cli --target HOST:PORT stream   (the flags of generate; text deltas as they arrive)
//   cmoe-cli --target HOST:PORT tokenize --text TEXT [--json]
//   cmoe-cli --target HOST:PORT info [--json]
//   cmoe-cli --target HOST:PORT health [--service NAME]     (exit 0 only when SERVING)
//   cmoe-cli --target HOST:PORT bench --concurrency C --requests N [--rate R] [--duration S]
//            [--max-new-tokens M] [--prompt TEXT] [--json]
//
// Every call has a deadline, --timeout seconds (default 30; 5 for health). A failed call prints
// "cmoe-cli: error: <CODE>: <message>" and exits 1.
//
// --logprobs N (generate, stream): each generated token's log-probability and its N most likely
// alternatives (0: none; -1, the default: off). With --json they are the "logprobs" array; else
// one line per token goes to stderr after the text, so stdout stays the text alone.
//
// bench: C worker threads, each with its own channel (a local subchannel pool, so each worker has
// its own HTTP/2 connection, like C independent clients), run GenerateStream calls (ignore_eos,
// so every request generates --max-new-tokens tokens) until N requests have been started, or
// --duration seconds have passed (no new request starts after that; running ones finish). With
// --rate R > 0, request i is not started before start + i / R (bounded by C in flight).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>

#include "absl/flags/flag.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "Server address HOST:PORT");
ABSL_FLAG(double, timeout, 0,
          "Deadline of every call in seconds (0: the default, 30; 5 for health)");
ABSL_FLAG(std::string, prompt, "Once upon a time", "generate/stream/bench: the prompt text");
ABSL_FLAG(std::string, text, "", "tokenize: the text to tokenize");
ABSL_FLAG(int32_t, max_new_tokens, 0,
          "Tokens to generate (0: the server's default; bench: 0 means 32)");
ABSL_FLAG(std::optional<float>, temperature, std::nullopt,
          "Sampling temperature, 0 is greedy (unset: the server's default)");
ABSL_FLAG(std::optional<int32_t>, top_k, std::nullopt, "Keep the k most likely tokens");
ABSL_FLAG(std::optional<float>, top_p, std::nullopt, "Nucleus sampling mass");
ABSL_FLAG(std::optional<uint64_t>, seed, std::nullopt, "Random seed");
ABSL_FLAG(int32_t, active_experts, 0,
          "Carved models: routed experts per token (0: the server's default)");
ABSL_FLAG(bool, ignore_eos, false, "generate/stream: keep generating after EOS");
ABSL_FLAG(int32_t, logprobs, -1,
          "generate/stream: print each token's log-probability and its N most likely "
          "alternatives (0: none; -1: off; at most the server's max_top_logprobs)");
ABSL_FLAG(std::string, service, "", "health: the service to check (empty: the whole server)");
ABSL_FLAG(int32_t, concurrency, 1, "bench: worker threads (requests in flight)");
ABSL_FLAG(int32_t, requests, 0, "bench: requests to run");
ABSL_FLAG(double, rate, 0, "bench: requests started per second (0: as fast as possible)");
ABSL_FLAG(double, duration, 0, "bench: start no request after this many seconds (0: no cap)");
ABSL_FLAG(bool, json, false, "Print one JSON object");

namespace cmoe::tools {
namespace {

constexpr char kTool[] = "cmoe-cli";
using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

// "UNAVAILABLE: failed to connect ..." as an absl::Status of the same code.
absl::Status FromGrpc(const grpc::Status& status) {
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                      absl::StrCat(CodeName(status.error_code()), ": ", status.error_message()));
}

double TimeoutSeconds(double default_seconds) {
  const double t = absl::GetFlag(FLAGS_timeout);
  return t > 0 ? t : default_seconds;
}

void SetDeadline(grpc::ClientContext* context, double seconds) {
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::duration_cast<std::chrono::system_clock::duration>(
                            std::chrono::duration<double>(seconds)));
}

std::shared_ptr<grpc::Channel> MakeChannel(bool own_connection = false) {
  grpc::ChannelArguments args;
  if (own_connection) args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials(),
                                   args);
}

void PrintJson(const Json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, Json::error_handler_t::replace).c_str());
}

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string FinishReasonName(v1::FinishReason reason) {
  std::string name = v1::FinishReason_Name(reason);
  const std::string prefix = "FINISH_REASON_";
  if (name.rfind(prefix, 0) == 0) name = name.substr(prefix.size());
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name;
}

Json FinishJson(const v1::FinishInfo& f) {
  return Json{{"finish_reason", FinishReasonName(f.reason())},
              {"usage",
               {{"prompt_tokens", f.usage().prompt_tokens()},
                {"generated_tokens", f.usage().generated_tokens()}}},
              {"timings",
               {{"queue_ms", f.timings().queue_ms()},
                {"time_to_first_token_ms", f.timings().time_to_first_token_ms()},
                {"decode_ms", f.timings().decode_ms()},
                {"total_ms", f.timings().total_ms()}}},
              {"seed", f.seed()}};
}

using Logprobs = google::protobuf::RepeatedPtrField<v1::TokenLogprob>;

// `bytes` as a JSON string literal (invalid UTF-8 replaced): spaces and newlines stay visible.
std::string Quoted(const std::string& bytes) {
  return Json(bytes).dump(-1, ' ', false, Json::error_handler_t::replace);
}

Json LogprobsJson(const Logprobs& logprobs) {
  Json out = Json::array();
  for (const v1::TokenLogprob& lp : logprobs) {
    Json top = Json::array();
    for (const v1::TopLogprob& t : lp.top_logprobs()) {
      top.push_back({{"token_id", t.token_id()}, {"piece", t.piece()}, {"logprob", t.logprob()}});
    }
    out.push_back({{"token_id", lp.token_id()},
                   {"piece", lp.piece()},
                   {"logprob", lp.logprob()},
                   {"top_logprobs", std::move(top)}});
  }
  return out;
}

// One line per token on stderr: id, piece, logprob, then the alternatives.
//   cmoe-cli: logprob    303 "Lily "          -0.9728  | "Lily " -0.9728, "Lucy " -2.2172
void PrintLogprobs(const Logprobs& logprobs) {
  for (const v1::TokenLogprob& lp : logprobs) {
    std::fprintf(stderr, "%s: logprob %6d %-14s %9.4f", kTool, lp.token_id(),
                 Quoted(lp.piece()).c_str(), lp.logprob());
    for (int k = 0; k < lp.top_logprobs_size(); ++k) {
      const v1::TopLogprob& t = lp.top_logprobs(k);
      std::fprintf(stderr, "%s%s %.4f", k == 0 ? "  | " : ", ", Quoted(t.piece()).c_str(),
                   t.logprob());
    }
    std::fputc('\n', stderr);
  }
}

absl::StatusOr<v1::GenerateRequest> RequestFromFlags() {
  v1::GenerateRequest r;
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (prompt.empty()) return absl::InvalidArgumentError("--prompt must not be empty");
  r.set_text(prompt);
  const int32_t max_new = absl::GetFlag(FLAGS_max_new_tokens);
  if (max_new < 0) return absl::InvalidArgumentError("--max-new-tokens must be >= 0");
  r.mutable_stopping()->set_max_new_tokens(max_new);
  r.mutable_stopping()->set_ignore_eos(absl::GetFlag(FLAGS_ignore_eos));
  v1::SamplingParams* s = r.mutable_sampling();
  if (const auto t = absl::GetFlag(FLAGS_temperature)) s->set_temperature(*t);
  if (const auto k = absl::GetFlag(FLAGS_top_k)) s->set_top_k(*k);
  if (const auto p = absl::GetFlag(FLAGS_top_p)) s->set_top_p(*p);
  if (const auto seed = absl::GetFlag(FLAGS_seed)) s->set_seed(*seed);
  const int32_t experts = absl::GetFlag(FLAGS_active_experts);
  if (experts < 0) return absl::InvalidArgumentError("--active-experts must be >= 0");
  r.set_num_activated_experts(experts);
  r.mutable_output()->set_return_token_ids(true);
  const int32_t logprobs = absl::GetFlag(FLAGS_logprobs);
  if (logprobs < -1) return absl::InvalidArgumentError("--logprobs must be >= -1 (-1: off)");
  if (logprobs >= 0) {
    r.mutable_output()->set_logprobs(true);
    r.mutable_output()->set_top_logprobs(logprobs);
  }
  return r;
}

absl::Status RunGenerate() {
  absl::StatusOr<v1::GenerateRequest> request = RequestFromFlags();
  if (!request.ok()) return request.status();
  auto stub = v1::Inference::NewStub(MakeChannel());
  grpc::ClientContext context;
  SetDeadline(&context, TimeoutSeconds(30));
  v1::GenerateResponse response;
  const grpc::Status status = stub->Generate(&context, *request, &response);
  if (!status.ok()) return FromGrpc(status);
  if (absl::GetFlag(FLAGS_json)) {
    Json j{{"text", response.text()},
           {"token_ids",
            std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end())}};
    if (request->output().logprobs()) j["logprobs"] = LogprobsJson(response.logprobs());
    j.update(FinishJson(response.finish()));
    PrintJson(j);
  } else {
    std::printf("%s\n", response.text().c_str());
    std::fflush(stdout);
    PrintLogprobs(response.logprobs());
  }
  return absl::OkStatus();
}

absl::Status RunStream() {
  absl::StatusOr<v1::GenerateRequest> request = RequestFromFlags();
  if (!request.ok()) return request.status();
  const bool json = absl::GetFlag(FLAGS_json);
  auto stub = v1::Inference::NewStub(MakeChannel());
  grpc::ClientContext context;
  SetDeadline(&context, TimeoutSeconds(30));
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> first;
  auto reader = stub->GenerateStream(&context, *request);
  v1::GenerateStreamResponse message;
  std::string text;
  std::vector<int32_t> tokens;
  Logprobs logprobs;
  v1::FinishInfo finish;
  int messages = 0;
  while (reader->Read(&message)) {
    ++messages;
    if (!first && message.token_ids_size() > 0) first = Clock::now();
    text += message.text();
    tokens.insert(tokens.end(), message.token_ids().begin(), message.token_ids().end());
    logprobs.MergeFrom(message.logprobs());
    if (message.has_finish()) finish = message.finish();
    if (!json && !message.text().empty()) {
      std::fwrite(message.text().data(), 1, message.text().size(), stdout);
      std::fflush(stdout);
    }
  }
  const grpc::Status status = reader->Finish();
  const double total_ms = Ms(Clock::now() - start);
  const double ttft_ms = first ? Ms(*first - start) : 0.0;
  if (!json && !text.empty()) std::fputc('\n', stdout);
  if (!status.ok()) return FromGrpc(status);
  if (json) {
    Json j{{"text", text}, {"token_ids", tokens}, {"messages", messages}};
    if (request->output().logprobs()) j["logprobs"] = LogprobsJson(logprobs);
    j.update(FinishJson(finish));
    j["client"] = {{"time_to_first_token_ms", ttft_ms}, {"total_ms", total_ms}};
    PrintJson(j);
  } else {
    std::fflush(stdout);
    PrintLogprobs(logprobs);
    std::fprintf(stderr,
                 "%s: finish_reason=%s prompt_tokens=%lld generated_tokens=%lld "
                 "ttft_ms=%.1f total_ms=%.1f\n",
                 kTool, FinishReasonName(finish.reason()).c_str(),
                 static_cast<long long>(finish.usage().prompt_tokens()),
                 static_cast<long long>(finish.usage().generated_tokens()), ttft_ms, total_ms);
  }
  return absl::OkStatus();
}

absl::Status RunTokenize() {
  const std::string text = absl::GetFlag(FLAGS_text);
  if (absl::Status s = RequireFlag("text", text); !s.ok()) return s;
  auto stub = v1::Inference::NewStub(MakeChannel());
  grpc::ClientContext context;
  SetDeadline(&context, TimeoutSeconds(30));
  v1::TokenizeRequest request;
  request.set_text(text);
  v1::TokenizeResponse response;
  const grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(Json{
        {"token_ids",
         std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end())},
        {"pieces", std::vector<std::string>(response.pieces().begin(), response.pieces().end())}});
  } else {
    for (int i = 0; i < response.token_ids_size(); ++i) {
      const std::string piece = i < response.pieces_size() ? response.pieces(i) : "";
      std::printf("%d\t%s\n", response.token_ids(i), Quoted(piece).c_str());
    }
  }
  return absl::OkStatus();
}

absl::Status RunInfo() {
  auto stub = v1::Inference::NewStub(MakeChannel());
  grpc::ClientContext context;
  SetDeadline(&context, TimeoutSeconds(30));
  v1::GetModelInfoResponse info;
  const grpc::Status status = stub->GetModelInfo(&context, {}, &info);
  if (!status.ok()) return FromGrpc(status);
  Json j{{"model_name", info.model_name()},
         {"architecture", info.architecture()},
         {"hidden_size", info.hidden_size()},
         {"intermediate_size", info.intermediate_size()},
         {"num_hidden_layers", info.num_hidden_layers()},
         {"num_attention_heads", info.num_attention_heads()},
         {"num_key_value_heads", info.num_key_value_heads()},
         {"head_dim", info.head_dim()},
         {"vocab_size", info.vocab_size()},
         {"context_length", info.context_length()},
         {"dtype", info.dtype()},
         {"device", info.device()},
         {"bos_token_id", info.bos_token_id()},
         {"eos_token_ids",
          std::vector<int32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end())},
         {"default_max_new_tokens", info.default_max_new_tokens()},
         {"max_top_logprobs", info.max_top_logprobs()}};
  if (info.has_cmoe()) {
    const v1::CmoeConfig& c = info.cmoe();
    j["cmoe"] = {
        {"name", c.name()},
        {"num_experts", c.num_experts()},
        {"num_shared_experts", c.num_shared_experts()},
        {"num_routed_experts", c.num_routed_experts()},
        {"num_activated_experts", c.num_activated_experts()},
        {"shared_width", c.shared_width()},
        {"expert_widths", std::vector<int64_t>(c.expert_widths().begin(), c.expert_widths().end())},
        {"activation_ratio", c.activation_ratio()},
        {"score", c.score()},
        {"router", c.router()}};
  } else {
    j["cmoe"] = nullptr;
  }
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(j);
  } else {
    for (const auto& [key, value] : j.items()) {
      std::printf("%-24s %s\n", key.c_str(),
                  value.is_string() ? value.get<std::string>().c_str() : value.dump().c_str());
    }
  }
  return absl::OkStatus();
}

// grpc.health.v1.Health/Check as raw bytes (Debian ships no health.proto): the request's field 1
// is the service name, the response's field 1 the status enum.
absl::StatusOr<bool> RunHealth() {
  const std::string service = absl::GetFlag(FLAGS_service);
  if (service.size() > 127) return absl::InvalidArgumentError("--service is too long");
  std::string request_bytes;
  if (!service.empty()) {
    request_bytes.push_back('\x0a');
    request_bytes.push_back(static_cast<char>(service.size()));
    request_bytes += service;
  }
  grpc::Slice slice(request_bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ByteBuffer response;
  grpc::ClientContext context;
  SetDeadline(&context, TimeoutSeconds(5));
  auto channel = MakeChannel();
  const grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel.get(),
      grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                grpc::internal::RpcMethod::NORMAL_RPC),
      &context, request, &response);
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return absl::InternalError("cannot read the response");
  std::string bytes;
  for (const grpc::Slice& s : slices) bytes.append(s.begin(), s.end());
  int value = 0;  // UNKNOWN when absent (proto3 default)
  if (bytes.size() >= 2 && bytes[0] == '\x08') value = static_cast<unsigned char>(bytes[1]);
  static const char* const kNames[] = {"UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"};
  std::printf("%s\n", value >= 0 && value < 4 ? kNames[value] : "UNKNOWN");
  return value == 1;
}

// --- bench ---

struct RequestRecord {
  grpc::StatusCode code = grpc::StatusCode::OK;
  std::string message;
  double ttft_ms = 0;
  double e2e_ms = 0;
  int64_t tokens = 0;
  std::vector<double> itl_ms;
};

// Nearest-rank percentile of sorted values.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank =
      static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

Json Summary(std::vector<double> values) {
  if (values.empty()) return nullptr;
  std::sort(values.begin(), values.end());
  double sum = 0;
  for (double v : values) sum += v;
  return Json{{"p50", Percentile(values, 50)}, {"p90", Percentile(values, 90)},
              {"p99", Percentile(values, 99)}, {"mean", sum / static_cast<double>(values.size())},
              {"max", values.back()},          {"count", values.size()}};
}

RequestRecord RunOneStream(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                           double timeout) {
  RequestRecord r;
  grpc::ClientContext context;
  SetDeadline(&context, timeout);
  const Clock::time_point start = Clock::now();
  std::optional<Clock::time_point> last;
  auto reader = stub.GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    const int n = message.token_ids_size();
    if (n == 0) continue;
    const Clock::time_point now = Clock::now();
    if (!last) {
      r.ttft_ms = Ms(now - start);
      // Tokens after the first in the same message arrived with no gap.
      for (int i = 1; i < n; ++i) r.itl_ms.push_back(0);
    } else {
      const double gap = Ms(now - *last) / n;
      for (int i = 0; i < n; ++i) r.itl_ms.push_back(gap);
    }
    last = now;
    r.tokens += n;
  }
  const grpc::Status status = reader->Finish();
  r.e2e_ms = Ms(Clock::now() - start);
  r.code = status.error_code();
  r.message = status.error_message();
  return r;
}

absl::Status RunBench() {
  const int32_t concurrency = absl::GetFlag(FLAGS_concurrency);
  const int32_t requests = absl::GetFlag(FLAGS_requests);
  const double rate = absl::GetFlag(FLAGS_rate);
  const double duration = absl::GetFlag(FLAGS_duration);
  if (concurrency < 1) return absl::InvalidArgumentError("--concurrency must be >= 1");
  if (requests < 1) return absl::InvalidArgumentError("--requests must be >= 1");
  if (!(rate >= 0)) return absl::InvalidArgumentError("--rate must be >= 0");
  if (!(duration >= 0)) return absl::InvalidArgumentError("--duration must be >= 0");
  absl::StatusOr<v1::GenerateRequest> base = RequestFromFlags();
  if (!base.ok()) return base.status();
  v1::GenerateRequest request = *base;
  if (request.stopping().max_new_tokens() == 0) request.mutable_stopping()->set_max_new_tokens(32);
  request.mutable_stopping()->set_ignore_eos(true);
  const double timeout = TimeoutSeconds(30);

  std::atomic<int> next{0};
  std::mutex mu;
  std::vector<RequestRecord> records;
  const Clock::time_point start = Clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - start).count(); };
  std::vector<std::thread> workers;
  for (int w = 0; w < concurrency; ++w) {
    workers.emplace_back([&] {
      auto stub = v1::Inference::NewStub(MakeChannel(/*own_connection=*/true));
      while (true) {
        const int i = next.fetch_add(1);
        if (i >= requests) return;
        if (duration > 0 && elapsed() >= duration) return;
        if (rate > 0) {
          const auto at = start + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(i / rate));
          std::this_thread::sleep_until(at);
          if (duration > 0 && elapsed() >= duration) return;
        }
        RequestRecord r = RunOneStream(*stub, request, timeout);
        std::lock_guard<std::mutex> lock(mu);
        records.push_back(std::move(r));
      }
    });
  }
  for (std::thread& t : workers) t.join();
  const double wall = elapsed();

  std::vector<double> ttft, itl, e2e;
  std::map<std::string, int> errors;
  std::map<std::string, std::string> error_messages;  // per code, the first request's message
  std::string first_error;
  int64_t tokens = 0;
  int ok = 0;
  for (const RequestRecord& r : records) {
    tokens += r.tokens;
    if (r.code != grpc::StatusCode::OK) {
      ++errors[CodeName(r.code)];
      error_messages.emplace(CodeName(r.code), r.message);
      if (first_error.empty()) first_error = CodeName(r.code) + ": " + r.message;
      continue;
    }
    ++ok;
    ttft.push_back(r.ttft_ms);
    e2e.push_back(r.e2e_ms);
    itl.insert(itl.end(), r.itl_ms.begin(), r.itl_ms.end());
  }
  const int done = static_cast<int>(records.size());
  if (done > 0 && ok == 0) {
    return absl::UnavailableError(
        absl::StrCat("all ", done, " requests failed; the first: ", first_error));
  }
  Json error_json = Json::object();
  for (const auto& [code, n] : errors) error_json[code] = n;
  Json message_json = Json::object();
  for (const auto& [code, message] : error_messages) message_json[code] = message;
  const Json j{{"target", absl::GetFlag(FLAGS_target)},
               {"concurrency", concurrency},
               {"rate", rate},
               {"max_new_tokens", request.stopping().max_new_tokens()},
               {"requests", done},
               {"ok", ok},
               {"errors", error_json},
               {"error_messages", message_json},
               {"wall_seconds", wall},
               {"generated_tokens", tokens},
               {"tokens_per_second", wall > 0 ? static_cast<double>(tokens) / wall : 0.0},
               {"requests_per_second", wall > 0 ? ok / wall : 0.0},
               {"ttft_ms", Summary(ttft)},
               {"itl_ms", Summary(itl)},
               {"e2e_ms", Summary(e2e)}};
  if (absl::GetFlag(FLAGS_json)) {
    PrintJson(j);
    return absl::OkStatus();
  }
  std::printf("requests %d (ok %d, errors %d) in %.2f s with concurrency %d\n", done, ok, done - ok,
              wall, concurrency);
  std::printf("throughput %.1f tokens/s, %.2f requests/s (%lld tokens)\n",
              j["tokens_per_second"].get<double>(), j["requests_per_second"].get<double>(),
              static_cast<long long>(tokens));
  for (const char* key : {"ttft_ms", "itl_ms", "e2e_ms"}) {
    const Json& s = j[key];
    if (s.is_null()) continue;
    std::printf("%-8s p50 %8.2f  p90 %8.2f  p99 %8.2f  mean %8.2f\n", key, s["p50"].get<double>(),
                s["p90"].get<double>(), s["p99"].get<double>(), s["mean"].get<double>());
  }
  for (const auto& [code, n] : errors) {
    std::printf("error %s: %d (the first: %s)\n", code.c_str(), n, error_messages[code].c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  using cmoe::tools::Fail;
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-cli --target HOST:PORT (generate|stream|tokenize|info|health|bench) [flags]");
  if (args.empty()) {
    return Fail("cmoe-cli", absl::InvalidArgumentError(
                                "a subcommand is required: generate, stream, tokenize, info, "
                                "health or bench"));
  }
  if (args.size() > 1) {
    return Fail("cmoe-cli", absl::InvalidArgumentError("unexpected argument '" + args[1] + "'"));
  }
  if (!(absl::GetFlag(FLAGS_timeout) >= 0)) {
    return Fail("cmoe-cli", absl::InvalidArgumentError("--timeout must be > 0"));
  }
  const std::string& command = args[0];
  absl::Status status;
  if (command == "generate") {
    status = cmoe::tools::RunGenerate();
  } else if (command == "stream") {
    status = cmoe::tools::RunStream();
  } else if (command == "tokenize") {
    status = cmoe::tools::RunTokenize();
  } else if (command == "info") {
    status = cmoe::tools::RunInfo();
  } else if (command == "health") {
    absl::StatusOr<bool> serving = cmoe::tools::RunHealth();
    if (!serving.ok()) return Fail("cmoe-cli", serving.status());
    return *serving ? 0 : 1;
  } else if (command == "bench") {
    status = cmoe::tools::RunBench();
  } else {
    status = absl::InvalidArgumentError("unknown subcommand '" + command + "'");
  }
  return status.ok() ? 0 : Fail("cmoe-cli", status);
}
