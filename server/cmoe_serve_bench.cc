// cmoe-serve-bench: what serving over gRPC costs on top of the engine. The same streaming load
// (C clients, N requests of M tokens each, greedy, ignore-EOS) runs twice per repetition, in one
// process and interleaved:
//   engine: clients call Engine::Submit directly and wait for OnFinish (no gRPC, no protobuf);
//   grpc:   an in-process cmoe.v1.Inference server (with its Prometheus metrics, as cmoe-serve)
//           on a loopback port, clients on their own channels calling GenerateStream.
// From the engine's step reports of each run: the model-forward time, the whole-step time and the
// tokens per step. Per generated token (medians over repetitions):
//   forward     = model-forward seconds of the engine run / tokens
//   scheduling  = engine-run wall / tokens - forward     (batch packing, sampling, delivery, waits)
//   grpc        = grpc-run wall / tokens - engine-run wall / tokens
//   overhead    = scheduling + grpc
// and the target ratio: overhead per token / the engine run's mean step time (each token
// of a step waits for the whole step, so this is how much serving adds to its latency), besides
// the plain throughput ratio grpc / engine.
// The clients share the machine with the server, so their cost is in the grpc figure too (as it is
// for any client on the same host).
//
//   cmoe-serve-bench --model DIR [--concurrency 32] [--requests 256] [--max-new-tokens 64]
//                    [--reps 3] [--threads N] [--max-batch-tokens 512] [--max-running 64] [--json]
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cmoe/v1/inference.grpc.pb.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/model_loader.h"
#include "nlohmann/json.hpp"
#include "server/inference_service.h"
#include "server/metrics.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (required)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads for the model (0: all cores)");
ABSL_FLAG(int32_t, concurrency, 32, "Clients (requests in flight)");
ABSL_FLAG(int32_t, requests, 256, "Requests per run");
ABSL_FLAG(int32_t, max_new_tokens, 64, "Tokens each request generates (EOS ignored)");
ABSL_FLAG(std::string, prompt, "Once upon a time", "The prompt of every request");
ABSL_FLAG(int32_t, reps, 3, "Repetitions of the engine / grpc pair (medians are reported)");
ABSL_FLAG(int64_t, max_batch_tokens, 512, "Engine: tokens per step");
ABSL_FLAG(int64_t, max_running, 64, "Engine: sequences in the batch");
ABSL_FLAG(bool, json, false, "Print one JSON object");

namespace cmoe::server {
namespace {

struct RunOptions {
  std::string model;
  int32_t threads = 0;
  int32_t concurrency = 0;
  int32_t requests = 0;
  v1::GenerateRequest request;
  engine::EngineOptions engine;
};

// One run's figures.
struct RunResult {
  double wall_seconds = 0;
  int64_t generated_tokens = 0;
  int64_t steps = 0;
  int64_t step_tokens = 0;
  double forward_seconds = 0;
  double step_seconds = 0;
};

// Sums the engine's step reports (written on the step thread, read after the engine stopped).
struct StepTotals {
  int64_t steps = 0;
  int64_t tokens = 0;
  double forward_seconds = 0;
  double step_seconds = 0;
  void Add(const engine::StepReport& r) {
    ++steps;
    tokens += r.tokens;
    forward_seconds += r.forward_seconds;
    step_seconds += r.step_seconds;
  }
  RunResult Result(double wall_seconds, int64_t generated_tokens) const {
    return {.wall_seconds = wall_seconds,
            .generated_tokens = generated_tokens,
            .steps = steps,
            .step_tokens = tokens,
            .forward_seconds = forward_seconds,
            .step_seconds = step_seconds};
  }
};

absl::StatusOr<std::unique_ptr<engine::Engine>> MakeEngine(
    const RunOptions& options, std::function<void(const engine::StepReport&)> on_step) {
  CMOE_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(options.model));
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel loaded,
                        engine::LoadModel({.model_dir = options.model,
                                           .device = "cpu",
                                           .threads = options.threads,
                                           .kv_cache_tokens = engine::DefaultKvCacheTokens(
                                               config, options.engine.max_running)}));
  return engine::Engine::Create(std::move(loaded), options.engine, std::move(on_step));
}

