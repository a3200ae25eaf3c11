// What a carve did, for people: carve_report.json (machine-readable) and carve_report.html (a
// self-contained page of charts: no scripts or styles fetched from anywhere).
//
//   CarveReport report = ...;  // filled by the carving driver (engine/carve/carve_model.h)
//   CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir + "/carve_report.json", CarveReportJson(report)));
//   CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir + "/carve_report.html", CarveReportHtml(report)));
#ifndef CMOE_ENGINE_CARVE_CARVE_REPORT_H_
#define CMOE_ENGINE_CARVE_CARVE_REPORT_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cmoe::engine::carve {

// Summary of the activation rates μ (d_h values in [0, 1]) of one layer.
struct ActivationRateSummary {
  // Quantiles at kActivationQuantiles (linear interpolation between order statistics).
  std::vector<double> quantiles;
  // Histogram over [0, hist_max] in kActivationHistogramBins equal bins (the last bin closed);
  // hist_max is the largest μ (1 if all μ are 0). Counts sum to d_h.
  double hist_max = 0;
  std::vector<int64_t> histogram;
};

inline constexpr double kActivationQuantiles[] = {0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 1.0};
inline constexpr int kActivationHistogramBins = 20;

// Computes the summary of `rates` (any length >= 1).
ActivationRateSummary SummarizeActivationRates(std::span<const double> rates);

struct LayerReport {
  int64_t layer = 0;
  ActivationRateSummary activation;
  int64_t shared_width = 0;
  std::vector<int64_t> expert_widths;  // (N_r)
  int64_t assignment_cost = 0;         // optimal Hamming cost of the first assignment
  int32_t cluster_iters_run = 0;
  std::vector<int64_t> seeds;              // (N_r) original neuron index
  std::vector<int64_t> representatives;    // (N_r) original neuron index
  std::vector<int64_t> tokens_per_expert;  // (N_r) calibration tokens routed to each expert
  std::vector<double> balance_bias;        // (N_r) final bias b (all 0 without --balance-bias)
  // Seconds per phase.
  double forward_s = 0;  // attention of this layer on the calibration tokens (+ norms)
  double scores_s = 0;
  double markers_s = 0;
  double assignment_s = 0;
  double centroid_s = 0;
  double apply_s = 0;  // the carved FFN run on the calibration tokens (input of the next layer)
};

struct CarveReport {
  std::string model_dir;      // the dense model carved
  std::string out_dir;        // the carved checkpoint
  std::string config_name;    // "S2A2E16"
  int32_t num_experts = 0;    // N
  int32_t num_shared = 0;     // N_s
  int32_t num_activated = 0;  // N_k
  int32_t k_act = 0;          // K_a
  std::string score;          // "normalized" | "raw"
  std::string router;         // "reference" | "paper"
  int32_t cluster_iters = 0;
  double balance_bias_gamma = 0;  // 0: off
  // Calibration.
  std::string calib_file;
  int64_t calib_range_begin = 0;  // bytes
  int64_t calib_range_end = 0;
  int64_t calib_seqs = 0;
  int64_t calib_len = 0;  // tokens per sequence (after capping at the context)
  uint64_t seed = 0;
  int64_t calib_tokens = 0;  // calib_seqs * calib_len
  // Model shape.
  int64_t hidden_size = 0;
  int64_t ffn_width = 0;
  int64_t num_layers = 0;
  double activation_ratio = 0;  // (shared width + N_k * mean routed width) / d_h
  double total_s = 0;
  int threads = 0;
  std::vector<LayerReport> layers;
};

// Pretty-printed JSON (2-space indent) with every field above, names as in the structs;
// per-layer phase times under "seconds": {"forward", "scores", "markers", "assignment",
// "centroid", "apply"}; activation summary under "activation_rate": {"quantiles": [{"q": 0.5,
// "value": ...}, ...], "histogram": {"max": ..., "counts": [...]}}.
std::string CarveReportJson(const CarveReport& report);

// A self-contained HTML5 page (inline CSS and SVG, no JavaScript, no external resources) showing:
// a header table (model, config, calibration, activation ratio, total time), a per-layer table
// (shared width, expert widths, assignment cost, load imbalance max/mean of tokens_per_expert,
// phase times) and, per layer, an SVG bar chart of the activation-rate histogram and an SVG bar
// chart of the calibration tokens routed per expert (with the mean as a line). Text is
// HTML-escaped.
std::string CarveReportHtml(const CarveReport& report);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_CARVE_REPORT_H_
