#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cmath>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cmoe::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// The value of the series `series` (name plus its serialized labels, e.g.
// `cmoe_expert_tokens_total{expert="1",layer="0"}`), or nullopt when absent.
std::optional<double> Value(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 &&
        line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

double ValueOr(const std::string& text, const std::string& series, double fallback = -1) {
  return Value(text, series).value_or(fallback);
}

std::unique_ptr<ServerMetrics> MakeMetrics(int64_t layers, int64_t experts, int64_t window = 64) {
  auto metrics = ServerMetrics::Create({.num_layers = layers,
                                        .num_routed_experts = experts,
                                        .ffn_neurons_per_token = 1000,
                                        .window_steps = window});
  EXPECT_TRUE(metrics.ok()) << metrics.status();
  return std::move(metrics).value();
}

engine::FfnStepStats Ffn(int64_t tokens, int64_t computed, int64_t dense, int32_t routed,
                         std::vector<int64_t> per_expert) {
  engine::FfnStepStats s;
  s.tokens = tokens;
  s.neurons_computed = computed;
  s.neurons_dense = dense;
  s.num_routed = routed;
  s.tokens_per_expert = std::move(per_expert);
  return s;
}

engine::StepReport Report(const engine::FfnStepStats& ffn) {
  engine::StepReport r;
  r.tokens = ffn.tokens;
  r.decode_tokens = ffn.tokens;
  r.forward_seconds = 0.002 * static_cast<double>(ffn.tokens);
  r.step_seconds = r.forward_seconds + 0.001;
  r.ffn = &ffn;
  return r;
}

TEST(ServerMetricsTest, EveryFamilyIsExposedWithItsType) {
  auto metrics = MakeMetrics(2, 4);
  const std::string text = metrics->Serialize();
  const std::vector<std::string> names = ServerMetrics::MetricNames();
  ASSERT_EQ(names.size(), ServerMetrics::Metrics().size());
  for (const MetricInfo& m : ServerMetrics::Metrics()) {
    EXPECT_EQ(m.name.substr(0, 5), "cmoe_") << m.name;
    EXPECT_THAT(text, HasSubstr("# TYPE " + std::string(m.name) + " " + std::string(m.type)))
        << m.name;
    EXPECT_THAT(text, HasSubstr("# HELP " + std::string(m.name) + " ")) << m.name;
    if (m.type == "counter") {
      EXPECT_TRUE(m.name.ends_with("_total")) << m.name;
    }
  }
  // The expected families, with their types.
  const std::map<std::string, std::string> expected = {
      {"cmoe_request_duration_seconds", "histogram"},
      {"cmoe_time_to_first_token_seconds", "histogram"},
      {"cmoe_inter_token_latency_seconds", "histogram"},
      {"cmoe_queue_time_seconds", "histogram"},
      {"cmoe_tokens_per_step", "histogram"},
      {"cmoe_step_duration_seconds", "histogram"},
      {"cmoe_model_forward_seconds_total", "counter"},
      {"cmoe_graph_steps_total", "counter"},
      {"cmoe_rank_tokens_total", "counter"},
      {"cmoe_requests_total", "counter"},
      {"cmoe_prompt_tokens_total", "counter"},
      {"cmoe_generated_tokens_total", "counter"},
      {"cmoe_ffn_neurons_computed_total", "counter"},
      {"cmoe_ffn_neurons_dense_total", "counter"},
      {"cmoe_expert_tokens_total", "counter"},
      {"cmoe_running_requests", "gauge"},
      {"cmoe_waiting_requests", "gauge"},
      {"cmoe_kv_cache_usage_ratio", "gauge"},
      {"cmoe_serving", "gauge"},
      {"cmoe_ffn_activation_ratio", "gauge"},
      {"cmoe_expert_load_imbalance", "gauge"},
  };
  for (const auto& [name, type] : expected) {
    EXPECT_THAT(text, HasSubstr("# TYPE " + name + " " + type + "\n")) << name;
  }
  // Inter-token latency buckets start at 1 ms.
  EXPECT_TRUE(Value(text, "cmoe_inter_token_latency_seconds_bucket{le=\"0.001\"}").has_value());
  // Per-(layer, expert) series exist up front, at zero.
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"3\",layer=\"1\"}"), 0);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"1\"}"), 0);
}

