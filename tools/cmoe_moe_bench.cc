// cmoe-moe-bench: one synthetic carved MoE FFN layer against the dense FFN of the same width,
// timed side by side on one backend.
//
//   cmoe-moe-bench --device cuda:0 --dim 4096 --ffn 11008 --config S2A2E16,S3A3E8
//       --batch 1,8,32,128,256,2048 --routing skewed --reps 20 --json moe.json
//
// Every layer reads random BF16 weights (seeded, uniform with variance 1/fan-in) uploaded with
// Backend::UploadWeight, laid out as kernels/moe_ops.h says. For each batch size B the layers run
// in rounds over the same fresh random input rows x (B, d) (the order rotates per round, so drift
// on a shared machine hits every layer alike), with Synchronize() before and after each timed
// region:
//   dense:  GatedFfn over gate+up (2 d_h, d) and down (d, d_h), accumulated, as the model runs
//           a dense layer on a device backend
//   carved: MatMul router (2 N_r, d) -> RouteTopK -> BuildDispatch -> grouped GatedFfn (gate+up
//           (N_r, 2 m, d), down (N_r, d, m)) -> CombineExperts, and the shared expert's GatedFfn
//           (2 m_s, d), (d, m_s) accumulated
// and reports per batch: the median time per layer, dense/carved, the weight bytes each read
// (carved: router + shared + the padded routed experts the step touched, counted on the host from
// `selected`, copied back after the timed region), the achieved GB/s, and the fraction of routed
// experts touched per step against 1 - (1 - k/N_r)^B, the expectation under uniform routing.
//
// Routing: a random router routes near uniformly. --routing skewed adds the RouteTopK bias
// b_j = -skew * ln(j + 1) to p before the top-k: expert 0 is the most popular and popularity
// decays roughly like a power of the rank (Zipf-like). With --skew 0.05 on S2A2E16 the two most
// popular experts take about 44 % and 19 % of the selections and the least popular about 2 %.
//
// Flag errors exit 2 with a message naming the flag; run-time errors (no GPU, an op failing)
// exit 1.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/reflection.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/status.h"
#include "common/timer.h"
#include "kernels/backend.h"
#include "kernels/backend_factory.h"
#include "nlohmann/json.hpp"
#include "tools/moe_bench_layers.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(int64_t, dim, 4096, "Model width d (Llama-2-7B: 4096)");
ABSL_FLAG(int64_t, ffn, 11008, "FFN hidden width d_h (Llama-2-7B: 11008)");
ABSL_FLAG(std::string, config, "S2A2E16",
          "Comma-separated carved configurations SxAyEz (x shared, y activated, z experts in "
          "all); 'dense' alone measures the dense FFN only, which every run measures anyway");
ABSL_FLAG(std::string, batch, "1,8,32,128,256,2048", "Comma-separated token rows per step");
ABSL_FLAG(std::string, routing, "uniform", "uniform | skewed (adds the Zipf-like bias, --skew)");
ABSL_FLAG(double, skew, 0.05, "skewed routing: bias b_j = -skew * ln(j + 1) on p");
ABSL_FLAG(int32_t, reps, 10, "Timed steps per batch size and layer (the median is reported)");
ABSL_FLAG(int32_t, warmup, 2, "Untimed steps per batch size and layer before timing");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the weights and inputs");
ABSL_FLAG(std::string, json, "", "Also write the results as one JSON object to this file");

