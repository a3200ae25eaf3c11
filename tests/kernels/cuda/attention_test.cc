// CudaBackend::Attention (kernels/cuda/attention.cu) against the reference backend: decode rows,
// prefill chunks and mixed batches over GQA ratios 1-32, head_dim 8 to 512 (odd ones too: the
// interface does not need an even head_dim), block sizes 1 and 16, contexts crossing block
// boundaries and long enough to take every warps-per-block choice, scattered block tables with
// unused trailing entries, rows no sequence covers (they must keep their sentinels) and bad inputs
// (InvalidArgument with nothing written).
//
// Tolerance (kAttentionTolerance): max NMSE 1e-9 and per element |got - want| <= 1e-5 + 1e-4 *
// |want|. The reference works in double; the kernel computes f32 dot products (lane partial sums
// then a butterfly), an online softmax in the exp2 domain (exp2f: 2 ulp; the scale folded into q)
// whose partial sums are merged across warps, and normalises once at the end. Each step costs a
// few f32 ulps relative (about 1e-7 each, ~1e-6 over a long context), two orders of magnitude
// below rtol; atol covers output elements near zero (outputs are weighted averages of values in
// [-1, 1]). The NMSE bound is kF32Tolerance's 1e-10 loosened tenfold for the sharp-softmax case,
// where an ulp of a score near 10 (~1e-6) becomes a relative error of the weights.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/cuda_backend.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

constexpr Tolerance kAttentionTolerance{.max_nmse = 1e-9, .atol = 1e-5, .rtol = 1e-4};
// The tile kernel feeds the tensor cores 16-bit Q (pre-scaled), K, V and softmax weights; scores,
// softmax and sums stay f32. Over an F32 cache they are F16 (11-bit significand, relative rounding
// error <= 2^-11 each); measured on TileKernelMatchesReference (emulation, 2026-11-23): at most
// 5.0e-4 absolute error and a row NMSE of 1.6e-7, a quarter and a twentieth of this bound.
constexpr Tolerance kTileTolerance{.max_nmse = 3e-6, .atol = 2e-3, .rtol = 2e-3};
// Over a BF16 cache they are BF16 (8-bit significand: keys and values exact, Q and P rounded),
// against the reference over the same rounded cache: measured at most 1.9e-3 absolute error and a
// row NMSE of 4.3e-6 (Bf16CacheMatchesReference), under half and a tenth of this bound.
constexpr Tolerance kTileBf16Tolerance{.max_nmse = 5e-5, .atol = 5e-3, .rtol = 5e-3};

struct Shape {
  int32_t n_heads;
  int32_t n_kv_heads;
  int32_t head_dim;
  int32_t block_size;
  float scale_factor = 1.0f;  // scale = scale_factor / sqrt(head_dim)
};

struct SeqSpec {
  int64_t first_row;
  int64_t num_tokens;
  int64_t context_len;
};

// One attention step on the host: a random cache, random queries, block tables drawn from a
// shuffled pool (every other table carries an unused trailing entry outside the cache).
struct HostCase {
  Shape shape;
  int64_t num_rows = 0;
  int64_t num_blocks = 0;
  std::vector<float> q, k, v;
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttentionSequence> seqs;  // block_table views into `tables`

  AttentionParams Params(float* q_data, void* k_data, void* v_data, float* out,
                         DType cache_dtype = DType::kF32) const {
    return {.q = q_data,
            .num_rows = num_rows,
            .n_heads = shape.n_heads,
            .scale = shape.scale_factor / std::sqrt(static_cast<float>(shape.head_dim)),
            .sequences = seqs,
            .cache = {.k = k_data,
                      .v = v_data,
                      .dtype = cache_dtype,
                      .num_blocks = num_blocks,
                      .block_size = shape.block_size,
                      .n_kv_heads = shape.n_kv_heads,
                      .head_dim = shape.head_dim},
            .out = out};
  }
  int64_t RowFloats() const { return static_cast<int64_t>(shape.n_heads) * shape.head_dim; }
  bool Covered(int64_t row) const {
    return std::any_of(seqs.begin(), seqs.end(), [row](const AttentionSequence& s) {
      return row >= s.first_row && row < s.first_row + s.num_tokens;
    });
  }
};