TEST(ServerMetricsTest, ServingGaugeFollowsSetServing) {
  auto metrics = MakeMetrics(1, 0);
  EXPECT_EQ(ValueOr(metrics->Serialize(), "cmoe_serving"), 0);  // loading
  metrics->SetServing(true);
  EXPECT_EQ(ValueOr(metrics->Serialize(), "cmoe_serving"), 1);
  metrics->SetServing(false);  // draining
  EXPECT_EQ(ValueOr(metrics->Serialize(), "cmoe_serving"), 0);
}

TEST(ServerMetricsTest, CreateRejectsBadOptions) {
  EXPECT_FALSE(ServerMetrics::Create({.num_layers = -1}).ok());
  EXPECT_FALSE(ServerMetrics::Create({.num_layers = 2, .num_routed_experts = -4}).ok());
  EXPECT_FALSE(ServerMetrics::Create({.num_layers = 2, .window_steps = 0}).ok());
  EXPECT_FALSE(ServerMetrics::Create({.num_layers = 2, .ranks = 0}).ok());
  EXPECT_FALSE(ServerMetrics::Create({.num_layers = 1 << 20, .num_routed_experts = 1 << 10}).ok());
}

TEST(ServerMetricsTest, StepsMoveFfnAndExpertCounters) {
  auto metrics = MakeMetrics(2, 3);
  // Layer-major (2 layers, 3 experts).
  const auto a = Ffn(4, 100, 400, 3, {1, 2, 1, 0, 4, 0});
  const auto b = Ffn(2, 60, 200, 3, {2, 0, 0, 1, 0, 1});
  metrics->OnStep(Report(a));
  EXPECT_EQ(ValueOr(metrics->Serialize(), "cmoe_graph_steps_total"), 0);
  engine::StepReport graphed = Report(b);
  graphed.graph = true;  // a decode step run as one CUDA graph
  metrics->OnStep(graphed);
  const std::string text = metrics->Serialize();
  EXPECT_EQ(ValueOr(text, "cmoe_graph_steps_total"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_computed_total"), 160);
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_dense_total"), 600);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"0\",layer=\"0\"}"), 3);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"1\",layer=\"0\"}"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"2\",layer=\"0\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"0\",layer=\"1\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"1\",layer=\"1\"}"), 4);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"2\",layer=\"1\"}"), 1);
  // Window of both steps: 160 / 600.
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_ffn_activation_ratio"), 160.0 / 600.0);
  // Layer 0: {3, 2, 1}: max 3 / mean 2. Layer 1: {1, 4, 1}: 4 / 2.
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"0\"}"), 1.5);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"1\"}"), 2.0);
  // Tokens per step: two observations, 4 + 2.
  EXPECT_EQ(ValueOr(text, "cmoe_tokens_per_step_count"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_tokens_per_step_sum"), 6);
  EXPECT_EQ(ValueOr(text, "cmoe_tokens_per_step_bucket{le=\"2\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_tokens_per_step_bucket{le=\"4\"}"), 2);
  // Step durations: 4 tokens -> 9 ms (8 ms forward), 2 tokens -> 5 ms (4 ms forward).
  EXPECT_EQ(ValueOr(text, "cmoe_step_duration_seconds_count"), 2);
  EXPECT_NEAR(ValueOr(text, "cmoe_step_duration_seconds_sum"), 0.014, 1e-12);
  EXPECT_EQ(ValueOr(text, "cmoe_step_duration_seconds_bucket{le=\"0.005\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_step_duration_seconds_bucket{le=\"0.01\"}"), 2);
  EXPECT_NEAR(ValueOr(text, "cmoe_model_forward_seconds_total"), 0.012, 1e-12);
}

TEST(ServerMetricsTest, WindowForgetsOldSteps) {
  auto metrics = MakeMetrics(1, 2, /*window=*/2);
  const auto a = Ffn(1, 10, 100, 2, {1, 0});
  const auto b = Ffn(1, 30, 100, 2, {1, 1});
  const auto c = Ffn(1, 50, 100, 2, {0, 1});
  metrics->OnStep(Report(a));
  std::string text = metrics->Serialize();
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_ffn_activation_ratio"), 0.1);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"0\"}"), 2.0);  // {1,0}
  metrics->OnStep(Report(b));
  metrics->OnStep(Report(c));  // a leaves the window
  text = metrics->Serialize();
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_ffn_activation_ratio"), 80.0 / 200.0);
  // Window {1,1} + {0,1} = {1,2}: max 2 / mean 1.5.
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"0\"}"), 2.0 / 1.5);
  // The counters keep everything.
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_computed_total"), 90);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"0\",layer=\"0\"}"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"1\",layer=\"0\"}"), 2);
}

