// CudaBackend's step graphs (Backend::BeginGraph / EndGraph / CancelGraph, cuda_backend_graph.cc):
// a decode layer (embedding, RMSNorm, q/k/v GEMVs, RoPE, KV write, paged attention, the output
// projection, and the MoE FFN: router, top-k, dispatch, grouped GEMVs, combine) recorded step
// after step must leave exactly the bytes the same ops leave queued one by one on a backend with
// graphs off (same kernels, same order: equality, not a tolerance). Also: host operands are read
// at the call (overwriting them before EndGraph changes nothing), steps of one shape update the
// graph rather than rebuild it, scratch areas may grow while recording, an op that must wait for
// the device reports IsNotInGraph and a cancelled recording runs nothing and leaves no stale
// upload behind; a one-group GroupedMatMul (the LM head) records without reading group sizes.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/moe_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

constexpr int64_t kVocab = 97;
constexpr int64_t kDim = 64;
constexpr int32_t kHeads = 4;
constexpr int32_t kKvHeads = 2;
constexpr int32_t kHeadDim = 16;
constexpr int32_t kBlockSize = 4;
constexpr int64_t kBlocks = 64;
constexpr int32_t kExperts = 4;
constexpr int32_t kActive = 2;
constexpr int64_t kWidth = 24;  // routed expert width
constexpr int64_t kMaxRows = 8;

std::unique_ptr<Backend> MakeBackend(GraphMode graphs) {
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      MakeCudaBackend({.device = 0, .graphs = graphs});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return backend.ok() ? std::move(backend).value() : nullptr;
}

// The layer's weights, random F32 (host bytes; each backend uploads its own copy).
struct HostWeights {
  std::vector<float> embed, norm, wq, wk, wv, wo, router, gate_up, down;
  HostWeights() {
    std::mt19937 rng(7);
    embed = RandomFloats(kVocab * kDim, rng);
    norm = RandomFloats(kDim, rng, 0.5f, 1.5f);
    wq = RandomFloats(kHeads * kHeadDim * kDim, rng, -0.2f, 0.2f);
    wk = RandomFloats(kKvHeads * kHeadDim * kDim, rng, -0.2f, 0.2f);
    wv = RandomFloats(kKvHeads * kHeadDim * kDim, rng, -0.2f, 0.2f);
    wo = RandomFloats(kDim * kHeads * kHeadDim, rng, -0.2f, 0.2f);
    router = RandomFloats(2 * kExperts * kDim, rng);
    gate_up = RandomFloats(kExperts * 2 * kWidth * kDim, rng, -0.2f, 0.2f);
    down = RandomFloats(kExperts * kDim * kWidth, rng, -0.2f, 0.2f);
  }
};

// One backend's copy of the weights and the step's device buffers.
class Layer {
 public:
  Layer(Backend& b, const HostWeights& w) : b_(b) {
    embed_ = Upload(w.embed, kVocab, kDim);
    norm_ = Upload(w.norm, 1, kDim);
    wq_ = Upload(w.wq, kHeads * kHeadDim, kDim);
    wk_ = Upload(w.wk, kKvHeads * kHeadDim, kDim);
    wv_ = Upload(w.wv, kKvHeads * kHeadDim, kDim);
    wo_ = Upload(w.wo, kDim, kHeads * kHeadDim);
    router_ = Upload(w.router, 2 * kExperts, kDim);
    const WeightView gu = Upload(w.gate_up, kExperts * 2 * kWidth, kDim);
    const WeightView dn = Upload(w.down, kExperts * kDim, kWidth);
    gate_up_ = {.data = gu.data,
                .dtype = DType::kF32,
                .groups = kExperts,
                .rows = 2 * kWidth,
                .cols = kDim};
    down_ = {
        .data = dn.data, .dtype = DType::kF32, .groups = kExperts, .rows = kDim, .cols = kWidth};
    const int64_t cache = kBlocks * kBlockSize * kKvHeads * kHeadDim;
    for (Buffer* buf :
         {&x_, &h_, &q_, &k_, &v_, &attn_, &logits_, &weights_, &selected_, &counts_, &offsets_,
          &slot_token_, &slot_source_, &token_slot_, &gate_up_out_, &act_, &expert_out_}) {
      *buf = Alloc(kMaxRows * 2 * kWidth * kDim * 4);
    }
    k_cache_ = Alloc(cache * 4);
    v_cache_ = Alloc(cache * 4);
    const std::vector<float> zeros(static_cast<size_t>(cache), 0.0f);
    EXPECT_TRUE(b_.CopyToBackend(k_cache_.data(), zeros.data(), cache * 4).ok());
    EXPECT_TRUE(b_.CopyToBackend(v_cache_.data(), zeros.data(), cache * 4).ok());
  }