// A step's shape: heads, the rows of the batch and its sequences.
struct Case {
  Shape shape;
  int64_t num_rows;
  std::vector<SeqSpec> specs;
};

HostCase MakeCase(const Shape& shape, int64_t num_rows, const std::vector<SeqSpec>& specs,
                  std::mt19937& rng) {
  HostCase c;
  c.shape = shape;
  c.num_rows = num_rows;
  for (const SeqSpec& s : specs) {
    c.num_blocks += (s.context_len + shape.block_size - 1) / shape.block_size;
  }
  c.num_blocks += 5;  // blocks no sequence uses
  std::vector<int32_t> pool(static_cast<size_t>(c.num_blocks));
  for (size_t i = 0; i < pool.size(); ++i) pool[i] = static_cast<int32_t>(i);
  std::shuffle(pool.begin(), pool.end(), rng);
  size_t next = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const auto blocks =
        static_cast<size_t>((specs[i].context_len + shape.block_size - 1) / shape.block_size);
    c.tables.emplace_back(pool.begin() + next, pool.begin() + next + blocks);
    next += blocks;
    if (i % 2 == 1) c.tables.back().push_back(static_cast<int32_t>(c.num_blocks) + 7);
  }
  for (size_t i = 0; i < specs.size(); ++i) {
    c.seqs.push_back({.first_row = specs[i].first_row,
                      .num_tokens = specs[i].num_tokens,
                      .context_len = specs[i].context_len,
                      .block_table = c.tables[i]});
  }
  const int64_t cache_floats =
      c.num_blocks * shape.block_size * shape.n_kv_heads * static_cast<int64_t>(shape.head_dim);
  c.k = RandomFloats(cache_floats, rng);
  c.v = RandomFloats(cache_floats, rng);
  c.q = RandomFloats(num_rows * c.RowFloats(), rng, -2.0f, 2.0f);
  return c;
}

std::string Describe(const Shape& s) {
  return absl::StrCat("heads ", s.n_heads, "/", s.n_kv_heads, " head_dim ", s.head_dim, " block ",
                      s.block_size, " scale x", s.scale_factor);
}

std::vector<uint16_t> ToBf16(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = HalfBits(DType::kBF16, x[i]);
  return out;
}

// Runs the case on the reference and on `gpu` and compares covered rows; uncovered rows and the
// guards around the output must keep their sentinels. With a BF16 cache both read the keys and
// values rounded to BF16 (the reference widens them exactly).
void ExpectMatchesReference(Backend& gpu, HostCase& c, const std::string& what,
                            const Tolerance& tolerance = kAttentionTolerance,
                            DType cache_dtype = DType::kF32) {
  const int64_t row_floats = c.RowFloats();
  std::vector<float> want(static_cast<size_t>(c.num_rows * row_floats), Sentinel<float>());
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  const bool bf16 = cache_dtype == DType::kBF16;
  std::vector<uint16_t> k16 = bf16 ? ToBf16(c.k) : std::vector<uint16_t>();
  std::vector<uint16_t> v16 = bf16 ? ToBf16(c.v) : std::vector<uint16_t>();
  void* host_k = bf16 ? static_cast<void*>(k16.data()) : c.k.data();
  void* host_v = bf16 ? static_cast<void*>(v16.data()) : c.v.data();
  ASSERT_TRUE(
      reference->Attention(c.Params(c.q.data(), host_k, host_v, want.data(), cache_dtype)).ok())
      << what;

  GuardedDeviceArray<float> q(gpu, c.q), k(gpu, c.k), v(gpu, c.v);
  GuardedDeviceArray<uint16_t> k_bf16(gpu, k16), v_bf16(gpu, v16);
  GuardedDeviceArray<float> out(gpu, c.num_rows * row_floats);
  void* device_k = bf16 ? static_cast<void*>(k_bf16.data()) : k.data();
  void* device_v = bf16 ? static_cast<void*>(v_bf16.data()) : v.data();
  const absl::Status status =
      gpu.Attention(c.Params(q.data(), device_k, device_v, out.data(), cache_dtype));
  ASSERT_TRUE(status.ok()) << what << ": " << status;
  const std::vector<float> got = out.Download();
  for (int64_t row = 0; row < c.num_rows; ++row) {
    const std::span<const float> got_row(got.data() + row * row_floats,
                                         static_cast<size_t>(row_floats));
    if (!c.Covered(row)) {
      EXPECT_TRUE(AllSentinels(got_row)) << what << ": uncovered row " << row << " was written";
      continue;
    }
    ExpectClose(got_row, std::span<const float>(want).subspan(row * row_floats, row_floats),
                tolerance, absl::StrCat(what, " row ", row));
    if (::testing::Test::HasFailure()) return;  // one bad row tells enough
  }
}

