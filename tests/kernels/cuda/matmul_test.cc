// CudaBackend::MatMul (kernels/cuda/cuda_backend_matmul.cc, gemv.cu, cast.cu) against the
// reference backend, x and w uniform in [-1, 1], outputs between sentinel guards:
// - 1..8 token rows (the GEMV): every weight dtype and row count, accumulate on and off; widths
//   that send the kernel down its scalar loads (in = 1, 7, 33, 130, 4097), its 16-byte vector
//   loads with whole and partial 256-column blocks (256, 264, 1000, 4104), its column tiles (4104
//   for 6 to 8 rows, 24584 and 24583 for every row count); a weight one element off a 16-byte
//   boundary and x one float off (the scalar weight loads and float x staging); the Llama-2-7B
//   shapes 11008 x 4096 and 4096 x 11008.
// - 9, 64 and 300 token rows (cuBLAS), every dtype, accumulate on and off.
// - w.cols == 0 (y zeroed, or kept when accumulating), empty calls, bad shapes (InvalidArgument
//   naming MatMul, nothing written), and the f32 -> f16 / bf16 cast bit for bit.
// - MatMuls (one input, several weights) equal to MatMul output by output, bit for bit.
//
// Tolerances (per element |got - want| <= atol + rtol |want|, plus a normalised MSE bound):
// - GEMV: x is read in f32, so the only error is f32 accumulation in another order (gemv.cu's
//   header: standard deviation about 1e-9 * in): atol = 2e-6 sqrt(in), rtol = 1e-5, NMSE 1e-10.
// - cuBLAS, F32 weights: an exact f32 GEMM (no TF32) whose threads may sum all of k in one
//   chain (standard deviation about 6e-9 * in, 2.4e-5 at in = 4097): atol = 8e-6 sqrt(in)
//   (20 standard deviations there), rtol 1e-5, NMSE 1e-10.
// - cuBLAS, F16 / BF16 weights: x is rounded to the weight dtype (round to nearest even) for the
//   tensor cores. Against the reference fed the same rounded x only f32 accumulation differs, with
//   room for the tensor cores' accumulation: atol = 2e-5 sqrt(in), rtol = 1e-4, NMSE 1e-9.
//   Against the reference with the exact x, the error of rounding x (about 5e-4 sqrt(in) per
//   element for bf16, 2^-3 of that for f16) is checked through the harness's NMSE bounds
//   (kBf16Tolerance / kF16Tolerance: 3e-5 and 2e-6; expected 2e-6 and 4e-8).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cuda/cast.cuh"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

// GEMV and exact-f32 cuBLAS: f32 sums of unrounded products (see the header).
Tolerance F32SumTolerance(int64_t in, double atol_per_sqrt_in) {
  return {.max_nmse = 1e-10,
          .atol = atol_per_sqrt_in * std::sqrt(static_cast<double>(in)),
          .rtol = 1e-5};
}
// cuBLAS on x rounded to the weight dtype, against the reference on the same rounded x.
Tolerance RoundedXTolerance(int64_t in) {
  return {.max_nmse = 1e-9, .atol = 2e-5 * std::sqrt(static_cast<double>(in)), .rtol = 1e-4};
}
// Only the normalised MSE of `tol`.
Tolerance NmseOnly(const Tolerance& tol) {
  return {.max_nmse = tol.max_nmse, .atol = std::numeric_limits<double>::infinity(), .rtol = 0.0};
}

std::string Name(DType dtype) { return std::string(DTypeName(dtype)); }

// v rounded to dtype and widened back (what cuBLAS multiplies for 16-bit weights).
float RoundTo(DType dtype, float v) {
  if (dtype == DType::kF16) return F16ToFloat(FloatToF16(v));
  if (dtype == DType::kBF16) return Bf16ToFloat(FloatToBf16(v));
  return v;
}

