// cmoe-bench: end-to-end speed of a checkpoint on this machine.
//
//   cmoe-bench decode  --model DIR --batch B --tokens N [--threads T] [--json]
//   cmoe-bench prefill --model DIR --tokens N [--threads T] [--json]
//
// decode reports tokens/s, the weight bytes one step reads, the achieved GB/s, and this machine's
// read bandwidth measured by the same threads in the same run, with their ratio. prefill reports
// tokens/s and GFLOP/s of one N-token prompt.
#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "common/timer.h"
#include "engine/model_loader.h"
#include "kernels/cpu/memory_bandwidth.h"
#include "nlohmann/json.hpp"
#include "tools/tool_util.h"

ABSL_FLAG(std::string, model, "", "Model directory (Hugging Face layout)");
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

absl::StatusOr<engine::LoadedModel> Load(int64_t cache_tokens) {
  CMOE_RETURN_IF_ERROR(RequireFlag("model", absl::GetFlag(FLAGS_model)));
  return engine::LoadModel({.model_dir = absl::GetFlag(FLAGS_model),
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

absl::Status RunDecode() {
  const int64_t batch = absl::GetFlag(FLAGS_batch), steps = absl::GetFlag(FLAGS_tokens);
  const int64_t prompt_len = absl::GetFlag(FLAGS_prompt);
  if (batch < 1 || steps < 1 || prompt_len < 1 || absl::GetFlag(FLAGS_bandwidth_mib) < 1) {
    return absl::InvalidArgumentError(
        "--batch, --tokens, --prompt and --bandwidth-mib must be >= 1");
  }
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(batch * (prompt_len + steps + 2 + 16)));
  const engine::ModelConfig& config = m.model->config();
  if (prompt_len + steps + 2 > config.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("--prompt + --tokens exceed the context of ", config.max_position_embeddings));
  }
  std::vector<SequenceBlocks> seqs(static_cast<size_t>(batch));
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SequenceChunk> chunks;
  for (int64_t b = 0; b < batch; ++b) {
    prompts.push_back(RandomTokens(prompt_len, config.vocab_size, b));
    CMOE_RETURN_IF_ERROR(m.cache->Reserve(seqs[b], prompt_len));
    chunks.push_back({.tokens = prompts.back(), .start_pos = 0, .blocks = &seqs[b]});
  }
  engine::ForwardOutput out;
  CMOE_RETURN_IF_ERROR(m.model->Forward(chunks, *m.cache, out));
  // The read bandwidth is sampled between rounds of decode steps, so that its median and the
  // median step time come from the same stretch of time (shared machines drift).
  const int64_t warmup = 2, rounds = std::min<int64_t>(steps, 4);
  std::vector<double> bandwidth_samples;
  std::vector<int32_t> next(static_cast<size_t>(batch));
  std::vector<double> step_seconds;
  for (int64_t s = 0; s < steps + warmup; ++s) {
    if (s >= warmup && (s - warmup) % ((steps + rounds - 1) / rounds) == 0) {
      bandwidth_samples.push_back(MeasureBandwidth());
    }
    for (int64_t b = 0; b < batch; ++b) {
      next[b] = Argmax(out.Logits(b));
      CMOE_RETURN_IF_ERROR(m.cache->Reserve(seqs[b], prompt_len + s + 1));
      chunks[b] = {.tokens = {&next[b], 1}, .start_pos = prompt_len + s, .blocks = &seqs[b]};
    }
    Timer timer;
    CMOE_RETURN_IF_ERROR(m.model->Forward(chunks, *m.cache, out));
    if (s >= warmup) step_seconds.push_back(timer.Seconds());
  }
  bandwidth_samples.push_back(MeasureBandwidth());
  double total = 0.0;
  for (double t : step_seconds) total += t;
  const double median = Median(step_seconds);
  const double bytes = static_cast<double>(m.model->DecodeWeightBytes());
  const double achieved = bytes / median / 1e9;
  const double bandwidth = Median(bandwidth_samples);
  const double tps = static_cast<double>(batch * steps) / total;
  nlohmann::json j{{"mode", "decode"},
                   {"model", absl::GetFlag(FLAGS_model)},
                   {"batch", batch},
                   {"steps", steps},
                   {"threads", Threads()},
                   {"tokens_per_second", tps},
                   {"median_step_ms", median * 1e3},
                   {"weight_bytes_per_step", bytes},
                   {"weight_bytes_per_token", bytes / static_cast<double>(batch)},
                   {"achieved_gbps", achieved},
                   {"read_bandwidth_gbps", bandwidth},
                   {"bandwidth_ratio", achieved / bandwidth}};
  Print(j, absl::StrCat("decode batch ", batch, ": ", tps, " tok/s, step ", median * 1e3, " ms, ",
                        bytes / 1e9, " GB/step, ", achieved, " GB/s of ", bandwidth,
                        " GB/s measured (", 100.0 * achieved / bandwidth, " %)"));
  return absl::OkStatus();
}

absl::Status RunPrefill() {
  const int64_t n = absl::GetFlag(FLAGS_tokens);
  const int32_t repeats = std::max(absl::GetFlag(FLAGS_repeats), 1);
  if (n < 1) return absl::InvalidArgumentError("--tokens must be >= 1");
  CMOE_ASSIGN_OR_RETURN(engine::LoadedModel m, Load(n + 16));
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
      "cmoe-bench decode --model DIR --batch B --tokens N [--threads T] [--json]\n"
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