namespace cmoe::tools {
namespace {

using kernels::Backend;
using kernels::Buffer;
using Json = nlohmann::ordered_json;

constexpr char kTool[] = "cmoe-moe-bench";
constexpr int64_t kMaxBatch = 1 << 20;

struct Options {
  std::string device;
  int32_t threads = 0;
  int64_t dim = 0;
  int64_t ffn = 0;
  std::vector<CarvedShape> configs;
  std::vector<int64_t> batches;
  bool skewed = false;
  double skew = 0.0;
  int32_t reps = 0;
  int32_t warmup = 0;
  uint64_t seed = 0;
  std::string json;
};

absl::Status CheckPositive(absl::string_view flag, int64_t value, int64_t min) {
  if (value >= min) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat("--", flag, " ", value, " must be >= ", min));
}

absl::Status CheckDevice(const std::string& device) {
  if (device == "cpu" || device == "reference") return absl::OkStatus();
  if (absl::StartsWith(device, "cuda")) return kernels::ParseCudaDevice(device).status();
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", device, "' is not one of cpu, reference, cuda[:N]"));
}

absl::StatusOr<Options> ReadOptions() {
  Options o{.device = absl::GetFlag(FLAGS_device),
            .threads = absl::GetFlag(FLAGS_threads),
            .dim = absl::GetFlag(FLAGS_dim),
            .ffn = absl::GetFlag(FLAGS_ffn),
            .skew = absl::GetFlag(FLAGS_skew),
            .reps = absl::GetFlag(FLAGS_reps),
            .warmup = absl::GetFlag(FLAGS_warmup),
            .seed = absl::GetFlag(FLAGS_seed),
            .json = absl::GetFlag(FLAGS_json)};
  CMOE_RETURN_IF_ERROR(CheckDevice(o.device));
  CMOE_RETURN_IF_ERROR(CheckPositive("dim", o.dim, 1));
  CMOE_RETURN_IF_ERROR(CheckPositive("ffn", o.ffn, 1));
  CMOE_RETURN_IF_ERROR(CheckPositive("reps", o.reps, 1));
  CMOE_RETURN_IF_ERROR(CheckPositive("warmup", o.warmup, 0));
  CMOE_RETURN_IF_ERROR(CheckPositive("threads", o.threads, 0));
  const std::string routing = absl::GetFlag(FLAGS_routing);
  if (routing != "uniform" && routing != "skewed") {
    return absl::InvalidArgumentError(
        absl::StrCat("--routing '", routing, "' is not one of uniform, skewed"));
  }
  o.skewed = routing == "skewed";
  if (!std::isfinite(o.skew) || o.skew < 0.0) {
    return absl::InvalidArgumentError(absl::StrCat("--skew ", o.skew, " must be finite, >= 0"));
  }
  CMOE_ASSIGN_OR_RETURN(o.batches, ParseCountList("batch", absl::GetFlag(FLAGS_batch), kMaxBatch));
  const std::string configs = absl::GetFlag(FLAGS_config);
  for (absl::string_view item : absl::StrSplit(configs, ',')) {
    if (absl::AsciiStrToLower(item) == "dense") continue;
    CMOE_ASSIGN_OR_RETURN(CarvedShape c, ParseCarvedShape(item, o.ffn));
    const int64_t max_batch = *std::max_element(o.batches.begin(), o.batches.end());
    if (max_batch * c.activated >= int64_t{1} << 31) {
      return absl::InvalidArgumentError(absl::StrCat("--batch ", max_batch, " x ", c.activated,
                                                     " activated experts exceed 2^31 slots"));
    }
    o.configs.push_back(std::move(c));
  }
  return o;
}

// Abseil exits 1 on an unknown flag or a malformed value; this tool promises exit 2 for every
// flag error, so the command line is checked against the flag registry before Abseil parses it.
absl::Status CheckCommandLine(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg.size() < 2 || arg[0] != '-') {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected argument '", arg, "' (", kTool, " takes flags only)"));
    }
    arg.remove_prefix(arg[1] == '-' ? 2 : 1);
    const size_t eq = arg.find('=');
    const absl::string_view spelled = arg.substr(0, eq);
    std::string name(spelled);
    std::replace(name.begin(), name.end(), '-', '_');
    // Abseil's usage flags are not in the registry; ParseToolFlags handles them.
    if (name == "help" || name == "helpfull" || name == "helpshort" || name == "helppackage" ||
        name == "version" || name == "only_check_args" || name == "helpon" || name == "helpmatch") {
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && eq == absl::string_view::npos && name.starts_with("no")) {
      // --noflag or --no-flag negates a boolean flag.
      const absl::CommandLineFlag* base =
          absl::FindCommandLineFlag(name.substr(name.starts_with("no_") ? 3 : 2));
      if (base != nullptr && base->IsOfType<bool>()) continue;
    }
    if (flag == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", spelled));
    }
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", spelled, " needs a value"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--", spelled, " '", value, "': ", error));
    }
  }
  return absl::OkStatus();
}

