// Sampling in the model (SequenceChunk::sample -> Backend::SampleTokens): the token a chunk gets is
// the one its logits give, the other chunks' logits are unchanged, only the ids come back from a
// device, bad parameters are refused before the cache is touched, and the engine and
// GenerateTokens on a device give the same tokens as on the host path -- greedy and seeded
// sampling, with the requests that need their logits on the host (penalties, log-probabilities,
// min_new_tokens) mixed in. The device is the CPU backend posing as one
// (tests/engine/fake_device_backend.h).
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "common/logging.h"
#include "engine/checkpoint.h"
#include "engine/engine.h"
#include "engine/generation.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/sampling_host.h"
#include "tests/engine/engine_test_util.h"
#include "tests/engine/fake_device_backend.h"

namespace cmoe::engine {
namespace {

using testing::FakeDeviceBackend;

constexpr int64_t kCacheTokens = 2048;

// stories260K's model and cache on the CPU backend or on the fake device; the tokenizer too.
LoadedModel LoadOn(bool device) {
  LoadedModel m = testing::Load("stories260K", kCacheTokens);
  if (!device) return m;
  auto checkpoint = Checkpoint::Open(testing::ModelDir("stories260K"));
  CMOE_CHECK(checkpoint.ok()) << checkpoint.status();
  auto model = Model::Create(std::move(checkpoint).value(), std::make_unique<FakeDeviceBackend>());
  CMOE_CHECK(model.ok()) << model.status();
  m.model = std::move(model).value();
  auto cache = KvCache::Create(
      m.model->config(),
      {.block_size = 16, .num_blocks = kCacheTokens / 16, .memory = &m.model->backend()});
  CMOE_CHECK(cache.ok()) << cache.status();
  m.cache = std::move(cache).value();
  return m;
}

FakeDeviceBackend& Fake(LoadedModel& m) {
  return static_cast<FakeDeviceBackend&>(m.model->backend());
}

std::vector<int32_t> Prompt(int64_t vocab, size_t n, int32_t offset) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < n; ++i) {
    ids.push_back(static_cast<int32_t>((offset + 5 * i * i + 11 * i) % vocab));
  }
  return ids;
}

// Three prompts in one step: the first and last sampled in the model (greedy, then seeded top-p),
// the middle one with all its logits. Against the same step without sampling: the sampled tokens
// are what SampleRowHost picks from the logits, the middle chunk's logits are unchanged.
void ExpectSampledStepMatchesLogits(bool device) {
  LoadedModel with = LoadOn(device);
  LoadedModel without = LoadOn(device);
  const int64_t vocab = with.model->config().vocab_size;
  const std::vector<std::vector<int32_t>> prompts = {Prompt(vocab, 13, 1), Prompt(vocab, 6, 2),
                                                     Prompt(vocab, 9, 3)};
  const std::vector<kernels::RowSampling> rows = {
      {}, {.temperature = 0.9f, .top_p = 0.8f, .uniform = 0.61}};
  ForwardOutput out_with, out_without;
  for (LoadedModel* m : {&with, &without}) {
    std::vector<SequenceBlocks> blocks(prompts.size());
    std::vector<SequenceChunk> chunks;
    for (size_t i = 0; i < prompts.size(); ++i) {
      ASSERT_TRUE(m->cache->Reserve(blocks[i], static_cast<int64_t>(prompts[i].size())).ok());
      chunks.push_back({.tokens = prompts[i], .start_pos = 0, .blocks = &blocks[i]});
    }
    chunks[1].all_logits = true;
    if (m == &with) {
      chunks[0].sample = &rows[0];
      chunks[2].sample = &rows[1];
    }
    ForwardOutput& out = m == &with ? out_with : out_without;
    ASSERT_TRUE(m->model->Forward(chunks, *m->cache, out).ok());
  }
  ASSERT_EQ(out_with.tokens.size(), 3u);
  EXPECT_EQ(out_with.num_rows[0], 0);
  EXPECT_EQ(out_with.num_rows[2], 0);
  EXPECT_EQ(out_with.tokens[1], -1);
  EXPECT_EQ(out_without.tokens, std::vector<int32_t>(3, -1));
  EXPECT_EQ(out_with.tokens[0], kernels::cpu::SampleRowHost(out_without.Logits(0), rows[0]));
  EXPECT_EQ(out_with.tokens[2], kernels::cpu::SampleRowHost(out_without.Logits(2), rows[1]));
  // Only the middle chunk's rows come back, all of them.
  ASSERT_EQ(out_with.num_rows[1], 6);
  EXPECT_EQ(out_with.logits.size(), static_cast<size_t>(6 * vocab));
  for (int64_t r = 0; r < 6; ++r) {
    const std::span<const float> got = out_with.Logits(1, r);
    const std::span<const float> want = out_without.Logits(1, r);
    for (int64_t v = 0; v < vocab; ++v) {
      ASSERT_NEAR(got[v], want[v], 1e-5f * (1.0f + std::abs(want[v]))) << "row " << r << " " << v;
    }
  }
}

