// deploy/grafana/cmoe-serve.json and deploy/prometheus/rules.yml against each other and against
// the server's list of metrics (server/metrics.cc ServerMetrics::Metrics(), the source of truth),
// without a server: the dashboard's Grafana structure, the names its expressions use, the rules'
// conventions. observability_test checks the same names against a live server's /metrics.
#include <algorithm>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/metrics.h"
#include "tests/deploy/promql_refs.h"

namespace cmoe::testing {
namespace {

using Json = nlohmann::json;

constexpr char kDatasource[] = "${datasource}";

Json Dashboard() {
  return Json::parse(ReadText(DeployPath("grafana/cmoe-serve.json")), nullptr,
                     /*allow_exceptions=*/false);
}

std::string Rules() { return ReadText(DeployPath("prometheus/rules.yml")); }

Json Variables(const Json& dashboard) {
  return dashboard.value("templating", Json::object()).value("list", Json::array());
}

// The template variable `name`; null when there is none.
Json Variable(const Json& dashboard, const std::string& name) {
  for (const Json& v : Variables(dashboard)) {
    if (v.value("name", "") == name) return v;
  }
  return Json();
}

bool UsesDatasourceVariable(const Json& element) {
  const Json ds = element.value("datasource", Json());
  return ds.is_object() && ds.value("type", "") == "prometheus" &&
         ds.value("uid", "") == kDatasource;
}

// The metric of server/metrics.cc that `name` (a series name: histograms have _bucket, _sum and
// _count series) belongs to; nullptr when there is none.
const server::MetricInfo* FindMetric(const std::string& name) {
  for (const server::MetricInfo& m : server::ServerMetrics::Metrics()) {
    if (m.type != "histogram" && name == m.name) return &m;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      if (m.type == "histogram" && name == std::string(m.name) + suffix) return &m;
    }
  }
  return nullptr;
}

std::vector<Expr> AllExprs() {
  std::vector<Expr> exprs = DashboardExprs(Dashboard());
  for (Expr& e : RuleExprs(Rules())) exprs.push_back(std::move(e));
  return exprs;
}

TEST(DashboardTest, IsAGrafana10DashboardWithDatasourceJobAndInstanceVariables) {
  const Json dashboard = Dashboard();
  ASSERT_TRUE(dashboard.is_object()) << "deploy/grafana/cmoe-serve.json is not a JSON object";
  EXPECT_GE(dashboard.value("schemaVersion", 0), 38);
  EXPECT_FALSE(dashboard.value("uid", "").empty());
  EXPECT_FALSE(dashboard.value("title", "").empty());

  const Json datasource = Variable(dashboard, "datasource");
  ASSERT_TRUE(datasource.is_object()) << "no variable datasource";
  EXPECT_EQ(datasource.value("type", ""), "datasource");
  EXPECT_EQ(datasource.value("query", ""), "prometheus");
  for (const char* name : {"job", "instance"}) {
    const Json v = Variable(dashboard, name);
    ASSERT_TRUE(v.is_object()) << "no variable " << name;
    EXPECT_EQ(v.value("type", ""), "query") << name;
  }
  for (const Json& v : Variables(dashboard)) {
    if (v.value("type", "") != "query") continue;
    EXPECT_TRUE(UsesDatasourceVariable(v)) << v.value("name", "");
    // Grafana shows `definition` and runs `query`.
    EXPECT_EQ(v.value("definition", ""), v.value("query", Json::object()).value("query", ""))
        << v.value("name", "");
  }
}

TEST(DashboardTest, EveryPanelQueriesTheDatasourceVariable) {
  const Json dashboard = Dashboard();
  std::set<int> ids;
  for (const Json& panel : DashboardPanels(dashboard)) {
    const std::string title = panel.value("title", "");
    SCOPED_TRACE("panel \"" + title + "\"");
    EXPECT_FALSE(title.empty());
    ASSERT_TRUE(panel.contains("id") && panel["id"].is_number_integer());
    EXPECT_TRUE(ids.insert(panel["id"].get<int>()).second) << "duplicate id " << panel["id"];
    const Json grid = panel.value("gridPos", Json::object());
    EXPECT_GE(grid.value("w", 0), 1);
    EXPECT_LE(grid.value("x", 0) + grid.value("w", 0), 24);
    EXPECT_GE(grid.value("h", 0), 1);
    if (panel.value("type", "") == "row") continue;

    EXPECT_TRUE(UsesDatasourceVariable(panel)) << panel.value("datasource", Json()).dump();
    const Json targets = panel.value("targets", Json::array());
    EXPECT_FALSE(targets.empty()) << "no target";
    std::set<std::string> ref_ids;
    for (const Json& target : targets) {
      EXPECT_TRUE(UsesDatasourceVariable(target)) << target.dump();
      EXPECT_FALSE(target.value("expr", "").empty()) << target.dump();
      EXPECT_TRUE(ref_ids.insert(target.value("refId", "")).second) << "duplicate refId";
    }
  }
  EXPECT_GE(ids.size(), 10u);
}

TEST(DashboardTest, ExpressionsUseOnlyDefinedVariables) {
  const Json dashboard = Dashboard();
  std::set<std::string> defined;
  for (const Json& v : Variables(dashboard)) defined.insert(v.value("name", ""));
  for (const Json& panel : DashboardPanels(dashboard)) {
    if (panel.contains("repeat")) {
      EXPECT_EQ(defined.count(panel["repeat"].get<std::string>()), 1u) << panel["repeat"];
    }
  }
  for (const Expr& e : DashboardExprs(dashboard)) {
    for (const std::string& name : GrafanaVariables(e.promql)) {
      // Grafana's own: $__rate_interval, $__interval, $__range.
      EXPECT_TRUE(defined.count(name) > 0 || name.starts_with("__"))
          << e.where << ": $" << name << " is not a dashboard variable";
    }
  }
}

// Histograms are queried through their _bucket/_sum/_count series, counters and gauges by name;
// selectors match, and aggregations group by, labels that the metrics have.
TEST(DashboardTest, UsesOnlyMetricsAndLabelsTheServerExports) {
  std::set<std::string> all_labels = {"le", "job", "instance"};
  for (const server::MetricInfo& m : server::ServerMetrics::Metrics()) {
    std::stringstream labels{std::string(m.labels)};
    for (std::string label; std::getline(labels, label, ',');) all_labels.insert(label);
  }
  for (const Expr& e : AllExprs()) {
    for (const std::string& label : GroupingLabels(e.promql)) {
      EXPECT_EQ(all_labels.count(label), 1u) << e.where << ": no metric has label " << label;
    }
    for (const std::string& name : MetricNames(e.promql)) {
      const server::MetricInfo* metric = FindMetric(name);
      EXPECT_NE(metric, nullptr) << e.where << ": " << name
                                 << " is no series of a metric in server/metrics.cc";
      for (const auto& [selected, labels] : MatcherLabels(e.promql)) {
        if (selected != name || metric == nullptr) continue;
        const std::string known = std::string(metric->labels) + ",le,job,instance";
        for (const std::string& label : labels) {
          EXPECT_NE(("," + known + ",").find("," + label + ","), std::string::npos)
              << e.where << ": " << name << " has no label " << label;
        }
      }
    }
  }
}

TEST(DashboardTest, ShowsEveryMetric) {
  std::set<std::string> shown;
  for (const Expr& e : DashboardExprs(Dashboard())) {
    for (const std::string& name : MetricNames(e.promql)) {
      if (const server::MetricInfo* m = FindMetric(name)) shown.insert(std::string(m->name));
    }
  }
  for (const server::MetricInfo& m : server::ServerMetrics::Metrics()) {
    EXPECT_EQ(shown.count(std::string(m.name)), 1u) << m.name << " is on no dashboard panel";
  }
}

TEST(RulesTest, EveryRecordedNameUsedIsDefinedEarlierInRulesYml) {
  std::set<std::string> defined;
  for (const RuleItem& item : RuleItems(Rules())) {
    for (const Expr& e : RuleExprs(item.text)) {
      for (const std::string& name : RecordedNames(e.promql)) {
        EXPECT_EQ(defined.count(name), 1u) << e.where << " uses " << name << " before its rule";
      }
    }
    if (item.kind == "record") {
      EXPECT_TRUE(defined.insert(item.name).second) << "recorded twice: " << item.name;
    }
  }
  for (const Expr& e : DashboardExprs(Dashboard())) {
    for (const std::string& name : RecordedNames(e.promql)) {
      EXPECT_EQ(defined.count(name), 1u) << e.where << ": no rule records " << name;
    }
  }
}

TEST(RulesTest, EveryRuleHasOneExpressionAndFollowsTheConventions) {
  const std::string rules = Rules();
  const std::vector<RuleItem> items = RuleItems(rules);
  EXPECT_EQ(RuleExprs(rules).size(), items.size());
  static const std::regex kRecordName(R"(cmoe:[a-z0-9_]+:[a-z0-9_]+)");
  static const std::regex kSeverity(R"(\n +severity: (critical|warning|info)\n)");
  int alerts = 0;
  for (const RuleItem& item : items) {
    SCOPED_TRACE(item.kind + " " + item.name);
    ASSERT_EQ(RuleExprs(item.text).size(), 1u);
    if (item.kind == "record") {
      EXPECT_TRUE(std::regex_match(item.name, kRecordName)) << "not level:metric:operation";
      continue;
    }
    ++alerts;
    EXPECT_TRUE(std::regex_search(item.text, std::regex(R"(\n +for: \d+m\n)"))) << "no for";
    EXPECT_TRUE(std::regex_search(item.text, kSeverity)) << "no severity label";
    EXPECT_NE(item.text.find("summary:"), std::string::npos);
    EXPECT_NE(item.text.find("description:"), std::string::npos);
  }
  EXPECT_GE(alerts, 4);
}

}  // namespace
}  // namespace cmoe::testing
