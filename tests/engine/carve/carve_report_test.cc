// carve_report.json / carve_report.html: the activation summary, the JSON layout and the page.
#include "engine/carve/carve_report.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine::carve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using Json = nlohmann::ordered_json;

constexpr int kBins = kActivationHistogramBins;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::vector<int64_t> Counts(std::initializer_list<std::pair<int, int64_t>> nonzero) {
  std::vector<int64_t> c(kBins, 0);
  for (auto [bin, count] : nonzero) c[bin] = count;
  return c;
}

LayerReport SampleLayer(int64_t index, std::vector<int64_t> tokens) {
  LayerReport l;
  l.layer = index;
  l.activation = SummarizeActivationRates(std::vector<double>{0.5, 0.0, 0.1, 0.3});
  l.shared_width = 20;
  l.expert_widths.assign(tokens.size(), 10);
  if (!l.expert_widths.empty()) l.expert_widths[0] = 11;
  l.assignment_cost = 12345;
  l.cluster_iters_run = 2;
  for (size_t j = 0; j < tokens.size(); ++j) {
    l.seeds.push_back(100 + static_cast<int64_t>(j));
    l.representatives.push_back(200 + static_cast<int64_t>(j));
    l.balance_bias.push_back(0.25 * static_cast<double>(j));
  }
  l.tokens_per_expert = std::move(tokens);
  l.forward_s = 0.5;
  l.scores_s = 1.25;
  l.markers_s = 0.125;
  l.assignment_s = 2.5;
  l.centroid_s = 0.0625;
  l.apply_s = 0.8125;
  return l;
}

CarveReport SampleReport() {
  CarveReport r;
  r.model_dir = "/models/llama-7b";
  r.out_dir = "/models/llama-7b-S2A2E16";
  r.config_name = "S2A2E16";
  r.num_experts = 16;
  r.num_shared = 2;
  r.num_activated = 2;
  r.k_act = 10;
  r.score = "normalized";
  r.router = "reference";
  r.cluster_iters = 3;
  r.balance_bias_gamma = 0.001;
  r.calib_file = "/data/wikitext.txt";
  r.calib_range_begin = 1000;
  r.calib_range_end = 2000000;
  r.calib_seqs = 8;
  r.calib_len = 2048;
  r.seed = 0xFFFFFFFFFFFFFFF0ull;  // > int64 max: must stay unsigned
  r.calib_tokens = 8 * 2048;
  r.hidden_size = 4096;
  r.ffn_width = 11008;
  r.num_layers = 2;
  r.activation_ratio = 0.25;
  r.total_s = 42.5;
  r.threads = 16;
  r.layers.push_back(SampleLayer(0, {10, 30}));
  r.layers.push_back(SampleLayer(1, {5, 5, 5, 5}));
  return r;
}

size_t CountOf(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t p = haystack.find(needle); p != std::string::npos;
       p = haystack.find(needle, p + needle.size())) {
    ++n;
  }
  return n;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Every <svg ...>...</svg> element of the page.
std::vector<std::string> Svgs(const std::string& html) {
  std::vector<std::string> out;
  for (size_t p = html.find("<svg"); p != std::string::npos; p = html.find("<svg", p + 1)) {
    const size_t end = html.find("</svg>", p);
    EXPECT_NE(end, std::string::npos);
    if (end == std::string::npos) break;
    out.push_back(html.substr(p, end + 6 - p));
  }
  return out;
}

// The numeric value of each `attr="..."` in `svg`; a non-number fails the test.
std::vector<double> Attrs(const std::string& svg, const std::string& attr) {
  std::vector<double> out;
  const std::regex re(" " + attr + "=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), re); it != std::sregex_iterator();
       ++it) {
    const std::string v = (*it)[1];
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    EXPECT_TRUE(end != v.c_str() && *end == '\0' && std::isfinite(d)) << attr << "=\"" << v << "\"";
    out.push_back(d);
  }
  return out;
}