// The tests below check the f32 kernel (attention.cu) against the tight tolerance above, prefill
// chunks included: the backend is told to keep them off the tensor cores. The tile kernel's tests
// (TileAttention*) use the default.
std::unique_ptr<Backend> CudaCoreBackend() {
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeCudaBackend({.device = 0, .prefill_attention = PrefillAttention::kCudaCores});
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  return gpu.ok() ? std::move(gpu).value() : nullptr;
}

// The f32 backend, or a clean skip without a device.
#define CMOE_CUDA_CORE_BACKEND_OR_SKIP(var)               \
  CMOE_CUDA_BACKEND_OR_SKIP(var##_probe);                 \
  var##_probe.reset();                                    \
  const std::unique_ptr<Backend> var = CudaCoreBackend(); \
  ASSERT_NE(var, nullptr)

// Query-head / kv-head pairs with GQA ratios 1, 2, 4 and 8.
constexpr int32_t kHeads[][2] = {{4, 4}, {8, 4}, {8, 2}, {16, 2}};

TEST(CudaAttention, DecodeOnly) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(101);
  // One token each, rows out of sequence order, rows 4 and 7 uncovered.
  const std::vector<SeqSpec> specs = {{3, 1, 1},  {0, 1, 16},  {5, 1, 17},
                                      {1, 1, 45}, {6, 1, 100}, {2, 1, 3}};
  for (const auto& [n_heads, n_kv] : kHeads) {
    for (int32_t head_dim : {8, 33, 64, 128}) {
      for (int32_t block_size : {1, 16}) {
        const Shape shape{n_heads, n_kv, head_dim, block_size};
        HostCase c = MakeCase(shape, 8, specs, rng);
        ExpectMatchesReference(*gpu, c, "decode " + Describe(shape));
        if (HasFailure()) return;
      }
    }
  }
}

TEST(CudaAttention, PrefillOnly) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(202);
  // Whole prompts (num_tokens == context_len); row 8 uncovered.
  const std::vector<SeqSpec> specs = {{0, 7, 7}, {7, 1, 1}, {9, 37, 37}, {46, 16, 16}};
  for (const auto& [n_heads, n_kv] : kHeads) {
    for (int32_t head_dim : {8, 48, 64, 128}) {
      for (int32_t block_size : {1, 16}) {
        const Shape shape{n_heads, n_kv, head_dim, block_size};
        HostCase c = MakeCase(shape, 62, specs, rng);
        ExpectMatchesReference(*gpu, c, "prefill " + Describe(shape));
        if (HasFailure()) return;
      }
    }
  }
}

TEST(CudaAttention, MixedBatchWithContinuedChunk) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(303);
  // A fresh 7-token prompt, a decode row at context 45, a 5-token chunk continuing a context of
  // 25 and a sequence with no rows this step; rows 7, 14 and 15 uncovered.
  const std::vector<SeqSpec> specs = {{0, 7, 7}, {8, 1, 45}, {9, 5, 30}, {14, 0, 10}};
  const int32_t heads[][2] = {{8, 4}, {4, 1}, {2, 2}, {32, 1}, {6, 2}, {24, 3}};
  for (const auto& [n_heads, n_kv] : heads) {
    for (int32_t head_dim : {33, 36, 64, 256}) {
      for (int32_t block_size : {1, 16}) {
        const Shape shape{n_heads, n_kv, head_dim, block_size};
        HostCase c = MakeCase(shape, 16, specs, rng);
        ExpectMatchesReference(*gpu, c, "mixed " + Describe(shape));
        if (HasFailure()) return;
      }
    }
  }
}

