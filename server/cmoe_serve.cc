// cmoe-serve: serves one checkpoint directory over gRPC (cmoe.v1.Inference, grpc.health.v1 and
// server reflection).
//
//   cmoe-serve --model DIR [--host 127.0.0.1] [--port 50051] [--threads N]
//              [--max-batch-tokens 512] [--max-running 64] [--max-waiting 256]
//              [--kv-cache-tokens N | --kv-cache-bytes 2GiB] [--kv-cache-dtype f32|bf16]
//              [--device cpu|cuda[:N]] [--expert-parallel N]
//              [--drain-timeout 30]
//              [--metrics-port 9464]
//
// The server starts (health NOT_SERVING, Inference RPCs UNAVAILABLE) before the model loads and
// prints "listening on HOST:PORT" on stdout; health turns SERVING once the model is loaded.
// Prometheus metrics (server/metrics.h) are served on http://HOST:M/metrics, M = --metrics-port
// (0: a free port; -1: no metrics), announced by a "metrics on HOST:M" line after the
// "listening on" one; a metrics port that cannot be bound is a startup error.
// SIGTERM/SIGINT: health NOT_SERVING, the engine drains for --drain-timeout seconds (new calls
// get UNAVAILABLE), the server shuts down, exit 0.
#include <pthread.h>
#include <signal.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status.h"
#include "engine/engine.h"
#include "engine/kv_cache.h"
#include "engine/model_config.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "server/inference_service.h"
#include "server/metrics.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout; required)");
ABSL_FLAG(std::string, model_name, "",
          "Name reported by GetModelInfo (default: the model directory's base name)");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address to listen on");
ABSL_FLAG(int32_t, port, 50051, "Port to listen on (0: pick a free port)");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(int32_t, threads, 0, "CPU threads for the model (0: all cores)");
ABSL_FLAG(int32_t, expert_parallel, 1,
          "Expert-parallel ranks of a carved model: with --device cuda:K, GPUs K..K+N-1, each "
          "holding 1/N of the routed experts and its own batch and KV cache of --kv-cache-* "
          "(tokens travel by NCCL all-to-all); with --device cpu, N CPU ranks (for testing). "
          "1: off");
ABSL_FLAG(int64_t, max_batch_tokens, 512, "Tokens per engine step (decodes + prefill chunks)");
ABSL_FLAG(int64_t, max_running, 64, "Sequences in the batch");
ABSL_FLAG(int64_t, max_waiting, 256, "Queued requests; beyond: RESOURCE_EXHAUSTED");
ABSL_FLAG(int64_t, kv_cache_tokens, 0,
          "Positions the KV cache holds over all sequences (0: max_running * context, capped "
          "at 4 GiB of cache and at least one context)");
ABSL_FLAG(std::string, kv_cache_bytes, "",
          "KV cache size in bytes instead of --kv-cache-tokens: a number with an optional "
          "K/KiB, M/MiB, G/GiB suffix (binary multiples), e.g. 2GiB");
ABSL_FLAG(std::string, kv_cache_dtype, "f32",
          "KV cache element type: f32, or bf16 (half the bytes per position: twice the positions "
          "in the same memory, keys and values rounded to bf16)");