// Runs `client(i)` for i in [0, requests) on `concurrency` threads; the first error wins.
absl::Status RunClients(const RunOptions& options,
                        const std::function<absl::Status(int32_t client)>& request_fn) {
  std::atomic<int32_t> next{0};
  std::mutex mutex;
  absl::Status first_error;
  std::vector<std::thread> clients;
  for (int32_t c = 0; c < options.concurrency; ++c) {
    clients.emplace_back([&, c] {
      while (next.fetch_add(1) < options.requests) {
        absl::Status status = request_fn(c);
        if (!status.ok()) {
          std::lock_guard<std::mutex> lock(mutex);
          if (first_error.ok()) first_error = std::move(status);
          return;
        }
      }
    });
  }
  for (std::thread& t : clients) t.join();
  return first_error;
}

// Waits for one request's OnFinish and counts its tokens.
class WaitingSink : public engine::RequestSink {
 public:
  void OnTokens(const engine::TokenEvent& event) override {
    tokens_ += static_cast<int64_t>(event.tokens.size());
  }
  void OnFinish(const engine::FinishEvent& event) override {
    std::lock_guard<std::mutex> lock(mutex_);
    finish_ = event;
    done_ = true;
    done_cv_.notify_one();
  }
  engine::FinishEvent Wait() {
    std::unique_lock<std::mutex> lock(mutex_);
    done_cv_.wait(lock, [this] { return done_; });
    return finish_;
  }
  int64_t tokens() const { return tokens_; }

 private:
  int64_t tokens_ = 0;  // step thread only, read after OnFinish
  std::mutex mutex_;
  std::condition_variable done_cv_;
  bool done_ = false;
  engine::FinishEvent finish_;
};

absl::StatusOr<RunResult> RunEngine(const RunOptions& options) {
  StepTotals totals;
  CMOE_ASSIGN_OR_RETURN(
      auto engine, MakeEngine(options, [&totals](const engine::StepReport& r) { totals.Add(r); }));
  std::atomic<int64_t> generated{0};
  Timer wall;
  const absl::Status status = RunClients(options, [&](int32_t) -> absl::Status {
    CMOE_ASSIGN_OR_RETURN(
        PreparedRequest prepared,
        PrepareRequest(options.request, *engine, options.request.stopping().max_new_tokens(),
                       std::chrono::steady_clock::now(),
                       std::chrono::system_clock::time_point::max()));
    auto sink = std::make_shared<WaitingSink>();
    CMOE_RETURN_IF_ERROR(engine->Submit(std::move(prepared.request), sink).status());
    const engine::FinishEvent finish = sink->Wait();
    if (!finish.status.ok()) return finish.status;
    generated += sink->tokens();
    return absl::OkStatus();
  });
  const double seconds = wall.Seconds();
  engine->Shutdown(absl::ZeroDuration());
  CMOE_RETURN_IF_ERROR(status);
  return totals.Result(seconds, generated.load());
}

