// cmoe-bench: end-to-end speed of a checkpoint on this machine.
//
//   cmoe-bench decode  --model DIR [--compare DIR2,DIR3] [--expert-parallel W[,W2,...]]
//                      --batch B[,B2,...] --tokens N [--threads T] [--device cpu|cuda[:N]] [--json]
//   cmoe-bench prefill --model DIR [--compare DIR2,DIR3] --tokens N [--threads T] [--json]
//
// decode reports tokens/s, the weight bytes one step reads (carved models: the routed experts the
// step touched), the achieved GB/s, and the memory bandwidth measured in the same run, with their
// ratio; with --compare, every model's speedup over --model. The bandwidth is the machine's read
// bandwidth measured by the same threads ("bandwidth_kind": "host_read") on the CPU, and the GPU's
// device-to-device copy bandwidth, bytes read + bytes written per second ("device_copy"), with
// --device cuda[:N]: decode only reads weights, so there the ratio compares one-way traffic with
// two-way traffic (a conservative fraction of the read ceiling). --batch takes a list: the models
// are loaded once and each batch runs in turn with a KV cache of its own, its result printed (one
// line, or one JSON object per line with --json) as soon as it is done. --expert-parallel adds
// --model over groups of W expert-parallel ranks (tools/decode_run.h: the batch spread over the
// ranks, every rank's step at once), with what the group saves or costs per carved layer against
// --model on one backend (step_delta_us_per_carved_layer; with W = 1 on a GPU the exchanges' own
// cost, while on the CPU a group also runs the fused FFN path instead of the host MoE layer).
// prefill reports tokens/s
// and GFLOP/s of one N-token prompt; with --compare, the models' repeats are interleaved and
// speedups are relative to --model.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/model_loader.h"
#include "kernels/backend_factory.h"
#include "kernels/cpu/memory_bandwidth.h"
#if defined(CMOE_HAVE_CUDA)
#include "kernels/cuda/device_bandwidth.h"
#endif
#include "nlohmann/json.hpp"
#include "tools/decode_run.h"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout)");
ABSL_FLAG(std::string, compare, "",
          "More model directories (comma-separated) measured in the same run; speedups are "
          "relative to --model");
ABSL_FLAG(std::string, batch, "1",
          "decode: sequences decoded together; a comma-separated list (1,8,32) runs each batch in "
          "turn on models loaded once");
ABSL_FLAG(int64_t, tokens, 32, "decode: steps to time; prefill: prompt length");
ABSL_FLAG(int64_t, prompt, 16, "decode: prompt tokens per sequence before timing");
ABSL_FLAG(int32_t, repeats, 3, "prefill: timed repeats (the median is reported)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(int64_t, bandwidth_mib, 1024,
          "Buffer size for the bandwidth measurement (host read; cuda: the copy's source)");
ABSL_FLAG(bool, json, false, "Print one JSON object (one per batch of a --batch list)");
ABSL_FLAG(std::string, kv_cache_dtype, "f32", "KV cache element type: f32 | bf16");
ABSL_FLAG(std::string, expert_parallel, "",
          "decode: also run --model over expert-parallel groups of these sizes (1,2: ranks on "
          "cuda:N, cuda:N+1, ... or CPU ranks sharing --threads), compared in the same run");