TEST(CudaAttention, LargeAndOddHeadDims) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(404);
  const std::vector<SeqSpec> specs = {{0, 3, 20}, {3, 1, 33}};
  for (int32_t head_dim : {1, 31, 65, 96, 129, 192, 300, 512}) {
    for (const auto& [n_heads, n_kv] : {std::pair{4, 2}, std::pair{8, 1}}) {
      const Shape shape{n_heads, n_kv, head_dim, 16};
      HostCase c = MakeCase(shape, 5, specs, rng);
      ExpectMatchesReference(*gpu, c, "head dims " + Describe(shape));
      if (HasFailure()) return;
    }
  }
}

// The launcher picks 16 warps per block for a few long rows, 8 for medium ones and 4 when the
// grid is large; each choice merges its warps' partial softmax states differently.
TEST(CudaAttention, LongContextsAndLargeGrids) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(505);
  const std::vector<Case> cases = {
      // Llama-2-7B decode (32 / 32 heads, head_dim 128), batch 1: 16 warps; batch 2: 8 warps.
      {{32, 32, 128, 16}, 2, {{1, 1, 1500}}},
      {{32, 32, 128, 16}, 2, {{0, 1, 1500}, {1, 1, 1029}}},
      {{8, 8, 128, 16}, 3, {{0, 1, 1100}, {1, 1, 2500}, {2, 1, 37}}},
      // Medium contexts, small grid: 8 warps.
      {{8, 2, 64, 16}, 4, {{0, 1, 300}, {1, 1, 700}, {2, 1, 260}, {3, 1, 5}}},
      // A 300-token chunk continuing a context of 200 beside a long decode row: 4 warps.
      {{8, 2, 64, 16}, 302, {{1, 300, 500}, {301, 1, 900}}},
      {{16, 16, 64, 1}, 130, {{0, 128, 128}, {128, 1, 513}}},
  };
  for (const Case& k : cases) {
    HostCase c = MakeCase(k.shape, k.num_rows, k.specs, rng);
    ExpectMatchesReference(*gpu, c, "long " + Describe(k.shape));
    if (HasFailure()) return;
  }
}

// Split-K forced on every context (CudaBackendOptions::attention_split_keys): chunks of 1 key
// (capped to 64 splits), 7 keys and 64 keys, over decode rows, prefill chunks and a continued
// chunk beside decode rows, so that splits holding no key of some queries of a block, splits past
// a block's last query and the combine's per-query split count are all exercised.
TEST(CudaAttention, SplitKeysMatchReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(probe);
  std::mt19937 rng(909);
  const std::vector<Case> cases = {
      {{8, 2, 64, 16}, 4, {{0, 1, 300}, {1, 1, 65}, {2, 1, 1}, {3, 1, 129}}},
      {{8, 2, 64, 16}, 42, {{0, 40, 100}, {40, 1, 200}, {41, 1, 7}}},
      {{16, 16, 128, 1}, 18, {{1, 16, 16}, {17, 1, 500}}},
      {{32, 8, 40, 16}, 13, {{0, 12, 530}, {12, 1, 64}}},
  };
  for (const int32_t split_keys : {1, 7, 64}) {
    absl::StatusOr<std::unique_ptr<Backend>> gpu =
        MakeCudaBackend({.device = 0,
                         .prefill_attention = PrefillAttention::kCudaCores,
                         .attention_split_keys = split_keys});
    ASSERT_TRUE(gpu.ok()) << gpu.status();
    for (const Case& k : cases) {
      HostCase c = MakeCase(k.shape, k.num_rows, k.specs, rng);
      ExpectMatchesReference(**gpu, c, absl::StrCat("split ", split_keys, " ", Describe(k.shape)));
      if (HasFailure()) return;
    }
  }
}

