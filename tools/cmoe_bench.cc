// cmoe-bench: end-to-end speed of a checkpoint on this machine.
//
//   cmoe-bench decode  --model DIR [--compare DIR2,DIR3] --batch B --tokens N [--threads T]
//   [--json] cmoe-bench prefill --model DIR --tokens N [--threads T] [--json]
//
// decode reports tokens/s, the weight bytes one step reads (carved models: the routed experts the
// step touched), the achieved GB/s, and this machine's read bandwidth measured by the same threads
// in the same run, with their ratio; with --compare, every model's speedup over --model. prefill
// reports tokens/s and GFLOP/s of one N-token prompt.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/model_loader.h"
#include "kernels/cpu/memory_bandwidth.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout)");
ABSL_FLAG(std::string, compare, "",
          "decode: more model directories (comma-separated) measured in the same run; speedups "
          "are relative to --model");
ABSL_FLAG(int64_t, batch, 1, "decode: sequences decoded together");
ABSL_FLAG(int64_t, tokens, 32, "decode: steps to time; prefill: prompt length");
ABSL_FLAG(int64_t, prompt, 16, "decode: prompt tokens per sequence before timing");
ABSL_FLAG(int32_t, repeats, 3, "prefill: timed repeats (the median is reported)");
ABSL_FLAG(int32_t, threads, 0, "CPU threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu", "Backend: cpu | reference | cuda[:N]");
ABSL_FLAG(int64_t, bandwidth_mib, 1024, "Buffer size for the read-bandwidth measurement");
ABSL_FLAG(bool, json, false, "Print one JSON object");