namespace cmoe::tools {
namespace {

using engine::SequenceBlocks;
using engine::SequenceChunk;

constexpr int32_t kKvBlock = 16;

absl::StatusOr<engine::LoadedModel> Load(const std::string& dir, int64_t cache_tokens) {
  CMOE_RETURN_IF_ERROR(RequireFlag("model", dir));
  CMOE_ASSIGN_OR_RETURN(const kernels::DType kv_dtype,
                        engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  return engine::LoadModel({.model_dir = dir,
                            .device = absl::GetFlag(FLAGS_device),
                            .threads = absl::GetFlag(FLAGS_threads),
                            .kv_block_size = kKvBlock,
                            .kv_cache_tokens = cache_tokens,
                            .kv_cache_dtype = kv_dtype,
                            .load_tokenizer = false});
}

// --model followed by every --compare directory.
std::vector<std::string> ModelDirs() {
  std::vector<std::string> dirs = {absl::GetFlag(FLAGS_model)};
  const std::vector<std::string> compare =
      absl::StrSplit(absl::GetFlag(FLAGS_compare), ',', absl::SkipEmpty());
  dirs.insert(dirs.end(), compare.begin(), compare.end());
  return dirs;
}

int Threads() {
  return absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                          : ThreadPool::HardwareThreads();
}

bool OnCuda() { return absl::GetFlag(FLAGS_device).starts_with("cuda"); }

// What the decode figures are measured against: "host_read" (the CPU threads streaming a
// buffer) or "device_copy" (a device-to-device copy on the GPU, bytes read + written).
std::string BandwidthKind() { return OnCuda() ? "device_copy" : "host_read"; }

std::string BandwidthNote() {
  return OnCuda() ? "bandwidth_ratio = weight bytes read per second over the GPU's "
                    "device-to-device copy bandwidth (bytes read + bytes written per second); "
                    "decode only reads weights, so this is a conservative fraction of the read "
                    "ceiling"
                  : "bandwidth_ratio = weight bytes read per second over the read bandwidth of "
                    "the same threads, measured in the same run";
}

// One bandwidth sample in GB/s: on the CPU the read bandwidth of the benchmark's threads (itself
// the median of 3 passes); with --device cuda[:N] the copy bandwidth of GPU N (the median of
// several copies).
absl::StatusOr<double> MeasureBandwidth() {
  const int64_t bytes = absl::GetFlag(FLAGS_bandwidth_mib) << 20;
  if (OnCuda()) {
#if defined(CMOE_HAVE_CUDA)
    CMOE_ASSIGN_OR_RETURN(const int device, kernels::ParseCudaDevice(absl::GetFlag(FLAGS_device)));
    // A GPU filled by large batches' KV caches may lack room for the two buffers: halve them
    // (down to 256 MiB, still several times the L2 cache) rather than lose the batch.
    for (int64_t size = bytes;; size /= 2) {
      absl::StatusOr<double> gbps = kernels::cuda::MeasureDeviceBandwidth(device, size);
      if (gbps.ok() || !absl::IsResourceExhausted(gbps.status()) ||
          size / 2 < (int64_t{256} << 20)) {
        return gbps;
      }
    }
#else
    return absl::UnavailableError("this build has no CUDA: no device bandwidth to measure");
#endif
  }
  ThreadPool pool(Threads());
  return kernels::cpu::MeasureReadBandwidthGBps(pool, static_cast<size_t>(bytes), 3);
}

void Print(const nlohmann::json& j, const std::string& line) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\n", line.c_str());
  }
  std::fflush(stdout);  // a batch's result is out before the next batch starts
}

// What one column of a decode comparison runs: a model on one backend, or the ranks of one
// expert-parallel group.
struct DecodeVariant {
  std::string label;
  std::vector<engine::LoadedModel> ranks;
};

// One batch size over every variant, printed when done. Steps go in rounds that visit every
// variant in turn, and the bandwidth is sampled between rounds, so that all variants and the
// bandwidth are measured over the same stretch of time (shared machines drift).
absl::Status DecodeBatch(std::vector<DecodeVariant>& variants, int64_t batch, int64_t steps,
                         int64_t prompt_len) {
  CMOE_ASSIGN_OR_RETURN(const kernels::DType kv_dtype,
                        engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  std::vector<std::unique_ptr<DecodeRun>> runs;
  for (DecodeVariant& v : variants) {
    CMOE_ASSIGN_OR_RETURN(std::unique_ptr<DecodeRun> run,
                          DecodeRun::Create(v.ranks, v.label,
                                            {.batch = batch,
                                             .prompt_len = prompt_len,
                                             .steps = steps + 2,  // the warm-up steps too
                                             .kv_block_size = kKvBlock,
                                             .kv_cache_dtype = kv_dtype}));
    runs.push_back(std::move(run));
  }
  const int64_t warmup = 2, rounds = std::min<int64_t>(steps, 4);
  for (auto& run : runs) {
    for (int64_t s = 0; s < warmup; ++s) CMOE_RETURN_IF_ERROR(run->Step(/*timed=*/false));
  }
  std::vector<double> bandwidth_samples;
  const int64_t per_round = (steps + rounds - 1) / rounds;
  for (int64_t done = 0; done < steps; done += per_round) {
    CMOE_ASSIGN_OR_RETURN(const double sample, MeasureBandwidth());
    bandwidth_samples.push_back(sample);
    for (auto& run : runs) {
      for (int64_t s = done; s < std::min(steps, done + per_round); ++s) {
        CMOE_RETURN_IF_ERROR(run->Step(/*timed=*/true));
      }
    }
  }
  CMOE_ASSIGN_OR_RETURN(const double last_sample, MeasureBandwidth());
  bandwidth_samples.push_back(last_sample);
  const double bandwidth = Median(bandwidth_samples);
  std::vector<nlohmann::json> results;
  for (auto& run : runs) {
    nlohmann::json r = run->Result();
    if (r.contains("achieved_gbps")) {
      r["read_bandwidth_gbps"] = bandwidth;
      r["bandwidth_kind"] = BandwidthKind();
      r["bandwidth_ratio"] = r["achieved_gbps"].get<double>() / bandwidth;
    }
    results.push_back(std::move(r));
  }
  // Speedups from median step times: a shared machine's occasional stall moves the mean, not
  // the median.
  const double base = results[0]["median_step_ms"].get<double>();
  for (size_t i = 0; i < results.size(); ++i) {
    nlohmann::json& r = results[i];
    r["speedup"] = base / r["median_step_ms"].get<double>();
    // What expert parallelism costs (or saves) per carved layer against --model on one backend.
    if (runs[i]->ranks() > 1 || variants[i].ranks[0].comm != nullptr) {
      r["expert_parallel"] = true;
      if (runs[i]->carved_layers() > 0) {
        r["step_delta_us_per_carved_layer"] = (r["median_step_ms"].get<double>() - base) * 1e3 /
                                              static_cast<double>(runs[i]->carved_layers());
      }
    }
  }
  const std::string backend(variants[0].ranks[0].model->backend().Name());
  const std::string kind = OnCuda() ? "device copy bandwidth (read+write)" : "read bandwidth";
  if (runs.size() == 1 && !results[0].contains("expert_parallel")) {
    nlohmann::json j = results[0];
    j["mode"] = "decode";
    j["batch"] = batch;
    j["steps"] = steps;
    j["threads"] = Threads();
    j["backend"] = backend;
    j["bandwidth_note"] = BandwidthNote();
    Print(j, absl::StrCat("decode batch ", batch, ": ", j["tokens_per_second"].get<double>(),
                          " tok/s, step ", j["median_step_ms"].get<double>(), " ms, ",
                          j["weight_bytes_per_step"].get<double>() / 1e9, " GB/step, ",
                          j["achieved_gbps"].get<double>(), " GB/s of ", bandwidth, " GB/s ", kind,
                          " measured (", 100.0 * j["bandwidth_ratio"].get<double>(), " %)"));
    return absl::OkStatus();
  }
  nlohmann::json j{{"mode", "decode"},
                   {"batch", batch},
                   {"steps", steps},
                   {"threads", Threads()},
                   {"backend", backend},
                   {"read_bandwidth_gbps", bandwidth},
                   {"bandwidth_kind", BandwidthKind()},
                   {"bandwidth_note", BandwidthNote()},
                   {"models", results}};
  std::string text = absl::StrCat("decode batch ", batch, ", ", backend, ", ", Threads(),
                                  " threads, ", kind, " ", bandwidth, " GB/s");
  for (const auto& r : results) {
    absl::StrAppend(&text, "\n  ", r["model"].get<std::string>(), ": ",
                    r["tokens_per_second"].get<double>(), " tok/s (median step ",
                    r["median_step_ms"].get<double>(), " ms, ", r["speedup"].get<double>(), "x)");
    if (r.contains("bandwidth_ratio")) {
      absl::StrAppend(&text, ", ", r["weight_bytes_per_step"].get<double>() / 1e9, " GB/step, ",
                      100.0 * r["bandwidth_ratio"].get<double>(), " % of ", kind);
    }
    if (r.contains("step_delta_us_per_carved_layer")) {
      absl::StrAppend(&text, ", ", r["step_delta_us_per_carved_layer"].get<double>(),
                      " us per carved layer vs one backend");
    }
    if (r.contains("experts_touched_per_layer")) {
      absl::StrAppend(&text, ", ", r["experts_touched_per_layer"].get<double>(), " of ",
                      r["routed_experts"].get<int>(), " experts touched per layer");
    }
  }
  Print(j, text);
  return absl::OkStatus();
}

// Decode of --model and every --compare model, then --model over each --expert-parallel group,
// at each --batch in turn; the models are loaded once, and each batch's KV caches are freed
// before the next batch allocates its own.
absl::Status RunDecode() {
  const int64_t steps = absl::GetFlag(FLAGS_tokens);
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt);
  CMOE_ASSIGN_OR_RETURN(const std::vector<int64_t> batches,
                        ParseCountList("batch", absl::GetFlag(FLAGS_batch), int64_t{1} << 20));
  std::vector<int64_t> worlds;
  if (!absl::GetFlag(FLAGS_expert_parallel).empty()) {
    CMOE_ASSIGN_OR_RETURN(
        worlds, ParseCountList("expert-parallel", absl::GetFlag(FLAGS_expert_parallel), 64));
  }
  if (steps < 1 || prompt_len < 1 || absl::GetFlag(FLAGS_bandwidth_mib) < 1) {
    return absl::InvalidArgumentError("--tokens, --prompt and --bandwidth-mib must be >= 1");
  }
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  std::vector<DecodeVariant> variants;
  for (const std::string& dir : ModelDirs()) {
    // The load's own cache is one block, released at once: each batch makes its own.
    CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(dir, kKvBlock));
    m.cache.reset();
    variants.push_back({.label = dir});
    variants.back().ranks.push_back(std::move(m));
  }
  for (const int64_t world : worlds) {
    CMOE_ASSIGN_OR_RETURN(const kernels::DType kv_dtype,
                          engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
    CMOE_ASSIGN_OR_RETURN(std::vector<engine::LoadedModel> ranks,
                          engine::LoadExpertParallelModels({.model_dir = absl::GetFlag(FLAGS_model),
                                                            .device = absl::GetFlag(FLAGS_device),
                                                            .threads = absl::GetFlag(FLAGS_threads),
                                                            .kv_block_size = kKvBlock,
                                                            .kv_cache_tokens = kKvBlock,
                                                            .kv_cache_dtype = kv_dtype,
                                                            .load_tokenizer = false},
                                                           static_cast<int32_t>(world)));
    for (engine::LoadedModel& rank : ranks) rank.cache.reset();
    variants.push_back(
        {.label = absl::StrCat(absl::GetFlag(FLAGS_model), " (expert-parallel x", world, ")"),
         .ranks = std::move(ranks)});
  }
  for (const int64_t batch : batches) {
    CMOE_RETURN_IF_ERROR(DecodeBatch(variants, batch, steps, prompt_len));
  }
  return absl::OkStatus();
}

// Prefill of one prompt by --model and every --compare model; the timed repeats go round the
// models in turn (after one untimed warm-up each), so that all share the same stretch of time.
absl::Status RunPrefill() {
  const int64_t n = absl::GetFlag(FLAGS_tokens);
  const int32_t repeats = std::max(absl::GetFlag(FLAGS_repeats), 1);
  if (n < 1) return absl::InvalidArgumentError("--tokens must be >= 1");
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  const std::vector<std::string> dirs = ModelDirs();
  std::vector<engine::LoadedModel> models;
  for (const std::string& dir : dirs) {
    CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(dir, n + 16));
    const engine::ModelConfig& config = m.model->config();
    if (n > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("--tokens exceeds the context of ",
                                                     config.max_position_embeddings, " of ", dir));
    }
    models.push_back(std::move(m));
  }
  std::vector<std::vector<double>> seconds(models.size());
  std::vector<std::vector<int32_t>> prompts;
  for (const auto& m : models) prompts.push_back(RandomTokens(n, m.model->config().vocab_size, 7));
  engine::ForwardOutput out;
  for (int32_t r = 0; r <= repeats; ++r) {  // the first round warms up
    for (size_t i = 0; i < models.size(); ++i) {
      engine::LoadedModel& m = models[i];
      SequenceBlocks seq;
      CMOE_RETURN_IF_ERROR(m.cache->Reserve(seq, n));
      const SequenceChunk chunk{.tokens = prompts[i], .start_pos = 0, .blocks = &seq};
      Timer timer;
      absl::Status status = m.model->Forward({&chunk, 1}, *m.cache, out);
      if (r > 0) seconds[i].push_back(timer.Seconds());
      m.cache->Release(seq);
      CMOE_RETURN_IF_ERROR(status);
    }
  }
  std::vector<nlohmann::json> results;
  for (size_t i = 0; i < models.size(); ++i) {
    const engine::ModelConfig& config = models[i].model->config();
    const double median = Median(seconds[i]);
    // Weight matmuls for every token (the LM head only for the last) plus causal attention.
    const double attention = 4.0 * config.num_hidden_layers * config.num_attention_heads *
                             config.head_dim * (static_cast<double>(n) * (n + 1) / 2);
    const double lm_head = 2.0 * config.vocab_size * config.hidden_size;
    const double flops =
        (static_cast<double>(models[i].model->MatmulFlopsPerToken()) - lm_head) * n + lm_head +
        attention;
    results.push_back({{"model", dirs[i]},
                       {"median_seconds", median},
                       {"tokens_per_second", n / median},
                       {"gflops", flops / median / 1e9}});
    if (const auto& cmoe = config.cmoe; cmoe.has_value()) results.back()["cmoe"] = cmoe->Name();
  }
  const double base = results[0]["median_seconds"].get<double>();
  for (auto& r : results) r["speedup"] = base / r["median_seconds"].get<double>();
  const std::string backend(models[0].model->backend().Name());
  if (results.size() == 1) {
    nlohmann::json j = results[0];
    j["mode"] = "prefill";
    j["tokens"] = n;
    j["threads"] = Threads();
    j["backend"] = backend;
    const double median = j["median_seconds"].get<double>();
    Print(j, absl::StrCat("prefill ", n, " tokens: ", median, " s, ", n / median, " tok/s, ",
                          j["gflops"].get<double>(), " GFLOP/s"));
    return absl::OkStatus();
  }
  nlohmann::json j{{"mode", "prefill"},  {"tokens", n},        {"threads", Threads()},
                   {"backend", backend}, {"repeats", repeats}, {"models", results}};
  std::string text = absl::StrCat("prefill ", n, " tokens, ", backend, ", ", Threads(), " threads");
  for (const auto& r : results) {
    absl::StrAppend(&text, "\n  ", r["model"].get<std::string>(), ": ",
                    r["median_seconds"].get<double>(), " s, ", r["tokens_per_second"].get<double>(),
                    " tok/s, ", r["gflops"].get<double>(), " GFLOP/s (", r["speedup"].get<double>(),
                    "x)");
  }
  Print(j, text);
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-bench decode --model DIR [--compare DIR2,...] [--expert-parallel W[,W2,...]] "
      "--batch B[,B2,...] --tokens N [--threads T] [--device cpu|cuda[:N]] [--json]\n"
      "cmoe-bench prefill --model DIR [--compare DIR2,...] --tokens N [--threads T] [--json]");
  absl::Status status;
  if (args.size() == 1 && args[0] == "decode") {
    status = cmoe::tools::RunDecode();
  } else if (args.size() == 1 && args[0] == "prefill") {
    status = cmoe::tools::RunPrefill();
  } else {
    status = absl::InvalidArgumentError("expected the subcommand 'decode' or 'prefill'");
  }
  return status.ok() ? 0 : cmoe::tools::Fail("cmoe-bench", status);
}