// Every rect lies inside the 480 x 270 viewBox with non-negative size, and no coordinate or
// label is NaN or infinite.
void ExpectSaneSvg(const std::string& svg) {
  EXPECT_THAT(svg, StartsWith("<svg viewBox=\"0 0 480 270\""));
  const std::string lower = Lower(svg);
  EXPECT_THAT(lower, Not(HasSubstr("nan")));
  EXPECT_THAT(lower, Not(HasSubstr("inf")));
  const std::vector<double> x = Attrs(svg, "x"), y = Attrs(svg, "y"), w = Attrs(svg, "width"),
                            h = Attrs(svg, "height");
  for (double v : x) EXPECT_TRUE(v >= 0 && v <= 480) << v;
  for (double v : y) EXPECT_TRUE(v >= 0 && v <= 270) << v;
  for (double v : w) EXPECT_GE(v, 0);
  for (double v : h) EXPECT_GE(v, 0);
  // Rects carry x, y, width and height in that order.
  const std::regex rect(
      "<rect[^>]* x=\"([^\"]*)\" y=\"([^\"]*)\" width=\"([^\"]*)\" "
      "height=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), rect); it != std::sregex_iterator();
       ++it) {
    const double rx = std::stod((*it)[1]), ry = std::stod((*it)[2]), rw = std::stod((*it)[3]),
                 rh = std::stod((*it)[4]);
    EXPECT_LE(rx + rw, 480.05);
    EXPECT_LE(ry + rh, 270.05);
  }
}

// ---------- SummarizeActivationRates ----------

TEST(SummarizeActivationRatesTest, HandComputedQuantilesAndHistogram) {
  // Sorted {0, 0.1, 0.3, 0.5}; position h = 3q between order statistics (numpy 'linear').
  const ActivationRateSummary s = SummarizeActivationRates(std::vector<double>{0.5, 0, 0.1, 0.3});
  const double want[] = {0.0, 0.03, 0.075, 0.2, 0.35, 0.44, 0.494, 0.5};
  ASSERT_EQ(s.quantiles.size(), std::size(kActivationQuantiles));
  for (size_t i = 0; i < std::size(want); ++i) {
    EXPECT_NEAR(s.quantiles[i], want[i], 1e-12) << "q = " << kActivationQuantiles[i];
  }
  // Bins of width 0.025 over [0, 0.5]: 0 -> 0, 0.1 -> 4, 0.3 -> 12, 0.5 -> the closed last bin.
  EXPECT_EQ(s.hist_max, 0.5);
  EXPECT_EQ(s.histogram, Counts({{0, 1}, {4, 1}, {12, 1}, {19, 1}}));
}

TEST(SummarizeActivationRatesTest, ValuesOnBinEdgesGoToTheUpperBin) {
  // 0, 0.1, ..., 1.0: each lies exactly on an edge of the width-0.05 bins, so it belongs to the
  // bin above that edge whatever the division v / max * 20 rounds to.
  std::vector<double> rates;
  for (int i = 0; i <= 10; ++i) rates.push_back(i / 10.0);
  const ActivationRateSummary s = SummarizeActivationRates(rates);
  EXPECT_EQ(s.hist_max, 1.0);
  std::vector<int64_t> want(kBins, 0);
  for (int i = 0; i < 10; ++i) want[2 * i] = 1;
  want[19] = 1;  // 1.0: the last bin is closed
  EXPECT_EQ(s.histogram, want);
  EXPECT_NEAR(s.quantiles[2], 0.25, 1e-12);  // h = 2.5
  EXPECT_NEAR(s.quantiles[6], 0.99, 1e-12);  // h = 9.9
  EXPECT_EQ(s.quantiles[3], 0.5);            // h = 5: exactly an order statistic

  // Just below an edge stays in the lower bin.
  const ActivationRateSummary below =
      SummarizeActivationRates(std::vector<double>{std::nextafter(0.1, 0.0), 1.0});
  EXPECT_EQ(below.histogram, Counts({{1, 1}, {19, 1}}));
}

