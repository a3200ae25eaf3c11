// A real Prometheus (the Debian `prometheus` package) with deploy/prometheus/prometheus.yml and
// rules.yml, scraping a live carved cmoe-serve under `cmoe-cli bench` load, checked through its
// HTTP API: every rule loads and evaluates cleanly, every recording rule produces values, the
// activation ratio and mean tokens per step equal the server's own counters, the dashboard's
// expressions return data, no alert is pending on a healthy server, and CmoeServeDown goes
// pending once the server is gone.
// The example config is used as written, except for the target port, 1 s intervals and the path
// of rules.yml. Skips when /usr/bin/prometheus is absent.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/deploy/promql_refs.h"
#include "tests/server/server_fixtures.h"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

extern char** environ;

namespace cmoe::testing {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr char kPrometheus[] = "/usr/bin/prometheus";
constexpr double kPollSeconds = 60;

// A program running in the background with stdout and stderr appended to `log`; SIGTERM (then
// SIGKILL after 10 s) when the object dies.
class BackgroundProcess {
 public:
  BackgroundProcess(std::vector<std::string> argv, const std::string& log) : log_(log) {
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (std::string& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    if (::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0) pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
  }
  BackgroundProcess(const BackgroundProcess&) = delete;
  BackgroundProcess& operator=(const BackgroundProcess&) = delete;
  ~BackgroundProcess() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGTERM);
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (::waitpid(pid_, nullptr, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  // The last 4 KB of the log, for failure messages.
  std::string LogTail() const {
    const std::string text = ReadText(log_);
    return text.substr(text.size() > 4096 ? text.size() - 4096 : 0);
  }

 private:
  pid_t pid_ = -1;
  std::string log_;
};

std::string UrlEncode(const std::string& s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += {'%', kHex[c >> 4], kHex[c & 15]};
    }
  }
  return out;
}

// Replaces the one occurrence of `from` in `text`; false when there is not exactly one.
bool ReplaceOnce(std::string* text, const std::string& from, const std::string& to) {
  const size_t at = text->find(from);
  if (at == std::string::npos || text->find(from, at + 1) != std::string::npos) return false;
  text->replace(at, from.size(), to);
  return true;
}

// Calls `done` every 250 ms until it returns true or kPollSeconds pass; whether it did.
bool PollUntil(const std::function<bool()>& done) {
  const auto deadline = Clock::now() + std::chrono::duration<double>(kPollSeconds);
  while (Clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  return done();
}

// The value of an instant-vector sample ([time, "value"]).
double SampleValue(const Json& sample) {
  return std::strtod(sample["value"][1].get<std::string>().c_str(), nullptr);
}

class PrometheusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kPrometheus, X_OK) != 0) GTEST_SKIP() << kPrometheus << " is not installed";
    if (!HaveCarveInputs()) GTEST_SKIP() << "no shared tinystories-656k or tinystories_val.txt";
    const std::string model = scratch_.Join("S2A2E8");
    ASSERT_TRUE(Succeeded(CarveTinyStories("S2A2E8", model)));
    ASSERT_EQ(server_.Start({}, model), "");
    ASSERT_TRUE(WaitServing(server_.channel().get()));
    ASSERT_NO_FATAL_FAILURE(StartPrometheus());
  }

  // deploy/prometheus/prometheus.yml pointed at this server, with 1 s intervals.
  void StartPrometheus() {
    std::string config = ReadText(DeployPath("prometheus/prometheus.yml"));
    ASSERT_TRUE(ReplaceOnce(&config, "127.0.0.1:9464",
                            "127.0.0.1:" + std::to_string(server_.metrics_port())));
    ASSERT_TRUE(ReplaceOnce(&config, "scrape_interval: 15s", "scrape_interval: 1s"));
    ASSERT_TRUE(ReplaceOnce(&config, "evaluation_interval: 15s", "evaluation_interval: 1s"));
    ASSERT_TRUE(ReplaceOnce(&config, "- rules.yml", "- " + DeployPath("prometheus/rules.yml")));
    WriteFile(scratch_.Join("prometheus.yml"), config);
    port_ = FreePort();
    prometheus_ = std::make_unique<BackgroundProcess>(
        std::vector<std::string>{kPrometheus, "--config.file=" + scratch_.Join("prometheus.yml"),
                                 "--storage.tsdb.path=" + scratch_.Join("tsdb"),
                                 "--web.listen-address=127.0.0.1:" + std::to_string(port_)},
        scratch_.Join("prometheus.log"));
    ASSERT_TRUE(PollUntil([&] { return HttpGet(port_, "/-/ready").status == 200; }))
        << "Prometheus is not ready:\n"
        << prometheus_->LogTail();
  }

  // GET /api/v1/<endpoint>; the response's `data`, or {} (with a test failure) on an error.
  Json Api(const std::string& endpoint) {
    const HttpResponse r = HttpGet(port_, "/api/v1/" + endpoint);
    const Json j = Json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (r.status != 200 || !j.is_object() || j.value("status", "") != "success") {
      ADD_FAILURE() << endpoint << ": HTTP " << r.status << " " << r.body;
      return Json::object();
    }
    return j["data"];
  }

  // An instant query: the result vector (empty on an error, with a test failure).
  Json Query(const std::string& promql) {
    const Json data = Api("query?query=" + UrlEncode(promql));
    return data.value("result", Json::array());
  }

  // Runs load until bench's --duration; the server's counters after it.
  std::vector<Sample> RunLoad() {
    const std::string target = "127.0.0.1:" + std::to_string(server_.port());
    EXPECT_TRUE(Succeeded(
        RunTool("cmoe-cli", {"--target", target, "bench", "--concurrency", "8", "--requests",
                             "100000", "--duration", "4", "--max-new-tokens", "32"})));
    // A caller-side error (INVALID_ARGUMENT): not a server-side one for the error ratio.
    EXPECT_EQ(RunTool("cmoe-cli", {"--target", target, "generate", "--max-new-tokens", "1000000"})
                  .exit_code,
              1);
    return ParseSamples(Scrape(server_.metrics_port()));
  }

  ScratchDir scratch_;
  ServerProcess server_;
  int port_ = 0;
  std::unique_ptr<BackgroundProcess> prometheus_;
};

