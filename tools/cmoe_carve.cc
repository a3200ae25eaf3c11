// cmoe-carve: carves a dense Llama checkpoint into a CMoE mixture of experts
// (docs/cmoe-method.md), writing a carved checkpoint directory with carve_report.json/.html.
//
//   cmoe-carve --model DIR --calib FILE --out DIR [--config S2A2E16 | --experts N --shared S
//              --active K] [--k-act 10] [--calib-seqs 8] [--calib-len 2048]
//              [--calib-range START:END] [--seed 0] [--score normalized|raw]
//              [--router reference|paper] [--cluster-iters 1] [--balance-bias GAMMA]
//              [--threads N] [--force] [--json]
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <regex>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carve_model.h"
#include "engine/carve/carved_checkpoint_writer.h"
#include "engine/model_loader.h"
#include "engine/staged_output_dir.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Dense model directory (Hugging Face layout)");
ABSL_FLAG(std::string, calib, "", "UTF-8 calibration text file");
ABSL_FLAG(std::string, out, "", "Output directory for the carved checkpoint");
ABSL_FLAG(std::string, config, "", "S<shared>A<active>E<experts>, e.g. S2A2E16");
ABSL_FLAG(int32_t, experts, 0, "N: experts in total, shared included (instead of --config)");
ABSL_FLAG(int32_t, shared, -1, "N_s: shared (always-on) experts (instead of --config)");
ABSL_FLAG(int32_t, active, 0, "N_k: routed experts per token (instead of --config)");
ABSL_FLAG(int32_t, k_act, 10, "K_a: neurons marked active per calibration token");
ABSL_FLAG(int64_t, calib_seqs, 8, "Calibration sequences");
ABSL_FLAG(int64_t, calib_len, 2048, "Tokens per calibration sequence (capped at the context)");
ABSL_FLAG(std::string, calib_range, "",
          "Byte range START:END of --calib to draw from (default all)");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the calibration windows");
