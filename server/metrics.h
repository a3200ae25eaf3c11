// The server's Prometheus metrics (docs/architecture.md "Metrics"): a registry with every metric
// family, fed plain values by the gRPC service and the engine's step callback, exposed as text
// on HTTP /metrics by prometheus-cpp's Exposer on its own port. No gRPC here.
//
//   CMOE_ASSIGN_OR_RETURN(auto metrics, ServerMetrics::Create({.num_layers = 24,
//                                                              .num_routed_experts = 16}));
//   CMOE_RETURN_IF_ERROR(metrics->StartExposer("0.0.0.0:9464"));
//   auto on_step = [m = metrics.get()](const engine::StepReport& r) { m->OnStep(r); };
//   // per request: OnRequestStart, OnQueue/OnFirstToken/OnToken, OnRequestDone;
//   // periodically (or per step): OnEngineStats(engine->Stats()).
//
// Families without series are not serialized: cmoe_expert_tokens_total and
// cmoe_expert_load_imbalance appear for carved models only.
//
// Labels come from fixed sets so the number of series stays bounded: rpc is one of RpcNames()
// (else "other"), code one of the 17 canonical gRPC code names ("OK", "INVALID_ARGUMENT", ...,
// else "other"), finish_reason one of engine::FinishReasonName's values, "none" for an empty
// name (the request never reached the engine), else "other". Per-(layer, expert) series exist
// for carved models only and are created up front.
//
// Recent windows (cmoe_ffn_activation_ratio, cmoe_expert_load_imbalance): the last
// `window_steps` steps that carried FFN statistics, as a ring buffer with running sums:
//   activation ratio = sum(neurons_computed) / sum(neurons_dense) over the window (0 while the
//                      window has no dense neurons);
//   imbalance{layer} = max_e tokens(layer, e) / mean_e tokens(layer, e), with tokens summed over
//                      the window (1 is perfect balance, N_r means one expert took all; 0 while
//                      the window has routed no tokens in that layer).
// The counters cmoe_ffn_neurons_{computed,dense}_total and cmoe_expert_tokens_total are the
// rate()-friendly forms of the same quantities.
//
// Thread-safe: every method may be called from any thread. OnStep allocates nothing (the window
// buffers and the per-(layer, expert) counter pointers are set up by Create).
#ifndef CMOE_SERVER_METRICS_H_
#define CMOE_SERVER_METRICS_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace prometheus {
class Counter;
class Exposer;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace cmoe::engine {
struct StepReport;
struct EngineStats;
}  // namespace cmoe::engine

namespace cmoe::server {

struct MetricsOptions {
  int64_t num_layers = 0;          // >= 0
  int64_t num_routed_experts = 0;  // N_r; 0 for a dense model (no expert series)
  // FFN neurons one token evaluates in the dense model (intermediate_size * layers); used as
  // the dense count of a step whose FfnStepStats carries neurons_dense == 0. 0: unknown.
  int64_t ffn_neurons_per_token = 0;
  int64_t window_steps = 64;  // steps in the recent windows, >= 1
  // Expert-parallel ranks of the engine (Engine::num_ranks), in [1, 1024]: one
  // cmoe_rank_tokens_total series each.
  int64_t ranks = 1;
};

// One metric family, for docs and dashboards.
struct MetricInfo {
  std::string_view name;
  std::string_view type;    // "counter", "gauge" or "histogram"
  std::string_view labels;  // comma-separated label names ("" for none)
  std::string_view help;
};

class ServerMetrics {
 public:
  // InvalidArgument for negative sizes, window_steps outside 1..1024, or more than 65536
  // (layer, expert) pairs (series must stay bounded).
  static absl::StatusOr<std::unique_ptr<ServerMetrics>> Create(const MetricsOptions& options);
  ~ServerMetrics();
  ServerMetrics(const ServerMetrics&) = delete;
  ServerMetrics& operator=(const ServerMetrics&) = delete;