struct Call {
  int64_t rows = 0;  // token rows of x
  Accumulate accumulate = Accumulate::kNo;
  int64_t x_offset = 0;  // floats x lies past an aligned address
};

// The GPU's y for x (rows, in) . w^T, starting from y0 when accumulating, else from sentinels
// (every one must be overwritten).
std::vector<float> GpuMatMul(Backend& gpu, const Weights& w, const std::vector<float>& x,
                             const std::vector<float>& y0, const Call& call,
                             const std::string& what) {
  const OffsetArray dx(gpu, x, call.x_offset);
  const std::vector<float> start =
      call.accumulate == Accumulate::kYes
          ? y0
          : std::vector<float>(static_cast<size_t>(call.rows * w.host_view.rows),
                               Sentinel<float>());
  const GuardedDeviceArray<float> dy(gpu, start);
  const absl::Status s =
      gpu.MatMul(dx.data(), call.rows, w.device_view, dy.data(), call.accumulate);
  EXPECT_TRUE(s.ok()) << what << ": " << s;
  const std::vector<float> x_after = dx.Download();
  EXPECT_TRUE(x_after == x) << what << ": x changed";
  return dy.Download();
}

// The reference's y for the same call (x as given).
std::vector<float> ReferenceMatMul(const Weights& w, const std::vector<float>& x,
                                   const std::vector<float>& y0, const Call& call) {
  const std::unique_ptr<Backend> reference = cpu::MakeReferenceBackend();
  std::vector<float> want = y0;
  const absl::Status s =
      reference->MatMul(x.data(), call.rows, w.host_view, want.data(), call.accumulate);
  EXPECT_TRUE(s.ok()) << s;
  return want;
}

std::string Describe(const Weights& w, const Call& call) {
  return absl::StrCat("MatMul ", Name(w.host_view.dtype), " w (", w.host_view.rows, ", ",
                      w.host_view.cols, "), ", call.rows, " rows",
                      call.accumulate == Accumulate::kYes ? ", accumulate" : "",
                      call.x_offset != 0 ? ", x unaligned" : "");
}

// One GEMV-path call (rows <= 8) against the reference on the exact x.
void ExpectGemvMatches(Backend& gpu, const Weights& w, const Call& call, std::mt19937& rng) {
  const int64_t in = w.host_view.cols;
  const std::vector<float> x = RandomFloats(call.rows * in, rng);
  const std::vector<float> y0 = RandomFloats(call.rows * w.host_view.rows, rng);
  const std::string what = Describe(w, call);
  const std::vector<float> got = GpuMatMul(gpu, w, x, y0, call, what);
  ExpectClose(got, ReferenceMatMul(w, x, y0, call), F32SumTolerance(in, 2e-6), what);
}

// Every row count of the GEMV, accumulate on and off, on one weight.
void ExpectGemvMatchesForAllRows(Backend& gpu, const Weights& w, std::mt19937& rng,
                                 int64_t x_offset = 0) {
  for (int64_t rows = 1; rows <= 8; ++rows) {
    for (const Accumulate accumulate : {Accumulate::kNo, Accumulate::kYes}) {
      ExpectGemvMatches(gpu, w, {.rows = rows, .accumulate = accumulate, .x_offset = x_offset},
                        rng);
    }
  }
}

TEST(CudaMatMul, GemvMatchesReferenceOnAwkwardShapes) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(1);
  struct Shape {
    int64_t out, in;
  };
  const Shape shapes[] = {{1, 1},    {7, 7},     {33, 33},   {130, 130}, {7, 4097},
                          {33, 256}, {130, 264}, {64, 1000}, {17, 4104}};
  for (const DType dtype : kWeightDTypes) {
    for (const Shape& shape : shapes) {
      Weights w;
      MakeWeights(*gpu, dtype, shape.out, shape.in, 0, rng, &w);
      ExpectGemvMatchesForAllRows(*gpu, w, rng);
    }
  }
  EXPECT_TRUE(gpu->Health().ok());
}

