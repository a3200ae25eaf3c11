// Expert parallelism in the model (ModelOptions::expert_parallel, engine/model_expert_parallel.cc)
// on CPU backends: W ranks as threads (tests/kernels/threaded_communicator.h), each a Model of the
// same carved checkpoint (stories260K carved to S2A2E8: 6 routed experts, k = 2) holding its
// block of routed experts and running its own sequences. Every rank's logits must equal those of
// one model without parallelism running the same sequences (f32 rounding aside: the experts'
// matmuls group other rows), over a prefill step and decode steps, for W = 1 to 8 (W = 7 and 8
// leave ranks without experts), with the same tokens routed to each expert. Also: W = 1 over
// SingleProcessCommunicator, ranks without sequences (ForwardIdle), and the errors (a dense
// checkpoint, a num_activated_experts override, ForwardIdle without parallelism).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"
#include "engine/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/model.h"
#include "gtest/gtest.h"
#include "kernels/backend_factory.h"
#include "kernels/single_process_communicator.h"
#include "tests/engine/shared_models.h"
#include "tests/kernels/threaded_communicator.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

constexpr int kDecodeSteps = 3;

// The carved checkpoint, made once for the whole test program.
const std::string& CarvedDir() {
  static testing::ScratchDir* scratch = new testing::ScratchDir();
  static const std::string dir =
      testing::CarveSharedModel("stories260K", 8, 2, 2, scratch->Join("S2A2E8"));
  return dir;
}

// What one rank (or the reference for that rank's sequences) computed: the logits of every step
// (the last token of each sequence) and the tokens routed per (layer, expert), summed over steps.
struct Trace {
  std::vector<std::vector<float>> logits;  // per step: (sequences, vocab)
  std::vector<int64_t> tokens_per_expert;
  absl::Status status;
};

// Two sequences per rank, of different lengths, with tokens that differ between ranks.
std::vector<std::vector<int32_t>> Prompts(int32_t rank) {
  std::vector<std::vector<int32_t>> prompts(2);
  for (int32_t s = 0; s < 2; ++s) {
    const int32_t length = 3 + rank + 4 * s;
    for (int32_t i = 0; i < length; ++i) {
      prompts[s].push_back((rank * 71 + s * 29 + i * 13) % 500 + 1);
    }
  }
  return prompts;
}

// A prefill step of the rank's prompts, then decode steps fed with `feed` (the reference's greedy
// tokens, so that every run sees the same inputs), or with its own argmax when `feed` is null.
absl::Status RunSteps(Model& model, KvCache& cache, int32_t rank, const Trace* feed, Trace& out) {
  const std::vector<std::vector<int32_t>> prompts = Prompts(rank);
  std::vector<SequenceBlocks> blocks(prompts.size());
  std::vector<std::vector<int32_t>> next(prompts.size());
  std::vector<int64_t> pos(prompts.size());
  for (int step = 0; step <= kDecodeSteps; ++step) {
    std::vector<SequenceChunk> chunks;
    for (size_t s = 0; s < prompts.size(); ++s) {
      const std::vector<int32_t>& tokens = step == 0 ? prompts[s] : next[s];
      CMOE_RETURN_IF_ERROR(cache.Reserve(blocks[s], pos[s] + static_cast<int64_t>(tokens.size())));
      chunks.push_back({.tokens = tokens, .start_pos = pos[s], .blocks = &blocks[s]});
    }
    ForwardOutput fwd;
    CMOE_RETURN_IF_ERROR(model.Forward(chunks, cache, fwd));
    const FfnStepStats& stats = model.last_step_stats();
    if (out.tokens_per_expert.empty())
      out.tokens_per_expert.assign(stats.tokens_per_expert.size(), 0);
    for (size_t i = 0; i < stats.tokens_per_expert.size(); ++i) {
      out.tokens_per_expert[i] += stats.tokens_per_expert[i];
    }
    out.logits.push_back(fwd.logits);
    for (size_t s = 0; s < prompts.size(); ++s) {
      pos[s] += static_cast<int64_t>(chunks[s].tokens.size());
      const std::span<const float> row =
          (feed != nullptr ? std::span<const float>(feed->logits[step])
                                 .subspan(s * fwd.vocab, static_cast<size_t>(fwd.vocab))
                           : fwd.Logits(s));
      next[s] = {static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin())};
    }
  }
  for (SequenceBlocks& b : blocks) cache.Release(b);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Model>> MakeModel(kernels::Communicator* comm) {
  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> checkpoint, Checkpoint::Open(CarvedDir()));
  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<kernels::Backend> backend,
                        kernels::CreateBackend({.device = "cpu", .threads = 1}));
  return Model::Create(std::move(checkpoint), std::move(backend), {.expert_parallel = comm});
}

absl::StatusOr<std::unique_ptr<KvCache>> MakeCache(const Model& model) {
  return KvCache::Create(model.config(), {.block_size = 4, .num_blocks = 16});
}

