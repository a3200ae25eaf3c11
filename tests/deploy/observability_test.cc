// The dashboard (deploy/grafana/cmoe-serve.json) and the rules (deploy/prometheus/rules.yml)
// against a live cmoe-serve: a carved tinystories-656k (so the expert metrics exist) serves some
// traffic, then every series name and label the expressions select must be on its /metrics.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/deploy/promql_refs.h"
#include "tests/server/server_fixtures.h"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::testing {
namespace {

using Json = nlohmann::json;

// Labels Prometheus attaches to every scraped series (not on /metrics).
const std::set<std::string> kTargetLabels = {"job", "instance"};

class ObservabilityTest : public ::testing::Test {
 protected:
  // Carves, starts the server, sends Generate, GenerateStream, Tokenize and GetModelInfo calls
  // (one of them rejected) and scrapes /metrics once for every test.
  static void SetUpTestSuite() {
    if (!HaveCarveInputs()) return;
    scratch_ = new ScratchDir();
    const std::string model = scratch_->Join("S2A2E8");
    ASSERT_TRUE(Succeeded(CarveTinyStories("S2A2E8", model)));
    server_ = new ServerProcess();
    ASSERT_EQ(server_->Start({}, model), "");
    ASSERT_TRUE(WaitServing(server_->channel().get()));
    const std::string target = "127.0.0.1:" + std::to_string(server_->port());
    ASSERT_TRUE(Succeeded(RunTool("cmoe-cli", {"--target", target, "bench", "--concurrency", "4",
                                               "--requests", "16", "--max-new-tokens", "16"})));
    ASSERT_TRUE(
        Succeeded(RunTool("cmoe-cli", {"--target", target, "generate", "--max-new-tokens", "8"})));
    ASSERT_TRUE(Succeeded(RunTool("cmoe-cli", {"--target", target, "tokenize", "--text", "Hi"})));
    ASSERT_TRUE(Succeeded(RunTool("cmoe-cli", {"--target", target, "info"})));
    // INVALID_ARGUMENT: a prompt plus 10^6 new tokens never fits (an error code series).
    EXPECT_EQ(RunTool("cmoe-cli", {"--target", target, "generate", "--max-new-tokens", "1000000"})
                  .exit_code,
              1);
    samples_ = new std::vector<Sample>(ParseSamples(Scrape(server_->metrics_port())));
  }

  static void TearDownTestSuite() {
    delete samples_;
    delete server_;
    delete scratch_;
  }

  void SetUp() override {
    if (!HaveCarveInputs()) GTEST_SKIP() << "no shared tinystories-656k or tinystories_val.txt";
    ASSERT_NE(samples_, nullptr);
    ASSERT_FALSE(samples_->empty()) << "nothing scraped from /metrics";
  }

  // The label names each exported series name carries.
  static std::map<std::string, std::set<std::string>> Exported() {
    std::map<std::string, std::set<std::string>> exported;
    for (const Sample& s : *samples_) {
      std::set<std::string>& labels = exported[s.name];
      for (const auto& [label, value] : s.labels) labels.insert(label);
    }
    return exported;
  }

  // Every series name `exprs` select is exported, with every label they match or group on.
  static void ExpectExported(const std::vector<Expr>& exprs) {
    const std::map<std::string, std::set<std::string>> exported = Exported();
    std::set<std::string> all_labels = kTargetLabels;
    for (const auto& [name, labels] : exported) all_labels.insert(labels.begin(), labels.end());
    ASSERT_FALSE(exprs.empty());
    for (const Expr& e : exprs) {
      for (const std::string& name : MetricNames(e.promql)) {
        EXPECT_EQ(exported.count(name), 1u) << e.where << ": " << name << " is not on /metrics";
      }
      for (const auto& [name, labels] : MatcherLabels(e.promql)) {
        const auto it = exported.find(name);
        if (it == exported.end()) continue;  // not exported (above) or a recording rule
        for (const std::string& label : labels) {
          EXPECT_TRUE(it->second.count(label) > 0 || kTargetLabels.count(label) > 0)
              << e.where << ": " << name << " has no label " << label;
        }
      }
      for (const std::string& label : GroupingLabels(e.promql)) {
        EXPECT_EQ(all_labels.count(label), 1u) << e.where << ": no series has label " << label;
      }
    }
  }

  static ScratchDir* scratch_;
  static ServerProcess* server_;
  static std::vector<Sample>* samples_;
};

ScratchDir* ObservabilityTest::scratch_ = nullptr;
ServerProcess* ObservabilityTest::server_ = nullptr;
std::vector<Sample>* ObservabilityTest::samples_ = nullptr;

TEST_F(ObservabilityTest, DashboardQueriesOnlyExportedSeries) {
  const Json dashboard = Json::parse(ReadText(DeployPath("grafana/cmoe-serve.json")), nullptr,
                                     /*allow_exceptions=*/false);
  ExpectExported(DashboardExprs(dashboard));
}

TEST_F(ObservabilityTest, RulesQueryOnlyExportedSeries) {
  ExpectExported(RuleExprs(ReadText(DeployPath("prometheus/rules.yml"))));
}

// The carved model's expert series, which only a carved server exports, are among them.
TEST_F(ObservabilityTest, CarvedServerExportsExpertSeries) {
  EXPECT_TRUE(Value(*samples_, "cmoe_expert_tokens_total", {{"layer", "0"}, {"expert", "0"}}));
  EXPECT_TRUE(Value(*samples_, "cmoe_expert_load_imbalance", {{"layer", "0"}}));
  EXPECT_GT(Value(*samples_, "cmoe_generated_tokens_total").value_or(0), 0);
}

}  // namespace
}  // namespace cmoe::testing