// What one layer measured at one batch size.
struct Samples {
  std::vector<double> seconds;
  std::vector<double> bytes;
  std::vector<double> touched;      // carved: distinct routed experts per step
  std::vector<int64_t> selections;  // carved: (N_r) selections per expert, all steps
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

double Mean(const std::vector<double>& v) {
  double sum = 0.0;
  for (double x : v) sum += x;
  return v.empty() ? 0.0 : sum / static_cast<double>(v.size());
}

// The routing statistics of one step: distinct experts into `s`, selections per expert.
void CountTouched(const std::vector<int32_t>& selected, int32_t n_r, Samples& s) {
  if (s.selections.empty()) s.selections.assign(static_cast<size_t>(n_r), 0);
  std::vector<bool> seen(static_cast<size_t>(n_r), false);
  int64_t touched = 0;
  for (int32_t e : selected) {
    if (e < 0 || e >= n_r) continue;  // a broken backend; the counts stay meaningful
    ++s.selections[static_cast<size_t>(e)];
    if (!seen[static_cast<size_t>(e)]) {
      seen[static_cast<size_t>(e)] = true;
      ++touched;
    }
  }
  s.touched.push_back(static_cast<double>(touched));
}

// Every layer measured in one run: the dense FFN first, then the carved configurations.
struct Bench {
  Options options;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<DenseFfn> dense;
  std::vector<std::unique_ptr<CarvedFfn>> carved;
  Buffer x, out;
  std::vector<std::vector<Samples>> samples;  // [batch index][layer], layer 0 the dense one
};

absl::Status Setup(Bench& b) {
  const Options& o = b.options;
  CMOE_ASSIGN_OR_RETURN(b.backend,
                        kernels::CreateBackend({.device = o.device, .threads = o.threads}));
  const int64_t max_rows = *std::max_element(o.batches.begin(), o.batches.end());
  Rng rng(o.seed);
  CMOE_ASSIGN_OR_RETURN(b.dense, DenseFfn::Create(*b.backend, o.dim, o.ffn, max_rows, rng));
  for (const CarvedShape& c : o.configs) {
    std::vector<float> bias;
    for (int32_t j = 0; o.skewed && j < c.routed(); ++j) {
      bias.push_back(static_cast<float>(-o.skew * std::log(j + 1.0)));
    }
    CMOE_ASSIGN_OR_RETURN(auto layer,
                          CarvedFfn::Create(*b.backend, c, o.dim, o.ffn, max_rows, bias, rng));
    b.carved.push_back(std::move(layer));
  }
  std::vector<float> zeros(static_cast<size_t>(max_rows * o.dim), 0.0f);
  const auto bytes = static_cast<int64_t>(zeros.size() * sizeof(float));
  CMOE_ASSIGN_OR_RETURN(b.x, b.backend->Allocate(bytes));    // (max_rows, d) f32
  CMOE_ASSIGN_OR_RETURN(b.out, b.backend->Allocate(bytes));  // (max_rows, d) f32, accumulated
  return b.backend->CopyToBackend(b.out.data(), zeros.data(), b.out.bytes());
}

// One timed run of layer `l` (0: dense) over `rows` rows; records it when `timed`.
absl::Status Step(Bench& b, size_t l, int64_t rows, bool timed, Samples& s) {
  FfnLayer* layer = l == 0 ? static_cast<FfnLayer*>(b.dense.get()) : b.carved[l - 1].get();
  CMOE_RETURN_IF_ERROR(b.backend->Synchronize());
  Timer timer;
  CMOE_RETURN_IF_ERROR(layer->Run(b.x.as<float>(), rows, b.out.as<float>()));
  CMOE_RETURN_IF_ERROR(b.backend->Synchronize());
  const double seconds = timer.Seconds();
  if (!timed) return absl::OkStatus();
  s.seconds.push_back(seconds);
  if (l == 0) {
    s.bytes.push_back(static_cast<double>(b.dense->WeightBytes()));
    return absl::OkStatus();
  }
  CarvedFfn& c = *b.carved[l - 1];
  CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> selected, c.Selected(rows));
  CountTouched(selected, c.shape().routed(), s);
  s.bytes.push_back(static_cast<double>(c.FixedBytes()) +
                    s.touched.back() * static_cast<double>(c.ExpertBytes()));
  return absl::OkStatus();
}