// The reference: one model without parallelism, each rank's sequences on their own.
Trace Reference(int32_t rank) {
  Trace t;
  absl::StatusOr<std::unique_ptr<Model>> model = MakeModel(nullptr);
  CMOE_CHECK(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache = MakeCache(**model);
  CMOE_CHECK(cache.ok()) << cache.status();
  t.status = RunSteps(**model, **cache, rank, nullptr, t);
  return t;
}

void ExpectSameAsReference(const Trace& got, const Trace& want, const std::string& what) {
  ASSERT_TRUE(got.status.ok()) << what << ": " << got.status;
  ASSERT_EQ(got.logits.size(), want.logits.size()) << what;
  for (size_t step = 0; step < want.logits.size(); ++step) {
    ASSERT_EQ(got.logits[step].size(), want.logits[step].size()) << what;
    float scale = 1.0f;
    for (float v : want.logits[step]) scale = std::max(scale, std::abs(v));
    for (size_t i = 0; i < want.logits[step].size(); ++i) {
      ASSERT_NEAR(got.logits[step][i], want.logits[step][i], 1e-4f * scale)
          << what << ": step " << step << " logit " << i;
    }
  }
  EXPECT_EQ(got.tokens_per_expert, want.tokens_per_expert) << what;
}

TEST(ExpertParallelModelTest, EveryRankMatchesOneModelForEveryWorldSize) {
  for (int32_t world = 1; world <= 8; ++world) {
    std::vector<Trace> want;
    for (int32_t r = 0; r < world; ++r) want.push_back(Reference(r));
    std::vector<Trace> got(static_cast<size_t>(world));
    const std::vector<absl::Status> statuses =
        testing::RunOnRanks(world, [&](kernels::Communicator& comm) -> absl::Status {
          CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, MakeModel(&comm));
          CMOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, MakeCache(*model));
          Trace& t = got[comm.rank()];
          t.status = RunSteps(*model, *cache, comm.rank(), &want[comm.rank()], t);
          return t.status;
        });
    for (int32_t r = 0; r < world; ++r) {
      ASSERT_TRUE(statuses[r].ok()) << "W " << world << " rank " << r << ": " << statuses[r];
      ExpectSameAsReference(got[r], want[r], absl::StrCat("W ", world, " rank ", r));
    }
  }
}

// Ranks without sequences of their own (the last W - 2 of W = 4) take every step with
// ForwardIdle: they compute their experts for the other ranks' rows, whose logits must still
// equal the reference's. An idle rank's step counts no tokens.
TEST(ExpertParallelModelTest, IdleRanksServeTheirExperts) {
  constexpr int32_t kWorld = 4;
  const Trace want[2] = {Reference(0), Reference(1)};
  std::vector<Trace> got(kWorld);
  const std::vector<absl::Status> statuses =
      testing::RunOnRanks(kWorld, [&](kernels::Communicator& comm) -> absl::Status {
        CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Model> model, MakeModel(&comm));
        CMOE_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, MakeCache(*model));
        Trace& t = got[comm.rank()];
        if (comm.rank() < 2) {
          t.status = RunSteps(*model, *cache, comm.rank(), &want[comm.rank()], t);
          return t.status;
        }
        for (int step = 0; step <= kDecodeSteps; ++step) {
          CMOE_RETURN_IF_ERROR(model->ForwardIdle());
          const FfnStepStats& stats = model->last_step_stats();
          if (stats.tokens != 0 ||
              std::any_of(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end(),
                          [](int64_t n) { return n != 0; })) {
            return absl::InternalError("an idle rank counted tokens");
          }
        }
        return absl::OkStatus();
      });
  for (int32_t r = 0; r < kWorld; ++r)
    ASSERT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
  for (int32_t r = 0; r < 2; ++r) ExpectSameAsReference(got[r], want[r], absl::StrCat("rank ", r));
}

TEST(ExpertParallelModelTest, SingleProcessCommunicator) {
  const Trace want = Reference(0);
  kernels::SingleProcessCommunicator comm;
  absl::StatusOr<std::unique_ptr<Model>> model = MakeModel(&comm);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache = MakeCache(**model);
  ASSERT_TRUE(cache.ok()) << cache.status();
  Trace got;
  got.status = RunSteps(**model, **cache, 0, &want, got);
  ExpectSameAsReference(got, want, "single process");
}

TEST(ExpertParallelModelTest, Errors) {
  kernels::SingleProcessCommunicator comm;
  // A dense checkpoint has no experts to spread.
  absl::StatusOr<std::unique_ptr<Checkpoint>> dense =
      Checkpoint::Open(testing::SharedModel("tinystories-656k"));
  ASSERT_TRUE(dense.ok()) << dense.status();
  absl::StatusOr<std::unique_ptr<kernels::Backend>> backend =
      kernels::CreateBackend({.device = "cpu", .threads = 1});
  ASSERT_TRUE(backend.ok());
  absl::StatusOr<std::unique_ptr<Model>> m =
      Model::Create(std::move(*dense), std::move(*backend), {.expert_parallel = &comm});
  EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(m.status().message().find("dense"), std::string::npos) << m.status();

  // Every rank must exchange the same rounds: no per-sequence k.
  absl::StatusOr<std::unique_ptr<Model>> model = MakeModel(&comm);
  ASSERT_TRUE(model.ok()) << model.status();
  absl::StatusOr<std::unique_ptr<KvCache>> cache = MakeCache(**model);
  ASSERT_TRUE(cache.ok());
  SequenceBlocks blocks;
  ASSERT_TRUE((*cache)->Reserve(blocks, 2).ok());
  const std::vector<int32_t> tokens = {5, 6};
  const SequenceChunk chunk{.tokens = tokens, .blocks = &blocks, .num_activated_experts = 1};
  ForwardOutput out;
  const absl::Status s = (*model)->Forward({&chunk, 1}, **cache, out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("expert parallelism"), std::string::npos) << s;

  // ForwardIdle is for ranks of a group only.
  absl::StatusOr<std::unique_ptr<Model>> plain = MakeModel(nullptr);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ((*plain)->ForwardIdle().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace cmoe::engine