ABSL_FLAG(double, drain_timeout, 30, "Seconds to let in-flight requests finish on SIGTERM");
ABSL_FLAG(int32_t, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint, on --host (0: pick a free port; -1: off)");

namespace cmoe::server {
namespace {

constexpr char kServiceName[] = "cmoe.v1.Inference";
constexpr int32_t kMaxExpertParallelRanks = 64;

// What GetModelInfo reports as the device: "cpu", "cuda:1", or for expert parallelism the
// ranks' devices, "cuda:0, cuda:1, cuda:2, cuda:3".
absl::StatusOr<std::string> RankDevices(const std::string& device, int32_t ranks) {
  if (ranks == 1) return device;
  if (device == "cuda" || absl::StartsWith(device, "cuda:")) {
    CMOE_ASSIGN_OR_RETURN(const int first, kernels::ParseCudaDevice(device));
    std::vector<std::string> names;
    for (int32_t r = 0; r < ranks; ++r) names.push_back(absl::StrCat("cuda:", first + r));
    return absl::StrJoin(names, ", ");
  }
  return absl::StrCat(device, " x", ranks);
}

// "1073741824", "512K", "64KiB", "3M", "2GiB" (binary multiples) -> bytes. InvalidArgument naming
// the flag for anything else, zero, or more than 2^50 bytes.
absl::StatusOr<int64_t> ParseByteSize(const std::string& flag, const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  const std::string_view suffix = std::string_view(text).substr(digits);
  int shift = -1;
  if (suffix.empty() || suffix == "B") shift = 0;
  if (suffix == "K" || suffix == "KiB" || suffix == "KB") shift = 10;
  if (suffix == "M" || suffix == "MiB" || suffix == "MB") shift = 20;
  if (suffix == "G" || suffix == "GiB" || suffix == "GB") shift = 30;
  constexpr int64_t kMax = int64_t{1} << 50;
  if (digits == 0 || shift < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", flag, " '", text, "' is not a size (a number with an optional K, M or G suffix)"));
  }
  const int64_t number = digits > 16 ? kMax + 1 : std::stoll(text.substr(0, digits));
  if (number == 0 || number > (kMax >> shift)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--", flag, " '", text, "' outside [1 byte, 1 PiB]"));
  }
  return number << shift;
}

// "host:port", with IPv6 hosts in brackets.
std::string HostPort(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port)
                                             : absl::StrCat(host, ":", port);
}

// Feeds the engine's queue and cache gauges every 100 ms, on its own thread rather than from the
// step callback: the engine updates running/waiting after its last step, and the gauges must
// settle when it goes idle.
class StatsPoller {
 public:
  StatsPoller(const engine::Engine& engine, ServerMetrics& metrics)
      : thread_([this, &engine, &metrics] {
          std::unique_lock<std::mutex> lock(mutex_);
          while (!stop_) {
            lock.unlock();
            metrics.OnEngineStats(engine.Stats());
            lock.lock();
            wake_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_; });
          }
        }) {}
  ~StatsPoller() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_one();
    thread_.join();
  }
  StatsPoller(const StatsPoller&) = delete;
  StatsPoller& operator=(const StatsPoller&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

// The health service's status, and the cmoe_serving gauge that mirrors it for Prometheus.
void SetServing(grpc::Server& server, ServerMetrics* metrics, bool serving) {
  if (metrics != nullptr) metrics->SetServing(serving);
  grpc::HealthCheckServiceInterface* health = server.GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  CMOE_RETURN_IF_ERROR(tools::RequireFlag("model", model_dir));
  const int32_t port = absl::GetFlag(FLAGS_port);
  if (port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat("--port ", port, " outside [0, 65535]"));
  }
  const double drain = absl::GetFlag(FLAGS_drain_timeout);
  if (!(drain >= 0)) return absl::InvalidArgumentError("--drain-timeout must be >= 0");
  const engine::EngineOptions engine_options{
      .max_batch_tokens = absl::GetFlag(FLAGS_max_batch_tokens),
      .max_running = absl::GetFlag(FLAGS_max_running),
      .max_waiting = absl::GetFlag(FLAGS_max_waiting)};
  if (engine_options.max_batch_tokens < 1 || engine_options.max_running < 1 ||
      engine_options.max_waiting < 0) {
    return absl::InvalidArgumentError(
        "--max-batch-tokens and --max-running must be >= 1, --max-waiting >= 0");
  }
  // Fail fast on a bad directory, before the server starts listening.
  CMOE_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(model_dir));
  const int32_t ranks = absl::GetFlag(FLAGS_expert_parallel);
  if (ranks < 1 || ranks > kMaxExpertParallelRanks) {
    return absl::InvalidArgumentError(
        absl::StrCat("--expert-parallel ", ranks, " outside [1, ", kMaxExpertParallelRanks, "]"));
  }
  if (ranks > 1 && !config.cmoe.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--expert-parallel ", ranks, ": ", model_dir,
                     " is a dense model; expert parallelism spreads a carved model's experts "
                     "(carve it with cmoe-carve)"));
  }
  const std::string device = absl::GetFlag(FLAGS_device);
  CMOE_ASSIGN_OR_RETURN(const std::string devices, RankDevices(device, ranks));
  CMOE_ASSIGN_OR_RETURN(const kernels::DType kv_dtype,
                        engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  int64_t kv_tokens = absl::GetFlag(FLAGS_kv_cache_tokens);
  if (kv_tokens < 0) return absl::InvalidArgumentError("--kv-cache-tokens must be >= 0");
  if (const std::string bytes_flag = absl::GetFlag(FLAGS_kv_cache_bytes); !bytes_flag.empty()) {
    if (kv_tokens != 0) {
      return absl::InvalidArgumentError("--kv-cache-bytes and --kv-cache-tokens are exclusive");
    }
    CMOE_ASSIGN_OR_RETURN(const int64_t bytes, ParseByteSize("kv-cache-bytes", bytes_flag));
    // Whole blocks of the engine's block size.
    const int32_t block = engine::LoadOptions{}.kv_block_size;
    const int64_t block_bytes = engine::KvCache::BytesPerBlock(config, block, kv_dtype);
    kv_tokens = bytes / block_bytes * block;
    if (kv_tokens == 0) {
      return absl::InvalidArgumentError(absl::StrCat("--kv-cache-bytes ", bytes_flag,
                                                     " is less than one KV-cache block (",
                                                     block_bytes, " bytes for this model)"));
    }
  }
  if (kv_tokens == 0) {
    kv_tokens = engine::DefaultKvCacheTokens(config, engine_options.max_running, kv_dtype);
  }
  // The cache addresses positions with 32-bit slots: refuse a bigger one before listening.
  if (kv_tokens > std::numeric_limits<int32_t>::max() - engine::LoadOptions{}.kv_block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("the KV cache of ", kv_tokens,
                     " positions (--kv-cache-tokens / --kv-cache-bytes) exceeds "
                     "2^31 - 1 slots; use a smaller cache"));
  }

  const int32_t metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port < -1 || metrics_port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--metrics-port ", metrics_port, " outside [-1, 65535]"));
  }
  std::string name = absl::GetFlag(FLAGS_model_name);
  if (name.empty()) {
    std::filesystem::path p(model_dir);
    if (!p.has_filename()) p = p.parent_path();
    name = p.filename().string();
  }

  // Signals are taken synchronously by sigwait below; every thread (gRPC's, the engine's)
  // inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  const std::string host = absl::GetFlag(FLAGS_host);
  // The metrics first: a metrics port in use fails the start before anything listens.
  std::unique_ptr<ServerMetrics> metrics;
  if (metrics_port >= 0) {
    CMOE_ASSIGN_OR_RETURN(
        metrics, ServerMetrics::Create(
                     {.num_layers = config.num_hidden_layers,
                      .num_routed_experts = config.cmoe.has_value() ? config.cmoe->num_routed() : 0,
                      .ffn_neurons_per_token = config.intermediate_size * config.num_hidden_layers,
                      .ranks = ranks}));
    CMOE_RETURN_IF_ERROR(metrics->StartExposer(HostPort(host, metrics_port)));
  }

  InferenceService service({.model_name = name, .device = devices}, metrics.get());
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int selected_port = 0;
  const std::string address = HostPort(host, port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &selected_port);
  // gRPC binds with SO_REUSEPORT by default: a second server on a port in use would start without
  // an error and the kernel would split new connections between the two processes (an old server
  // still draining would get part of the new one's traffic). One server per port.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || selected_port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address, " (in use by another process, or not an address here)"));
  }
  SetServing(*server, metrics.get(), false);
  std::printf("listening on %s:%d\n", host.c_str(), selected_port);
  if (metrics != nullptr) std::printf("metrics on %s:%d\n", host.c_str(), metrics->exposer_port());
  std::fflush(stdout);
  CMOE_LOG(INFO) << "listening on " << host << ":" << selected_port << "; loading " << model_dir;
  if (metrics != nullptr) {
    CMOE_LOG(INFO) << "metrics on http://" << HostPort(host, metrics->exposer_port()) << "/metrics";
  }

  const engine::LoadOptions load_options{.model_dir = model_dir,
                                         .device = device,
                                         .threads = absl::GetFlag(FLAGS_threads),
                                         .kv_cache_tokens = kv_tokens,
                                         .kv_cache_dtype = kv_dtype};
  absl::StatusOr<std::vector<engine::LoadedModel>> loaded;
  if (ranks > 1) {
    loaded = engine::LoadExpertParallelModels(load_options, ranks);
  } else if (absl::StatusOr<engine::LoadedModel> one = engine::LoadModel(load_options); one.ok()) {
    loaded.emplace();
    loaded->push_back(std::move(one).value());
  } else {
    loaded = one.status();
  }
  std::function<void(const engine::StepReport&)> on_step;
  if (metrics != nullptr) {
    on_step = [m = metrics.get()](const engine::StepReport& report) { m->OnStep(report); };
  }
  // A sticky device error stops the engine for good: stop serving so that probes fail and
  // Kubernetes restarts the pod (the engine has already failed every request).
  auto on_fault = [s = server.get(), m = metrics.get()](const absl::Status& status) {
    CMOE_LOG(ERROR) << "NOT_SERVING: " << status;
    SetServing(*s, m, false);
  };
  absl::StatusOr<std::unique_ptr<engine::Engine>> engine =
      loaded.ok() ? engine::Engine::Create(std::move(*loaded), engine_options, std::move(on_step),
                                           std::move(on_fault))
                  : absl::StatusOr<std::unique_ptr<engine::Engine>>(loaded.status());
  if (!engine.ok()) {
    server->Shutdown(std::chrono::system_clock::now());
    server->Wait();
    return engine.status();
  }
  service.SetEngine(engine->get());
  std::unique_ptr<StatsPoller> poller;
  if (metrics != nullptr) poller = std::make_unique<StatsPoller>(**engine, *metrics);
  SetServing(*server, metrics.get(), true);
  // A device failure during the first requests may have run on_fault before the line above.
  if (!(*engine)->Health().ok()) SetServing(*server, metrics.get(), false);
  CMOE_LOG(INFO) << "serving " << name << " on " << devices << " (kv cache " << kv_tokens
                 << " tokens, max running " << engine_options.max_running << ", max batch tokens "
                 << engine_options.max_batch_tokens << (ranks > 1 ? ", each per rank" : "") << ")";

  int sig = 0;
  sigwait(&signals, &sig);
  CMOE_LOG(INFO) << "signal " << sig << ": draining for up to " << drain << " s";
  SetServing(*server, metrics.get(), false);
  (*engine)->Shutdown(absl::Seconds(drain));
  // Every engine request has finished now; the streams get a second to write their last
  // messages. (gRPC's Shutdown also waits for connected clients to hang up, until the deadline,
  // so a long deadline only delays the exit.)
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  server->Wait();
  server.reset();
  poller.reset();
  engine->reset();
  CMOE_LOG(INFO) << "stopped";
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::server

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-serve --model DIR [--host 127.0.0.1] [--port 50051] [--threads N] "
      "[--max-batch-tokens 512] [--max-running 64] [--max-waiting 256] [--kv-cache-tokens N | "
      "--kv-cache-bytes SIZE] [--kv-cache-dtype f32|bf16] "
      "[--device cpu|cuda[:N]] [--expert-parallel N] "
      "[--drain-timeout 30] [--model-name NAME] [--metrics-port 9464]");
  if (!args.empty()) {
    return cmoe::tools::Fail("cmoe-serve",
                             absl::InvalidArgumentError("unexpected argument '" + args[0] + "'"));
  }
  absl::Status status = cmoe::server::Run();
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-serve", status);
}