absl::Status MeasureBatch(Bench& b, size_t batch_index, Rng& rng) {
  const int64_t rows = b.options.batches[batch_index];
  const size_t layers = 1 + b.carved.size();
  std::vector<Samples>& samples = b.samples[batch_index];
  samples.assign(layers, Samples());
  std::vector<float> x(static_cast<size_t>(rows * b.options.dim));
  const int32_t steps = b.options.warmup + b.options.reps;
  for (int32_t r = 0; r < steps; ++r) {
    for (float& v : x) v = rng.Uniform(1.7320508f);  // unit variance, fresh every step
    CMOE_RETURN_IF_ERROR(b.backend->CopyToBackend(b.x.data(), x.data(),
                                                  static_cast<int64_t>(x.size() * sizeof(float))));
    for (size_t i = 0; i < layers; ++i) {
      const size_t l = (i + static_cast<size_t>(r)) % layers;
      CMOE_RETURN_IF_ERROR(Step(b, l, rows, r >= b.options.warmup, samples[l]));
    }
  }
  return absl::OkStatus();
}

Json DenseResult(const Samples& s) {
  const double median = Median(s.seconds);
  return Json{{"ms", median * 1e3},
              {"min_ms", *std::min_element(s.seconds.begin(), s.seconds.end()) * 1e3},
              {"weight_bytes", Mean(s.bytes)},
              {"gbps", Mean(s.bytes) / median / 1e9}};
}

Json CarvedResult(const Samples& s, const Samples& dense, const CarvedShape& c, int64_t rows) {
  Json j = DenseResult(s);
  const double dense_ms = Median(dense.seconds) * 1e3;
  const double k = c.activated, n_r = c.routed();
  int64_t total = 0, most = 0;
  for (int64_t n : s.selections) {
    total += n;
    most = std::max(most, n);
  }
  j["dense_ms"] = dense_ms;
  j["ratio_dense_over_carved"] = dense_ms / j["ms"].get<double>();
  j["dense_weight_bytes"] = Mean(dense.bytes);
  j["dense_gbps"] = Mean(dense.bytes) / (dense_ms / 1e3) / 1e9;
  j["touched_experts"] = Mean(s.touched);
  j["touched_fraction"] = Mean(s.touched) / n_r;
  j["touched_fraction_expected"] = 1.0 - std::pow(1.0 - k / n_r, static_cast<double>(rows));
  j["max_expert_share"] = total > 0 ? static_cast<double>(most) / static_cast<double>(total) : 0.0;
  return j;
}

Json Results(const Bench& b) {
  const Options& o = b.options;
  Json dense{{"weight_bytes", b.dense->WeightBytes()}, {"results", Json::object()}};
  Json configs = Json::object();
  for (const auto& layer : b.carved) {
    const CarvedShape& c = layer->shape();
    configs[c.name] = Json{{"shared", c.shared},
                           {"activated", c.activated},
                           {"experts", c.experts},
                           {"routed", c.routed()},
                           {"shared_width", c.shared_width},
                           {"expert_width", c.expert_width},
                           {"fixed_weight_bytes", layer->FixedBytes()},
                           {"expert_weight_bytes", layer->ExpertBytes()},
                           {"results", Json::object()}};
  }
  for (size_t bi = 0; bi < o.batches.size(); ++bi) {
    const std::string key = std::to_string(o.batches[bi]);
    const std::vector<Samples>& s = b.samples[bi];
    dense["results"][key] = DenseResult(s[0]);
    for (size_t l = 0; l < b.carved.size(); ++l) {
      const CarvedShape& c = b.carved[l]->shape();
      configs[c.name]["results"][key] = CarvedResult(s[l + 1], s[0], c, o.batches[bi]);
    }
  }
  return Json{{"tool", kTool},
              {"device", o.device},
              {"backend", std::string(b.backend->Name())},
              {"dim", o.dim},
              {"ffn", o.ffn},
              {"weight_dtype", "bf16"},
              {"activation_dtype", "f32"},
              {"routing", o.skewed ? "skewed" : "uniform"},
              {"skew", o.skewed ? o.skew : 0.0},
              {"reps", o.reps},
              {"warmup", o.warmup},
              {"seed", o.seed},
              {"threads", o.threads},
              {"batches", o.batches},
              {"dense", dense},
              {"configs", configs}};
}