TEST(ServerMetricsTest, StepWithoutFfnOrWithAMismatchedShapeIsSafe) {
  auto metrics = MakeMetrics(2, 2);
  engine::StepReport no_ffn;
  no_ffn.tokens = 3;
  metrics->OnStep(no_ffn);
  const auto wrong = Ffn(1, 5, 10, 4, {1, 1, 1});  // wrong N_r and size
  metrics->OnStep(Report(wrong));
  const std::string text = metrics->Serialize();
  EXPECT_EQ(ValueOr(text, "cmoe_tokens_per_step_count"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_computed_total"), 5);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"0\",layer=\"0\"}"), 0);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"0\"}"), 0);
}

TEST(ServerMetricsTest, RankTokensFollowTheSteps) {
  auto metrics = ServerMetrics::Create({.num_layers = 1, .ranks = 3});
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  // Every rank's series exists up front, at zero.
  EXPECT_EQ(ValueOr((*metrics)->Serialize(), "cmoe_rank_tokens_total{rank=\"2\"}", -1), 0);
  const std::vector<int64_t> first = {5, 0, 2}, second = {1, 3, 0};
  engine::StepReport step;
  step.rank_tokens = first;
  (*metrics)->OnStep(step);
  step.rank_tokens = second;
  (*metrics)->OnStep(step);
  const std::vector<int64_t> too_many = {1, 1, 1, 1};  // more ranks than configured: ignored
  step.rank_tokens = too_many;
  (*metrics)->OnStep(step);
  const std::string text = (*metrics)->Serialize();
  EXPECT_EQ(ValueOr(text, "cmoe_rank_tokens_total{rank=\"0\"}"), 7);
  EXPECT_EQ(ValueOr(text, "cmoe_rank_tokens_total{rank=\"1\"}"), 4);
  EXPECT_EQ(ValueOr(text, "cmoe_rank_tokens_total{rank=\"2\"}"), 3);
  EXPECT_THAT(text, Not(HasSubstr("cmoe_rank_tokens_total{rank=\"3\"}")));
}

TEST(ServerMetricsTest, DenseModelHasNoExpertSeries) {
  auto metrics = MakeMetrics(4, 0);
  const auto dense = Ffn(2, 2000, 0, 0, {});  // neurons_dense 0: 2 tokens x 1000 per token
  metrics->OnStep(Report(dense));
  const std::string text = metrics->Serialize();
  EXPECT_THAT(text, Not(HasSubstr("cmoe_expert_tokens_total{")));
  EXPECT_THAT(text, Not(HasSubstr("cmoe_expert_load_imbalance{")));
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_computed_total"), 2000);
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_dense_total"), 2000);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_ffn_activation_ratio"), 1.0);
}