  // One step of decode rows: ids, positions and slots per row, one sequence per row.
  absl::Status Step(std::span<const int32_t> ids, std::span<const int32_t> positions,
                    std::span<const int32_t> slots, std::span<const AttentionSequence> seqs) {
    const auto rows = static_cast<int64_t>(ids.size());
    float* x = x_.as<float>();
    float* h = h_.as<float>();
    CMOE_RETURN_IF_ERROR(b_.Embedding(embed_, ids, x));
    CMOE_RETURN_IF_ERROR(b_.RmsNorm(x, rows, norm_, 1e-5f, h));
    CMOE_RETURN_IF_ERROR(b_.MatMul(h, rows, wq_, q_.as<float>(), Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b_.MatMul(h, rows, wk_, k_.as<float>(), Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b_.MatMul(h, rows, wv_, v_.as<float>(), Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b_.Rope(q_.as<float>(), positions, kHeads, kHeadDim, 10000.0f));
    CMOE_RETURN_IF_ERROR(b_.Rope(k_.as<float>(), positions, kKvHeads, kHeadDim, 10000.0f));
    const PagedKvLayer cache{.k = k_cache_.as<float>(),
                             .v = v_cache_.as<float>(),
                             .num_blocks = kBlocks,
                             .block_size = kBlockSize,
                             .n_kv_heads = kKvHeads,
                             .head_dim = kHeadDim};
    CMOE_RETURN_IF_ERROR(b_.KvWrite(k_.as<float>(), v_.as<float>(), slots, cache));
    CMOE_RETURN_IF_ERROR(b_.Attention({.q = q_.as<float>(),
                                       .num_rows = rows,
                                       .n_heads = kHeads,
                                       .scale = 0.25f,
                                       .sequences = seqs,
                                       .cache = cache,
                                       .out = attn_.as<float>()}));
    CMOE_RETURN_IF_ERROR(b_.MatMul(attn_.as<float>(), rows, wo_, x, Accumulate::kYes));
    CMOE_RETURN_IF_ERROR(b_.RmsNorm(x, rows, norm_, 1e-5f, h));
    CMOE_RETURN_IF_ERROR(b_.MatMul(h, rows, router_, logits_.as<float>(), Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b_.RouteTopK({.logits = logits_.as<float>(),
                                       .num_tokens = rows,
                                       .num_experts = kExperts,
                                       .num_activated = kActive,
                                       .selected = selected_.as<int32_t>(),
                                       .weights = weights_.as<float>()}));
    CMOE_RETURN_IF_ERROR(b_.BuildDispatch({.selected = selected_.as<int32_t>(),
                                           .num_tokens = rows,
                                           .k = kActive,
                                           .num_experts = kExperts,
                                           .counts = counts_.as<int32_t>(),
                                           .offsets = offsets_.as<int32_t>(),
                                           .slot_token = slot_token_.as<int32_t>(),
                                           .slot_source = slot_source_.as<int32_t>(),
                                           .token_slot = token_slot_.as<int32_t>()}));
    const int64_t slots_n = rows * kActive;
    CMOE_RETURN_IF_ERROR(b_.GroupedMatMul({.x = h,
                                           .row_index = slot_token_.as<int32_t>(),
                                           .num_rows = slots_n,
                                           .offsets = offsets_.as<int32_t>(),
                                           .w = gate_up_,
                                           .y = gate_up_out_.as<float>()}));
    CMOE_RETURN_IF_ERROR(
        b_.SiluMulPacked(gate_up_out_.as<float>(), slots_n, kWidth, act_.as<float>()));
    CMOE_RETURN_IF_ERROR(b_.GroupedMatMul({.x = act_.as<float>(),
                                           .num_rows = slots_n,
                                           .offsets = offsets_.as<int32_t>(),
                                           .w = down_,
                                           .y = expert_out_.as<float>()}));
    return b_.CombineExperts({.expert_out = expert_out_.as<float>(),
                              .token_slot = token_slot_.as<int32_t>(),
                              .weights = weights_.as<float>(),
                              .num_tokens = rows,
                              .k = kActive,
                              .dim = kDim,
                              .x = x});
  }

  // The residual stream's first `rows` rows and the whole KV cache, as bytes.
  std::vector<float> State(int64_t rows) {
    const int64_t cache = kBlocks * kBlockSize * kKvHeads * kHeadDim;
    std::vector<float> out(static_cast<size_t>(rows * kDim + 2 * cache));
    EXPECT_TRUE(b_.CopyToHost(out.data(), x_.data(), rows * kDim * 4).ok());
    EXPECT_TRUE(b_.CopyToHost(out.data() + rows * kDim, k_cache_.data(), cache * 4).ok());
    EXPECT_TRUE(b_.CopyToHost(out.data() + rows * kDim + cache, v_cache_.data(), cache * 4).ok());
    return out;
  }

 private:
  WeightView Upload(const std::vector<float>& values, int64_t rows, int64_t cols) {
    absl::StatusOr<WeightView> w =
        b_.UploadWeight({.data = values.data(), .dtype = DType::kF32, .rows = rows, .cols = cols});
    EXPECT_TRUE(w.ok()) << w.status();
    return w.ok() ? *w : WeightView{};
  }
  Buffer Alloc(int64_t bytes) {
    absl::StatusOr<Buffer> buffer = b_.Allocate(bytes);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    return buffer.ok() ? std::move(buffer).value() : Buffer();
  }

  Backend& b_;
  WeightView embed_, norm_, wq_, wk_, wv_, wo_, router_;
  GroupedWeightView gate_up_, down_;
  Buffer x_, h_, q_, k_, v_, attn_, logits_, weights_, selected_, counts_, offsets_, slot_token_,
      slot_source_, token_slot_, gate_up_out_, act_, expert_out_, k_cache_, v_cache_;
};

// Decode step `step` of `rows` sequences: sequence r owns blocks [8r, 8r + 8) and is at position
// 3r + step (contexts of different lengths that cross block boundaries as the steps go on).
struct StepInput {
  std::vector<int32_t> ids, positions, slots;
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttentionSequence> seqs;

  StepInput(int64_t rows, int step) {
    for (int64_t r = 0; r < rows; ++r) {
      const auto pos = static_cast<int32_t>(3 * r + step);
      ids.push_back(static_cast<int32_t>((r * 31 + step * 7) % kVocab));
      positions.push_back(pos);
      std::vector<int32_t> table;
      for (int32_t j = 0; j < 8; ++j) table.push_back(static_cast<int32_t>(8 * r + j));
      slots.push_back(table[pos / kBlockSize] * kBlockSize + pos % kBlockSize);
      tables.push_back(std::move(table));
    }
    for (int64_t r = 0; r < rows; ++r) {
      seqs.push_back({.first_row = r,
                      .num_tokens = 1,
                      .context_len = positions[r] + 1,
                      .block_table = tables[r]});
    }
  }
  // Overwrites every host operand (the backend must have copied them at the call).
  void Scribble() {
    std::fill(ids.begin(), ids.end(), 0);
    std::fill(positions.begin(), positions.end(), 0);
    std::fill(slots.begin(), slots.end(), 0);
    for (std::vector<int32_t>& t : tables) std::fill(t.begin(), t.end(), kBlocks - 1);
    for (AttentionSequence& s : seqs) s.context_len = 1;
  }
};

TEST(CudaGraph, RecordedStepsEqualStepsOpByOp) {
  CMOE_CUDA_BACKEND_OR_SKIP(probe);
  probe.reset();
  std::unique_ptr<Backend> graphed = MakeBackend(GraphMode::kOn);
  std::unique_ptr<Backend> eager = MakeBackend(GraphMode::kOff);
  ASSERT_NE(graphed, nullptr);
  ASSERT_NE(eager, nullptr);
  const HostWeights weights;
  Layer g(*graphed, weights);
  Layer e(*eager, weights);
  // Batch 3 for five steps, then 5 and 1 (new grids), then 3 again.
  const std::vector<int64_t> batches = {3, 3, 3, 3, 3, 5, 1, 3};
  for (size_t s = 0; s < batches.size(); ++s) {
    const int64_t rows = batches[s];
    SCOPED_TRACE(::testing::Message() << "step " << s << ", " << rows << " rows");
    StepInput in_g(rows, static_cast<int>(s));
    StepInput in_e(rows, static_cast<int>(s));
    CMOE_ASSERT_OK(graphed->BeginGraph());
    CMOE_ASSERT_OK(g.Step(in_g.ids, in_g.positions, in_g.slots, in_g.seqs));
    in_g.Scribble();
    CMOE_ASSERT_OK(graphed->EndGraph());
    CMOE_ASSERT_OK(eager->BeginGraph());  // graphs off: runs op by op
    CMOE_ASSERT_OK(e.Step(in_e.ids, in_e.positions, in_e.slots, in_e.seqs));
    CMOE_ASSERT_OK(eager->EndGraph());
    const std::vector<float> got = g.State(rows);
    const std::vector<float> want = e.State(rows);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
    EXPECT_FALSE(AllSentinels(got));
  }
  const Backend::GraphStats stats = graphed->graph_stats();
  EXPECT_EQ(stats.launched, static_cast<int64_t>(batches.size()));
  EXPECT_EQ(stats.instantiated + stats.updated, stats.launched);
  EXPECT_GE(stats.updated, 4) << "steps of one shape must update the graph, not rebuild it";
  EXPECT_EQ(stats.cancelled, 0);
  EXPECT_EQ(eager->graph_stats().launched, 0);
}

TEST(CudaGraph, ScratchGrowsWhileRecording) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(3);
  Weights table;
  MakeWeights(*gpu, DType::kF32, kVocab, 8, 0, rng, &table);
  std::vector<int32_t> ids(5000);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 13) % kVocab);
  GuardedDeviceArray<float> out(*gpu, static_cast<int64_t>(ids.size()) * 8);
  // A small upload first, so that the ids' scratch area must grow inside the recording.
  CMOE_ASSERT_OK(gpu->Embedding(table.device_view, std::span(ids).first(2), out.data()));
  CMOE_ASSERT_OK(gpu->BeginGraph());
  CMOE_ASSERT_OK(gpu->Embedding(table.device_view, ids, out.data()));
  CMOE_ASSERT_OK(gpu->EndGraph());
  const std::vector<float> got = out.Download();
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < 8; ++c) {
      ASSERT_EQ(got[i * 8 + c], table.host_view.At(ids[i], c)) << "row " << i;
    }
  }
  EXPECT_EQ(gpu->graph_stats().launched, 1);
}