TEST_F(PrometheusTest, RecordingRulesProduceValuesFromALiveServer) {
  // A scrape before any traffic: the counters' first samples are 0, so rate() over the run is
  // exact up to a factor that cancels in ratios.
  ASSERT_TRUE(PollUntil([&] { return Query("cmoe_ffn_neurons_dense_total == 0").size() == 1; }))
      << prometheus_->LogTail();
  const std::vector<Sample> after = RunLoad();
  // Ratios of two counters: the rules' value over the run is exactly the server's totals' ratio.
  const auto ratio_of = [&](const char* numerator, const char* denominator) {
    return Value(after, numerator).value_or(0) / Value(after, denominator).value_or(0);
  };
  const std::vector<std::pair<std::string, double>> expected = {
      {"cmoe:activation_ratio:rate5m",
       ratio_of("cmoe_ffn_neurons_computed_total", "cmoe_ffn_neurons_dense_total")},
      {"cmoe:tokens_per_step:mean5m",
       ratio_of("cmoe_tokens_per_step_sum", "cmoe_tokens_per_step_count")}};
  // Once Prometheus has scraped the final counters and evaluated the rules after that.
  for (const auto& rule_value : expected) {
    const std::string& rule = rule_value.first;
    const double want = rule_value.second;
    ASSERT_TRUE(std::isfinite(want) && want > 0) << rule;
    double got = 0;
    const bool equal = PollUntil([&] {
      const Json r = Query(rule);
      got = r.size() == 1 ? SampleValue(r[0]) : 0;
      return std::abs(got - want) <= 1e-9 * want;
    });
    EXPECT_TRUE(equal) << rule << " " << got << ", server counters " << want;
  }
  // Every token of a carve computes the same share of the FFN (S2A2E8: 4 of 8 experts), so the
  // server's own gauge over its last 64 steps agrees exactly.
  EXPECT_DOUBLE_EQ(expected[0].second, 0.5);
  EXPECT_NEAR(Value(after, "cmoe_ffn_activation_ratio").value_or(0), expected[0].second, 1e-9);

  const Json tokens = Query("cmoe:generated_tokens:rate1m");
  ASSERT_EQ(tokens.size(), 1u);
  EXPECT_GT(SampleValue(tokens[0]), 0);
  const Json errors = Query("cmoe:request_errors:ratio_rate5m");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_EQ(SampleValue(errors[0]), 0) << "INVALID_ARGUMENT counted as a server-side error";
  const Json ttft = Query("cmoe:ttft_seconds:p99_5m");
  ASSERT_EQ(ttft.size(), 1u);
  EXPECT_GT(SampleValue(ttft[0]), 0);
  EXPECT_LT(SampleValue(ttft[0]), 5);

  // Every rule of rules.yml loaded, evaluates without error, and every recording rule has a value.
  std::set<std::string> loaded;
  const Json groups = Api("rules").value("groups", Json::array());
  for (const Json& group : groups) {
    for (const Json& rule : group["rules"]) {
      const std::string name = rule.value("name", "");
      loaded.insert(name);
      EXPECT_EQ(rule.value("health", ""), "ok") << name << ": " << rule.value("lastError", "");
      if (rule.value("type", "") == "recording") {
        EXPECT_FALSE(Query(name).empty()) << name << " has no value";
      }
    }
  }
  std::set<std::string> written;
  for (const RuleItem& item : RuleItems(ReadText(DeployPath("prometheus/rules.yml")))) {
    written.insert(item.name);
  }
  EXPECT_EQ(loaded, written);
  // A healthy, lightly loaded server: no alert even pending.
  EXPECT_EQ(Query("ALERTS").dump(), "[]");
}

