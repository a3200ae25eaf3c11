#include "tests/deploy/promql_refs.h"

#include <cctype>
#include <fstream>
#include <regex>
#include <sstream>
#include <utility>

namespace cmoe::testing {
namespace {

using Json = nlohmann::json;

// A PromQL token: an identifier (metric, label, function or keyword name), a string literal, a
// number or duration, or one punctuation character.
struct Token {
  enum Kind { kIdent, kString, kNumber, kPunct } kind;
  std::string text;
};

bool IdentStart(char c) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_'; }
bool IdentChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':';
}

size_t SkipString(const std::string& s, size_t i) {
  const char quote = s[i++];
  while (i < s.size() && s[i] != quote) i += (s[i] == '\\' && quote != '`') ? 2 : 1;
  return i + 1;
}

std::vector<Token> Tokenize(const std::string& s) {
  std::vector<Token> tokens;
  size_t i = 0;
  while (i < s.size()) {
    const char c = s[i];
    size_t end = i + 1;
    Token::Kind kind = Token::kPunct;
    if (std::isspace(static_cast<unsigned char>(c))) {
      ++i;
      continue;
    }
    if (c == '#') {  // a comment, to the end of the line
      end = s.find('\n', i);
      i = end == std::string::npos ? s.size() : end;
      continue;
    }
    if (c == '"' || c == '\'' || c == '`') {
      kind = Token::kString;
      end = SkipString(s, i);
    } else if (IdentStart(c)) {
      kind = Token::kIdent;
      while (end < s.size() && IdentChar(s[end])) ++end;
    } else if (std::isdigit(static_cast<unsigned char>(c)) || c == '.') {
      kind = Token::kNumber;
      while (end < s.size() &&
             (std::isalnum(static_cast<unsigned char>(s[end])) || s[end] == '.')) {
        ++end;
      }
    } else if (c == '$') {  // a Grafana variable: one token, never a name
      kind = Token::kString;
      while (end < s.size() && (IdentChar(s[end]) || s[end] == '{' || s[end] == '}')) ++end;
    }
    end = std::min(end, s.size());
    tokens.push_back({kind, s.substr(i, end - i)});
    i = end;
  }
  return tokens;
}

bool Is(const std::vector<Token>& t, size_t i, const char* punct) {
  return i < t.size() && t[i].kind == Token::kPunct && t[i].text == punct;
}

std::set<std::string> IdentsWithPrefix(const std::string& promql, const std::string& prefix) {
  std::set<std::string> names;
  for (const Token& t : Tokenize(promql)) {
    if (t.kind == Token::kIdent && t.text.starts_with(prefix)) names.insert(t.text);
  }
  return names;
}

int Indent(const std::string& line) {
  const size_t first = line.find_first_not_of(' ');
  return first == std::string::npos ? -1 : static_cast<int>(first);  // -1: a blank line
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) lines.push_back(line);
  return lines;
}

// A YAML scalar written inline: quotes removed ('' is an escaped single quote).
std::string Unquote(std::string value) {
  if (value.size() >= 2 && value.front() == '\'' && value.back() == '\'') {
    value = value.substr(1, value.size() - 2);
    for (size_t p = value.find("''"); p != std::string::npos; p = value.find("''", p + 1)) {
      value.erase(p, 1);
    }
  } else if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
    value = value.substr(1, value.size() - 2);
  }
  return value;
}

}  // namespace