namespace cmoe::tools {
namespace {

using engine::SequenceBlocks;
using engine::SequenceChunk;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

absl::StatusOr<engine::LoadedModel> Load(const std::string& dir, int64_t cache_tokens) {
  CMOE_RETURN_IF_ERROR(RequireFlag("model", dir));
  return engine::LoadModel({.model_dir = dir,
                            .device = absl::GetFlag(FLAGS_device),
                            .threads = absl::GetFlag(FLAGS_threads),
                            .kv_cache_tokens = cache_tokens,
                            .load_tokenizer = false});
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

int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int Threads() {
  return absl::GetFlag(FLAGS_threads) > 0 ? absl::GetFlag(FLAGS_threads)
                                          : ThreadPool::HardwareThreads();
}

// One read-bandwidth sample (itself the median of 3 passes) with the benchmark's thread count.
double MeasureBandwidth() {
  ThreadPool pool(Threads());
  return kernels::cpu::MeasureReadBandwidthGBps(
      pool, static_cast<size_t>(absl::GetFlag(FLAGS_bandwidth_mib)) << 20, 3);
}

void Print(const nlohmann::json& j, const std::string& line) {
  if (absl::GetFlag(FLAGS_json)) {
    std::printf("%s\n", j.dump().c_str());
  } else {
    std::printf("%s\n", line.c_str());
  }
}

// One model's decode benchmark: `batch` sequences prefilled with random prompts, then greedy
// decode steps, each timed alone.
class DecodeRun {
 public:
  static absl::StatusOr<std::unique_ptr<DecodeRun>> Create(const std::string& dir, int64_t batch,
                                                           int64_t prompt_len, int64_t steps) {
    auto run = std::unique_ptr<DecodeRun>(new DecodeRun());
    run->dir_ = dir;
    run->prompt_len_ = prompt_len;
    CMOE_ASSIGN_OR_RETURN(run->m_, Load(dir, batch * (prompt_len + steps + 2 + 16)));
    const engine::ModelConfig& config = run->m_.model->config();
    if (prompt_len + steps + 2 > config.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("--prompt + --tokens exceed the context of ",
                                                     config.max_position_embeddings, " of ", dir));
    }
    run->seqs_.resize(static_cast<size_t>(batch));
    run->next_.resize(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      run->prompts_.push_back(RandomTokens(prompt_len, config.vocab_size, b));
    }
    for (int64_t b = 0; b < batch; ++b) {
      CMOE_RETURN_IF_ERROR(run->m_.cache->Reserve(run->seqs_[b], prompt_len));
      run->chunks_.push_back(
          {.tokens = run->prompts_[b], .start_pos = 0, .blocks = &run->seqs_[b]});
    }
    CMOE_RETURN_IF_ERROR(run->m_.model->Forward(run->chunks_, *run->m_.cache, run->out_));
    return run;
  }

  // One decode step for every sequence; `timed` records it.
  absl::Status Step(bool timed) {
    const auto batch = static_cast<int64_t>(seqs_.size());
    for (int64_t b = 0; b < batch; ++b) {
      next_[b] = Argmax(out_.Logits(b));
      CMOE_RETURN_IF_ERROR(m_.cache->Reserve(seqs_[b], prompt_len_ + pos_ + 1));
      chunks_[b] = {.tokens = {&next_[b], 1}, .start_pos = prompt_len_ + pos_, .blocks = &seqs_[b]};
    }
    Timer timer;
    CMOE_RETURN_IF_ERROR(m_.model->Forward(chunks_, *m_.cache, out_));
    const double seconds = timer.Seconds();
    ++pos_;
    if (!timed) return absl::OkStatus();
    step_seconds_.push_back(seconds);
    step_bytes_.push_back(static_cast<double>(m_.model->LastStepWeightBytes()));
    const engine::FfnStepStats& st = m_.model->last_step_stats();
    if (st.num_routed > 0) {
      int64_t touched = 0;
      for (int64_t c : st.tokens_per_expert) touched += c > 0 ? 1 : 0;
      const double layers = static_cast<double>(m_.model->config().num_hidden_layers);
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
        {"bandwidth_ratio", achieved / bandwidth},
        {"ffn_activation_ratio",
         neurons_dense_ > 0 ? static_cast<double>(neurons_) / neurons_dense_ : 0.0}};
    if (const auto& cmoe = m_.model->config().cmoe; cmoe.has_value()) {
      j["cmoe"] = cmoe->Name();
      j["routed_experts"] = cmoe->num_routed();
      j["experts_touched_per_layer"] = Median(touched_);
    }
    return j;
  }

 private:
  DecodeRun() = default;

  std::string dir_;
  int64_t prompt_len_ = 0;
  int64_t pos_ = 0;
  engine::LoadedModel m_;
  std::vector<SequenceBlocks> seqs_;
  std::vector<std::vector<int32_t>> prompts_;
  std::vector<SequenceChunk> chunks_;
  std::vector<int32_t> next_;
  engine::ForwardOutput out_;
  std::vector<double> step_seconds_, step_bytes_, touched_;
  int64_t neurons_ = 0, neurons_dense_ = 0;
};

// Decode of --model and every --compare model in one run. Steps go in rounds that visit every
// model in turn, and the read bandwidth is sampled between rounds, so that all models and the
// bandwidth are measured over the same stretch of time (shared machines drift).
absl::Status RunDecode() {
  const int64_t batch = absl::GetFlag(FLAGS_batch), steps = absl::GetFlag(FLAGS_tokens);
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt);
  if (batch < 1 || steps < 1 || prompt_len < 1 || absl::GetFlag(FLAGS_bandwidth_mib) < 1) {
    return absl::InvalidArgumentError(
        "--batch, --tokens, --prompt and --bandwidth-mib must be >= 1");
  }
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  std::vector<std::string> dirs = {absl::GetFlag(FLAGS_model)};
  const std::vector<std::string> compare =
      absl::StrSplit(absl::GetFlag(FLAGS_compare), ',', absl::SkipEmpty());
  dirs.insert(dirs.end(), compare.begin(), compare.end());
  std::vector<std::unique_ptr<DecodeRun>> runs;
  for (const std::string& dir : dirs) {
    CMOE_ASSIGN_OR_RETURN(std::unique_ptr<DecodeRun> run,
                          DecodeRun::Create(dir, batch, prompt_len, steps));
    runs.push_back(std::move(run));
  }
  const int64_t warmup = 2, rounds = std::min<int64_t>(steps, 4);
  for (auto& run : runs) {
    for (int64_t s = 0; s < warmup; ++s) CMOE_RETURN_IF_ERROR(run->Step(/*timed=*/false));
  }
  std::vector<double> bandwidth_samples;
  const int64_t per_round = (steps + rounds - 1) / rounds;
  for (int64_t done = 0; done < steps; done += per_round) {
    bandwidth_samples.push_back(MeasureBandwidth());
    for (auto& run : runs) {
      for (int64_t s = done; s < std::min(steps, done + per_round); ++s) {
        CMOE_RETURN_IF_ERROR(run->Step(/*timed=*/true));
      }
    }
  }
  bandwidth_samples.push_back(MeasureBandwidth());
  const double bandwidth = Median(bandwidth_samples);
  std::vector<nlohmann::json> results;
  for (auto& run : runs) results.push_back(run->Result(bandwidth));
  // Speedups from median step times: a shared machine's occasional stall moves the mean, not
  // the median.
  const double base = results[0]["median_step_ms"].get<double>();
  for (auto& r : results) r["speedup"] = base / r["median_step_ms"].get<double>();
  if (runs.size() == 1) {
    nlohmann::json j = results[0];
    j["mode"] = "decode";
    j["batch"] = batch;
    j["steps"] = steps;
    j["threads"] = Threads();
    Print(j, absl::StrCat("decode batch ", batch, ": ", j["tokens_per_second"].get<double>(),
                          " tok/s, step ", j["median_step_ms"].get<double>(), " ms, ",
                          j["weight_bytes_per_step"].get<double>() / 1e9, " GB/step, ",
                          j["achieved_gbps"].get<double>(), " GB/s of ", bandwidth,
                          " GB/s measured (", 100.0 * j["bandwidth_ratio"].get<double>(), " %)"));
    return absl::OkStatus();
  }
  nlohmann::json j{{"mode", "decode"},
                   {"batch", batch},
                   {"steps", steps},
                   {"threads", Threads()},
                   {"read_bandwidth_gbps", bandwidth},
                   {"models", results}};
  std::string text = absl::StrCat("decode batch ", batch, ", ", Threads(),
                                  " threads, read bandwidth ", bandwidth, " GB/s");
  for (const auto& r : results) {
    absl::StrAppend(&text, "\n  ", r["model"].get<std::string>(), ": ",
                    r["tokens_per_second"].get<double>(), " tok/s (median step ",
                    r["median_step_ms"].get<double>(), " ms, ", r["speedup"].get<double>(), "x), ",
                    r["weight_bytes_per_step"].get<double>() / 1e9, " GB/step, ",
                    100.0 * r["bandwidth_ratio"].get<double>(), " % of bandwidth");
    if (r.contains("experts_touched_per_layer")) {
      absl::StrAppend(&text, ", ", r["experts_touched_per_layer"].get<double>(), " of ",
                      r["routed_experts"].get<int>(), " experts touched per layer");
    }
  }
  Print(j, text);
  return absl::OkStatus();
}

absl::Status RunPrefill() {
  const int64_t n = absl::GetFlag(FLAGS_tokens);
  const int32_t repeats = std::max(absl::GetFlag(FLAGS_repeats), 1);
  if (n < 1) return absl::InvalidArgumentError("--tokens must be >= 1");
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(absl::GetFlag(FLAGS_model), n + 16));
  const engine::ModelConfig& config = m.model->config();
  if (n > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("--tokens exceeds the context of ", config.max_position_embeddings));
  }
  const std::vector<int32_t> prompt = RandomTokens(n, config.vocab_size, 7);
  std::vector<double> seconds;
  engine::ForwardOutput out;
  for (int32_t r = 0; r <= repeats; ++r) {  // the first run warms up
    SequenceBlocks seq;
    CMOE_RETURN_IF_ERROR(m.cache->Reserve(seq, n));
    const SequenceChunk chunk{.tokens = prompt, .start_pos = 0, .blocks = &seq};
    Timer timer;
    absl::Status status = m.model->Forward({&chunk, 1}, *m.cache, out);
    if (r > 0) seconds.push_back(timer.Seconds());
    m.cache->Release(seq);
    CMOE_RETURN_IF_ERROR(status);
  }
  const double median = Median(seconds);
  // Weight matmuls for every token (the LM head only for the last) plus causal attention.
  const double attention = 4.0 * config.num_hidden_layers * config.num_attention_heads *
                           config.head_dim * (static_cast<double>(n) * (n + 1) / 2);
  const double lm_head = 2.0 * config.vocab_size * config.hidden_size;
  const double flops =
      (static_cast<double>(m.model->MatmulFlopsPerToken()) - lm_head) * n + lm_head + attention;
  nlohmann::json j{{"mode", "prefill"},
                   {"model", absl::GetFlag(FLAGS_model)},
                   {"tokens", n},
                   {"threads", Threads()},
                   {"median_seconds", median},
                   {"tokens_per_second", n / median},
                   {"gflops", flops / median / 1e9}};
  Print(j, absl::StrCat("prefill ", n, " tokens: ", median, " s, ", n / median, " tok/s, ",
                        flops / median / 1e9, " GFLOP/s"));
  return absl::OkStatus();
}

}  // namespace
}  // namespace cmoe::tools

int main(int argc, char** argv) {
  const std::vector<std::string> args = cmoe::tools::ParseToolFlags(
      argc, argv,
      "cmoe-bench decode --model DIR [--compare DIR2,...] --batch B --tokens N [--threads T] "
      "[--json]\n"
      "cmoe-bench prefill --model DIR --tokens N [--threads T] [--json]");
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