TEST(SummarizeActivationRatesTest, AllZeroRates) {
  const ActivationRateSummary s = SummarizeActivationRates(std::vector<double>(7, 0.0));
  EXPECT_THAT(s.quantiles, ::testing::Each(0.0));
  EXPECT_EQ(s.quantiles.size(), std::size(kActivationQuantiles));
  EXPECT_EQ(s.hist_max, 1.0);
  EXPECT_EQ(s.histogram, Counts({{0, 7}}));
}

TEST(SummarizeActivationRatesTest, SingleValue) {
  const ActivationRateSummary s = SummarizeActivationRates(std::vector<double>{0.42});
  EXPECT_THAT(s.quantiles, ElementsAreArray(std::vector<double>(8, 0.42)));
  EXPECT_EQ(s.hist_max, 0.42);
  EXPECT_EQ(s.histogram, Counts({{19, 1}}));
}

TEST(SummarizeActivationRatesTest, RandomRatesCountEveryValueOnce) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0, 0.3);
  std::vector<double> rates(1001);
  for (double& r : rates) r = std::round(u(rng) * 1000) / 1000;  // many ties and edge hits
  const ActivationRateSummary s = SummarizeActivationRates(rates);
  EXPECT_EQ(std::accumulate(s.histogram.begin(), s.histogram.end(), int64_t{0}), 1001);
  EXPECT_EQ(s.hist_max, *std::max_element(rates.begin(), rates.end()));
  EXPECT_TRUE(std::is_sorted(s.quantiles.begin(), s.quantiles.end()));
  std::vector<double> sorted = rates;
  std::sort(sorted.begin(), sorted.end());
  EXPECT_EQ(s.quantiles.front(), sorted.front());
  EXPECT_EQ(s.quantiles[3], sorted[500]);  // n = 1001: the median is an order statistic
  EXPECT_EQ(s.quantiles.back(), sorted.back());
  // Each value is in the bin whose [lo, hi) contains it (the last closed).
  for (int k = 0; k < kBins; ++k) {
    const double lo = s.hist_max * k / kBins, hi = s.hist_max * (k + 1) / kBins;
    const int64_t n = std::count_if(rates.begin(), rates.end(), [&](double r) {
      return r >= lo && (r < hi || (k == kBins - 1 && r <= s.hist_max));
    });
    EXPECT_EQ(s.histogram[k], n) << "bin " << k;
  }
}

// ---------- CarveReportJson ----------

