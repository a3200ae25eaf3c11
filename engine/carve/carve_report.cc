#include "engine/carve/carve_report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine::carve {
namespace {

// ordered_json keeps the fields in struct order, so the file reads like the header.
using Json = nlohmann::ordered_json;

constexpr int kNumQuantiles = static_cast<int>(std::size(kActivationQuantiles));

// ---------------------------------------------------------------------------------------------
// Activation summary.

// Lower edge of histogram bin `k` of `bins` over [0, hist_max]. Every bin test goes through this
// one formula, so a value exactly on an edge lands in the same bin the labels say it does.
double BinEdge(double hist_max, int64_t k, int64_t bins) {
  return hist_max * static_cast<double>(k) / static_cast<double>(bins);
}

// Bin of `v` in [0, hist_max] (the last bin closed); out-of-range or NaN values are clamped so
// the counts always sum to the number of rates.
int64_t BinOf(double v, double hist_max, int64_t bins) {
  const double f = v / hist_max * static_cast<double>(bins);
  if (!(f > 0)) return 0;  // also NaN
  if (f >= static_cast<double>(bins)) return bins - 1;
  int64_t k = static_cast<int64_t>(f);
  // The division can round across an edge; fix up against the edges themselves (as numpy does).
  if (k > 0 && v < BinEdge(hist_max, k, bins)) --k;
  if (k + 1 < bins && v >= BinEdge(hist_max, k + 1, bins)) ++k;
  return k;
}

// ---------------------------------------------------------------------------------------------
// Text formatting for the HTML page.

std::string Escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// An em dash for "nothing to show" (empty text, NaN, inf): the page never prints "nan".
constexpr char kDash[] = "\u2014";

std::string TextOrDash(const std::string& s) { return s.empty() ? kDash : Escape(s); }

// `v` with `decimals` fixed decimals, or a dash when not finite.
std::string Fixed(double v, int decimals) {
  if (!std::isfinite(v)) return kDash;
  return absl::StrFormat("%.*f", decimals, v);
}

// 1234567 -> "1,234,567".
std::string Count(int64_t v) {
  const std::string digits = absl::StrCat(v < 0 ? -(v + 1) + uint64_t{1} : uint64_t(v));
  std::string out = v < 0 ? "-" : "";
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

// Seconds with about three significant digits (0.0123, 1.23, 12.3, 123).
std::string Seconds(double s) {
  if (!std::isfinite(s)) return kDash;
  const double a = std::abs(s);
  if (a >= 100) return absl::StrFormat("%.0f", s);
  if (a >= 10) return absl::StrFormat("%.1f", s);
  if (a >= 0.1 || a == 0) return absl::StrFormat("%.2f", s);
  return absl::StrFormat("%.3f", s);
}

// Short axis labels for counts: 9500, 12.5k, 3M, 1.2G, ..., 9.22E (int64 ends there), and a few
// digits for fractions (a mean of 2.5 tokens).
std::string ShortCount(double v) {
  // From 10k on, so 4-digit counts stay exact.
  static constexpr struct {
    double from, unit;
    const char* suffix;
  } kUnits[] = {{1e18, 1e18, "E"}, {1e15, 1e15, "P"}, {1e12, 1e12, "T"},
                {1e9, 1e9, "G"},   {1e6, 1e6, "M"},   {1e4, 1e3, "k"}};
  const double a = std::abs(v);
  for (const auto& u : kUnits) {
    // %.4g of a value below 1000 never switches to an exponent (999.99 -> "1000", not "1e+03").
    if (a >= u.from) return absl::StrFormat("%.4g%s", v / u.unit, u.suffix);
  }
  if (a < 10 && v != std::floor(v)) return absl::StrFormat("%.2g", v);
  return absl::StrFormat("%.0f", v);
}

// An SVG coordinate; callers only pass finite values, the guard keeps a bug from writing "nan".
std::string Coord(double v) { return absl::StrFormat("%.1f", std::isfinite(v) ? v : 0.0); }

// "2 × 11, 14 × 10": run-length encoded widths (routed widths differ by at most one, in runs).
std::string CompactWidths(const std::vector<int64_t>& widths) {
  if (widths.empty()) return kDash;
  std::string out;
  for (size_t i = 0; i < widths.size();) {
    size_t j = i;
    while (j < widths.size() && widths[j] == widths[i]) ++j;
    if (!out.empty()) out += ", ";
    absl::StrAppend(&out, j - i, " \u00d7 ", Count(widths[i]));
    i = j;
  }
  return out;
}

// Max over mean of the tokens routed per expert (1 is perfectly balanced); 0 with no tokens.
double LoadImbalance(const std::vector<int64_t>& tokens) {
  if (tokens.empty()) return 0;
  double sum = 0, max = 0;
  for (int64_t t : tokens) {
    sum += static_cast<double>(t);
    max = std::max(max, static_cast<double>(t));
  }
  if (!(sum > 0)) return 0;
  return max / (sum / static_cast<double>(tokens.size()));
}

double MeanTokens(const std::vector<int64_t>& tokens) {
  if (tokens.empty()) return 0;
  double sum = 0;
  for (int64_t t : tokens) sum += static_cast<double>(t);
  return sum / static_cast<double>(tokens.size());
}

// "p50" for 0.5, "p99" for 0.99.
std::string QuantileName(double q) { return absl::StrFormat("p%g", q * 100); }

// ---------------------------------------------------------------------------------------------
// SVG bar charts.

// A 1-2-5 step giving about `target` intervals up to `max`; integer steps for counts.
double NiceStep(double max, int target) {
  const double raw = max / target;
  if (!(raw > 0) || !std::isfinite(raw)) return 1;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / p;
  const double m = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return std::max(1.0, m * p);
}

struct Bar {
  double value = 0;
  std::string tooltip;  // already escaped
};

struct XTick {
  double pos = 0;     // in bar units: 0 = left edge of bar 0, n = right edge of the last bar
  std::string label;  // already escaped
};

struct VLine {
  double pos = 0;  // in bar units
  std::string label;
};

struct BarChart {
  std::string aria_label;  // already escaped
  std::string x_label, y_label;
  std::string bar_class;
  std::vector<Bar> bars;
  std::vector<XTick> x_ticks;
  bool mean_line = false;  // dashed horizontal line at the mean bar value
  std::vector<VLine> v_lines;
  std::string empty_message;  // shown over the plot when every value is 0
};

// Geometry: a fixed viewBox; CSS scales the SVG to its column.
constexpr double kWidth = 480, kHeight = 270;
constexpr double kLeft = 62, kRight = 26, kTop = 18, kBottom = 46;
constexpr double kPlotW = kWidth - kLeft - kRight, kPlotH = kHeight - kTop - kBottom;

std::string RenderBarChart(const BarChart& c) {
  const int64_t n = static_cast<int64_t>(c.bars.size());
  // Values are clamped to finite non-negatives so no coordinate can become NaN or leave the plot.
  std::vector<double> values;
  double max = 0, sum = 0;
  for (const Bar& b : c.bars) {
    const double v = std::isfinite(b.value) && b.value > 0 ? b.value : 0;
    values.push_back(v);
    max = std::max(max, v);
    sum += v;
  }
  const double step = NiceStep(max, 5);
  const double top = std::max(step, std::ceil(max / step) * step);
  const double baseline = kTop + kPlotH;
  auto y_of = [&](double v) { return baseline - std::min(v, top) / top * kPlotH; };
  const double slot = n > 0 ? kPlotW / static_cast<double>(n) : kPlotW;
  auto x_of = [&](double pos) {
    return kLeft + std::clamp(pos, 0.0, static_cast<double>(n)) * slot;
  };

  std::string s =
      absl::StrFormat("<svg viewBox=\"0 0 %.0f %.0f\" role=\"img\" aria-label=\"%s\">\n", kWidth,
                      kHeight, c.aria_label);
  // Horizontal grid lines and y ticks.
  const int64_t num_ticks = static_cast<int64_t>(std::llround(top / step));
  for (int64_t i = 0; i <= num_ticks; ++i) {
    const double v = static_cast<double>(i) * step;
    const std::string y = Coord(y_of(v));
    absl::StrAppend(&s, "<line class=\"grid\" x1=\"", Coord(kLeft), "\" x2=\"",
                    Coord(kLeft + kPlotW), "\" y1=\"", y, "\" y2=\"", y, "\"/>");
    absl::StrAppend(&s, "<text x=\"", Coord(kLeft - 6), "\" y=\"", y,
                    "\" dy=\"0.32em\" text-anchor=\"end\">", ShortCount(v), "</text>\n");
  }
  // Bars: each column is a group with a full-height transparent target, so hovering anywhere
  // above a (possibly tiny) bar shows its tooltip.
  const double gap = slot > 4 ? std::max(1.0, slot * 0.15) : 0;
  for (int64_t i = 0; i < n; ++i) {
    const double x = kLeft + static_cast<double>(i) * slot;
    const double y = y_of(values[i]);
    absl::StrAppend(&s, "<g class=\"col\"><title>", c.bars[i].tooltip,
                    "</title><rect class=\"hit\" x=\"", Coord(x), "\" y=\"", Coord(kTop),
                    "\" width=\"", Coord(slot), "\" height=\"", Coord(kPlotH), "\"/><rect class=\"",
                    c.bar_class, "\" x=\"", Coord(x + gap / 2), "\" y=\"", Coord(y), "\" width=\"",
                    Coord(std::max(0.0, slot - gap)), "\" height=\"", Coord(baseline - y),
                    "\"/></g>\n");
  }
  // Axes.
  absl::StrAppend(&s, "<line class=\"axis\" x1=\"", Coord(kLeft), "\" x2=\"", Coord(kLeft + kPlotW),
                  "\" y1=\"", Coord(baseline), "\" y2=\"", Coord(baseline),
                  "\"/><line class=\"axis\" x1=\"", Coord(kLeft), "\" x2=\"", Coord(kLeft),
                  "\" y1=\"", Coord(kTop), "\" y2=\"", Coord(baseline), "\"/>\n");
  for (const XTick& t : c.x_ticks) {
    const std::string x = Coord(x_of(t.pos));
    absl::StrAppend(&s, "<line class=\"axis\" x1=\"", x, "\" x2=\"", x, "\" y1=\"", Coord(baseline),
                    "\" y2=\"", Coord(baseline + 4), "\"/><text x=\"", x, "\" y=\"",
                    Coord(baseline + 15), "\" text-anchor=\"middle\">", t.label, "</text>\n");
  }
  // Reference lines (median μ, mean tokens), drawn over the bars.
  for (const VLine& v : c.v_lines) {
    if (!std::isfinite(v.pos)) continue;
    const std::string x = Coord(x_of(v.pos));
    const bool right_half = v.pos > static_cast<double>(n) / 2;
    absl::StrAppend(&s, "<line class=\"ref\" x1=\"", x, "\" x2=\"", x, "\" y1=\"", Coord(kTop),
                    "\" y2=\"", Coord(baseline), "\"/><text class=\"ref-label\" x=\"",
                    Coord(x_of(v.pos) + (right_half ? -4 : 4)), "\" y=\"", Coord(kTop + 10),
                    "\" text-anchor=\"", right_half ? "end" : "start", "\">", v.label, "</text>\n");
  }
  if (c.mean_line && n > 0 && sum > 0) {
    const double mean = sum / static_cast<double>(n);
    const std::string y = Coord(y_of(mean));
    absl::StrAppend(&s, "<line class=\"ref\" x1=\"", Coord(kLeft), "\" x2=\"",
                    Coord(kLeft + kPlotW), "\" y1=\"", y, "\" y2=\"", y,
                    "\"/><text class=\"ref-label\" x=\"", Coord(kLeft + kPlotW - 2), "\" y=\"",
                    Coord(y_of(mean) - 4), "\" text-anchor=\"end\">mean ", ShortCount(mean),
                    "</text>\n");
  }
  if (sum == 0 && !c.empty_message.empty()) {
    absl::StrAppend(&s, "<text class=\"empty\" x=\"", Coord(kLeft + kPlotW / 2), "\" y=\"",
                    Coord(kTop + kPlotH / 2), "\" text-anchor=\"middle\">", c.empty_message,
                    "</text>\n");
  }
  // Axis labels.
  absl::StrAppend(&s, "<text class=\"label\" x=\"", Coord(kLeft + kPlotW / 2), "\" y=\"",
                  Coord(kHeight - 6), "\" text-anchor=\"middle\">", c.x_label, "</text>");
  absl::StrAppend(&s, "<text class=\"label\" transform=\"translate(14 ", Coord(kTop + kPlotH / 2),
                  ") rotate(-90)\" text-anchor=\"middle\">", c.y_label, "</text>\n</svg>\n");
  return s;
}

std::string ActivationChart(const LayerReport& layer) {
  const ActivationRateSummary& a = layer.activation;
  const int64_t bins = static_cast<int64_t>(a.histogram.size());
  const double hist_max = std::isfinite(a.hist_max) && a.hist_max > 0 ? a.hist_max : 1.0;
  BarChart c{.aria_label = absl::StrCat("Layer ", layer.layer, " activation-rate histogram"),
             .x_label = "activation rate \u03bc (fraction of tokens marking the neuron)",
             .y_label = "neurons",
             .bar_class = "bar-mu",
             .empty_message = "no neurons"};
  for (int64_t k = 0; k < bins; ++k) {
    const double lo = BinEdge(hist_max, k, bins), hi = BinEdge(hist_max, k + 1, bins);
    c.bars.push_back(
        {.value = static_cast<double>(a.histogram[k]),
         .tooltip = absl::StrFormat("\u03bc in [%.4g, %.4g%s: %s neurons", lo, hi,
                                    k + 1 == bins ? "]" : ")", Count(a.histogram[k]))});
  }
  // Edge labels every quarter of the range keep the axis readable; the tooltips give each bin.
  const int64_t stride = std::max<int64_t>(1, (bins + 3) / 4);
  for (int64_t k = 0; bins > 0 && k <= bins; k += stride) {
    c.x_ticks.push_back({.pos = static_cast<double>(k),
                         .label = absl::StrFormat("%.2g", BinEdge(hist_max, k, bins))});
  }
  if (bins > 0 && bins % stride != 0) {
    c.x_ticks.push_back(
        {.pos = static_cast<double>(bins), .label = absl::StrFormat("%.2g", hist_max)});
  }
  // The median, if the summary has it at the expected position.
  for (int i = 0; i < kNumQuantiles && i < static_cast<int>(a.quantiles.size()); ++i) {
    if (kActivationQuantiles[i] == 0.5 && std::isfinite(a.quantiles[i]) && bins > 0) {
      c.v_lines.push_back({.pos = a.quantiles[i] / hist_max * static_cast<double>(bins),
                           .label = absl::StrFormat("median %.3g", a.quantiles[i])});
    }
  }
  return RenderBarChart(c);
}

std::string TokensChart(const LayerReport& layer) {
  const std::vector<int64_t>& tokens = layer.tokens_per_expert;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const double mean = MeanTokens(tokens);
  BarChart c{.aria_label = absl::StrCat("Layer ", layer.layer, " calibration tokens per expert"),
             .x_label = "routed expert",
             .y_label = "calibration tokens",
             .bar_class = "bar-tok",
             .mean_line = true,
             .empty_message = n == 0 ? "no routed experts" : "no calibration tokens routed"};
  for (int64_t j = 0; j < n; ++j) {
    std::string tip = absl::StrCat("expert ", j, ": ", Count(tokens[j]), " tokens");
    if (mean > 0) absl::StrAppend(&tip, absl::StrFormat(" (%.2f\u00d7 mean)", tokens[j] / mean));
    if (j < static_cast<int64_t>(layer.expert_widths.size())) {
      absl::StrAppend(&tip, ", width ", Count(layer.expert_widths[j]));
    }
    if (j < static_cast<int64_t>(layer.seeds.size())) {
      absl::StrAppend(&tip, ", seed neuron ", layer.seeds[j]);
    }
    if (j < static_cast<int64_t>(layer.representatives.size())) {
      absl::StrAppend(&tip, ", representative ", layer.representatives[j]);
    }
    if (j < static_cast<int64_t>(layer.balance_bias.size()) &&
        std::isfinite(layer.balance_bias[j]) && layer.balance_bias[j] != 0) {
      absl::StrAppend(&tip, absl::StrFormat(", bias %.4g", layer.balance_bias[j]));
    }
    c.bars.push_back({.value = static_cast<double>(tokens[j]), .tooltip = tip});
  }
  // At most ~16 expert labels, under the bar centres.
  const int64_t stride = std::max<int64_t>(1, (n + 15) / 16);
  for (int64_t j = 0; j < n; j += stride) {
    c.x_ticks.push_back({.pos = static_cast<double>(j) + 0.5, .label = absl::StrCat(j)});
  }
  return RenderBarChart(c);
}

// ---------------------------------------------------------------------------------------------
// The page.

struct Phase {
  const char* name;
  const char* column;  // short table header, so the table fits a laptop screen
  double LayerReport::*seconds;
  const char* color;
};
constexpr Phase kPhases[] = {
    {"forward", "forward", &LayerReport::forward_s, "#76b7b2"},
    {"scores", "scores", &LayerReport::scores_s, "#4e79a7"},
    {"markers", "markers", &LayerReport::markers_s, "#59a14f"},
    {"assignment", "assign", &LayerReport::assignment_s, "#e15759"},
    {"centroid", "centroid", &LayerReport::centroid_s, "#edc948"},
    {"apply", "apply", &LayerReport::apply_s, "#b07aa1"},
};

double LayerSeconds(const LayerReport& l) {
  double total = 0;
  for (const Phase& p : kPhases) {
    if (std::isfinite(l.*p.seconds)) total += l.*p.seconds;
  }
  return total;
}

constexpr char kCss[] = R"css(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;
  color:#222;background:#fff;margin:24px auto;max-width:1120px;padding:0 16px}
h1{font-size:22px;margin:0 0 12px}
h2{font-size:18px;margin:32px 0 10px;padding-bottom:4px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:28px 0 2px}
a{color:#2b5d9b}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 7px;vertical-align:top}
table.kv th{text-align:left;color:#555;font-weight:600;white-space:nowrap}
table.kv td{overflow-wrap:anywhere}
table.layers{margin-bottom:4px}
table.layers th{text-align:right;vertical-align:bottom;border-bottom:2px solid #bbb;font-weight:600;
  white-space:nowrap}
table.layers th.group{text-align:center;border-bottom:1px solid #ddd;color:#555}
.scroll{overflow-x:auto}
table.layers td{text-align:right;border-bottom:1px solid #eee;white-space:nowrap}
table.layers .l{text-align:left}
table.layers tr.total td{border-top:2px solid #bbb;border-bottom:none;font-weight:600}
table.layers tbody tr:hover{background:#f6f8fb}
.warn{color:#b3261e;font-weight:600}
.muted,.note{color:#666}
.note{font-size:12px;margin:2px 0 0}
.legend{font-size:12px;color:#555;margin:4px 0 8px}
.legend i{display:inline-block;width:10px;height:10px;margin:0 4px 0 12px;vertical-align:-1px}
.stack{display:inline-block;width:72px;height:9px;margin-left:8px;background:#f0f0f0;
  vertical-align:middle}
.stack i{display:block;float:left;height:100%}
.stats{color:#444;margin:0 0 8px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
figure{margin:0;flex:1 1 420px;max-width:560px}
figcaption{font-weight:600;font-size:13px}
svg{display:block;width:100%;height:auto}
svg text{font-size:11px;fill:#444;font-family:system-ui,sans-serif}
svg text.label{fill:#222;font-size:12px}
svg text.empty{fill:#999;font-size:13px}
svg text.ref-label{fill:#222;paint-order:stroke;stroke:#fff;stroke-width:3px}
.grid{stroke:#ebebeb}
.axis{stroke:#888}
.bar-mu{fill:#4e79a7}
.bar-tok{fill:#f28e2b}
.hit{fill:transparent}
.col:hover .hit{fill:#00000010}
.col:hover .bar-mu,.col:hover .bar-tok{opacity:.8}
.ref{stroke:#222;stroke-width:1.3;stroke-dasharray:5 4}
)css";

std::string HeaderTable(const CarveReport& r) {
  std::string s = "<table class=\"kv\">\n";
  auto row = [&](const std::string& key, const std::string& value) {
    absl::StrAppend(&s, "<tr><th>", key, "</th><td>", value, "</td></tr>\n");
  };
  row("Model", TextOrDash(r.model_dir));
  row("Carved checkpoint", TextOrDash(r.out_dir));
  const int64_t routed = int64_t{r.num_experts} - r.num_shared;
  row("Configuration", absl::StrCat("<b>", TextOrDash(r.config_name), "</b>: ", r.num_experts,
                                    " experts = ", r.num_shared, " shared + ", routed, " routed; ",
                                    r.num_activated, " routed active per token"));
  row("Carving",
      absl::StrCat("K<sub>a</sub> = ", r.k_act, " markers per token; score ", TextOrDash(r.score),
                   "; router ", TextOrDash(r.router), "; ", r.cluster_iters, " cluster iteration",
                   r.cluster_iters == 1 ? "" : "s", "; balance bias ",
                   r.balance_bias_gamma == 0
                       ? std::string("off")
                       : absl::StrCat("\u03b3 = ", absl::StrFormat("%.4g", r.balance_bias_gamma))));
  row("Calibration", absl::StrCat(Count(r.calib_seqs), " sequences \u00d7 ", Count(r.calib_len),
                                  " tokens = <b>", Count(r.calib_tokens), "</b> tokens from ",
                                  TextOrDash(r.calib_file), " (bytes ", Count(r.calib_range_begin),
                                  "\u2013", Count(r.calib_range_end), "), seed ", r.seed));
  row("Model shape",
      absl::StrCat("hidden size ", Count(r.hidden_size), "; FFN width d<sub>h</sub> ",
                   Count(r.ffn_width), "; ", r.num_layers, " layers"));
  row("Activation ratio",
      std::isfinite(r.activation_ratio)
          ? absl::StrFormat("<b>%.1f%%</b> of the FFN neurons run per token (%.4f)",
                            r.activation_ratio * 100, r.activation_ratio)
          : std::string(kDash));
  std::string total = absl::StrCat("<b>", Seconds(r.total_s), " s</b>");
  if (std::isfinite(r.total_s) && r.total_s >= 120) {
    absl::StrAppend(&total, absl::StrFormat(" (%.1f min)", r.total_s / 60));
  }
  row("Total time", absl::StrCat(total, " on ", r.threads, " thread", r.threads == 1 ? "" : "s"));
  s += "</table>\n";
  return s;
}

std::string LayerTable(const CarveReport& r) {
  if (r.layers.empty()) return "<p class=\"muted\">No layers were carved.</p>\n";
  double max_total = 0;
  for (const LayerReport& l : r.layers) max_total = std::max(max_total, LayerSeconds(l));

  std::string s = "<div class=\"legend\">Phase time:";
  for (const Phase& p : kPhases) {
    absl::StrAppend(&s, "<i style=\"background:", p.color, "\"></i>", p.name);
  }
  s += "</div>\n<div class=\"scroll\"><table class=\"layers\">\n<thead><tr>"
       "<th rowspan=\"2\" class=\"l\">Layer</th><th rowspan=\"2\">Shared<br>width</th>"
       "<th rowspan=\"2\">Routed expert<br>widths</th><th rowspan=\"2\">Assignment<br>cost</th>"
       "<th rowspan=\"2\">Cluster<br>iters</th>"
       "<th rowspan=\"2\" title=\"max / mean calibration tokens per routed expert (1 = "
       "balanced)\">Load<br>max/mean</th><th colspan=\"7\" class=\"group\">Seconds per phase</th>"
       "</tr>\n<tr>";
  for (const Phase& p : kPhases) {
    absl::StrAppend(&s, "<th title=\"", p.name, "\">", p.column, "</th>");
  }
  s += "<th class=\"l\">total</th></tr></thead>\n<tbody>\n";

  std::vector<double> phase_sums(std::size(kPhases), 0);
  for (const LayerReport& l : r.layers) {
    const double imbalance = LoadImbalance(l.tokens_per_expert);
    absl::StrAppend(&s, "<tr><td class=\"l\"><a href=\"#layer-", l.layer, "\">", l.layer,
                    "</a></td><td>", Count(l.shared_width), "</td><td>",
                    CompactWidths(l.expert_widths), "</td><td>", Count(l.assignment_cost),
                    "</td><td>", l.cluster_iters_run, "</td><td",
                    imbalance > 2 ? " class=\"warn\"" : "", ">", Fixed(imbalance, 2), "</td>");
    for (size_t i = 0; i < std::size(kPhases); ++i) {
      const double v = l.*kPhases[i].seconds;
      if (std::isfinite(v)) phase_sums[i] += v;
      absl::StrAppend(&s, "<td>", Seconds(v), "</td>");
    }
    const double total = LayerSeconds(l);
    absl::StrAppend(&s, "<td class=\"l\">", Seconds(total));
    if (max_total > 0) {
      // A stacked bar on a common scale, so slow layers and dominant phases stand out.
      s += "<span class=\"stack\">";
      for (const Phase& p : kPhases) {
        const double v = l.*p.seconds;
        if (!std::isfinite(v) || v <= 0) continue;
        absl::StrAppend(&s, "<i style=\"width:", absl::StrFormat("%.2f", v / max_total * 100),
                        "%;background:", p.color, "\" title=\"", p.name, " ", Seconds(v),
                        " s\"></i>");
      }
      s += "</span>";
    }
    s += "</td></tr>\n";
  }
  s += "</tbody>\n";
  if (r.layers.size() > 1) {
    s += "<tfoot><tr class=\"total\"><td class=\"l\">all</td><td></td><td></td><td></td><td></td>"
         "<td></td>";
    double all = 0;
    for (double v : phase_sums) {
      absl::StrAppend(&s, "<td>", Seconds(v), "</td>");
      all += v;
    }
    absl::StrAppend(&s, "<td class=\"l\">", Seconds(all), "</td></tr></tfoot>\n");
  }
  s += "</table></div>\n";
  return s;
}

std::string LayerSection(const LayerReport& l) {
  std::string s = absl::StrCat(
      "<section id=\"layer-", l.layer, "\">\n<h3>Layer ", l.layer,
      "</h3>\n<p class=\"stats\">shared ", Count(l.shared_width), " \u00b7 routed ",
      CompactWidths(l.expert_widths), " \u00b7 assignment cost ", Count(l.assignment_cost),
      " \u00b7 ", l.cluster_iters_run, " cluster iteration", l.cluster_iters_run == 1 ? "" : "s",
      " \u00b7 load max/mean ", Fixed(LoadImbalance(l.tokens_per_expert), 2), "</p>\n");
  s += "<div class=\"charts\">\n<figure><figcaption>Activation rates \u03bc (";
  int64_t neurons = 0;
  for (int64_t c : l.activation.histogram) neurons += c;
  absl::StrAppend(&s, Count(neurons), " neurons)</figcaption>\n", ActivationChart(l));
  s += "<p class=\"note\">";
  for (size_t i = 0; i < l.activation.quantiles.size(); ++i) {
    if (i > 0) s += " \u00b7 ";
    const std::string name =
        i < static_cast<size_t>(kNumQuantiles) ? QuantileName(kActivationQuantiles[i]) : "?";
    absl::StrAppend(&s, name, " ", Fixed(l.activation.quantiles[i], 4));
  }
  s += "</p></figure>\n<figure><figcaption>Calibration tokens per routed expert</figcaption>\n";
  absl::StrAppend(&s, TokensChart(l));
  int64_t sum = 0;
  for (int64_t t : l.tokens_per_expert) sum += t;
  absl::StrAppend(
      &s, "<p class=\"note\">", Count(sum), " routings over ", l.tokens_per_expert.size(),
      " experts; mean ", Fixed(MeanTokens(l.tokens_per_expert), 1), "; max/mean ",
      Fixed(LoadImbalance(l.tokens_per_expert), 2), "</p></figure>\n</div>\n</section>\n");
  return s;
}

}  // namespace

ActivationRateSummary SummarizeActivationRates(std::span<const double> rates) {
  ActivationRateSummary out;
  out.histogram.assign(kActivationHistogramBins, 0);
  if (rates.empty()) {
    out.quantiles.assign(kNumQuantiles, 0.0);
    out.hist_max = 1;
    return out;
  }
  std::vector<double> sorted(rates.begin(), rates.end());
  // NaN sorts last instead of breaking the strict weak order std::sort needs.
  std::sort(sorted.begin(), sorted.end(),
            [](double a, double b) { return a < b || (std::isnan(b) && !std::isnan(a)); });
  const int64_t n = static_cast<int64_t>(sorted.size());
  for (double q : kActivationQuantiles) {
    // numpy's default ("linear"): position q * (n - 1) between the order statistics.
    const double h = q * static_cast<double>(n - 1);
    const int64_t lo = std::clamp<int64_t>(static_cast<int64_t>(std::floor(h)), 0, n - 1);
    const int64_t hi = std::min(lo + 1, n - 1);
    const double frac = h - static_cast<double>(lo);
    out.quantiles.push_back(frac == 0 ? sorted[lo] : sorted[lo] + frac * (sorted[hi] - sorted[lo]));
  }
  double max = 0;
  for (double v : sorted) {
    if (std::isfinite(v)) max = std::max(max, v);
  }
  out.hist_max = max > 0 ? max : 1.0;
  for (double v : rates) ++out.histogram[BinOf(v, out.hist_max, kActivationHistogramBins)];
  return out;
}

std::string CarveReportJson(const CarveReport& report) {
  Json layers = Json::array();
  for (const LayerReport& l : report.layers) {
    Json quantiles = Json::array();
    for (size_t i = 0; i < l.activation.quantiles.size(); ++i) {
      // A quantile beyond kActivationQuantiles has no level; NaN is written as null.
      const double q = i < static_cast<size_t>(kNumQuantiles) ? kActivationQuantiles[i] : NAN;
      quantiles.push_back({{"q", q}, {"value", l.activation.quantiles[i]}});
    }
    Json layer;
    layer["layer"] = l.layer;
    layer["activation_rate"] = {
        {"quantiles", std::move(quantiles)},
        {"histogram", {{"max", l.activation.hist_max}, {"counts", l.activation.histogram}}}};
    layer["shared_width"] = l.shared_width;
    layer["expert_widths"] = l.expert_widths;
    layer["assignment_cost"] = l.assignment_cost;
    layer["cluster_iters_run"] = l.cluster_iters_run;
    layer["seeds"] = l.seeds;
    layer["representatives"] = l.representatives;
    layer["tokens_per_expert"] = l.tokens_per_expert;
    layer["balance_bias"] = l.balance_bias;
    layer["seconds"] = {{"forward", l.forward_s},   {"scores", l.scores_s},
                        {"markers", l.markers_s},   {"assignment", l.assignment_s},
                        {"centroid", l.centroid_s}, {"apply", l.apply_s}};
    layers.push_back(std::move(layer));
  }
  Json j;
  j["model_dir"] = report.model_dir;
  j["out_dir"] = report.out_dir;
  j["config_name"] = report.config_name;
  j["num_experts"] = report.num_experts;
  j["num_shared"] = report.num_shared;
  j["num_activated"] = report.num_activated;
  j["k_act"] = report.k_act;
  j["score"] = report.score;
  j["router"] = report.router;
  j["cluster_iters"] = report.cluster_iters;
  j["balance_bias_gamma"] = report.balance_bias_gamma;
  j["calib_file"] = report.calib_file;
  j["calib_range_begin"] = report.calib_range_begin;
  j["calib_range_end"] = report.calib_range_end;
  j["calib_seqs"] = report.calib_seqs;
  j["calib_len"] = report.calib_len;
  j["seed"] = report.seed;
  j["calib_tokens"] = report.calib_tokens;
  j["hidden_size"] = report.hidden_size;
  j["ffn_width"] = report.ffn_width;
  j["num_layers"] = report.num_layers;
  j["activation_ratio"] = report.activation_ratio;
  j["total_s"] = report.total_s;
  j["threads"] = report.threads;
  j["layers"] = std::move(layers);
  // nlohmann writes non-finite doubles as null (valid JSON). Paths are bytes, not necessarily
  // UTF-8: replace invalid sequences (U+FFFD) rather than throw, since our code never throws.
  return j.dump(2, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::string CarveReportHtml(const CarveReport& report) {
  const std::string title = absl::StrCat("CMoE carve report: ", TextOrDash(report.config_name),
                                         " \u2014 ", TextOrDash(report.model_dir));
  std::string s = absl::StrCat(
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>",
      title, "</title>\n<style>", kCss, "</style>\n</head>\n<body>\n<h1>CMoE carve report \u2014 ",
      TextOrDash(report.config_name), "</h1>\n");
  absl::StrAppend(&s, HeaderTable(report));
  absl::StrAppend(&s, "<h2>Layers</h2>\n", LayerTable(report));
  if (!report.layers.empty()) {
    absl::StrAppend(&s,
                    "<h2>Per layer</h2>\n<p class=\"muted\">Left: how often each FFN neuron is "
                    "among a token's top-K<sub>a</sub> scores (dashed: median). Right: calibration "
                    "tokens the router sends to each routed expert (dashed: mean; equal bars = "
                    "balanced). Hover a bar for details.</p>\n");
    for (const LayerReport& l : report.layers) absl::StrAppend(&s, LayerSection(l));
  }
  s += "</body>\n</html>\n";
  return s;
}

}  // namespace cmoe::engine::carve
