// The CUDA elementwise ops (Embedding, RmsNorm, Rope, SiluMul, SiluMulPacked, KvWrite; kernels in
// kernels/cuda/{embedding,rms_norm,rope,silu_mul,kv_write}.cu) against the reference backend:
// every weight dtype, widths that are and are not multiples of 4 / 32 / 128, 1 row up to more
// rows than one grid dimension holds (65535), pointers on and one float off a 16-byte boundary
// (the kernels' float4 and scalar paths), in-place calls where the interface allows them, and bad
// input (InvalidArgument with nothing written). Outputs sit between sentinel guards.
//
// Tolerances:
// - Embedding, KvWrite: bit-exact (a widening gather, a copy); KvWrite's untouched slots keep
//   their bits.
// - RmsNorm: kF32Tolerance (NMSE <= 1e-10, |got - want| <= 1e-5 + 1e-4 |want|). The kernel sums
//   squares in f32 (the reference in double) and scales in f32: a few ulps.
// - Rope: kF32Tolerance. cos / sin are computed in double as in the reference, rounded to f32,
//   and the rotation is f32: a few ulps of |x|, at positions up to 2^20 too.
// - SiluMul, SiluMulPacked: kF32Tolerance. expf, a division and a product in f32 against the
//   reference's double: a few ulps; gates below about -88 give -0 where the reference has a
//   denormal (inside atol).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

constexpr Tolerance kExact{.max_nmse = 0.0, .atol = 0.0, .rtol = 0.0};
constexpr int64_t kManyRows = 70000;  // more than gridDim.y / the kernels' 65535-block cap

// n ids in [0, vocab), the first and last of the vocabulary among them when n allows.
std::vector<int32_t> RandomIds(int64_t n, int32_t vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  ids.front() = vocab - 1;
  if (n > 1) ids[1] = 0;
  return ids;
}

// --- Embedding ---

void CheckEmbedding(Backend& gpu, Backend& reference, const Weights& table,
                    const std::vector<int32_t>& ids, int64_t out_offset, const std::string& what) {
  const int64_t n = static_cast<int64_t>(ids.size()) * table.host_view.cols;
  std::vector<float> want(static_cast<size_t>(n));
  ASSERT_TRUE(reference.Embedding(table.host_view, ids, want.data()).ok());
  OffsetArray out(gpu, n, out_offset);
  const absl::Status s = gpu.Embedding(table.device_view, ids, out.data());
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(out.Download(), want, kExact, what);
}