TEST(ModelSamplingTest, SampledChunksGetTheTokenTheirLogitsGiveOnTheHost) {
  ExpectSampledStepMatchesLogits(false);
}

TEST(ModelSamplingTest, SampledChunksGetTheTokenTheirLogitsGiveOnADevice) {
  ExpectSampledStepMatchesLogits(true);
}

TEST(ModelSamplingTest, OnlyTokenIdsComeBackFromADevice) {
  LoadedModel m = LoadOn(true);
  const int64_t vocab = m.model->config().vocab_size;
  constexpr int kBatch = 4;
  std::vector<std::vector<int32_t>> prompts;
  std::vector<SequenceBlocks> blocks(kBatch);
  std::vector<SequenceChunk> chunks;
  const kernels::RowSampling greedy;
  for (int b = 0; b < kBatch; ++b) prompts.push_back(Prompt(vocab, 5 + b, b));
  for (int b = 0; b < kBatch; ++b) {
    ASSERT_TRUE(m.cache->Reserve(blocks[b], static_cast<int64_t>(prompts[b].size())).ok());
    chunks.push_back(
        {.tokens = prompts[b], .start_pos = 0, .blocks = &blocks[b], .sample = &greedy});
  }
  ForwardOutput out;
  int64_t before = Fake(m).copied_to_host();
  ASSERT_TRUE(m.model->Forward(chunks, *m.cache, out).ok());
  // The four ids (and, for a carved model, the expert counts): far less than one row of logits.
  EXPECT_LT(Fake(m).copied_to_host() - before, vocab * 4);
  EXPECT_EQ(Fake(m).sampled_rows(), kBatch);
  EXPECT_TRUE(out.logits.empty());

  // One chunk without sampling: exactly its row comes back.
  std::vector<int32_t> next(kBatch);
  for (int b = 0; b < kBatch; ++b) {
    next[b] = out.tokens[b];
    ASSERT_GE(next[b], 0);
    const auto pos = static_cast<int64_t>(prompts[b].size());
    ASSERT_TRUE(m.cache->Reserve(blocks[b], pos + 1).ok());
    chunks[b] = {.tokens = {&next[b], 1}, .start_pos = pos, .blocks = &blocks[b]};
    if (b != 2) chunks[b].sample = &greedy;
  }
  before = Fake(m).copied_to_host();
  ASSERT_TRUE(m.model->Forward(chunks, *m.cache, out).ok());
  const int64_t copied = Fake(m).copied_to_host() - before;
  EXPECT_GE(copied, vocab * 4);
  EXPECT_LT(copied, 2 * vocab * 4);
  EXPECT_EQ(out.tokens[2], -1);
  EXPECT_EQ(out.Logits(2).size(), static_cast<size_t>(vocab));
}

TEST(ModelSamplingTest, BadSamplingIsRefusedBeforeTheCacheIsTouched) {
  LoadedModel m = LoadOn(true);
  const std::vector<int32_t> prompt = Prompt(m.model->config().vocab_size, 7, 4);
  SequenceBlocks blocks;
  ASSERT_TRUE(m.cache->Reserve(blocks, 7).ok());
  const kernels::RowSampling bad_top_p{.temperature = 1.0f, .top_p = 0.0f};
  const kernels::RowSampling bad_uniform{.temperature = 1.0f, .uniform = 1.0};
  const kernels::RowSampling greedy;
  SequenceChunk chunk{.tokens = prompt, .start_pos = 0, .blocks = &blocks, .sample = &bad_top_p};
  ForwardOutput out;
  absl::Status s = m.model->Forward({&chunk, 1}, *m.cache, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "sequence 0")) << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "top_p")) << s;
  chunk.sample = &bad_uniform;
  s = m.model->Forward({&chunk, 1}, *m.cache, out);
  EXPECT_TRUE(absl::StrContains(s.message(), "uniform")) << s;
  chunk.sample = &greedy;
  chunk.all_logits = true;
  s = m.model->Forward({&chunk, 1}, *m.cache, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.message(), "all logits")) << s;
  // Nothing ran: the cache holds no position, and a valid step still works.
  EXPECT_EQ(Fake(m).sampled_rows(), 0);
  chunk.all_logits = false;
  ASSERT_TRUE(m.model->Forward({&chunk, 1}, *m.cache, out).ok());
  EXPECT_GE(out.tokens[0], 0);
}

