// cmoe-bench: end-to-end speed of a checkpoint on this machine.
//
//   cmoe-bench decode  --model DIR [--compare DIR2,DIR3] --batch B[,B2,...] --tokens N
//                      [--threads T] [--device cpu|cuda[:N]] [--json]
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
// line, or one JSON object per line with --json) as soon as it is done. prefill reports tokens/s
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

namespace cmoe::tools {
namespace {

using engine::SequenceBlocks;
using engine::SequenceChunk;

constexpr int32_t kKvBlock = 16;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

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

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Ids from 3 skip the usual <unk>/BOS/EOS; tiny vocabularies use every id.
  const auto last = static_cast<int32_t>(vocab - 1);
  std::uniform_int_distribution<int32_t> dist(std::min(3, last), last);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

// Decode steps sample greedily in the model, as the server does on a device: only the token ids
// come back from a GPU, not the logits.
constexpr kernels::RowSampling kGreedy{};

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

// A KV cache of `tokens` positions in the memory of the model's backend.
absl::StatusOr<std::unique_ptr<engine::KvCache>> MakeCache(engine::Model& model, int64_t tokens) {
  kernels::Backend& backend = model.backend();
  CMOE_ASSIGN_OR_RETURN(const kernels::DType dtype,
                        engine::ParseKvCacheDType(absl::GetFlag(FLAGS_kv_cache_dtype)));
  return engine::KvCache::Create(model.config(),
                                 {.block_size = kKvBlock,
                                  .num_blocks = (tokens + kKvBlock - 1) / kKvBlock,
                                  .dtype = dtype,
                                  .memory = backend.IsDevice() ? &backend : nullptr});
}

// One model's decode benchmark at one batch size: `batch` sequences prefilled with random
// prompts into a KV cache of their own, then greedy decode steps, each timed alone.
class DecodeRun {
 public:
  static absl::StatusOr<std::unique_ptr<DecodeRun>> Create(engine::Model& model,
                                                           const std::string& dir, int64_t batch,
                                                           int64_t prompt_len, int64_t steps) {
    auto run = std::unique_ptr<DecodeRun>(new DecodeRun());
    run->model_ = &model;
    run->dir_ = dir;
    run->prompt_len_ = prompt_len;
    const engine::ModelConfig& config = model.config();
    if (prompt_len + steps + 2 > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt + --tokens exceed the context of ",
                                                     config.max_position_embeddings, " of ", dir));
    }
    CMOE_ASSIGN_OR_RETURN(run->cache_, MakeCache(model, batch * (prompt_len + steps + 2 + 16)));
    run->seqs_.resize(static_cast<size_t>(batch));
    run->next_.resize(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      run->prompts_.push_back(RandomTokens(prompt_len, config.vocab_size, b));
    }
    for (int64_t b = 0; b < batch; ++b) {
      CMOE_RETURN_IF_ERROR(run->cache_->Reserve(run->seqs_[b], prompt_len));
      run->chunks_.push_back({.tokens = run->prompts_[b],
                              .start_pos = 0,
                              .blocks = &run->seqs_[b],
                              .sample = &kGreedy});
    }
    CMOE_RETURN_IF_ERROR(model.Forward(run->chunks_, *run->cache_, run->out_));
    return run;
  }

  // One decode step for every sequence; `timed` records it.
  absl::Status Step(bool timed) {
    const auto batch = static_cast<int64_t>(seqs_.size());
    for (int64_t b = 0; b < batch; ++b) {
      next_[b] = out_.tokens[b];
      CMOE_RETURN_IF_ERROR(cache_->Reserve(seqs_[b], prompt_len_ + pos_ + 1));
      chunks_[b] = {.tokens = {&next_[b], 1},
                    .start_pos = prompt_len_ + pos_,
                    .blocks = &seqs_[b],
                    .sample = &kGreedy};
    }
    Timer timer;
    CMOE_RETURN_IF_ERROR(model_->Forward(chunks_, *cache_, out_));
    const double seconds = timer.Seconds();
    ++pos_;
    if (!timed) return absl::OkStatus();
    step_seconds_.push_back(seconds);
    step_bytes_.push_back(static_cast<double>(model_->LastStepWeightBytes()));
    const engine::FfnStepStats& st = model_->last_step_stats();
    if (st.num_routed > 0) {
      int64_t touched = 0;
      for (int64_t c : st.tokens_per_expert) touched += c > 0 ? 1 : 0;
      const double layers = static_cast<double>(model_->config().num_hidden_layers);
      touched_.push_back(static_cast<double>(touched) / layers);
    }
    neurons_ += st.neurons_computed;
    neurons_dense_ += st.neurons_dense;
    return absl::OkStatus();
  }