// in beyond the 96 KB of x that one block stages: column tiles for every row count, with vector
// (24584) and scalar (24583) weight loads.
TEST(CudaMatMul, GemvMatchesReferenceWithColumnTiles) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(2);
  for (const DType dtype : kWeightDTypes) {
    for (const int64_t in : {24584, 24583}) {
      Weights w;
      MakeWeights(*gpu, dtype, 9, in, 0, rng, &w);
      ExpectGemvMatchesForAllRows(*gpu, w, rng);
    }
  }
  EXPECT_TRUE(gpu->Health().ok());
}

TEST(CudaMatMul, GemvMatchesReferenceOffAlignment) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(3);
  for (const DType dtype : kWeightDTypes) {
    Weights aligned;
    MakeWeights(*gpu, dtype, 130, 4096, 0, rng, &aligned);
    Weights unaligned;
    MakeWeights(*gpu, dtype, 130, 4096, 1, rng, &unaligned);
    for (const int64_t rows : {1, 3, 8}) {
      ExpectGemvMatches(*gpu, unaligned, {.rows = rows}, rng);
      ExpectGemvMatches(*gpu, aligned, {.rows = rows, .x_offset = 1}, rng);
      ExpectGemvMatches(*gpu, unaligned,
                        {.rows = rows, .accumulate = Accumulate::kYes, .x_offset = 1}, rng);
    }
  }
  EXPECT_TRUE(gpu->Health().ok());
}

// The Llama-2-7B FFN shapes (gate / up and down), where decode time is spent.
TEST(CudaMatMul, GemvMatchesReferenceOnLlamaShapes) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(4);
  for (const DType dtype : kWeightDTypes) {
    for (const bool down : {false, true}) {
      Weights w;
      MakeWeights(*gpu, dtype, down ? 4096 : 11008, down ? 11008 : 4096, 0, rng, &w);
      ExpectGemvMatches(*gpu, w, {.rows = 1}, rng);
      ExpectGemvMatches(*gpu, w, {.rows = 2, .accumulate = Accumulate::kYes}, rng);
      ExpectGemvMatches(*gpu, w, {.rows = 8}, rng);
    }
  }
  EXPECT_TRUE(gpu->Health().ok());
}

// One cuBLAS-path call (rows > 8): see the header for the two comparisons of 16-bit weights.
void ExpectCublasMatches(Backend& gpu, const Weights& w, const Call& call, std::mt19937& rng) {
  const DType dtype = w.host_view.dtype;
  const int64_t in = w.host_view.cols;
  const std::vector<float> x = RandomFloats(call.rows * in, rng);
  const std::vector<float> y0 = RandomFloats(call.rows * w.host_view.rows, rng);
  const std::string what = Describe(w, call);
  const std::vector<float> got = GpuMatMul(gpu, w, x, y0, call, what);
  if (dtype == DType::kF32) {
    ExpectClose(got, ReferenceMatMul(w, x, y0, call), F32SumTolerance(in, 8e-6), what);
    return;
  }
  std::vector<float> x_rounded(x.size());
  std::transform(x.begin(), x.end(), x_rounded.begin(), [&](float v) { return RoundTo(dtype, v); });
  ExpectClose(got, ReferenceMatMul(w, x_rounded, y0, call), RoundedXTolerance(in),
              what + " (reference on x rounded to " + Name(dtype) + ")");
  const Tolerance& harness = dtype == DType::kBF16 ? kBf16Tolerance : kF16Tolerance;
  ExpectClose(got, ReferenceMatMul(w, x, y0, call), NmseOnly(harness),
              what + " (reference on the exact x)");
}

