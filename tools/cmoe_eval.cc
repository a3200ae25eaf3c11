// cmoe-eval: quality evaluation of a checkpoint.
//
//   cmoe-eval ppl --model DIR --text FILE [--text-range START:END] [--ctx N] [--max-windows W]
//                 [--active-experts K] [--threads N] [--json]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "common/timer.h"
#include "engine/carve/calibration.h"
#include "engine/model_loader.h"
#include "engine/perplexity.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout)");
ABSL_FLAG(std::string, text, "", "UTF-8 text file to evaluate on");
ABSL_FLAG(std::string, text_range, "",
          "Byte range START:END of --text to evaluate (default all; keep it apart from the "
          "calibration range of a carve)");
ABSL_FLAG(int32_t, active_experts, 0,
          "Carved models: routed experts per token, 1..N_r (0: the checkpoint's default)");
ABSL_FLAG(int64_t, ctx, 0, "Window length in tokens (0: the model's context)");
ABSL_FLAG(int64_t, max_windows, 0, "Evaluate at most this many windows (0: all)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(std::string, kv_cache_dtype, "f32", "KV cache element type: f32 | bf16");
ABSL_FLAG(bool, json, false, "Print one JSON object");

namespace cmoe::tools {
namespace {

// The bytes [START, END) of `text`, both ends moved to UTF-8 character starts.
absl::StatusOr<std::string> SliceText(const std::string& text, const std::string& range_flag) {
  absl::StatusOr<std::pair<int64_t, int64_t>> parsed = engine::carve::ParseByteRange(range_flag);
  if (!parsed.ok()) return Annotate(parsed.status(), "--text-range");
  const std::pair<int64_t, int64_t> range = *parsed;
  const auto size = static_cast<int64_t>(text.size());
  int64_t begin = range.first, end = range.second < 0 ? size : range.second;
  if (begin >= size || end > size) {
    return absl::InvalidArgumentError(absl::StrCat("--text-range ", range_flag, " does not fit ",
                                                   absl::GetFlag(FLAGS_text), " (", size,
                                                   " bytes)"));
  }
  const auto continuation = [&](int64_t i) {
    return i < size && (static_cast<unsigned char>(text[i]) & 0xC0) == 0x80;
  };
  while (begin < end && continuation(begin)) ++begin;
  while (end > begin && continuation(end)) --end;
  return text.substr(begin, end - begin);
}

absl::Status RunPerplexity() {
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  CMOE_RETURN_IF_ERROR(RequireFlag("text", absl::GetFlag(FLAGS_text)));
  if (absl::GetFlag(FLAGS_ctx) < 0 || absl::GetFlag(FLAGS_max_windows) < 0) {
    return absl::InvalidArgumentError("--ctx and --max-windows must be >= 0 (0: the default)");
  }
  if (absl::GetFlag(FLAGS_active_experts) < 0) {
    return absl::InvalidArgumentError("--active-experts must be >= 1 (0: the model's default)");
  }
  CMOE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(absl::GetFlag(FLAGS_text)));
  if (!absl::GetFlag(FLAGS_text_range).empty()) {
    CMOE_ASSIGN_OR_RETURN(text, SliceText(text, absl::GetFlag(FLAGS_text_range)));
  }
  CMOE_ASSIGN_OR_RETURN(const kernels::DType kv_dtype,
                        engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m,
                        engine::LoadModel({.model_dir = absl::GetFlag(FLAGS_model),
                                           .device = absl::GetFlag(FLAGS_device),
                                           .threads = absl::GetFlag(FLAGS_threads),
                                           .kv_cache_dtype = kv_dtype}));
  const auto& cmoe = m.model->config().cmoe;
  CMOE_RETURN_IF_ERROR(CheckActiveExperts(absl::GetFlag(FLAGS_active_experts),
                                          cmoe ? cmoe->num_routed() : 0, cmoe ? cmoe->Name() : ""));
  Timer timer;
  // The GPTQ protocol: one BOS at the start of the whole text.
  absl::StatusOr<std::vector<int32_t>> tokens = m.tokenizer->Encode(
      text, {.add_bos = true, .add_dummy_prefix = m.tokenizer->DefaultDummyPrefix()});
  if (!tokens.ok()) return Annotate(tokens.status(), absl::GetFlag(FLAGS_text));
  CMOE_LOG(INFO) << "tokenized " << text.size() << " bytes into " << tokens->size() << " tokens in "
                 << timer.Seconds() << " s";
  timer.Reset();
  ProgressLine progress("window");
  engine::PerplexityOptions options{
      .ctx = absl::GetFlag(FLAGS_ctx),
      .max_windows = absl::GetFlag(FLAGS_max_windows),
      .num_activated_experts = absl::GetFlag(FLAGS_active_experts),
      .on_window = [&](int64_t done, int64_t total) { progress.Update(done, total); }};
  CMOE_ASSIGN_OR_RETURN(engine::PerplexityResult r,
                        engine::EvaluatePerplexity(*m.model, *m.cache, *tokens, options));
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json j{{"ppl", r.ppl},         {"nll", r.nll}, {"tokens_scored", r.tokens_scored},
                     {"windows", r.windows}, {"ctx", r.ctx}, {"seconds", timer.Seconds()}};
    if (const auto& cmoe = m.model->config().cmoe; cmoe.has_value()) {
      const int32_t k = absl::GetFlag(FLAGS_active_experts);
      j["cmoe"] = cmoe->Name();
      j["active_experts"] = k > 0 ? k : cmoe->num_activated_experts;
      j["activation_ratio"] = cmoe->ActivationRatio(k);
    }
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("ppl %.4f  nll %.5f  tokens %lld  windows %lld  ctx %lld\n", r.ppl, r.nll,
                static_cast<long long>(r.tokens_scored), static_cast<long long>(r.windows),
                static_cast<long long>(r.ctx));
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-eval ppl --model DIR --text FILE [--text-range START:END] [--ctx N] [--max-windows W] "
      "[--active-experts K] [--threads N] [--json]");
  if (args.size() != 1 || args[0] != "ppl") {
    return cmoe::tools::Fail("cmoe-eval",
                             absl::InvalidArgumentError(absl::StrCat(
                                 "expected the subcommand 'ppl'", args.empty() ? "" : ", got '",
                                 args.empty() ? "" : args[0], args.empty() ? "" : "'")));
  }
  absl::Status status = cmoe::tools::RunPerplexity();
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-eval", status);
}