// Requests that exercise every sampling path: greedy and seeded sampling (sampled in the model on
// a device), and those that need their logits on the host.
std::vector<GenerationRequest> MixedRequests(const Tokenizer& tok) {
  const std::vector<int32_t> text = testing::SampleTokens(tok, 1500);
  std::vector<GenerationRequest> requests;
  const auto add = [&](size_t offset, size_t length, SamplingParams sampling) {
    GenerationRequest r;
    r.prompt = testing::Slice(text, offset, length);
    r.sampling = sampling;
    r.max_new_tokens = 24;
    r.ignore_eos = true;
    requests.push_back(std::move(r));
    return &requests.back();
  };
  add(0, 12, {});
  add(20, 7, {.temperature = 0.8f, .top_k = 40, .seed = 7});
  add(40, 19, {.temperature = 1.1f, .top_p = 0.9f, .min_p = 0.02f, .seed = 3});
  add(60, 5, {.temperature = 0.7f, .seed = 11});
  add(80, 9, {.temperature = 0.9f, .repetition_penalty = 1.3f, .seed = 5});
  add(100, 11, {.temperature = 0.6f, .presence_penalty = 0.5f, .seed = 9});
  add(120, 8, {.temperature = 1.0f, .seed = 13})->logprobs = true;
  add(140, 6, {.temperature = 0.8f, .top_k = 20, .seed = 17})->min_new_tokens = 6;
  return requests;
}

// All requests at once (continuous batching mixes their prefill and decode); their tokens.
std::vector<std::vector<int32_t>> RunEngine(LoadedModel m, int64_t* sampled_rows) {
  FakeDeviceBackend* fake = m.model->backend().IsDevice()
                                ? &static_cast<FakeDeviceBackend&>(m.model->backend())
                                : nullptr;
  const std::vector<GenerationRequest> requests = MixedRequests(*m.tokenizer);
  std::unique_ptr<Engine> engine = testing::MakeEngine(std::move(m));
  std::vector<std::shared_ptr<testing::RecordingSink>> sinks;
  for (const GenerationRequest& r : requests) {
    sinks.push_back(std::make_shared<testing::RecordingSink>());
    CMOE_CHECK(engine->Submit(r, sinks.back()).ok());
  }
  std::vector<std::vector<int32_t>> tokens;
  for (const auto& sink : sinks) {
    EXPECT_TRUE(sink->WaitFinished());
    EXPECT_EQ(sink->reason(), FinishReason::kLength);
    tokens.push_back(sink->tokens());
  }
  if (fake != nullptr) *sampled_rows = fake->sampled_rows();
  return tokens;
}

TEST(ModelSamplingTest, EngineOnADeviceGivesTheHostPathsTokens) {
  int64_t sampled_rows = 0;
  const std::vector<std::vector<int32_t>> host = RunEngine(LoadOn(false), nullptr);
  const std::vector<std::vector<int32_t>> device = RunEngine(LoadOn(true), &sampled_rows);
  ASSERT_EQ(host.size(), device.size());
  for (size_t i = 0; i < host.size(); ++i) {
    EXPECT_EQ(device[i], host[i]) << "request " << i;
    EXPECT_EQ(host[i].size(), 24u) << "request " << i;
  }
  // Requests 0-3 (24 tokens each) and request 7 after its 6 masked tokens sample in the model;
  // 4-6 never do.
  EXPECT_EQ(sampled_rows, 4 * 24 + (24 - 6));
}

TEST(ModelSamplingTest, GenerateTokensOnADeviceGivesTheHostPathsTokens) {
  LoadedModel host = LoadOn(false);
  LoadedModel device = LoadOn(true);
  const std::vector<int32_t> prompt = testing::SampleTokens(*host.tokenizer, 200);
  for (const SamplingParams& sampling :
       {SamplingParams{}, SamplingParams{.temperature = 0.9f, .top_p = 0.95f, .seed = 21},
        SamplingParams{.temperature = 0.9f, .frequency_penalty = 0.4f, .seed = 21}}) {
    const GenerateOptions options{
        .max_new_tokens = 20, .sampling = sampling, .ignore_eos = true, .prefill_chunk = 16};
    auto want = GenerateTokens(*host.model, *host.cache, prompt, options);
    auto got = GenerateTokens(*device.model, *device.cache, prompt, options);
    ASSERT_TRUE(want.ok() && got.ok()) << want.status() << got.status();
    EXPECT_EQ(got->tokens, want->tokens) << "temperature " << sampling.temperature;
  }
  // The first two generations sampled every token in the model, the third none.
  EXPECT_EQ(Fake(device).sampled_rows(), 2 * 20);
}

}  // namespace
}  // namespace cmoe::engine