// What Grafana would send, with its variables filled in: every panel and variable query parses
// and returns series.
TEST_F(PrometheusTest, DashboardQueriesReturnData) {
  RunLoad();
  const Json dashboard = Json::parse(ReadText(DeployPath("grafana/cmoe-serve.json")), nullptr,
                                     /*allow_exceptions=*/false);
  // Two scrapes of the INVALID_ARGUMENT series that appeared after the load: Prometheus has it all.
  ASSERT_TRUE(PollUntil(
      [&] { return !Query("rate(cmoe_requests_total{code=\"INVALID_ARGUMENT\"}[10s])").empty(); }));
  const std::vector<std::pair<std::string, std::string>> variables = {
      {"$__rate_interval", "10s"},
      {"$job", "cmoe-serve"},
      {"$instance", "127.0.0.1:" + std::to_string(server_.metrics_port())},
      {"$layer", "0"}};
  for (const Expr& e : DashboardExprs(dashboard)) {
    std::string promql = e.promql;
    for (const auto& [name, value] : variables) {
      for (size_t at = promql.find(name); at != std::string::npos; at = promql.find(name, at)) {
        promql.replace(at, name.size(), value);
      }
    }
    // label_values(selector, label) is Grafana's: the selector's series must carry the label.
    const std::string label_values = "label_values(";
    std::string label;
    if (promql.starts_with(label_values)) {
      const size_t comma = promql.rfind(',');
      label = promql.substr(comma + 2, promql.size() - comma - 3);
      const std::string selector = promql.substr(label_values.size(), comma - label_values.size());
      promql = "count by (" + label + ") (";
      promql += selector + ")";
    }
    const Json result = Query(promql);
    EXPECT_FALSE(result.empty()) << e.where << ": no data for " << promql;
    if (!label.empty() && !result.empty()) {
      EXPECT_TRUE(result[0]["metric"].contains(label)) << e.where << ": no label " << label;
    }
  }
}

TEST_F(PrometheusTest, ServerDownAlertGoesPendingWhenTheServerStops) {
  ASSERT_TRUE(PollUntil([&] { return !Query("up{job=\"cmoe-serve\"} == 1").empty(); }));
  ASSERT_EQ(server_.Terminate(), 0);
  EXPECT_TRUE(PollUntil([&] {
    return !Query("ALERTS{alertname=\"CmoeServeDown\", alertstate=\"pending\"}").empty();
  })) << Query("ALERTS").dump();
}

}  // namespace
}  // namespace cmoe::testing
