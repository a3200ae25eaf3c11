// The device forward of engine/model.h (uploaded weights, device KV cache, fused dense FFN,
// routed experts through the MoE primitives, LM head through a one-group GroupedMatMul, per-step
// counts copied back) checked on the CPU: a backend that calls itself a device but runs the CPU
// ops on its own copies of every weight and on NaN-poisoned allocations, against the host path
// on the three shared models, dense and carved (with and without shared experts, mixed per-request
// expert counts). Logits agree to 1e-4 relative (the same f32 kernels; only the FFN's fused
// layout and summation order differ), greedy tokens are identical, and the FFN statistics equal.
// On a GPU the same orchestration runs the CUDA ops, each tested against the reference in
// tests/kernels/cuda/.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "engine/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/engine/fake_device_backend.h"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using testing::FakeDeviceBackend;

constexpr int64_t kCacheTokens = 1024;

// A model plus its cache on the host path (the CPU backend) or the fake device.
struct Runner {
  std::unique_ptr<Model> model;
  std::unique_ptr<KvCache> cache;
};

Runner MakeRunner(const std::string& dir, bool device) {
  auto checkpoint = Checkpoint::Open(dir);
  CMOE_CHECK(checkpoint.ok()) << checkpoint.status();
  std::unique_ptr<kernels::Backend> backend;
  if (device) {
    backend = std::make_unique<FakeDeviceBackend>();
  } else {
    auto cpu = kernels::cpu::MakeCpuBackend({.threads = 1});
    CMOE_CHECK(cpu.ok());
    backend = std::move(cpu).value();
  }
  auto model = Model::Create(std::move(checkpoint).value(), std::move(backend));
  CMOE_CHECK(model.ok()) << model.status();
  Runner r;
  r.model = std::move(model).value();
  kernels::Backend* memory = device ? &r.model->backend() : nullptr;
  auto cache = KvCache::Create(
      r.model->config(), {.block_size = 16, .num_blocks = kCacheTokens / 16, .memory = memory});
  CMOE_CHECK(cache.ok()) << cache.status();
  r.cache = std::move(cache).value();
  return r;
}

std::vector<int32_t> Prompt(const Model& model, size_t n, int32_t offset) {
  std::vector<int32_t> ids;
  for (size_t i = 0; i < n; ++i) {
    ids.push_back(static_cast<int32_t>((offset + 7 * i * i + 3 * i) % model.config().vocab_size));
  }
  return ids;
}

void ExpectLogitsClose(std::span<const float> got, std::span<const float> want,
                       const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (float w : want) scale = std::max(scale, std::abs(static_cast<double>(w)));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::abs(static_cast<double>(got[i]) - want[i]), 1e-4 * scale + 1e-6)
        << what << " logit " << i << ": device " << got[i] << " host " << want[i];
  }
}