  // Serves the registry on http://<address>/metrics, address "host:port" ("127.0.0.1:9464",
  // "0.0.0.0:9464", "[::1]:9464"; port 0 picks a free port, see exposer_port()).
  // InvalidArgument for a malformed address, Unavailable when it cannot bind (port in use),
  // FailedPrecondition when already started. Both messages name the address.
  absl::Status StartExposer(const std::string& address);
  // The port the exposer listens on (0 when not started).
  int exposer_port() const;

  // --- observations ---
  // OnRequestStart raises cmoe_in_flight_requests{rpc}; OnRequestDone lowers it again, so call
  // both (or neither) for every RPC.
  void OnRequestStart(std::string_view rpc);
  // code: the gRPC code name ("OK", "CANCELLED", ...); finish_reason: FinishReasonName or "".
  void OnRequestDone(std::string_view rpc, std::string_view code, std::string_view finish_reason,
                     double duration_s, int64_t prompt_tokens, int64_t generated_tokens);
  void OnFirstToken(double ttft_s);
  void OnToken(double inter_token_s);
  void OnQueue(double queue_s);
  void OnStep(const engine::StepReport& report);
  void OnEngineStats(const engine::EngineStats& stats);
  // cmoe_serving: what the gRPC health service reports (0 until the first call).
  void SetServing(bool serving);

  // The text exposition format of every family (what /metrics serves).
  std::string Serialize() const;

  // Every family this class registers (the README's and dashboards' list).
  static const std::vector<MetricInfo>& Metrics();
  static std::vector<std::string> MetricNames();
  // The label value sets ("other" is appended to each).
  static const std::vector<std::string_view>& RpcNames();
  static const std::vector<std::string_view>& CodeNames();
  static const std::vector<std::string_view>& FinishReasonNames();

 private:
  explicit ServerMetrics(const MetricsOptions& options);
  void Build();
  static size_t RpcIndex(std::string_view rpc);  // in RpcNames(), RpcNames().size() for other

  const MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;

  prometheus::Family<prometheus::Histogram>* request_duration_ = nullptr;
  prometheus::Family<prometheus::Counter>* requests_ = nullptr;
  std::vector<prometheus::Gauge*> in_flight_by_rpc_;  // indexed like request_duration_by_rpc_
  std::vector<prometheus::Histogram*> request_duration_by_rpc_;  // indexed like RpcNames()+other
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* inter_token_ = nullptr;
  prometheus::Histogram* queue_time_ = nullptr;
  prometheus::Histogram* tokens_per_step_ = nullptr;
  prometheus::Gauge* serving_ = nullptr;
  prometheus::Histogram* step_duration_ = nullptr;
  prometheus::Counter* forward_seconds_ = nullptr;
  prometheus::Counter* graph_steps_ = nullptr;
  std::vector<prometheus::Counter*> rank_tokens_;  // (ranks)
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generated_tokens_ = nullptr;
  prometheus::Counter* ffn_computed_ = nullptr;
  prometheus::Counter* ffn_dense_ = nullptr;
  std::vector<prometheus::Counter*> expert_tokens_;  // (layers, N_r) layer-major
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Gauge* kv_usage_ = nullptr;
  prometheus::Gauge* activation_ratio_ = nullptr;
  std::vector<prometheus::Gauge*> imbalance_;  // per layer

  // The recent windows (under window_mutex_).
  std::mutex window_mutex_;
  int64_t window_next_ = 0;               // ring slot the next step writes
  std::vector<int64_t> window_computed_;  // per slot
  std::vector<int64_t> window_dense_;     // per slot
  int64_t sum_computed_ = 0;
  int64_t sum_dense_ = 0;
  std::vector<int64_t> window_expert_;  // (window_steps, layers, N_r)
  std::vector<int64_t> sum_expert_;     // (layers, N_r)

  mutable std::mutex exposer_mutex_;
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace cmoe::server

#endif  // CMOE_SERVER_METRICS_H_