TEST(CudaMatMul, CublasMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(5);
  struct Shape {
    int64_t out, in;
  };
  const Shape shapes[] = {{130, 4097}, {1000, 512}, {7, 33}};
  for (const DType dtype : kWeightDTypes) {
    for (const Shape& shape : shapes) {
      Weights w;
      MakeWeights(*gpu, dtype, shape.out, shape.in, 0, rng, &w);
      ExpectCublasMatches(*gpu, w, {.rows = 9}, rng);
      ExpectCublasMatches(*gpu, w, {.rows = 64}, rng);
      ExpectCublasMatches(*gpu, w, {.rows = 64, .accumulate = Accumulate::kYes}, rng);
      ExpectCublasMatches(*gpu, w, {.rows = 300}, rng);
    }
  }
  // An unaligned x and weight on the cuBLAS path too (the cast's scalar path, odd lda).
  Weights unaligned;
  MakeWeights(*gpu, DType::kBF16, 33, 257, 1, rng, &unaligned);
  ExpectCublasMatches(*gpu, unaligned, {.rows = 20, .x_offset = 1}, rng);
  EXPECT_TRUE(gpu->Health().ok());
}

// in == 0: every sum is empty, so y becomes 0, or stays as it was when accumulating.
TEST(CudaMatMul, ZeroWidthWeightZeroesOrKeepsY) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(6);
  const WeightView w{.data = nullptr, .dtype = DType::kBF16, .rows = 5, .cols = 0};
  const float x_dummy[1] = {0.0f};
  const GuardedDeviceArray<float> x(*gpu, std::span<const float>(x_dummy, 1));
  for (const int64_t rows : {3, 20}) {
    const std::vector<float> y0 = RandomFloats(rows * w.rows, rng);
    const GuardedDeviceArray<float> kept(*gpu, y0);
    ASSERT_TRUE(gpu->MatMul(x.data(), rows, w, kept.data(), Accumulate::kYes).ok());
    EXPECT_EQ(kept.Download(), y0) << rows << " rows, accumulate";
    const GuardedDeviceArray<float> zeroed(*gpu, y0);
    ASSERT_TRUE(gpu->MatMul(x.data(), rows, w, zeroed.data(), Accumulate::kNo).ok());
    EXPECT_EQ(zeroed.Download(), std::vector<float>(y0.size(), 0.0f)) << rows << " rows";
  }
  EXPECT_TRUE(gpu->Health().ok());
}

TEST(CudaMatMul, EmptyCallsWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(7);
  Weights w;
  MakeWeights(*gpu, DType::kF16, 4, 8, 0, rng, &w);
  const GuardedDeviceArray<float> x(*gpu, RandomFloats(16, rng));
  const GuardedDeviceArray<float> y(*gpu, 16);
  EXPECT_TRUE(gpu->MatMul(x.data(), 0, w.device_view, y.data(), Accumulate::kNo).ok());
  EXPECT_TRUE(gpu->MatMul(nullptr, 0, w.device_view, nullptr, Accumulate::kNo).ok());
  const WeightView no_rows{.data = nullptr, .dtype = DType::kF16, .rows = 0, .cols = 8};
  EXPECT_TRUE(gpu->MatMul(x.data(), 2, no_rows, y.data(), Accumulate::kNo).ok());
  EXPECT_TRUE(AllSentinels(y.Download()));
  EXPECT_TRUE(gpu->Health().ok());
}