TEST(CarveReportJsonTest, EveryFieldRoundTrips) {
  const CarveReport r = SampleReport();
  const std::string text = CarveReportJson(r);
  EXPECT_THAT(text, HasSubstr("\n  \"model_dir\": "));  // pretty-printed, 2-space indent
  const Json j = Json::parse(text);

  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_THAT(keys, ElementsAre("model_dir", "out_dir", "config_name", "num_experts", "num_shared",
                                "num_activated", "k_act", "score", "router", "cluster_iters",
                                "balance_bias_gamma", "calib_file", "calib_range_begin",
                                "calib_range_end", "calib_seqs", "calib_len", "seed",
                                "calib_tokens", "hidden_size", "ffn_width", "num_layers",
                                "activation_ratio", "total_s", "threads", "layers"));
  EXPECT_EQ(j["model_dir"], r.model_dir);
  EXPECT_EQ(j["out_dir"], r.out_dir);
  EXPECT_EQ(j["config_name"], "S2A2E16");
  EXPECT_EQ(j["num_experts"], 16);
  EXPECT_EQ(j["num_shared"], 2);
  EXPECT_EQ(j["num_activated"], 2);
  EXPECT_EQ(j["k_act"], 10);
  EXPECT_EQ(j["score"], "normalized");
  EXPECT_EQ(j["router"], "reference");
  EXPECT_EQ(j["cluster_iters"], 3);
  EXPECT_EQ(j["balance_bias_gamma"].get<double>(), 0.001);
  EXPECT_EQ(j["calib_file"], r.calib_file);
  EXPECT_EQ(j["calib_range_begin"], 1000);
  EXPECT_EQ(j["calib_range_end"], 2000000);
  EXPECT_EQ(j["calib_seqs"], 8);
  EXPECT_EQ(j["calib_len"], 2048);
  EXPECT_EQ(j["seed"].get<uint64_t>(), r.seed);
  EXPECT_EQ(j["calib_tokens"], 16384);
  EXPECT_EQ(j["hidden_size"], 4096);
  EXPECT_EQ(j["ffn_width"], 11008);
  EXPECT_EQ(j["num_layers"], 2);
  EXPECT_EQ(j["activation_ratio"].get<double>(), 0.25);
  EXPECT_EQ(j["total_s"].get<double>(), 42.5);
  EXPECT_EQ(j["threads"], 16);

  ASSERT_EQ(j["layers"].size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    const LayerReport& l = r.layers[i];
    const Json& jl = j["layers"][i];
    std::vector<std::string> layer_keys;
    for (const auto& [k, v] : jl.items()) layer_keys.push_back(k);
    EXPECT_THAT(layer_keys,
                ElementsAre("layer", "activation_rate", "shared_width", "expert_widths",
                            "assignment_cost", "cluster_iters_run", "seeds", "representatives",
                            "tokens_per_expert", "balance_bias", "seconds"));
    EXPECT_EQ(jl["layer"], l.layer);
    const Json& q = jl["activation_rate"]["quantiles"];
    ASSERT_EQ(q.size(), std::size(kActivationQuantiles));
    for (size_t k = 0; k < q.size(); ++k) {
      EXPECT_EQ(q[k]["q"].get<double>(), kActivationQuantiles[k]);
      EXPECT_EQ(q[k]["value"].get<double>(), l.activation.quantiles[k]);  // exact round trip
    }
    EXPECT_EQ(jl["activation_rate"]["histogram"]["max"].get<double>(), 0.5);
    EXPECT_EQ(jl["activation_rate"]["histogram"]["counts"].get<std::vector<int64_t>>(),
              l.activation.histogram);
    EXPECT_EQ(jl["shared_width"], 20);
    EXPECT_EQ(jl["expert_widths"].get<std::vector<int64_t>>(), l.expert_widths);
    EXPECT_EQ(jl["assignment_cost"], 12345);
    EXPECT_EQ(jl["cluster_iters_run"], 2);
    EXPECT_EQ(jl["seeds"].get<std::vector<int64_t>>(), l.seeds);
    EXPECT_EQ(jl["representatives"].get<std::vector<int64_t>>(), l.representatives);
    EXPECT_EQ(jl["tokens_per_expert"].get<std::vector<int64_t>>(), l.tokens_per_expert);
    EXPECT_EQ(jl["balance_bias"].get<std::vector<double>>(), l.balance_bias);
    const Json& sec = jl["seconds"];
    std::vector<std::string> phases;
    for (const auto& [k, v] : sec.items()) phases.push_back(k);
    EXPECT_THAT(phases,
                ElementsAre("forward", "scores", "markers", "assignment", "centroid", "apply"));
    EXPECT_EQ(sec["forward"].get<double>(), 0.5);
    EXPECT_EQ(sec["scores"].get<double>(), 1.25);
    EXPECT_EQ(sec["markers"].get<double>(), 0.125);
    EXPECT_EQ(sec["assignment"].get<double>(), 2.5);
    EXPECT_EQ(sec["centroid"].get<double>(), 0.0625);
    EXPECT_EQ(sec["apply"].get<double>(), 0.8125);
  }
}