int32_t Argmax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// Two sequences in every step (one with k_override when the model is carved): prefill with all
// logits, then `decode` greedy steps; host and device must agree on logits, tokens and stats.
void ExpectDevicePathMatchesHost(const std::string& dir, int32_t k_override, int decode) {
  Runner host = MakeRunner(dir, false);
  Runner device = MakeRunner(dir, true);
  const Model& m = *host.model;
  std::vector<std::vector<int32_t>> seqs = {Prompt(m, 21, 5), Prompt(m, 9, 11)};
  std::vector<SequenceBlocks> blocks_h(2), blocks_d(2);
  std::vector<int64_t> start(2, 0);
  for (int step = 0; step <= decode; ++step) {
    std::vector<SequenceChunk> ch, cd;
    for (size_t s = 0; s < 2; ++s) {
      const auto len = static_cast<int64_t>(seqs[s].size());
      ASSERT_TRUE(host.cache->Reserve(blocks_h[s], len).ok());
      ASSERT_TRUE(device.cache->Reserve(blocks_d[s], len).ok());
      const std::span<const int32_t> tokens(seqs[s].data() + start[s],
                                            static_cast<size_t>(len - start[s]));
      const int32_t k = (s == 1 && m.config().cmoe.has_value()) ? k_override : 0;
      ch.push_back({.tokens = tokens,
                    .start_pos = start[s],
                    .blocks = &blocks_h[s],
                    .all_logits = step == 0,
                    .num_activated_experts = k});
      cd.push_back(ch.back());
      cd.back().blocks = &blocks_d[s];
    }
    ForwardOutput oh, od;
    ASSERT_TRUE(host.model->Forward(ch, *host.cache, oh).ok());
    const absl::Status status = device.model->Forward(cd, *device.cache, od);
    ASSERT_TRUE(status.ok()) << status;
    ExpectLogitsClose(od.logits, oh.logits, absl::StrCat(dir, " step ", step));
    const FfnStepStats& sh = host.model->last_step_stats();
    const FfnStepStats& sd = device.model->last_step_stats();
    EXPECT_EQ(sd.tokens, sh.tokens);
    EXPECT_EQ(sd.neurons_computed, sh.neurons_computed) << "step " << step;
    EXPECT_EQ(sd.neurons_dense, sh.neurons_dense);
    EXPECT_EQ(sd.tokens_per_expert, sh.tokens_per_expert) << "step " << step;
    for (size_t s = 0; s < 2; ++s) {
      start[s] = static_cast<int64_t>(seqs[s].size());
      const int32_t next_h = Argmax(oh.Logits(s));
      ASSERT_EQ(Argmax(od.Logits(s)), next_h) << dir << " step " << step << " seq " << s;
      seqs[s].push_back(next_h);
    }
  }
}

std::string DenseDir(const std::string& name) {
  absl::StatusOr<std::string> dir = testing::SharedModelDir(name);
  CMOE_CHECK(dir.ok()) << dir.status();
  return *dir;
}

std::string Carve(const std::string& name, int32_t experts, int32_t shared,
                  const std::string& out) {
  return testing::CarveSharedModel(name, experts, shared, /*active=*/2, out);
}

class ModelDevicePathTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ModelDevicePathTest, DenseMatchesTheHostPath) {
  ExpectDevicePathMatchesHost(DenseDir(GetParam()), 0, 12);
}

TEST_P(ModelDevicePathTest, CarvedWithSharedExpertsMatchesTheHostPath) {
  testing::ScratchDir scratch;
  ExpectDevicePathMatchesHost(Carve(GetParam(), 8, 2, scratch.Join("s2a2e8")), 3, 12);
}

TEST_P(ModelDevicePathTest, CarvedWithoutSharedExpertsMatchesTheHostPath) {
  testing::ScratchDir scratch;
  ExpectDevicePathMatchesHost(Carve(GetParam(), 4, 0, scratch.Join("s0a2e4")), 1, 12);
}

INSTANTIATE_TEST_SUITE_P(AllSharedModels, ModelDevicePathTest,
                         ::testing::ValuesIn(testing::SharedModelNames()), [](const auto& info) {
                           std::string n = info.param;
                           std::replace(n.begin(), n.end(), '-', '_');
                           return n;
                         });

TEST(ModelDevicePathTest, UploadsEveryWeightAndRefusesCarvingCalibration) {
  Runner device = MakeRunner(DenseDir("stories260K"), true);
  const auto& fake = static_cast<const FakeDeviceBackend&>(device.model->backend());
  EXPECT_GE(fake.uploaded_bytes(), device.model->DecodeWeightBytes());
  const std::vector<int32_t> tokens = Prompt(*device.model, 4, 1);
  SequenceBlocks blocks;
  ASSERT_TRUE(device.cache->Reserve(blocks, 4).ok());
  const SequenceChunk chunk{.tokens = tokens, .start_pos = 0, .blocks = &blocks};
  const absl::Status s = device.model->ForwardWithFfn(
      {&chunk, 1}, *device.cache,
      [](int64_t, std::span<const float>, int64_t, std::span<float>) { return absl::OkStatus(); });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

}  // namespace
}  // namespace cmoe::engine
