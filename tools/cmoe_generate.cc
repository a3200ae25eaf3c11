// cmoe-generate: generates text from a prompt with a checkpoint directory.
//
//   cmoe-generate --model DIR --prompt "Once upon a time" --max-new-tokens 64
//                 [--active-experts K] [--json]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "common/status.h"
#include "engine/generation.h"
#include "engine/incremental_detokenizer.h"
#include "engine/model_loader.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout)");
ABSL_FLAG(std::string, prompt, "Once upon a time", "Prompt text");
ABSL_FLAG(int64_t, max_new_tokens, 128, "Maximum number of tokens to generate");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature; 0 is greedy");
ABSL_FLAG(int32_t, top_k, 0, "Keep the k most likely tokens (0: off)");
ABSL_FLAG(float, top_p, 1.0f, "Nucleus sampling mass (1: off)");
ABSL_FLAG(float, min_p, 0.0f, "Drop tokens below min_p * p_max (0: off)");
ABSL_FLAG(float, repetition_penalty, 1.0f, "HF-style repetition penalty (1: off)");
ABSL_FLAG(float, presence_penalty, 0.0f, "OpenAI-style presence penalty");
ABSL_FLAG(float, frequency_penalty, 0.0f, "OpenAI-style frequency penalty");
ABSL_FLAG(uint64_t, seed, 0, "Random seed; the same seed gives the same text");
ABSL_FLAG(bool, ignore_eos, false, "Keep generating after EOS");
ABSL_FLAG(std::string, dummy_prefix, "auto",
          "Prepend the tokenizer's dummy-prefix space to the prompt: auto|true|false");
ABSL_FLAG(int32_t, active_experts, 0,
          "Carved models: routed experts per token, 1..N_r (0: the checkpoint's default)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(std::string, kv_cache_dtype, "f32", "KV cache element type: f32 | bf16");
ABSL_FLAG(bool, json, false, "Print one JSON object instead of the text");

namespace cmoe::tools {
namespace {

absl::StatusOr<engine::EncodeOptions> PromptEncodeOptions(const engine::Tokenizer& tokenizer) {
  const std::string mode = absl::GetFlag(FLAGS_dummy_prefix);
  if (mode != "auto" && mode != "true" && mode != "false") {
    return absl::InvalidArgumentError("--dummy-prefix must be auto, true or false");
  }
  return engine::EncodeOptions{
      .add_bos = true,
      .add_dummy_prefix = mode == "auto" ? tokenizer.DefaultDummyPrefix() : mode == "true"};
}

engine::GenerateOptions OptionsFromFlags() {
  return {.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens),
          .sampling = {.temperature = absl::GetFlag(FLAGS_temperature),
                       .top_k = absl::GetFlag(FLAGS_top_k),
                       .top_p = absl::GetFlag(FLAGS_top_p),
                       .min_p = absl::GetFlag(FLAGS_min_p),
                       .repetition_penalty = absl::GetFlag(FLAGS_repetition_penalty),
                       .presence_penalty = absl::GetFlag(FLAGS_presence_penalty),
                       .frequency_penalty = absl::GetFlag(FLAGS_frequency_penalty),
                       .seed = absl::GetFlag(FLAGS_seed)},
          .ignore_eos = absl::GetFlag(FLAGS_ignore_eos),
          .num_activated_experts = absl::GetFlag(FLAGS_active_experts)};
}

void PrintJson(const std::string& text, const std::vector<int32_t>& prompt,
               const engine::GenerateResult& r) {
  const auto rate = [](size_t n, double s) { return s > 0 ? static_cast<double>(n) / s : 0.0; };
  nlohmann::json j{{"text", text},
                   {"token_ids", r.tokens},
                   {"prompt_token_ids", prompt},
                   {"finish_reason", r.finish_reason},
                   {"prefill_seconds", r.prefill_seconds},
                   {"decode_seconds", r.decode_seconds},
                   {"prefill_tokens_per_second", rate(prompt.size(), r.prefill_seconds)},
                   {"decode_tokens_per_second",
                    rate(r.tokens.empty() ? 0 : r.tokens.size() - 1, r.decode_seconds)}};
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

absl::Status Run() {
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
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
  CMOE_ASSIGN_OR_RETURN(engine::EncodeOptions encode, PromptEncodeOptions(*m.tokenizer));
  const std::string prompt_text = absl::GetFlag(FLAGS_prompt);
  CMOE_ASSIGN_OR_RETURN(std::vector<int32_t> prompt, m.tokenizer->Encode(prompt_text, encode));
  // Primed with the prompt's last token, so the continuation keeps its leading space.
  engine::IncrementalDetokenizer detok(*m.tokenizer, prompt.empty() ? -1 : prompt.back());
  const bool json = absl::GetFlag(FLAGS_json);
  std::string text;
  absl::Status stream_status;
  engine::GenerateOptions options = OptionsFromFlags();
  CMOE_RETURN_IF_ERROR(engine::ValidateSamplingParams(options.sampling));
  options.on_token = [&](int32_t token) {
    absl::StatusOr<std::string> piece = detok.Push(token);
    if (!piece.ok()) {
      stream_status.Update(piece.status());
      return;
    }
    text += *piece;
    if (!json) std::fwrite(piece->data(), 1, piece->size(), stdout), std::fflush(stdout);
  };
  if (!json) std::fwrite(prompt_text.data(), 1, prompt_text.size(), stdout), std::fflush(stdout);
  CMOE_ASSIGN_OR_RETURN(engine::GenerateResult result,
                        engine::GenerateTokens(*m.model, *m.cache, prompt, options));
  CMOE_RETURN_IF_ERROR(stream_status);
  const std::string rest = detok.Flush();
  text += rest;
  if (json) {
    PrintJson(text, prompt, result);
  } else {
    std::fwrite(rest.data(), 1, rest.size(), stdout);
    std::fputc('\n', stdout);
  }
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  const std::vector<std::string> args =
      cmoe::tools::ParseToolFlags(argc, argv,
                                  "cmoe-generate --model DIR --prompt TEXT [--max-new-tokens N] "
                                  "[--temperature T] [--top-k K] [--top-p P] [--seed S] "
                                  "[--active-experts K] [--json]");
  if (!args.empty()) {
    return cmoe::tools::Fail("cmoe-generate",
                             absl::InvalidArgumentError("unexpected argument '" + args[0] +
                                                        "' (the prompt goes in --prompt)"));
  }
  absl::Status status = cmoe::tools::Run();
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-generate", status);
}