TEST(CarveReportJsonTest, NonFiniteNumbersBecomeNull) {
  CarveReport r = SampleReport();
  r.total_s = kNaN;
  r.activation_ratio = kInf;
  r.balance_bias_gamma = -kInf;
  r.layers[0].balance_bias = {kNaN, 1.5};
  r.layers[0].apply_s = kInf;
  r.layers[0].activation.quantiles[0] = kNaN;
  const std::string text = CarveReportJson(r);
  const Json j = Json::parse(text);  // throws (fails the test) on invalid JSON
  EXPECT_TRUE(j["total_s"].is_null());
  EXPECT_TRUE(j["activation_ratio"].is_null());
  EXPECT_TRUE(j["balance_bias_gamma"].is_null());
  EXPECT_TRUE(j["layers"][0]["balance_bias"][0].is_null());
  EXPECT_EQ(j["layers"][0]["balance_bias"][1].get<double>(), 1.5);
  EXPECT_TRUE(j["layers"][0]["seconds"]["apply"].is_null());
  EXPECT_TRUE(j["layers"][0]["activation_rate"]["quantiles"][0]["value"].is_null());
  EXPECT_THAT(Lower(text), Not(HasSubstr("nan")));
  EXPECT_THAT(Lower(text), Not(HasSubstr("inf")));
}

TEST(CarveReportJsonTest, AwkwardStringsAndNoLayers) {
  CarveReport r;
  r.model_dir = "a<b&\"c\"\\\n\ttab";
  r.out_dir = std::string("bad\xff\xfeutf8");  // paths are bytes: must not throw
  const Json j = Json::parse(CarveReportJson(r));
  EXPECT_EQ(j["model_dir"], r.model_dir);
  EXPECT_THAT(j["out_dir"].get<std::string>(), StartsWith("bad"));
  EXPECT_TRUE(j["layers"].is_array());
  EXPECT_TRUE(j["layers"].empty());
  EXPECT_EQ(j.size(), 25u);  // every field, even when zero
}

// ---------- CarveReportHtml ----------

TEST(CarveReportHtmlTest, SelfContainedPageWithTwoChartsPerLayer) {
  const CarveReport r = SampleReport();
  const std::string html = CarveReportHtml(r);
  EXPECT_THAT(html, StartsWith("<!DOCTYPE html>\n"));
  EXPECT_THAT(html, HasSubstr("</html>"));
  EXPECT_THAT(html, HasSubstr("<meta charset=\"utf-8\">"));
  EXPECT_THAT(html, HasSubstr("<style>"));
  EXPECT_THAT(Lower(html), Not(HasSubstr("<script")));
  EXPECT_THAT(html, Not(HasSubstr("http")));  // no external resources (not even an SVG xmlns)
  EXPECT_THAT(html, Not(HasSubstr("@import")));
  EXPECT_EQ(CountOf(html, "<svg"), 2 * r.layers.size());
  EXPECT_EQ(CountOf(html, "</svg>"), 2 * r.layers.size());
  for (const std::string& svg : Svgs(html)) ExpectSaneSvg(svg);

  // Header facts.
  EXPECT_THAT(html, HasSubstr("/models/llama-7b-S2A2E16"));
  EXPECT_THAT(html, HasSubstr("16 experts = 2 shared + 14 routed"));
  EXPECT_THAT(html, HasSubstr("<b>16,384</b> tokens"));
  EXPECT_THAT(html, HasSubstr("<b>25.0%</b>"));
  EXPECT_THAT(html, HasSubstr("42.5 s</b> on 16 threads"));
  // Layer table: compact widths, cost, imbalance (layer 0: max 30 / mean 20; layer 1: even).
  EXPECT_THAT(html, HasSubstr("<td>1 \u00d7 11, 1 \u00d7 10</td>"));
  EXPECT_THAT(html, HasSubstr("<td>1 \u00d7 11, 3 \u00d7 10</td>"));
  EXPECT_THAT(html, HasSubstr("<td>12,345</td>"));
  EXPECT_THAT(html, HasSubstr(">1.50</td>"));
  EXPECT_THAT(html, HasSubstr(">1.00</td>"));
  EXPECT_THAT(html, HasSubstr("<td>2.50</td>"));              // assignment seconds
  EXPECT_THAT(html, HasSubstr("<td class=\"l\">5.25<span"));  // layer total, then its bar
  // Charts: labelled axes, a μ bin range tooltip, the mean line, per-layer anchors.
  EXPECT_THAT(html, HasSubstr("activation rate \u03bc"));
  EXPECT_THAT(html, HasSubstr("<title>\u03bc in [0.1, 0.125): 1 neurons</title>"));
  EXPECT_THAT(html, HasSubstr("<title>\u03bc in [0.475, 0.5]: 1 neurons</title>"));
  EXPECT_THAT(html, HasSubstr(">mean 20</text>"));
  EXPECT_THAT(html, HasSubstr(">median 0.2</text>"));
  EXPECT_THAT(html, HasSubstr("expert 1: 30 tokens (1.50\u00d7 mean), width 10, seed neuron 101"));
  EXPECT_THAT(html, HasSubstr("<a href=\"#layer-1\">1</a>"));
  EXPECT_THAT(html, HasSubstr("<section id=\"layer-1\">"));
}