TEST(ServerMetricsTest, RequestsAreCountedWithBoundedLabels) {
  auto metrics = MakeMetrics(1, 2);
  metrics->OnRequestStart("Generate");
  metrics->OnRequestDone("Generate", "OK", "length", 0.5, 10, 20);
  metrics->OnRequestStart("Generate");
  metrics->OnRequestDone("Generate", "OK", "length", 1.5, 5, 7);
  metrics->OnRequestStart("Tokenize");
  metrics->OnRequestDone("Tokenize", "INVALID_ARGUMENT", "", 0.001, 0, 0);
  metrics->OnRequestStart("Frobnicate");
  metrics->OnRequestDone("Frobnicate", "WEIRD_CODE", "exploded", 0.1, 0, 0);
  metrics->OnRequestStart("GenerateStream");  // still in flight
  const std::string text = metrics->Serialize();
  EXPECT_EQ(
      ValueOr(text, "cmoe_requests_total{code=\"OK\",finish_reason=\"length\",rpc=\"Generate\"}"),
      2);
  EXPECT_EQ(ValueOr(text,
                    "cmoe_requests_total{code=\"INVALID_ARGUMENT\",finish_reason=\"none\","
                    "rpc=\"Tokenize\"}"),
            1);
  EXPECT_EQ(
      ValueOr(text, "cmoe_requests_total{code=\"other\",finish_reason=\"other\",rpc=\"other\"}"),
      1);
  EXPECT_THAT(text, Not(HasSubstr("Frobnicate")));
  EXPECT_THAT(text, Not(HasSubstr("WEIRD_CODE")));
  EXPECT_THAT(text, Not(HasSubstr("exploded")));
  EXPECT_EQ(ValueOr(text, "cmoe_prompt_tokens_total"), 15);
  EXPECT_EQ(ValueOr(text, "cmoe_generated_tokens_total"), 27);
  EXPECT_EQ(ValueOr(text, "cmoe_request_duration_seconds_count{rpc=\"Generate\"}"), 2);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_request_duration_seconds_sum{rpc=\"Generate\"}"), 2.0);
  EXPECT_EQ(ValueOr(text, "cmoe_request_duration_seconds_count{rpc=\"other\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_in_flight_requests{rpc=\"Generate\"}"), 0);
  EXPECT_EQ(ValueOr(text, "cmoe_in_flight_requests{rpc=\"GenerateStream\"}"), 1);
  EXPECT_EQ(ValueOr(text, "cmoe_in_flight_requests{rpc=\"other\"}"), 0);
}

TEST(ServerMetricsTest, LatencyHistogramsAndEngineGauges) {
  auto metrics = MakeMetrics(1, 0);
  metrics->OnFirstToken(0.2);
  metrics->OnToken(0.0005);
  metrics->OnToken(0.02);
  metrics->OnToken(-1);            // clock skew: clamped to 0
  metrics->OnQueue(std::nan(""));  // clamped to 0
  metrics->OnQueue(HUGE_VAL);      // clamped to 0
  engine::EngineStats stats;
  stats.running = 3;
  stats.waiting = 7;
  stats.kv_blocks_used = 25;
  stats.kv_blocks_total = 100;
  metrics->OnEngineStats(stats);
  std::string text = metrics->Serialize();
  EXPECT_EQ(ValueOr(text, "cmoe_time_to_first_token_seconds_count"), 1);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_time_to_first_token_seconds_sum"), 0.2);
  EXPECT_EQ(ValueOr(text, "cmoe_inter_token_latency_seconds_count"), 3);
  EXPECT_EQ(ValueOr(text, "cmoe_inter_token_latency_seconds_bucket{le=\"0.001\"}"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_queue_time_seconds_count"), 2);
  EXPECT_EQ(ValueOr(text, "cmoe_queue_time_seconds_sum"), 0);
  EXPECT_EQ(ValueOr(text, "cmoe_running_requests"), 3);
  EXPECT_EQ(ValueOr(text, "cmoe_waiting_requests"), 7);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_kv_cache_usage_ratio"), 0.25);
  stats.kv_blocks_total = 0;
  metrics->OnEngineStats(stats);
  text = metrics->Serialize();
  EXPECT_EQ(ValueOr(text, "cmoe_kv_cache_usage_ratio"), 0);
}

TEST(ServerMetricsTest, ConcurrentObservationsAddUp) {
  auto metrics = MakeMetrics(2, 2);
  const auto ffn = Ffn(1, 3, 4, 2, {1, 0, 0, 1});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 1000; ++i) {
        metrics->OnRequestStart("Generate");
        metrics->OnRequestDone("Generate", "OK", "stop_token", 0.01, 1, 2);
        metrics->OnStep(Report(ffn));
        metrics->OnToken(0.01);
      }
    });
  }
  for (auto& t : threads) t.join();
  const std::string text = metrics->Serialize();
  EXPECT_EQ(ValueOr(text,
                    "cmoe_requests_total{code=\"OK\",finish_reason=\"stop_token\","
                    "rpc=\"Generate\"}"),
            4000);
  EXPECT_EQ(ValueOr(text, "cmoe_generated_tokens_total"), 8000);
  EXPECT_EQ(ValueOr(text, "cmoe_ffn_neurons_computed_total"), 12000);
  EXPECT_EQ(ValueOr(text, "cmoe_expert_tokens_total{expert=\"1\",layer=\"1\"}"), 4000);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_ffn_activation_ratio"), 0.75);
  EXPECT_DOUBLE_EQ(ValueOr(text, "cmoe_expert_load_imbalance{layer=\"0\"}"), 2.0);
  EXPECT_EQ(ValueOr(text, "cmoe_in_flight_requests{rpc=\"Generate\"}"), 0);
}