TEST(CudaEmbedding, MatchesReferenceExactly) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(101);
  constexpr int32_t kVocab = 37;
  for (DType dtype : kWeightDTypes) {
    for (int64_t dim : {1, 3, 4, 33, 128, 130, 4096, 4097}) {
      for (int64_t table_offset : {0, 1}) {
        Weights table;
        ASSERT_NO_FATAL_FAILURE(MakeWeights(*gpu, dtype, kVocab, dim, table_offset, rng, &table));
        for (int64_t out_offset : {0, 1}) {
          for (int64_t num_ids : {1, 5, 300}) {
            CheckEmbedding(
                *gpu, *reference, table, RandomIds(num_ids, kVocab, rng), out_offset,
                absl::StrCat("Embedding ", std::string(DTypeName(dtype)), " dim ", dim, " ids ",
                             num_ids, " offsets ", table_offset, "/", out_offset));
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

TEST(CudaEmbedding, MoreIdsThanOneGridDimension) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(102);
  for (int64_t dim : {3, 8}) {
    Weights table;
    ASSERT_NO_FATAL_FAILURE(MakeWeights(*gpu, DType::kBF16, 1000, dim, 0, rng, &table));
    CheckEmbedding(*gpu, *reference, table, RandomIds(kManyRows, 1000, rng), 0,
                   absl::StrCat("Embedding dim ", dim, " ids ", kManyRows));
  }
}

TEST(CudaEmbedding, BadIdsWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(103);
  Weights table;
  ASSERT_NO_FATAL_FAILURE(MakeWeights(*gpu, DType::kF16, 10, 8, 0, rng, &table));
  const std::vector<std::vector<int32_t>> bad_ids = {{0, 10, 1}, {-1}, {3, 2, -5}};
  for (const std::vector<int32_t>& ids : bad_ids) {
    GuardedDeviceArray<float> out(*gpu, static_cast<int64_t>(ids.size()) * 8);
    const absl::Status s = gpu->Embedding(table.device_view, ids, out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(AllSentinels(out.Download()));
  }
  GuardedDeviceArray<float> out(*gpu, 8);
  const std::vector<int32_t> no_ids;
  EXPECT_TRUE(gpu->Embedding(table.device_view, no_ids, out.data()).ok());
  EXPECT_TRUE(AllSentinels(out.Download()));
  EXPECT_TRUE(gpu->Health().ok());
}

// --- RmsNorm ---

struct Offsets {
  int64_t x = 0;
  int64_t y = 0;
  int64_t w = 0;
};
const Offsets kOffsetCases[] = {{0, 0, 0}, {1, 1, 0}, {0, 1, 0}, {1, 0, 0}, {0, 0, 1}};

// Out of place with the given offsets, then in place at offsets.x.
void CheckRmsNorm(Backend& gpu, Backend& reference, DType dtype, int64_t rows, int64_t dim,
                  const Offsets& offsets, std::mt19937& rng) {
  const std::string what =
      absl::StrCat("RmsNorm ", std::string(DTypeName(dtype)), " rows ", rows, " dim ", dim,
                   " offsets ", offsets.x, "/", offsets.y, "/", offsets.w);
  Weights w;
  ASSERT_NO_FATAL_FAILURE(MakeWeights(gpu, dtype, 1, dim, offsets.w, rng, &w));
  const std::vector<float> x = RandomFloats(rows * dim, rng, -2.0f, 2.0f);
  const float eps = 1e-5f;
  std::vector<float> want(x.size());
  ASSERT_TRUE(reference.RmsNorm(x.data(), rows, w.host_view, eps, want.data()).ok());

  const OffsetArray x_device(gpu, x, offsets.x);
  const OffsetArray y(gpu, rows * dim, offsets.y);
  absl::Status s = gpu.RmsNorm(x_device.data(), rows, w.device_view, eps, y.data());
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(y.Download(), want, kF32Tolerance, what);

  const OffsetArray xy(gpu, x, offsets.x);
  s = gpu.RmsNorm(xy.data(), rows, w.device_view, eps, xy.data());
  ASSERT_TRUE(s.ok()) << what << " in place: " << s;
  ExpectClose(xy.Download(), want, kF32Tolerance, what + " in place");
}

TEST(CudaRmsNorm, MatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(201);
  for (DType dtype : kWeightDTypes) {
    // 20000 and 20001: more 4-element units than a block has threads.
    for (int64_t dim : {1, 3, 4, 32, 33, 130, 1024, 4096, 4097, 20000, 20001}) {
      for (int64_t rows : {1, 7}) {
        for (const Offsets& offsets : kOffsetCases) {
          ASSERT_NO_FATAL_FAILURE(CheckRmsNorm(*gpu, *reference, dtype, rows, dim, offsets, rng));
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST(CudaRmsNorm, ManyRows) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(202);
  for (int64_t dim : {3, 4}) {
    ASSERT_NO_FATAL_FAILURE(CheckRmsNorm(*gpu, *reference, DType::kF32, kManyRows, dim, {}, rng));
  }
  ASSERT_NO_FATAL_FAILURE(CheckRmsNorm(*gpu, *reference, DType::kBF16, 300, 2048, {}, rng));
}

TEST(CudaRmsNorm, NoRowsAndNegativeRowsWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(203);
  Weights w;
  ASSERT_NO_FATAL_FAILURE(MakeWeights(*gpu, DType::kF32, 1, 16, 0, rng, &w));
  const GuardedDeviceArray<float> x(*gpu, RandomFloats(16, rng));
  const GuardedDeviceArray<float> y(*gpu, 16);
  EXPECT_TRUE(gpu->RmsNorm(x.data(), 0, w.device_view, 1e-5f, y.data()).ok());
  const absl::Status s = gpu->RmsNorm(x.data(), -1, w.device_view, 1e-5f, y.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(AllSentinels(y.Download()));
  EXPECT_TRUE(gpu->Health().ok());
}

// --- Rope ---

// n positions in [0, max_position), the first one 0 and the last one max_position - 1.
std::vector<int32_t> RandomPositions(int64_t n, int32_t max_position, std::mt19937& rng) {
  std::uniform_int_distribution<int32_t> dist(0, max_position - 1);
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int32_t& p : positions) p = dist(rng);
  positions.front() = 0;
  if (n > 1) positions.back() = max_position - 1;
  return positions;
}

void CheckRope(Backend& gpu, Backend& reference, const std::vector<int32_t>& positions,
               int32_t n_heads, int32_t head_dim, float theta, int64_t offset, std::mt19937& rng) {
  const std::string what =
      absl::StrCat("Rope rows ", positions.size(), " heads ", n_heads, " head_dim ", head_dim,
                   " theta ", theta, " offset ", offset);
  const std::vector<float> x =
      RandomFloats(static_cast<int64_t>(positions.size()) * n_heads * head_dim, rng);
  std::vector<float> want = x;
  ASSERT_TRUE(reference.Rope(want.data(), positions, n_heads, head_dim, theta).ok());
  const OffsetArray x_device(gpu, x, offset);
  const absl::Status s = gpu.Rope(x_device.data(), positions, n_heads, head_dim, theta);
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(x_device.Download(), want, kF32Tolerance, what);
}

TEST(CudaRope, MatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(301);
  // 2050: more pairs (1025) than the kernel's 512-pair cos / sin chunk.
  for (int32_t head_dim : {2, 6, 64, 128, 130, 256, 2050}) {
    for (int32_t n_heads : {1, 3, 32}) {
      for (int64_t rows : {1, 9}) {
        for (float theta : {10000.0f, 500000.0f}) {
          for (int64_t offset : {0, 1}) {
            ASSERT_NO_FATAL_FAILURE(CheckRope(*gpu, *reference, RandomPositions(rows, 1 << 20, rng),
                                              n_heads, head_dim, theta, offset, rng));
            if (HasFailure()) return;
          }
        }
      }
    }
  }
}

TEST(CudaRope, ManyRows) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(302);
  CheckRope(*gpu, *reference, RandomPositions(kManyRows, 8192, rng), 2, 4, 10000.0f, 0, rng);
}

TEST(CudaRope, BadShapesWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(303);
  const std::vector<float> x = RandomFloats(2 * 2 * 6, rng);
  const GuardedDeviceArray<float> x_device(*gpu, x);
  const std::vector<int32_t> positions = {5, 9};
  absl::Status s = gpu->Rope(x_device.data(), positions, 2, 5, 10000.0f);  // odd head_dim
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  s = gpu->Rope(x_device.data(), positions, -2, 6, 10000.0f);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  const std::vector<int32_t> no_positions;
  EXPECT_TRUE(gpu->Rope(x_device.data(), no_positions, 2, 6, 10000.0f).ok());
  ExpectClose(x_device.Download(), x, kExact, "Rope after bad calls");
  EXPECT_TRUE(gpu->Health().ok());
}

// --- SiluMul ---

// Gates in [-12, 12] with a few past expf's range; ups in [-2, 2]. The extremes go only into
// vectors with room for ordinary values too: silu(-100) is a denormal (-3.7e-42) that f32 math
// rounds to -0, an error the absolute bound accepts but that is the whole of a one-element
// vector's normalised MSE.
std::vector<float> RandomGates(int64_t n, std::mt19937& rng) {
  std::vector<float> gate = RandomFloats(n, rng, -12.0f, 12.0f);
  const float extremes[] = {-100.0f, 95.0f, -88.5f, 1e-6f};
  if (gate.size() < 4 * std::size(extremes)) return gate;
  const size_t spacing = gate.size() / std::size(extremes);
  for (size_t i = 0; i < std::size(extremes); ++i) {
    gate[i * spacing] = extremes[i];
  }
  return gate;
}

enum class Alias { kNone, kGate, kUp };

void CheckSiluMul(Backend& gpu, Backend& reference, int64_t count, Alias alias,
                  const Offsets& offsets, std::mt19937& rng) {
  const std::string what = absl::StrCat("SiluMul count ", count, " alias ", static_cast<int>(alias),
                                        " offsets ", offsets.x, "/", offsets.w, "/", offsets.y);
  const std::vector<float> gate = RandomGates(count, rng);
  const std::vector<float> up = RandomFloats(count, rng, -2.0f, 2.0f);
  std::vector<float> want(gate.size());
  ASSERT_TRUE(reference.SiluMul(gate.data(), up.data(), count, want.data()).ok());
  // offsets.x: gate, offsets.w: up, offsets.y: out.
  const OffsetArray gate_device(gpu, gate, offsets.x);
  const OffsetArray up_device(gpu, up, offsets.w);
  const OffsetArray out(gpu, count, offsets.y);
  const OffsetArray& result = alias == Alias::kGate ? gate_device
                              : alias == Alias::kUp ? up_device
                                                    : out;
  const absl::Status s = gpu.SiluMul(gate_device.data(), up_device.data(), count, result.data());
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(result.Download(), want, kF32Tolerance, what);
  if (alias != Alias::kNone) {
    EXPECT_TRUE(AllSentinels(out.Download())) << what;
  }
}

TEST(CudaSiluMul, MatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(401);
  // (1 << 20) + 3: a float4 body and a 3-element tail; 5000003: more float4s than the grid has
  // threads, so the grid-stride loop turns.
  for (int64_t count : {1, 3, 4, 5, 33, 130, 4097, (1 << 20) + 3, 5000003}) {
    for (Alias alias : {Alias::kNone, Alias::kGate, Alias::kUp}) {
      for (const Offsets& offsets : kOffsetCases) {
        ASSERT_NO_FATAL_FAILURE(CheckSiluMul(*gpu, *reference, count, alias, offsets, rng));
        if (HasFailure()) return;
      }
    }
  }
}

TEST(CudaSiluMul, NoAndNegativeCountWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(402);
  const GuardedDeviceArray<float> gate(*gpu, RandomFloats(8, rng));
  const GuardedDeviceArray<float> out(*gpu, 8);
  EXPECT_TRUE(gpu->SiluMul(gate.data(), gate.data(), 0, out.data()).ok());
  const absl::Status s = gpu->SiluMul(gate.data(), gate.data(), -1, out.data());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(AllSentinels(out.Download()));
}

// --- SiluMulPacked ---

void CheckSiluMulPacked(Backend& gpu, Backend& reference, int64_t rows, int64_t width,
                        const Offsets& offsets, std::mt19937& rng) {
  const std::string what = absl::StrCat("SiluMulPacked rows ", rows, " width ", width, " offsets ",
                                        offsets.x, "/", offsets.y);
  std::vector<float> gate_up(static_cast<size_t>(rows * 2 * width));
  const std::vector<float> gates = RandomGates(rows * width, rng);
  const std::vector<float> ups = RandomFloats(rows * width, rng, -2.0f, 2.0f);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(gates.begin() + r * width, width, gate_up.begin() + r * 2 * width);
    std::copy_n(ups.begin() + r * width, width, gate_up.begin() + r * 2 * width + width);
  }
  std::vector<float> want(static_cast<size_t>(rows * width));
  ASSERT_TRUE(reference.SiluMulPacked(gate_up.data(), rows, width, want.data()).ok());
  const OffsetArray gate_up_device(gpu, gate_up, offsets.x);
  const OffsetArray out(gpu, rows * width, offsets.y);
  const absl::Status s = gpu.SiluMulPacked(gate_up_device.data(), rows, width, out.data());
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(out.Download(), want, kF32Tolerance, what);
}

TEST(CudaSiluMulPacked, MatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(501);
  for (int64_t width : {1, 3, 4, 33, 130, 1408, 4096, 4097}) {
    for (int64_t rows : {1, 5, 64}) {
      for (const Offsets& offsets : kOffsetCases) {
        ASSERT_NO_FATAL_FAILURE(CheckSiluMulPacked(*gpu, *reference, rows, width, offsets, rng));
        if (HasFailure()) return;
      }
    }
  }
}

TEST(CudaSiluMulPacked, ManyRows) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(502);
  for (int64_t width : {3, 4}) {
    ASSERT_NO_FATAL_FAILURE(CheckSiluMulPacked(*gpu, *reference, kManyRows, width, {}, rng));
  }
}

TEST(CudaSiluMulPacked, BadShapesWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(503);
  const GuardedDeviceArray<float> gate_up(*gpu, RandomFloats(16, rng));
  const GuardedDeviceArray<float> out(*gpu, 8);
  const std::vector<std::pair<int64_t, int64_t>> bad_shapes = {{2, 0}, {-1, 4}, {2, -4}};
  for (const auto& [rows, width] : bad_shapes) {
    const absl::Status s = gpu->SiluMulPacked(gate_up.data(), rows, width, out.data());
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << rows << " x " << width << ": " << s;
  }
  EXPECT_TRUE(gpu->SiluMulPacked(gate_up.data(), 0, 4, out.data()).ok());
  EXPECT_TRUE(AllSentinels(out.Download()));
  EXPECT_TRUE(gpu->Health().ok());
}

// --- KvWrite ---

struct CacheShape {
  int64_t num_blocks;
  int32_t block_size;
  int32_t n_kv_heads;
  int32_t head_dim;
  int64_t Slots() const { return num_blocks * block_size; }
  int64_t Width() const { return static_cast<int64_t>(n_kv_heads) * head_dim; }
};

// A random cache on the host and the device (its k and v at `cache_offset`); KvWrite of
// `num_tokens` random rows to distinct random slots on both; the whole caches compared exactly.
void CheckKvWrite(Backend& gpu, Backend& reference, const CacheShape& shape, int64_t num_tokens,
                  int64_t input_offset, int64_t cache_offset, std::mt19937& rng) {
  const std::string what = absl::StrCat(
      "KvWrite blocks ", shape.num_blocks, " x ", shape.block_size, " heads ", shape.n_kv_heads,
      " x ", shape.head_dim, " tokens ", num_tokens, " offsets ", input_offset, "/", cache_offset);
  std::vector<int32_t> slots(static_cast<size_t>(shape.Slots()));
  std::iota(slots.begin(), slots.end(), 0);
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(static_cast<size_t>(num_tokens));
  const std::vector<float> k = RandomFloats(num_tokens * shape.Width(), rng);
  const std::vector<float> v = RandomFloats(num_tokens * shape.Width(), rng);
  std::vector<float> want_k = RandomFloats(shape.Slots() * shape.Width(), rng);
  std::vector<float> want_v = RandomFloats(shape.Slots() * shape.Width(), rng);
  const OffsetArray cache_k(gpu, want_k, cache_offset);
  const OffsetArray cache_v(gpu, want_v, cache_offset);
  const OffsetArray k_device(gpu, k, input_offset);
  const OffsetArray v_device(gpu, v, input_offset);
  PagedKvLayer cache{.k = want_k.data(),
                     .v = want_v.data(),
                     .num_blocks = shape.num_blocks,
                     .block_size = shape.block_size,
                     .n_kv_heads = shape.n_kv_heads,
                     .head_dim = shape.head_dim};
  ASSERT_TRUE(reference.KvWrite(k.data(), v.data(), slots, cache).ok());
  cache.k = cache_k.data();
  cache.v = cache_v.data();
  const absl::Status s = gpu.KvWrite(k_device.data(), v_device.data(), slots, cache);
  ASSERT_TRUE(s.ok()) << what << ": " << s;
  ExpectClose(cache_k.Download(), want_k, kExact, what + " k");
  ExpectClose(cache_v.Download(), want_v, kExact, what + " v");
}

TEST(CudaKvWrite, MatchesReferenceExactly) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(601);
  const CacheShape shapes[] = {{3, 4, 1, 1}, {4, 16, 3, 11}, {8, 16, 8, 128}, {2, 8, 2, 4097}};
  for (const CacheShape& shape : shapes) {
    for (int64_t num_tokens : {int64_t{1}, std::min<int64_t>(7, shape.Slots()), shape.Slots()}) {
      for (int64_t input_offset : {0, 1}) {
        for (int64_t cache_offset : {0, 1}) {
          ASSERT_NO_FATAL_FAILURE(
              CheckKvWrite(*gpu, *reference, shape, num_tokens, input_offset, cache_offset, rng));
          if (HasFailure()) return;
        }
      }
    }
  }
}

// A BF16 cache: the device rounds to nearest even exactly as the reference does (bit-exact), on
// the float4 path and, with the input or the cache off alignment, the scalar one.
TEST(CudaKvWrite, Bf16CacheMatchesReferenceExactly) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(604);
  for (const CacheShape& shape : {CacheShape{4, 16, 3, 11}, CacheShape{8, 16, 8, 128}}) {
    for (int64_t offset : {0, 1}) {
      const int64_t tokens = 7;
      std::vector<int32_t> slots(static_cast<size_t>(shape.Slots()));
      std::iota(slots.begin(), slots.end(), 0);
      std::shuffle(slots.begin(), slots.end(), rng);
      slots.resize(tokens);
      const std::vector<float> k = RandomFloats(tokens * shape.Width(), rng);
      const std::vector<float> v = RandomFloats(tokens * shape.Width(), rng);
      const int64_t n = shape.Slots() * shape.Width();
      std::vector<uint16_t> want_k(static_cast<size_t>(n + offset), 0x1234);
      std::vector<uint16_t> want_v(want_k);
      const GuardedDeviceArray<uint16_t> cache_k(*gpu, want_k), cache_v(*gpu, want_v);
      const OffsetArray k_device(*gpu, k, offset), v_device(*gpu, v, offset);
      PagedKvLayer cache{.k = want_k.data() + offset,
                         .v = want_v.data() + offset,
                         .dtype = DType::kBF16,
                         .num_blocks = shape.num_blocks,
                         .block_size = shape.block_size,
                         .n_kv_heads = shape.n_kv_heads,
                         .head_dim = shape.head_dim};
      ASSERT_TRUE(reference->KvWrite(k.data(), v.data(), slots, cache).ok());
      cache.k = cache_k.data() + offset;
      cache.v = cache_v.data() + offset;
      const absl::Status s = gpu->KvWrite(k_device.data(), v_device.data(), slots, cache);
      ASSERT_TRUE(s.ok()) << s;
      EXPECT_EQ(cache_k.Download(), want_k)
          << "head_dim " << shape.head_dim << " offset " << offset;
      EXPECT_EQ(cache_v.Download(), want_v)
          << "head_dim " << shape.head_dim << " offset " << offset;
      cache.dtype = DType::kF16;
      EXPECT_EQ(gpu->KvWrite(k_device.data(), v_device.data(), slots, cache).code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(CudaKvWrite, ManyTokens) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::mt19937 rng(602);
  for (int32_t head_dim : {3, 4}) {
    const CacheShape shape{(kManyRows + 15) / 16 + 2, 16, 1, head_dim};
    ASSERT_NO_FATAL_FAILURE(CheckKvWrite(*gpu, *reference, shape, kManyRows, 0, 0, rng));
  }
}

TEST(CudaKvWrite, BadSlotsWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(603);
  const CacheShape shape{2, 4, 2, 8};  // 8 slots of 16 floats
  const std::vector<float> initial = RandomFloats(shape.Slots() * shape.Width(), rng);
  const GuardedDeviceArray<float> cache_k(*gpu, initial);
  const GuardedDeviceArray<float> cache_v(*gpu, initial);
  const GuardedDeviceArray<float> k(*gpu, RandomFloats(3 * shape.Width(), rng));
  PagedKvLayer cache{.k = cache_k.data(),
                     .v = cache_v.data(),
                     .num_blocks = shape.num_blocks,
                     .block_size = shape.block_size,
                     .n_kv_heads = shape.n_kv_heads,
                     .head_dim = shape.head_dim};
  const std::vector<std::vector<int32_t>> bad_slots = {{0, 8, 1}, {-1}, {7, 6, -3}};
  for (const std::vector<int32_t>& slots : bad_slots) {
    const absl::Status s = gpu->KvWrite(k.data(), k.data(), slots, cache);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  }
  cache.n_kv_heads = -2;
  const std::vector<int32_t> first_slot = {0};
  const absl::Status s = gpu->KvWrite(k.data(), k.data(), first_slot, cache);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  ExpectClose(cache_k.Download(), initial, kExact, "KvWrite k after bad slots");
  ExpectClose(cache_v.Download(), initial, kExact, "KvWrite v after bad slots");
  EXPECT_TRUE(gpu->Health().ok());
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