absl::StatusOr<RunResult> RunGrpc(const RunOptions& options) {
  CMOE_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(options.model));
  CMOE_ASSIGN_OR_RETURN(
      auto metrics,
      ServerMetrics::Create(
          {.num_layers = config.num_hidden_layers,
           .num_routed_experts = config.cmoe.has_value() ? config.cmoe->num_routed() : 0,
           .ffn_neurons_per_token = config.intermediate_size * config.num_hidden_layers}));
  StepTotals totals;
  CMOE_ASSIGN_OR_RETURN(
      auto engine, MakeEngine(options, [&totals, m = metrics.get()](const engine::StepReport& r) {
        totals.Add(r);
        m->OnStep(r);
      }));
  InferenceService service({.model_name = "bench"}, metrics.get());
  service.SetEngine(engine.get());
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) return absl::UnavailableError("cannot listen on 127.0.0.1");

  // One channel (and connection) per client, as separate client processes would have.
  std::vector<std::unique_ptr<v1::Inference::Stub>> stubs;
  for (int32_t c = 0; c < options.concurrency; ++c) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    stubs.push_back(v1::Inference::NewStub(grpc::CreateCustomChannel(
        absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials(), args)));
  }
  std::atomic<int64_t> generated{0};
  Timer wall;
  const absl::Status status = RunClients(options, [&](int32_t c) -> absl::Status {
    grpc::ClientContext context;
    auto reader = stubs[static_cast<size_t>(c)]->GenerateStream(&context, options.request);
    v1::GenerateStreamResponse message;
    int64_t tokens = 0;
    while (reader->Read(&message)) tokens += message.token_ids_size();
    const grpc::Status s = reader->Finish();
    if (!s.ok()) {
      return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    }
    generated += tokens;
    return absl::OkStatus();
  });
  const double seconds = wall.Seconds();
  engine->Shutdown(absl::ZeroDuration());
  server->Shutdown(std::chrono::system_clock::now());
  server->Wait();
  CMOE_RETURN_IF_ERROR(status);
  return totals.Result(seconds, generated.load());
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Medians over repetitions of the per-run figures.
struct Summary {
  double tokens_per_second = 0;
  double tokens_per_step = 0;
  double step_ms = 0;
  double forward_ms_per_step = 0;
  double wall_us_per_token = 0;
  double forward_us_per_token = 0;

  static Summary Of(const std::vector<RunResult>& runs) {
    std::vector<double> tps, tpstep, step, fwd, wall_tok, fwd_tok;
    for (const RunResult& r : runs) {
      const double tokens = static_cast<double>(r.generated_tokens);
      const double steps = static_cast<double>(std::max<int64_t>(r.steps, 1));
      tps.push_back(tokens / r.wall_seconds);
      tpstep.push_back(static_cast<double>(r.step_tokens) / steps);
      step.push_back(1e3 * r.step_seconds / steps);
      fwd.push_back(1e3 * r.forward_seconds / steps);
      wall_tok.push_back(1e6 * r.wall_seconds / tokens);
      fwd_tok.push_back(1e6 * r.forward_seconds / tokens);
    }
    return {Median(tps), Median(tpstep),   Median(step),
            Median(fwd), Median(wall_tok), Median(fwd_tok)};
  }
  nlohmann::json Json() const {
    return {{"tokens_per_second", tokens_per_second},
            {"tokens_per_step", tokens_per_step},
            {"step_ms", step_ms},
            {"forward_ms_per_step", forward_ms_per_step},
            {"wall_us_per_token", wall_us_per_token},
            {"forward_us_per_token", forward_us_per_token}};
  }
};