// --- the HTTP exposer ---

// A listening socket on 127.0.0.1 at a kernel-chosen port (closed by the destructor).
struct Listener {
  int fd = -1;
  int port = 0;
  Listener() {
    fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || ::listen(fd, 4) != 0) {
      return;
    }
    socklen_t len = sizeof(addr);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    port = ntohs(addr.sin_port);
  }
  ~Listener() {
    if (fd >= 0) ::close(fd);
  }
};

// GET `path` from 127.0.0.1:port over HTTP/1.0; the whole response, or "" on failure.
std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return "";
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, request.data(), request.size(), 0) == static_cast<ssize_t>(request.size())) {
      char buffer[4096];
      ssize_t n;
      while ((n = ::recv(fd, buffer, sizeof(buffer), 0)) > 0) response.append(buffer, n);
    }
  }
  ::close(fd);
  return response;
}

TEST(ServerMetricsExposerTest, ServesMetricsOverHttp) {
  auto metrics = MakeMetrics(2, 2);
  const auto ffn = Ffn(1, 3, 4, 2, {1, 0, 0, 1});
  metrics->OnStep(Report(ffn));
  EXPECT_EQ(metrics->exposer_port(), 0);
  ASSERT_TRUE(metrics->StartExposer("127.0.0.1:0").ok());
  const int port = metrics->exposer_port();
  ASSERT_GT(port, 0);
  const std::string response = HttpGet(port, "/metrics");
  EXPECT_THAT(response, HasSubstr(" 200 "));
  for (const std::string& name : ServerMetrics::MetricNames()) {
    EXPECT_THAT(response, HasSubstr("# TYPE " + name + " ")) << name;
  }
  EXPECT_THAT(response, HasSubstr("cmoe_ffn_neurons_computed_total 3"));

  // A second exposer is refused, naming the address.
  const absl::Status again = metrics->StartExposer("127.0.0.1:0");
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(again.message()), HasSubstr("127.0.0.1:0"));
}

TEST(ServerMetricsExposerTest, OccupiedPortIsAnError) {
  Listener listener;
  ASSERT_GT(listener.port, 0);
  auto metrics = MakeMetrics(1, 0);
  const std::string address = "127.0.0.1:" + std::to_string(listener.port);
  const absl::Status status = metrics->StartExposer(address);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(address));
  EXPECT_EQ(metrics->exposer_port(), 0);
  // A failed start leaves the metrics usable and startable elsewhere.
  EXPECT_TRUE(metrics->StartExposer("127.0.0.1:0").ok());
}

TEST(ServerMetricsExposerTest, MalformedAddressesAreErrors) {
  auto metrics = MakeMetrics(1, 0);
  for (const std::string address : {"", "9464", "localhost", ":9464", "127.0.0.1:", "127.0.0.1:abc",
                                    "127.0.0.1:99999", "127.0.0.1:-1", "127.0.0.1:80x", "::1:9464",
                                    "[::1:9464", "a b:9464", "127.0.0.1:9464,127.0.0.1:9465"}) {
    const absl::Status status = metrics->StartExposer(address);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << address << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr("\"" + address + "\""));
  }
  // Well-formed but unusable: an error, not a crash.
  const absl::Status bad_host = metrics->StartExposer("256.1.1.1:0");
  EXPECT_FALSE(bad_host.ok());
  EXPECT_EQ(metrics->exposer_port(), 0);
}

}  // namespace
}  // namespace cmoe::server