ABSL_FLAG(std::string, score, "normalized", "Activation scores: normalized (reference) | raw");
ABSL_FLAG(std::string, router, "reference", "Router: reference (|score|, unit rows) | paper");
ABSL_FLAG(int32_t, cluster_iters, 1, "Centroid updates of the balanced clustering");
ABSL_FLAG(double, balance_bias, 0.0, "Load-balancing bias step gamma during calibration (0: off)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "Backend of the calibration forward: cpu | reference");
ABSL_FLAG(bool, force, false, "Replace --out if it already holds a checkpoint");
ABSL_FLAG(bool, json, false, "Print one JSON object (progress stays on stderr)");

namespace cmoe::tools {
namespace {

namespace fs = std::filesystem;

// --config S2A2E16 and/or --experts/--shared/--active; they must agree when both are given.
absl::StatusOr<engine::carve::CarveConfig> ParseConfigFlags() {
  engine::carve::CarveConfig c;
  const std::string name = absl::GetFlag(FLAGS_config);
  const int32_t n = absl::GetFlag(FLAGS_experts), s = absl::GetFlag(FLAGS_shared),
                k = absl::GetFlag(FLAGS_active);
  const bool explicit_sizes = n != 0 || s != -1 || k != 0;
  if (!name.empty()) {
    std::smatch m;
    const std::string upper = absl::AsciiStrToUpper(name);
    if (!std::regex_match(upper, m, std::regex(R"(S(\d{1,6})A(\d{1,6})E(\d{1,6}))"))) {
      return absl::InvalidArgumentError(
          absl::StrCat("--config '", name, "' is not S<shared>A<active>E<experts> (e.g. S2A2E16)"));
    }
    c.num_shared = std::stoi(m[1]);
    c.num_activated = std::stoi(m[2]);
    c.num_experts = std::stoi(m[3]);
    if (explicit_sizes && ((n != 0 && n != c.num_experts) || (s != -1 && s != c.num_shared) ||
                           (k != 0 && k != c.num_activated))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--config ", name, " disagrees with --experts/--shared/--active; give one or the other"));
    }
  } else {
    if (n == 0 || s == -1 || k == 0) {
      return absl::InvalidArgumentError(
          "give --config S<shared>A<active>E<experts> or all of --experts, --shared, --active");
    }
    c.num_experts = n;
    c.num_shared = s;
    c.num_activated = k;
  }
  c.k_act = absl::GetFlag(FLAGS_k_act);
  c.cluster_iters = absl::GetFlag(FLAGS_cluster_iters);
  const std::string score = absl::GetFlag(FLAGS_score);
  if (score == "normalized") {
    c.score = engine::carve::ScoreVariant::kNormalized;
  } else if (score == "raw") {
    c.score = engine::carve::ScoreVariant::kRaw;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--score '", score, "' is not one of: normalized, raw"));
  }
  return c;
}

absl::StatusOr<engine::RouterVariant> ParseRouterFlag() {
  const std::string router = absl::GetFlag(FLAGS_router);
  if (router == "reference") return engine::RouterVariant::kReference;
  if (router == "paper") return engine::RouterVariant::kPaper;
  return absl::InvalidArgumentError(
      absl::StrCat("--router '", router, "' is not one of: reference, paper"));
}

// The carve must not replace its own input (--out == --model with --force).
absl::Status CheckDistinctDirs(const std::string& model, const std::string& out) {
  std::error_code ec;
  if (fs::exists(out, ec) && fs::equivalent(model, out, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--out ", out, " is the model directory itself; write the carve elsewhere"));
  }
  return absl::OkStatus();
}

void PrintLayer(const engine::carve::LayerReport& r, int64_t layers) {
  const double t =
      r.forward_s + r.scores_s + r.markers_s + r.assignment_s + r.centroid_s + r.apply_s;
  std::fprintf(stderr,
               "layer %lld/%lld: %.2f s (attention %.2f, scores %.2f, markers %.2f, "
               "assignment %.2f, centroids %.2f, carved FFN %.2f), assignment cost %lld\n",
               static_cast<long long>(r.layer + 1), static_cast<long long>(layers), t, r.forward_s,
               r.scores_s, r.markers_s, r.assignment_s, r.centroid_s, r.apply_s,
               static_cast<long long>(r.assignment_cost));
}

absl::Status Run() {
  const std::string model_dir = absl::GetFlag(FLAGS_model), out = absl::GetFlag(FLAGS_out);
  CMOE_RETURN_IF_ERROR(RequireFlag("model", model_dir));
  CMOE_RETURN_IF_ERROR(RequireFlag("calib", absl::GetFlag(FLAGS_calib)));
  CMOE_RETURN_IF_ERROR(RequireFlag("out", out));
  CMOE_ASSIGN_OR_RETURN(engine::carve::CarveConfig layer_config, ParseConfigFlags());
  CMOE_ASSIGN_OR_RETURN(engine::RouterVariant router, ParseRouterFlag());
  const double gamma = absl::GetFlag(FLAGS_balance_bias);
  if (!(gamma >= 0) || gamma > 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("--balance-bias ", gamma, " must be in [0, 1] (0: off; the paper uses 1e-3)"));
  }
  if (absl::GetFlag(FLAGS_calib_seqs) < 1 || absl::GetFlag(FLAGS_calib_len) < 1) {
    return absl::InvalidArgumentError("--calib-seqs and --calib-len must be >= 1");
  }
  if (absl::GetFlag(FLAGS_k_act) < 1) return absl::InvalidArgumentError("--k-act must be >= 1");
  if (absl::GetFlag(FLAGS_cluster_iters) < 1) {
    return absl::InvalidArgumentError("--cluster-iters must be >= 1");
  }
  engine::carve::CalibrationOptions calib{.file = absl::GetFlag(FLAGS_calib),
                                          .seqs = absl::GetFlag(FLAGS_calib_seqs),
                                          .len = absl::GetFlag(FLAGS_calib_len),
                                          .seed = absl::GetFlag(FLAGS_seed)};
  if (!absl::GetFlag(FLAGS_calib_range).empty()) {
    const auto range = engine::carve::ParseByteRange(absl::GetFlag(FLAGS_calib_range));
    if (!range.ok()) return Annotate(range.status(), "--calib-range");
    calib.range_begin = range->first;
    calib.range_end = range->second;
  }
  CMOE_RETURN_IF_ERROR(CheckDistinctDirs(model_dir, out));

  Timer total;
  // Cheap checks first: the config, the output directory and the calibration text are validated
  // before any minute is spent carving.
  CMOE_ASSIGN_OR_RETURN(engine::ModelConfig config, engine::LoadModelConfig(model_dir));
  if (config.cmoe.has_value()) {
    return absl::FailedPreconditionError(absl::StrCat("model ", model_dir, " is already carved (",
                                                      config.cmoe->Name(),
                                                      "); carve the dense original instead"));
  }
  CMOE_RETURN_IF_ERROR(engine::carve::ValidateCarveConfig(layer_config, config.intermediate_size));
  if (calib.len > config.max_position_embeddings) {
    CMOE_LOG(INFO) << "--calib-len " << calib.len << " capped at the model's context of "
                   << config.max_position_embeddings;
    calib.len = config.max_position_embeddings;
  }
  // All calibration tokens go through the model as one batch; beyond this the activations alone
  // need tens of GB (the paper's 8 x 2048 = 16,384 is 64x below).
  constexpr int64_t kMaxCalibTokens = int64_t{1} << 20;
  if (absl::GetFlag(FLAGS_calib_seqs) > kMaxCalibTokens ||
      calib.seqs * calib.len > kMaxCalibTokens) {
    return absl::InvalidArgumentError(absl::StrCat("--calib-seqs x --calib-len is more than the ",
                                                   kMaxCalibTokens,
                                                   " calibration tokens supported"));
  }

  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<engine::StagedOutputDir> dir,
                        engine::StagedOutputDir::Create(out, absl::GetFlag(FLAGS_force)));
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m,
                        engine::LoadModel({.model_dir = model_dir,
                                           .device = absl::GetFlag(FLAGS_device),
                                           .threads = absl::GetFlag(FLAGS_threads),
                                           .kv_cache_tokens = 1}));
  CMOE_ASSIGN_OR_RETURN(engine::carve::CalibrationSet set,
                        engine::carve::LoadCalibration(calib, *m.tokenizer));
  CMOE_LOG(INFO) << "calibration: " << set.windows.size() << " x " << calib.len << " tokens from "
                 << calib.file << " bytes [" << set.range_begin << ", " << set.range_end << ") ("
                 << set.text_tokens << " tokens)";

  const int64_t layers = config.num_hidden_layers;
  CMOE_ASSIGN_OR_RETURN(
      engine::carve::CarvedModel carved,
      engine::carve::CarveModel(
          *m.model, set,
          {.layer = layer_config,
           .router = router,
           .balance_bias_gamma = gamma,
           .threads = absl::GetFlag(FLAGS_threads),
           .calibration = calib,
           .on_layer = [layers](const engine::carve::LayerReport& r) { PrintLayer(r, layers); }}));
  ProgressLine progress("MiB written");
  CMOE_RETURN_IF_ERROR(engine::carve::WriteCarvedCheckpoint(
      m.model->checkpoint(), carved, *dir, [&](int64_t done, int64_t all) {
        if (all >= (int64_t{256} << 20)) progress.Update(done >> 20, all >> 20);
      }));
  CMOE_RETURN_IF_ERROR(dir->Commit());

  const engine::carve::CarveReport& r = carved.report;
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j{{"out", out},
                     {"config", r.config_name},
                     {"layers", r.num_layers},
                     {"calib_tokens", r.calib_tokens},
                     {"activation_ratio", r.activation_ratio},
                     {"carve_seconds", r.total_s},
                     {"seconds", total.Seconds()},
                     {"report", out + "/carve_report.html"}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf(
        "carved %s into %s (%s, %.1f%% of the FFN active per token) in %.1f s; report: %s\n",
        model_dir.c_str(), out.c_str(), r.config_name.c_str(), 100 * r.activation_ratio,
        total.Seconds(), (out + "/carve_report.html").c_str());
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-carve --model DIR --calib FILE --out DIR --config S2A2E16 [--k-act 10] "
      "[--calib-seqs 8] [--calib-len 2048] [--calib-range START:END] [--seed 0] "
      "[--score normalized|raw] [--router reference|paper] [--cluster-iters 1] "
      "[--balance-bias GAMMA] [--threads N] [--force] [--json]");
  if (!args.empty()) {
    return cmoe::tools::Fail("cmoe-carve", absl::InvalidArgumentError(absl::StrCat(
                                               "unexpected argument '", args[0], "'")));
  }
  const absl::Status status = cmoe::tools::Run();
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-carve", status);
}