absl::Status Run() {
  RunOptions options;
  options.model = absl::GetFlag(FLAGS_model);
  CMOE_RETURN_IF_ERROR(tools::RequireFlag("model", options.model));
  options.threads = absl::GetFlag(FLAGS_threads);
  options.concurrency = absl::GetFlag(FLAGS_concurrency);
  options.requests = absl::GetFlag(FLAGS_requests);
  const int32_t max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  const int32_t reps = absl::GetFlag(FLAGS_reps);
  if (options.threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  if (options.concurrency < 1 || options.concurrency > 1024) {
    return absl::InvalidArgumentError("--concurrency must be in [1, 1024]");
  }
  if (options.requests < options.concurrency) {
    return absl::InvalidArgumentError("--requests must be >= --concurrency");
  }
  if (max_new_tokens < 1) return absl::InvalidArgumentError("--max-new-tokens must be >= 1");
  if (reps < 1 || reps > 100) return absl::InvalidArgumentError("--reps must be in [1, 100]");
  options.engine = {.max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens),
                    .max_running = absl::GetFlag(FLAGS_max_running),
                    .max_waiting = options.requests};
  if (options.engine.max_batch_tokens < 1 || options.engine.max_running < 1) {
    return absl::InvalidArgumentError("--max-batch-tokens and --max-running must be >= 1");
  }
  if (absl::GetFlag(FLAGS_prompt).empty()) return absl::InvalidArgumentError("--prompt is empty");
  options.request.set_text(absl::GetFlag(FLAGS_prompt));
  options.request.mutable_sampling()->set_temperature(0.0f);
  options.request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  options.request.mutable_stopping()->set_ignore_eos(true);
  options.request.mutable_output()->set_return_token_ids(true);

  std::vector<RunResult> engine_runs, grpc_runs;
  for (int32_t rep = 0; rep < reps; ++rep) {
    CMOE_ASSIGN_OR_RETURN(RunResult e, RunEngine(options));
    CMOE_ASSIGN_OR_RETURN(RunResult g, RunGrpc(options));
    const int64_t expected = int64_t{options.requests} * max_new_tokens;
    if (e.generated_tokens != expected || g.generated_tokens != expected) {
      return absl::InternalError(absl::StrCat("expected ", expected, " tokens per run, got ",
                                              e.generated_tokens, " (engine) and ",
                                              g.generated_tokens, " (grpc)"));
    }
    std::fprintf(stderr, "rep %d/%d: engine %.0f tok/s, grpc %.0f tok/s\n", rep + 1, reps,
                 static_cast<double>(e.generated_tokens) / e.wall_seconds,
                 static_cast<double>(g.generated_tokens) / g.wall_seconds);
    engine_runs.push_back(e);
    grpc_runs.push_back(g);
  }
  const Summary e = Summary::Of(engine_runs), g = Summary::Of(grpc_runs);
  const double forward = e.forward_us_per_token;
  const double scheduling = e.wall_us_per_token - forward;
  const double grpc = g.wall_us_per_token - e.wall_us_per_token;
  const double overhead = scheduling + grpc;
  const double overhead_vs_step = overhead / (1e3 * e.step_ms);
  const double throughput_ratio = g.tokens_per_second / e.tokens_per_second;

  if (absl::GetFlag(FLAGS_json)) {
    const nlohmann::json j{{"model", options.model},
                           {"concurrency", options.concurrency},
                           {"requests", options.requests},
                           {"max_new_tokens", max_new_tokens},
                           {"reps", reps},
                           {"engine", e.Json()},
                           {"grpc", g.Json()},
                           {"forward_us_per_token", forward},
                           {"scheduling_us_per_token", scheduling},
                           {"grpc_us_per_token", grpc},
                           {"overhead_us_per_token", overhead},
                           {"overhead_vs_step", overhead_vs_step},
                           {"throughput_ratio", throughput_ratio}};
    std::printf("%s\n", j.dump().c_str());
    return absl::OkStatus();
  }
  std::printf("%d clients, %d requests x %d tokens, medians of %d runs each\n", options.concurrency,
              options.requests, max_new_tokens, reps);
  std::printf("%-7s %10s %10s %9s %14s %12s\n", "", "tokens/s", "tok/step", "step ms", "forward ms",
              "wall us/tok");
  for (const auto& [name, s] : {std::pair{"engine", e}, std::pair{"grpc", g}}) {
    std::printf("%-7s %10.0f %10.1f %9.3f %14.3f %12.1f\n", name, s.tokens_per_second,
                s.tokens_per_step, s.step_ms, s.forward_ms_per_step, s.wall_us_per_token);
  }
  std::printf(
      "per generated token: forward %.1f us, scheduling %.1f us, gRPC %.1f us; server overhead "
      "%.1f us = %.1f%% of the engine step (%.3f ms)\n",
      forward, scheduling, grpc, overhead, 100 * overhead_vs_step, e.step_ms);
  std::printf("throughput over gRPC: %.1f%% of the engine alone\n", 100 * throughput_ratio);
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::server

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-serve-bench --model DIR [--concurrency 32] [--requests 256] [--max-new-tokens 64] "
      "[--reps 3] [--threads N] [--max-batch-tokens 512] [--max-running 64] [--prompt TEXT] "
      "[--json]");
  if (!args.empty()) {
    return cmoe::tools::Fail("cmoe-serve-bench",
                             absl::InvalidArgumentError("unexpected argument '" + args[0] + "'"));
  }
  const absl::Status status = cmoe::server::Run();
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-serve-bench", status);
}