// The automatic plan: split decode steps whose grid leaves SMs idle, never short contexts, busy
// grids or when told not to; at most 64 splits of at least 256 keys, covering the context.
TEST(CudaAttention, SplitPlan) {
  PagedAttentionArgs a;
  a.n_heads = 32;
  a.num_sequences = 1;
  a.max_tokens = 1;
  a.max_context = 8192;
  a.cache = {.block_size = 16, .n_kv_heads = 32, .head_dim = 128};
  AttentionSplit plan = PlanAttentionSplit(a, 132, 0);  // Llama-2-7B decode, batch 1, H100
  EXPECT_EQ(plan.num_splits, 9);                        // 32 blocks -> about 2 per SM
  EXPECT_EQ(plan.split_keys, 911);
  EXPECT_EQ(plan.partial_floats, int64_t{32} * 9 * (128 + 2));
  a.max_context = 1000;
  EXPECT_EQ(PlanAttentionSplit(a, 132, 0).num_splits, 1);  // short context
  a.max_context = 8192;
  a.num_sequences = 8;
  EXPECT_EQ(PlanAttentionSplit(a, 132, 0).num_splits, 1);  // 256 blocks fill the device
  a.num_sequences = 1;
  EXPECT_EQ(PlanAttentionSplit(a, 132, -1).num_splits, 1);  // never
  a.max_context = 1 << 20;
  plan = PlanAttentionSplit(a, 132, 0);
  EXPECT_EQ(plan.num_splits, 9);
  EXPECT_GE(int64_t{plan.num_splits} * plan.split_keys, a.max_context);
  plan = PlanAttentionSplit(a, 132, 100);  // forced, but capped at 64 splits
  EXPECT_EQ(plan.num_splits, 64);
  EXPECT_EQ(plan.split_keys, (1 << 20) / 64);
}

// Scale 4 / sqrt(head_dim): scores spread ~2.7 with peaks near 10, so the running maximum moves
// often and a few positions dominate each output.
TEST(CudaAttention, SharpSoftmax) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(606);
  const std::vector<SeqSpec> specs = {{0, 9, 200}, {9, 1, 77}};
  for (int32_t head_dim : {8, 64, 128}) {
    const Shape shape{8, 2, head_dim, 16, 4.0f};
    HostCase c = MakeCase(shape, 10, specs, rng);
    ExpectMatchesReference(*gpu, c, "sharp " + Describe(shape));
    if (HasFailure()) return;
  }
}

TEST(CudaAttention, NothingToDoWritesNothing) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(707);
  const Shape shape{8, 2, 64, 16};
  for (const bool no_sequences : {true, false}) {
    HostCase c = MakeCase(shape, 4, {{0, 0, 10}, {2, 0, 0}}, rng);
    if (no_sequences) c.seqs.clear();
    GuardedDeviceArray<float> q(*gpu, c.q), k(*gpu, c.k), v(*gpu, c.v);
    GuardedDeviceArray<float> out(*gpu, c.num_rows * c.RowFloats());
    EXPECT_TRUE(gpu->Attention(c.Params(q.data(), k.data(), v.data(), out.data())).ok());
    const std::vector<float> got = out.Download();
    EXPECT_TRUE(AllSentinels(got)) << no_sequences;
  }
}

TEST(CudaAttention, RejectsBadInputsAndWritesNothing) {
  CMOE_CUDA_CORE_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(808);
  const std::vector<SeqSpec> specs = {{0, 7, 7}, {8, 1, 45}, {9, 5, 30}};
  for (int which = 0; which < 7; ++which) {
    // Case 6 builds a real cache of head_dim 520 so that a kernel that did run would stay inside
    // its buffers.
    const Shape shape{8, 4, which == 6 ? 520 : 64, 16};
    HostCase c = MakeCase(shape, 15, specs, rng);
    AttentionParams extra;  // the fields a case overrides
    extra.n_heads = shape.n_heads;
    if (which == 0) c.tables[1][2] = static_cast<int32_t>(c.num_blocks);  // block past the cache
    if (which == 1) c.tables[2][0] = -1;
    if (which == 2) c.seqs[1].block_table = std::span<const int32_t>(c.tables[1]).first(2);
    if (which == 3) c.seqs[2].first_row = 12;   // rows past the batch
    if (which == 4) extra.n_heads = 6;          // not a multiple of n_kv_heads
    if (which == 5) c.seqs[0].context_len = 3;  // shorter than num_tokens
    GuardedDeviceArray<float> q(*gpu, c.q), k(*gpu, c.k), v(*gpu, c.v);
    GuardedDeviceArray<float> out(*gpu, c.num_rows * c.RowFloats());
    AttentionParams params = c.Params(q.data(), k.data(), v.data(), out.data());
    params.n_heads = extra.n_heads;
    EXPECT_EQ(gpu->Attention(params).code(), absl::StatusCode::kInvalidArgument) << which;
    const std::vector<float> got = out.Download();
    EXPECT_TRUE(AllSentinels(got)) << which;
  }
  EXPECT_TRUE(gpu->Health().ok()) << gpu->Health();
}