  nlohmann::json Result(double bandwidth) const {
    const auto batch = static_cast<int64_t>(seqs_.size());
    double total = 0.0;
    for (double t : step_seconds_) total += t;
    const double median = Median(step_seconds_);
    const double bytes = Median(step_bytes_);
    const double achieved = bytes / median / 1e9;
    nlohmann::json j{
        {"model", dir_},
        {"tokens_per_second", static_cast<double>(batch) * step_seconds_.size() / total},
        {"median_step_ms", median * 1e3},
        {"median_tokens_per_second", static_cast<double>(batch) / median},
        {"weight_bytes_per_step", bytes},
        {"weight_bytes_per_token", bytes / static_cast<double>(batch)},
        {"achieved_gbps", achieved},
        {"read_bandwidth_gbps", bandwidth},
        {"bandwidth_kind", BandwidthKind()},
        {"bandwidth_ratio", achieved / bandwidth},
        {"ffn_activation_ratio",
         neurons_dense_ > 0 ? static_cast<double>(neurons_) / neurons_dense_ : 0.0}};
    if (const auto& cmoe = model_->config().cmoe; cmoe.has_value()) {
      j["cmoe"] = cmoe->Name();
      j["routed_experts"] = cmoe->num_routed();
      j["experts_touched_per_layer"] = Median(touched_);
    }
    return j;
  }

 private:
  DecodeRun() = default;

  engine::Model* model_ = nullptr;
  std::string dir_;
  int64_t prompt_len_ = 0;
  int64_t pos_ = 0;
  std::unique_ptr<engine::KvCache> cache_;
  std::vector<SequenceBlocks> seqs_;
  std::vector<std::vector<int32_t>> prompts_;
  std::vector<SequenceChunk> chunks_;
  std::vector<int32_t> next_;
  engine::ForwardOutput out_;
  std::vector<double> step_seconds_, step_bytes_, touched_;
  int64_t neurons_ = 0, neurons_dense_ = 0;
};

// "1,8,32" -> {1, 8, 32}; every entry a whole number >= 1.
absl::StatusOr<std::vector<int64_t>> ParseBatches(const std::string& flag) {
  std::vector<int64_t> batches;
  for (absl::string_view part : absl::StrSplit(flag, ',')) {
    int64_t b = 0;
    if (!absl::SimpleAtoi(part, &b) || b < 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--batch '", flag, "': expected whole numbers >= 1, comma-separated (1 or 1,8,32)"));
    }
    batches.push_back(b);
  }
  return batches;
}

// One batch size over every loaded model, printed when done. Steps go in rounds that visit
// every model in turn, and the bandwidth is sampled between rounds, so that all models and the
// bandwidth are measured over the same stretch of time (shared machines drift).
absl::Status DecodeBatch(std::vector<engine::LoadedModel>& models,
                         const std::vector<std::string>& dirs, int64_t batch, int64_t steps,
                         int64_t prompt_len) {
  std::vector<std::unique_ptr<DecodeRun>> runs;
  for (size_t i = 0; i < models.size(); ++i) {
    CMOE_ASSIGN_OR_RETURN(std::unique_ptr<DecodeRun> run,
                          DecodeRun::Create(*models[i].model, dirs[i], batch, prompt_len, steps));
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
  for (auto& run : runs) results.push_back(run->Result(bandwidth));
  // Speedups from median step times: a shared machine's occasional stall moves the mean, not
  // the median.
  const double base = results[0]["median_step_ms"].get<double>();
  for (auto& r : results) r["speedup"] = base / r["median_step_ms"].get<double>();
  const std::string backend(models[0].model->backend().Name());
  const std::string kind = OnCuda() ? "device copy bandwidth (read+write)" : "read bandwidth";
  if (runs.size() == 1) {
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
                    r["median_step_ms"].get<double>(), " ms, ", r["speedup"].get<double>(), "x), ",
                    r["weight_bytes_per_step"].get<double>() / 1e9, " GB/step, ",
                    100.0 * r["bandwidth_ratio"].get<double>(), " % of ", kind);
    if (r.contains("experts_touched_per_layer")) {
      absl::StrAppend(&text, ", ", r["experts_touched_per_layer"].get<double>(), " of ",
                      r["routed_experts"].get<int>(), " experts touched per layer");
    }
  }
  Print(j, text);
  return absl::OkStatus();
}

// Decode of --model and every --compare model, at each --batch in turn; the models are loaded
// once, and each batch's KV caches are freed before the next batch allocates its own.
absl::Status RunDecode() {
  const int64_t steps = absl::GetFlag(FLAGS_tokens);
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt);
  CMOE_ASSIGN_OR_RETURN(const std::vector<int64_t> batches,
                        ParseBatches(absl::GetFlag(FLAGS_batch)));
  if (steps < 1 || prompt_len < 1 || absl::GetFlag(FLAGS_bandwidth_mib) < 1) {
    return absl::InvalidArgumentError("--tokens, --prompt and --bandwidth-mib must be >= 1");
  }
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  const std::vector<std::string> dirs = ModelDirs();
  std::vector<engine::LoadedModel> models;
  for (const std::string& dir : dirs) {
    // The load's own cache is one block, released at once: each batch makes its own.
    CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(dir, kKvBlock));
    m.cache.reset();
    models.push_back(std::move(m));
  }
  for (const int64_t batch : batches) {
    CMOE_RETURN_IF_ERROR(DecodeBatch(models, dirs, batch, steps, prompt_len));
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
      "cmoe-bench decode --model DIR [--compare DIR2,...] --batch B[,B2,...] --tokens N "
      "[--threads T] [--device cpu|cuda[:N]] [--json]\n"
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