std::string DeployPath(const std::string& relative) {
  return std::string(CMOE_SOURCE_DIR) + "/deploy/" + relative;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

std::vector<Json> DashboardPanels(const Json& dashboard) {
  std::vector<Json> panels;
  for (const Json& panel : dashboard.value("panels", Json::array())) {
    panels.push_back(panel);
    for (const Json& nested : panel.value("panels", Json::array())) panels.push_back(nested);
  }
  return panels;
}

std::vector<Expr> DashboardExprs(const Json& dashboard) {
  std::vector<Expr> exprs;
  for (const Json& panel : DashboardPanels(dashboard)) {
    for (const Json& target : panel.value("targets", Json::array())) {
      if (!target.contains("expr") || !target["expr"].is_string()) continue;
      exprs.push_back({"panel " + panel.value("id", Json()).dump() + " \"" +
                           panel.value("title", "") + "\" target " + target.value("refId", "?"),
                       target["expr"].get<std::string>()});
    }
  }
  const Json variables = dashboard.value("templating", Json::object()).value("list", Json::array());
  for (const Json& variable : variables) {
    if (variable.value("type", "") != "query") continue;
    const Json& query = variable.value("query", Json());
    const Json text = query.is_object() ? query.value("query", Json()) : query;
    if (text.is_string()) {
      exprs.push_back({"variable " + variable.value("name", ""), text.get<std::string>()});
    }
  }
  return exprs;
}

std::set<std::string> GrafanaVariables(const std::string& text) {
  static const std::regex kVariable(R"(\$\{?([A-Za-z0-9_]+))");
  std::set<std::string> names;
  for (auto it = std::sregex_iterator(text.begin(), text.end(), kVariable);
       it != std::sregex_iterator(); ++it) {
    names.insert((*it)[1].str());
  }
  return names;
}

std::vector<Expr> RuleExprs(const std::string& rules_yaml) {
  static const std::regex kExpr(R"(^( *)(- )?expr:\s*(.*)$)");
  static const std::regex kName(R"(^ *(- )?(record|alert):\s*(\S+))");
  const std::vector<std::string> lines = Lines(rules_yaml);
  std::vector<Expr> exprs;
  std::string rule;
  for (size_t i = 0; i < lines.size(); ++i) {
    std::smatch m;
    if (std::regex_search(lines[i], m, kName)) rule = m[2].str() + " " + m[3].str();
    if (!std::regex_match(lines[i], m, kExpr)) continue;
    const int key_indent = static_cast<int>(m[1].length() + m[2].length());
    const std::string value = m[3].str();
    const bool block = !value.empty() && (value[0] == '|' || value[0] == '>');
    std::string promql = block ? "" : Unquote(value);
    // Continuation lines (the block scalar's, or a plain scalar's folded ones).
    while (i + 1 < lines.size() &&
           (Indent(lines[i + 1]) > key_indent || Indent(lines[i + 1]) < 0)) {
      promql += "\n" + lines[++i];
    }
    exprs.push_back({"rule " + rule, promql});
  }
  return exprs;
}

std::vector<RuleItem> RuleItems(const std::string& rules_yaml) {
  static const std::regex kItem(R"(^ *- (record|alert):\s*(\S+))");
  static const std::regex kOther(R"(^ *- name:)");
  std::vector<RuleItem> items;
  for (const std::string& line : Lines(rules_yaml)) {
    std::smatch m;
    if (std::regex_search(line, m, kItem)) {
      items.push_back({m[1].str(), m[2].str(), ""});
    } else if (std::regex_search(line, kOther)) {
      items.push_back({"group", "", ""});
    }
    if (!items.empty()) items.back().text += line + "\n";
  }
  std::erase_if(items, [](const RuleItem& item) { return item.kind == "group"; });
  return items;
}

std::set<std::string> MetricNames(const std::string& promql) {
  return IdentsWithPrefix(promql, "cmoe_");
}

std::set<std::string> RecordedNames(const std::string& promql) {
  return IdentsWithPrefix(promql, "cmoe:");
}

std::map<std::string, std::set<std::string>> MatcherLabels(const std::string& promql) {
  const std::vector<Token> t = Tokenize(promql);
  std::map<std::string, std::set<std::string>> labels;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    if (t[i].kind != Token::kIdent || !Is(t, i + 1, "{")) continue;
    std::set<std::string>& names = labels[t[i].text];
    for (i += 2; i < t.size() && !Is(t, i, "}"); ++i) {
      if (t[i].kind == Token::kIdent) names.insert(t[i].text);
    }
  }
  return labels;
}

std::set<std::string> GroupingLabels(const std::string& promql) {
  static const std::set<std::string> kClauses = {"by",       "without",    "on",
                                                 "ignoring", "group_left", "group_right"};
  const std::vector<Token> t = Tokenize(promql);
  std::set<std::string> labels;
  for (size_t i = 0; i + 1 < t.size(); ++i) {
    if (t[i].kind != Token::kIdent || !Is(t, i + 1, "(")) continue;
    if (kClauses.count(t[i].text) > 0) {
      for (i += 2; i < t.size() && !Is(t, i, ")"); ++i) {
        if (t[i].kind == Token::kIdent) labels.insert(t[i].text);
      }
    } else if (t[i].text == "label_values") {
      // label_values(selector, label): the identifier after the last top-level comma.
      int depth = 0;
      std::string label;
      bool after_comma = false;
      for (i += 1; i < t.size(); ++i) {
        if (Is(t, i, "(") || Is(t, i, "{")) ++depth;
        if (Is(t, i, ")") || Is(t, i, "}")) --depth;
        if (depth == 0) break;
        if (depth == 1 && Is(t, i, ",")) after_comma = true;
        if (depth == 1 && after_comma && t[i].kind == Token::kIdent) label = t[i].text;
      }
      if (!label.empty()) labels.insert(label);
    }
  }
  return labels;
}

}  // namespace cmoe::testing
