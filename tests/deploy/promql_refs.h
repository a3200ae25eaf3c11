// What the deploy tests read out of deploy/grafana/cmoe-serve.json and deploy/prometheus/rules.yml:
// the PromQL expressions each holds, and the metric, recording-rule and label names those
// expressions use (a token scan, not a PromQL parser: string literals are skipped, identifiers
// collected).
//
//   std::vector<Expr> exprs = RuleExprs(ReadText(DeployPath("prometheus/rules.yml")));
//   for (const Expr& e : exprs) {
//     for (const std::string& name : MetricNames(e.promql)) ...   // "cmoe_requests_total", ...
//   }
#ifndef CMOE_TESTS_DEPLOY_PROMQL_REFS_H_
#define CMOE_TESTS_DEPLOY_PROMQL_REFS_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace cmoe::testing {

// CMOE_SOURCE_DIR/deploy/<relative>.
std::string DeployPath(const std::string& relative);

// The whole file; "" when it cannot be read.
std::string ReadText(const std::string& path);

// One PromQL expression and where it came from, for failure messages.
struct Expr {
  std::string where;  // `panel 11 "Tokens/s" target B`, `variable job`, `rule cmoe:...`
  std::string promql;
};

// --- the dashboard ---

// Every panel target's `expr` and every query variable's query (a `label_values(...)` call).
std::vector<Expr> DashboardExprs(const nlohmann::json& dashboard);

// The panels, including those nested in collapsed rows.
std::vector<nlohmann::json> DashboardPanels(const nlohmann::json& dashboard);

// Names of the `$var` / `${var}` references in `text` (Grafana's `$__rate_interval` included).
std::set<std::string> GrafanaVariables(const std::string& text);

// --- the rules file ---

// The `expr:` values of a Prometheus rules file, each named after the `record:` or `alert:` of
// its rule. Reads the YAML that rules files use: an inline value, or a block scalar (`|`, `>-`),
// continued on the lines indented deeper than the `expr:` key.
std::vector<Expr> RuleExprs(const std::string& rules_yaml);

// One rule as the list item that starts with `- record:` / `- alert:`, up to the next one.
struct RuleItem {
  std::string kind;  // "record" or "alert"
  std::string name;
  std::string text;  // the item's lines
};
std::vector<RuleItem> RuleItems(const std::string& rules_yaml);

// --- names in an expression ---

// Metric names (`cmoe_...`) the expression selects.
std::set<std::string> MetricNames(const std::string& promql);

// Recording-rule names (`cmoe:...`) the expression selects.
std::set<std::string> RecordedNames(const std::string& promql);

// For each selector with matchers, the label names it matches on: `cmoe_requests_total{code="OK"}`
// gives {"cmoe_requests_total": {"code"}}.
std::map<std::string, std::set<std::string>> MatcherLabels(const std::string& promql);

// Label names of the `by`, `without`, `on` and `ignoring` clauses, and of label_values(..., L).
std::set<std::string> GroupingLabels(const std::string& promql);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_DEPLOY_PROMQL_REFS_H_