// The tensor-core tile kernel (attention_tile.cu, the default for sequences with >= 64 query
// vectors and head_dim 64/128; F16 tiles over this F32 cache) beside the f32 kernel for the
// other sequences of the same call: tiles full and partial, GQA 1-8 (a tile spanning rows),
// continued chunks, block sizes 1 and 16, sequences just below and at 64 query vectors, uncovered
// rows.
TEST(CudaAttention, TileKernelMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(1001);
  const std::vector<Case> cases = {
      {{4, 4, 64, 16}, 70, {{0, 70, 70}}},
      {{8, 2, 64, 1}, 40, {{0, 17, 17}, {17, 20, 90}, {37, 1, 50}, {38, 1, 2}}},
      {{8, 1, 64, 16}, 130, {{1, 128, 200}, {129, 1, 300}}},
      {{32, 32, 128, 16}, 100, {{0, 100, 100}}},
      {{16, 2, 128, 16}, 16, {{0, 8, 8}, {8, 7, 30}}},  // 64 vectors (tile), 56 (f32 kernel)
      {{8, 4, 128, 1}, 150, {{0, 150, 150}}},
      {{4, 4, 32, 16}, 70, {{0, 70, 70}}},  // head_dim 32: the f32 kernel takes it
  };
  for (const Case& k : cases) {
    HostCase c = MakeCase(k.shape, k.num_rows, k.specs, rng);
    ExpectMatchesReference(*gpu, c, "tile " + Describe(k.shape), kTileTolerance);
    if (HasFailure()) return;
  }
}

// A BF16 cache (KvCacheOptions::dtype) on both kernels: decode rows and short chunks on the f32
// kernel, long prefill chunks on the tile kernel (its 8-byte loads of four BF16 values), against
// the reference over the same rounded keys and values, with each kernel's own tolerance.
TEST(CudaAttention, Bf16CacheMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(1101);
  const std::vector<Case> f32_kernel = {
      {{8, 2, 64, 16}, 8, {{3, 1, 1}, {0, 1, 16}, {5, 1, 300}, {1, 1, 45}}},
      {{8, 4, 33, 1}, 16, {{0, 7, 7}, {8, 1, 45}, {9, 5, 30}}},
      {{32, 32, 128, 16}, 2, {{0, 1, 1500}}},  // long context: split-K
  };
  for (const Case& k : f32_kernel) {
    HostCase c = MakeCase(k.shape, k.num_rows, k.specs, rng);
    ExpectMatchesReference(*gpu, c, "bf16 cache " + Describe(k.shape), kAttentionTolerance,
                           DType::kBF16);
    if (HasFailure()) return;
  }
  const std::vector<Case> tile_kernel = {
      {{8, 2, 64, 1}, 40, {{0, 17, 17}, {17, 20, 90}, {37, 1, 50}}},
      {{8, 8, 128, 16}, 70, {{0, 70, 130}}},
      {{4, 4, 64, 16}, 66, {{0, 66, 66}}},
  };
  for (const Case& k : tile_kernel) {
    HostCase c = MakeCase(k.shape, k.num_rows, k.specs, rng);
    ExpectMatchesReference(*gpu, c, "bf16 cache tile " + Describe(k.shape), kTileBf16Tolerance,
                           DType::kBF16);
    if (HasFailure()) return;
  }
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