TEST(CudaGraph, OpsThatWaitForTheDeviceAreNotInGraph) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(5);
  // GroupedMatMul above the grouped GEMV's reach (num_rows > 8 * groups) with F32 weights takes
  // cuBLAS, which reads the group sizes on the host.
  constexpr int32_t kGroups = 2;
  constexpr int64_t kRows = 8 * kGroups + 1;
  Weights w;
  MakeWeights(*gpu, DType::kF32, kGroups * 8, 16, 0, rng, &w);
  GuardedDeviceArray<float> x(*gpu, RandomFloats(kRows * 16, rng));
  const std::vector<int32_t> host_offsets = {0, 9, kRows};
  GuardedDeviceArray<int32_t> offsets(*gpu, host_offsets);
  GuardedDeviceArray<float> y(*gpu, kRows * 8);
  const GroupedMatMulParams params{.x = x.data(),
                                   .num_rows = kRows,
                                   .offsets = offsets.data(),
                                   .w = {.data = w.device_view.data,
                                         .dtype = DType::kF32,
                                         .groups = kGroups,
                                         .rows = 8,
                                         .cols = 16},
                                   .y = y.data()};
  CMOE_ASSERT_OK(gpu->BeginGraph());
  const absl::Status grouped = gpu->GroupedMatMul(params);
  EXPECT_TRUE(IsNotInGraph(grouped)) << grouped;
  EXPECT_EQ(grouped.code(), absl::StatusCode::kFailedPrecondition);
  std::vector<float> host(4);
  EXPECT_TRUE(IsNotInGraph(gpu->CopyToHost(host.data(), y.data(), 16)));
  EXPECT_TRUE(IsNotInGraph(gpu->Synchronize()));
  gpu->CancelGraph();
  EXPECT_EQ(gpu->graph_stats().cancelled, 1);
  // Op by op the same call runs.
  CMOE_ASSERT_OK(gpu->GroupedMatMul(params));
  EXPECT_FALSE(AllSentinels(y.Download()));
  EXPECT_FALSE(IsNotInGraph(absl::FailedPreconditionError("other")));

  // One group (the LM head's shape) needs no group sizes from the device: it records.
  const std::vector<int32_t> one_group = {0, kRows};
  GuardedDeviceArray<int32_t> whole(*gpu, one_group);
  GuardedDeviceArray<float> y1(*gpu, kRows * 8);
  GroupedMatMulParams single = params;
  single.offsets = whole.data();
  single.w.groups = 1;
  single.y = y1.data();
  CMOE_ASSERT_OK(gpu->BeginGraph());
  CMOE_ASSERT_OK(gpu->GroupedMatMul(single));
  CMOE_ASSERT_OK(gpu->EndGraph());
  const std::vector<float> got = y1.Download();
  const std::vector<float> host_x = x.Download();
  std::vector<float> want(static_cast<size_t>(kRows * 8));
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t o = 0; o < 8; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < 16; ++i) sum += double{host_x[r * 16 + i]} * w.host_view.At(o, i);
      want[r * 8 + o] = static_cast<float>(sum);
    }
  }
  ExpectClose(got, want, kF32Tolerance, "one-group GroupedMatMul in a graph");
}