TEST(CudaMatMul, BadArgumentsAreInvalidArgumentAndWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(8);
  Weights w;
  MakeWeights(*gpu, DType::kBF16, 4, 8, 0, rng, &w);
  const GuardedDeviceArray<float> x(*gpu, RandomFloats(8 * 20, rng));
  const GuardedDeviceArray<float> y(*gpu, 4 * 20);
  WeightView negative_cols = w.device_view;
  negative_cols.cols = -8;
  WeightView negative_rows = w.device_view;
  negative_rows.rows = -1;
  WeightView null_data = w.device_view;
  null_data.data = nullptr;
  WeightView ints = w.device_view;
  ints.dtype = DType::kI32;
  WeightView too_wide = w.device_view;
  too_wide.cols = int64_t{1} << 31;
  struct Bad {
    const char* what;
    const float* x;
    int64_t rows;
    WeightView w;
    float* y;
  };
  const Bad bad[] = {
      {"negative rows", x.data(), -1, w.device_view, y.data()},
      {"negative w.cols", x.data(), 2, negative_cols, y.data()},
      {"negative w.rows", x.data(), 2, negative_rows, y.data()},
      {"null x", nullptr, 2, w.device_view, y.data()},
      {"null y", x.data(), 2, w.device_view, nullptr},
      {"null weight data", x.data(), 2, null_data, y.data()},
      {"I32 weight", x.data(), 2, ints, y.data()},
      {"in >= 2^31", x.data(), 2, too_wide, y.data()},
      {"null x, cuBLAS rows", nullptr, 20, w.device_view, y.data()},
  };
  for (const Bad& b : bad) {
    for (const Accumulate accumulate : {Accumulate::kNo, Accumulate::kYes}) {
      const absl::Status s = gpu->MatMul(b.x, b.rows, b.w, b.y, accumulate);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.what << ": " << s;
      EXPECT_NE(s.message().find("MatMul"), std::string_view::npos) << b.what << ": " << s;
    }
  }
  EXPECT_TRUE(AllSentinels(y.Download()));
  EXPECT_TRUE(gpu->Health().ok());
}

// MatMuls (the q, k, v projections of one input): bit for bit what MatMul gives output by output,
// on the GEMV rows, on cuBLAS with one shared cast of x (three 16-bit weights of one width) and
// where it falls back (F32 weights, mixed dtypes); a bad output fails the call before anything is
// written.
TEST(CudaMatMul, MatMulsEqualMatMulOneByOne) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(10);
  const int64_t in = 72;
  const int64_t outs[] = {96, 24, 24};
  const std::vector<DType> dtypes[] = {{DType::kBF16, DType::kBF16, DType::kBF16},
                                       {DType::kF16, DType::kF16, DType::kF16},
                                       {DType::kF32, DType::kF32, DType::kF32},
                                       {DType::kBF16, DType::kF16, DType::kBF16}};
  for (const std::vector<DType>& types : dtypes) {
    Weights w[3];
    for (int i = 0; i < 3; ++i) MakeWeights(*gpu, types[i], outs[i], in, 0, rng, &w[i]);
    for (const int64_t rows : {1, 8, 9, 70}) {
      SCOPED_TRACE(absl::StrCat("rows ", rows, " dtypes ", std::string(DTypeName(types[0])), ",",
                                std::string(DTypeName(types[1]))));
      const GuardedDeviceArray<float> x(*gpu, RandomFloats(rows * in, rng));
      std::vector<std::unique_ptr<GuardedDeviceArray<float>>> one, many;
      std::vector<Backend::MatMulOutput> outputs;
      for (int i = 0; i < 3; ++i) {
        one.push_back(std::make_unique<GuardedDeviceArray<float>>(*gpu, rows * outs[i]));
        many.push_back(std::make_unique<GuardedDeviceArray<float>>(*gpu, rows * outs[i]));
        CMOE_ASSERT_OK(
            gpu->MatMul(x.data(), rows, w[i].device_view, one[i]->data(), Accumulate::kNo));
        outputs.push_back({w[i].device_view, many[i]->data()});
      }
      CMOE_ASSERT_OK(gpu->MatMuls(x.data(), rows, outputs));
      for (int i = 0; i < 3; ++i) {
        const std::vector<float> got = many[i]->Download();
        EXPECT_FALSE(std::any_of(got.begin(), got.end(), [](float v) { return IsSentinel(v); }));
        EXPECT_EQ(got, one[i]->Download()) << "output " << i;
      }
    }
  }
  // The third output's weight has no data: InvalidArgument, the first two not written either.
  Weights w[3];
  for (int i = 0; i < 3; ++i) MakeWeights(*gpu, DType::kBF16, outs[i], in, 0, rng, &w[i]);
  WeightView null_weight = w[2].device_view;
  null_weight.data = nullptr;
  const GuardedDeviceArray<float> x(*gpu, RandomFloats(20 * in, rng));
  const GuardedDeviceArray<float> y0(*gpu, 20 * outs[0]);
  const GuardedDeviceArray<float> y1(*gpu, 20 * outs[1]);
  const GuardedDeviceArray<float> y2(*gpu, 20 * outs[2]);
  const Backend::MatMulOutput bad[] = {
      {w[0].device_view, y0.data()}, {w[1].device_view, y1.data()}, {null_weight, y2.data()}};
  const absl::Status s = gpu->MatMuls(x.data(), 20, bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(AllSentinels(y0.Download()));
  EXPECT_TRUE(AllSentinels(y1.Download()));
  EXPECT_TRUE(AllSentinels(y2.Download()));
}