TEST(CarveReportHtmlTest, EscapesReportText) {
  CarveReport r = SampleReport();
  r.model_dir = "a<b&\"c\"";
  r.config_name = "<i>S2</i>";
  r.calib_file = "x'y>z";
  r.score = "<b>";
  const std::string html = CarveReportHtml(r);
  EXPECT_THAT(html, HasSubstr("a&lt;b&amp;&quot;c&quot;"));
  EXPECT_THAT(html, Not(HasSubstr("a<b&\"c\"")));
  EXPECT_THAT(html, HasSubstr("&lt;i&gt;S2&lt;/i&gt;"));
  EXPECT_THAT(html, Not(HasSubstr("<i>S2")));
  EXPECT_THAT(html, HasSubstr("x&#39;y&gt;z"));
  EXPECT_THAT(html, HasSubstr("score &lt;b&gt;"));
}

TEST(CarveReportHtmlTest, NoLayers) {
  CarveReport r = SampleReport();
  r.layers.clear();
  const std::string html = CarveReportHtml(r);
  EXPECT_THAT(html, StartsWith("<!DOCTYPE html>"));
  EXPECT_THAT(html, HasSubstr("</html>"));
  EXPECT_EQ(CountOf(html, "<svg"), 0u);
  EXPECT_THAT(html, HasSubstr("No layers were carved."));

  // An all-default report (empty strings, zeros) renders too.
  const std::string empty = CarveReportHtml(CarveReport{});
  EXPECT_THAT(empty, StartsWith("<!DOCTYPE html>"));
  EXPECT_THAT(Lower(empty), Not(HasSubstr("nan")));
}

TEST(CarveReportHtmlTest, ZeroTokensAndEmptyLayers) {
  CarveReport r = SampleReport();
  r.calib_tokens = 0;
  r.layers[0].tokens_per_expert = {0, 0, 0};
  r.layers[1] = LayerReport{.layer = 1};  // no experts, no histogram, no times at all
  r.layers.push_back(SampleLayer(2, {0, 0}));
  r.layers.back().activation = SummarizeActivationRates(std::vector<double>(10, 0.0));
  const std::string html = CarveReportHtml(r);
  const std::vector<std::string> svgs = Svgs(html);
  ASSERT_EQ(svgs.size(), 6u);
  for (const std::string& svg : svgs) ExpectSaneSvg(svg);
  EXPECT_THAT(svgs[1], HasSubstr("no calibration tokens routed"));
  EXPECT_THAT(svgs[1], Not(HasSubstr(">mean ")));  // no mean line without tokens
  EXPECT_THAT(svgs[2], HasSubstr("no neurons"));
  EXPECT_THAT(svgs[3], HasSubstr("no routed experts"));
  // Load imbalance 0 (not NaN) for zero tokens; nothing prints nan/inf anywhere on the page.
  EXPECT_THAT(html, HasSubstr(">0.00</td>"));
  EXPECT_THAT(Lower(html), Not(HasSubstr("nan")));
  EXPECT_THAT(Lower(html), Not(HasSubstr("inf")));
}