TEST(CudaGraph, CancelledRecordingRunsNothingAndLeavesNoStaleUpload) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(9);
  Weights table;
  MakeWeights(*gpu, DType::kF32, kVocab, 8, 0, rng, &table);
  const std::vector<int32_t> ids = {5, 17, 42};
  GuardedDeviceArray<float> out(*gpu, 3 * 8);
  CMOE_ASSERT_OK(gpu->BeginGraph());
  CMOE_ASSERT_OK(gpu->Embedding(table.device_view, ids, out.data()));
  gpu->CancelGraph();
  EXPECT_TRUE(AllSentinels(out.Download())) << "a cancelled recording ran";
  // The same ids again, op by op: the recorded upload never ran, so they must be copied now.
  CMOE_ASSERT_OK(gpu->Embedding(table.device_view, ids, out.data()));
  const std::vector<float> got = out.Download();
  for (size_t i = 0; i < ids.size(); ++i) {
    for (int64_t c = 0; c < 8; ++c) EXPECT_EQ(got[i * 8 + c], table.host_view.At(ids[i], c));
  }
  // Cancelling with nothing recorded, and a second BeginGraph while recording.
  gpu->CancelGraph();
  CMOE_ASSERT_OK(gpu->BeginGraph());
  EXPECT_EQ(gpu->BeginGraph().code(), absl::StatusCode::kFailedPrecondition);
  gpu->CancelGraph();
  CMOE_ASSERT_OK(gpu->Synchronize());
}

TEST(CudaGraph, GraphsFromTheEnvironment) {
  CMOE_CUDA_BACKEND_OR_SKIP(probe);
  absl::StatusOr<std::unique_ptr<Backend>> bad =
      CudaBackendWithEnvironment("CMOE_CUDA_GRAPHS", "sometimes");
  absl::StatusOr<std::unique_ptr<Backend>> off =
      CudaBackendWithEnvironment("CMOE_CUDA_GRAPHS", "off");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("CMOE_CUDA_GRAPHS=sometimes"), std::string::npos);
  ASSERT_TRUE(off.ok()) << off.status();
  CMOE_ASSERT_OK((*off)->BeginGraph());
  CMOE_ASSERT_OK((*off)->EndGraph());
  EXPECT_EQ((*off)->graph_stats().launched, 0);
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