// LaunchCastFromF32 bit for bit against common/half.h (round to nearest even): ties, the largest
// finite values, overflow, subnormals, signed zeros, infinities (NaN: stays NaN), on the
// vectorised path and, one float off alignment, the scalar one.
TEST(CudaCast, RoundsToNearestEvenLikeTheHost) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(9);
  const uint32_t special_bits[] = {
      0x3f808000u, 0x3f818000u, 0x3f80c000u, 0x3f807fffu,  // bf16 ties (to even) and neighbours
      0x3f801000u, 0x3f803000u, 0x3f800fffu,               // f16 ties and a neighbour
      0x477fe000u, 0x477fefffu, 0x477ff000u, 0x7f7fffffu,  // f16 max, its tie to inf, f32 max
      0x33000000u, 0x33000001u, 0x33c00000u, 0x387fe000u,  // f16 subnormal ties and rounding
      0x00000001u, 0x80000001u, 0x00000000u, 0x80000000u,  // f32 subnormals, signed zeros
      0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffa00001u,  // infinities, NaNs
  };
  std::vector<float> values;
  for (const uint32_t bits : special_bits) values.push_back(std::bit_cast<float>(bits));
  for (const float v : RandomFloats(1000, rng, -70000.0f, 70000.0f)) values.push_back(v);
  for (const float v : RandomFloats(1000, rng, -1e-6f, 1e-6f)) values.push_back(v);
  for (const DType dtype : {DType::kF16, DType::kBF16}) {
    for (const int64_t offset : {0, 1}) {
      const OffsetArray x(*gpu, values, offset);
      const GuardedDeviceArray<uint16_t> out(*gpu, static_cast<int64_t>(values.size()));
      ASSERT_TRUE(gpu->Synchronize().ok());  // the uploads ran on the backend's stream
      ASSERT_EQ(LaunchCastFromF32(x.data(), static_cast<int64_t>(values.size()), dtype, out.data(),
                                  nullptr),
                cudaSuccess);
      ASSERT_EQ(cudaStreamSynchronize(nullptr), cudaSuccess);
      const std::vector<uint16_t> got = out.Download();
      for (size_t i = 0; i < values.size(); ++i) {
        const float v = values[i];
        const uint16_t want = HalfBits(dtype, v);
        const float got_value = dtype == DType::kF16 ? F16ToFloat(got[i]) : Bf16ToFloat(got[i]);
        if (std::isnan(v)) {
          EXPECT_TRUE(std::isnan(got_value)) << Name(dtype) << " element " << i;
        } else {
          EXPECT_EQ(got[i], want) << Name(dtype) << " element " << i << " = " << v << " (bits 0x"
                                  << std::hex << std::bit_cast<uint32_t>(v) << ")";
        }
      }
    }
  }
  EXPECT_TRUE(gpu->Health().ok());
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