TEST(CarveReportHtmlTest, NonFiniteTimesShowADash) {
  CarveReport r = SampleReport();
  r.total_s = kNaN;
  r.activation_ratio = kInf;
  r.layers[0].apply_s = kNaN;
  r.layers[0].activation.quantiles[3] = kNaN;
  r.layers[0].activation.hist_max = kNaN;
  const std::string html = CarveReportHtml(r);
  for (const std::string& svg : Svgs(html)) ExpectSaneSvg(svg);
  EXPECT_THAT(Lower(html), Not(HasSubstr("nan")));
  EXPECT_THAT(Lower(html), Not(HasSubstr("inf")));
}

TEST(CarveReportHtmlTest, ManyExpertsStayInsideTheChart) {
  CarveReport r = SampleReport();
  std::vector<int64_t> tokens(64);
  for (int j = 0; j < 64; ++j) tokens[j] = 1000 + 37 * j;
  r.layers = {SampleLayer(0, tokens)};
  r.layers[0].expert_widths.assign(64, 172);
  const std::string html = CarveReportHtml(r);
  EXPECT_THAT(html, HasSubstr("<td>64 \u00d7 172</td>"));
  const std::vector<std::string> svgs = Svgs(html);
  ASSERT_EQ(svgs.size(), 2u);
  ExpectSaneSvg(svgs[1]);
  EXPECT_EQ(CountOf(svgs[1], "class=\"bar-tok\""), 64u);
  // The bars tile the plot from x = 62 to 454 without leaving it.
  const std::regex bar("class=\"bar-tok\" x=\"([^\"]*)\" y=\"[^\"]*\" width=\"([^\"]*)\"");
  double left = 1e9, right = 0;
  for (auto it = std::sregex_iterator(svgs[1].begin(), svgs[1].end(), bar);
       it != std::sregex_iterator(); ++it) {
    const double x = std::stod((*it)[1]), w = std::stod((*it)[2]);
    EXPECT_GT(w, 0);
    left = std::min(left, x);
    right = std::max(right, x + w);
  }
  EXPECT_GE(left, 62);
  EXPECT_LE(right, 454.05);
  // At most 16 expert labels under the axis, so they never overlap.
  EXPECT_LE(CountOf(svgs[1], "text-anchor=\"middle\">"), 16u + 2u);  // + axis labels
}

TEST(CarveReportHtmlTest, HugeCountsUseShortLabels) {
  CarveReport r = SampleReport();
  const int64_t big = int64_t{4'000'000'000'000'000'000};
  r.layers = {SampleLayer(0, {big, big / 2, 1, 0})};
  r.layers[0].activation.histogram[3] = big;
  r.layers[0].assignment_cost = std::numeric_limits<int64_t>::max();
  r.layers[0].shared_width = std::numeric_limits<int64_t>::min();
  const std::string html = CarveReportHtml(r);
  for (const std::string& svg : Svgs(html)) {
    ExpectSaneSvg(svg);
    EXPECT_THAT(svg, Not(HasSubstr("e+")));  // no scientific notation on an axis
  }
  EXPECT_THAT(html, HasSubstr("9,223,372,036,854,775,807"));
  EXPECT_THAT(html, HasSubstr("-9,223,372,036,854,775,808"));
}

}  // namespace
}  // namespace cmoe::engine::carve