void PrintTable(const Json& j) {
  std::printf(
      "%s: %s (--device %s), d %lld, d_h %lld, bf16 weights, f32 layer input and output, routing "
      "%s,"
      " median of %d steps\n",
      kTool, j["backend"].get<std::string>().c_str(), j["device"].get<std::string>().c_str(),
      j["dim"].get<long long>(), j["ffn"].get<long long>(), j["routing"].get<std::string>().c_str(),
      j["reps"].get<int>());
  std::printf("%-9s %6s %10s %10s %8s %9s %9s %8s %8s %8s %8s %6s\n", "config", "batch", "dense_ms",
              "carved_ms", "d/c", "dense_MB", "carv_MB", "dense_GB/s", "carv_GB/s", "touched",
              "expect", "max%");
  if (j["configs"].empty()) {  // --config dense: no carved layer to set beside it
    for (const auto& [key, r] : j["dense"]["results"].items()) {
      std::printf("%-9s %6s %10.4f %10s %8s %9.2f %9s %8.1f\n", "dense", key.c_str(),
                  r["ms"].get<double>(), "-", "-", r["weight_bytes"].get<double>() / 1e6, "-",
                  r["gbps"].get<double>());
    }
  }
  for (const auto& [name, c] : j["configs"].items()) {
    for (const auto& [key, r] : c["results"].items()) {
      std::printf("%-9s %6s %10.4f %10.4f %7.2fx %9.2f %9.2f %8.1f %8.1f %8.3f %8.3f %6.1f\n",
                  name.c_str(), key.c_str(), r["dense_ms"].get<double>(), r["ms"].get<double>(),
                  r["ratio_dense_over_carved"].get<double>(),
                  r["dense_weight_bytes"].get<double>() / 1e6,
                  r["weight_bytes"].get<double>() / 1e6, r["dense_gbps"].get<double>(),
                  r["gbps"].get<double>(), r["touched_fraction"].get<double>(),
                  r["touched_fraction_expected"].get<double>(),
                  100.0 * r["max_expert_share"].get<double>());
    }
  }
}

absl::Status WriteJson(const std::string& path, const Json& j) {
  std::ofstream file(path);
  file << j.dump(2) << "\n";
  file.close();
  if (!file) return absl::UnavailableError(absl::StrCat("--json: cannot write ", path));
  return absl::OkStatus();
}

absl::Status Run(Options options) {
  Bench b{.options = std::move(options)};
  CMOE_RETURN_IF_ERROR(Setup(b));
  b.samples.resize(b.options.batches.size());
  Rng rng(b.options.seed ^ 0x5eedull);
  for (size_t bi = 0; bi < b.options.batches.size(); ++bi) {
    CMOE_RETURN_IF_ERROR(
        Annotate(MeasureBatch(b, bi, rng), absl::StrCat("batch ", b.options.batches[bi])));
    std::fprintf(stderr, "%s: batch %lld done\n", kTool,
                 static_cast<long long>(b.options.batches[bi]));
  }
  const Json j = Results(b);
  PrintTable(j);
  if (!b.options.json.empty()) CMOE_RETURN_IF_ERROR(WriteJson(b.options.json, j));
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  using cmoe::tools::kTool;
  if (absl::Status s = cmoe::tools::CheckCommandLine(argc, argv); !s.ok()) {
    cmoe::tools::Fail(kTool, s);
    return 2;
  }
  cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-moe-bench [--device cpu|cuda[:N]] [--dim 4096 --ffn 11008] "
      "[--config S2A2E16,S3A3E8] [--batch 1,8,32] [--routing uniform|skewed] [--reps N] "
      "[--json FILE]");
  absl::StatusOr<cmoe::tools::Options> options = cmoe::tools::ReadOptions();
  if (!options.ok()) {
    cmoe::tools::Fail(kTool, options.status());
    return 2;
  }
  const absl::Status status = cmoe::tools::Run(*std::move(options));
  return status.ok() ? 0 : cmoe::tools::Fail(kTool, status);
}
