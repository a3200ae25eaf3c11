// CudaBackend::GatedFfn (kernels/cuda/cuda_backend_ffn.cc) against the reference backend's f32
// chain and against a host model of its BF16 intermediates. Shapes: one group without offsets
// (dense FFN / shared expert; 1 and 8 rows on the GEMV path, 9 and more on cuBLAS, with and without
// accumulate) and expert groups (the grouped GEMV while rows <= 8 * groups, cuBLAS and the
// tensor-core kernel above; empty groups, every row in one group, widths off the vector paths,
// with and without a row_index). Outputs and the workspace sit between sentinel guards.
//
// Tolerances:
// - FfnActivations::kF32, every path and dtype, and kBf16 wherever it falls back to the chain (GEMV
//   rows, F16 / F32 weights): bitwise what the backend's own single ops give (the same launches),
//   and the reference chain within the GroupedMatMul tolerances (kF32Tolerance on GEMV rows, the
//   dtype's on GEMM rows).
// - kBf16 on the GEMM paths with BF16 weights: kBf16Tolerance against the f32 reference chain
//   (gate and up are rounded to BF16 before the SiLU as well), and kF16Tolerance against a host
//   model that rounds x, gate/up and the activations to BF16 where the device does and sums in
//   double (only the f32 summation order differs, flipping a rare BF16 rounding).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/ffn_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

constexpr int64_t kGemvMaxRows = 8;       // CudaBackend::MatMul's GEMV
constexpr int64_t kGemvRowsPerGroup = 8;  // CudaBackend::GroupedMatMul's grouped GEMV

// counts empty: one group without offsets over `rows` rows; else the rows of each group.
struct FfnCase {
  int64_t d = 0;
  int64_t m = 0;
  int64_t rows = 0;
  std::vector<int32_t> counts;
  bool row_index = false;
  bool accumulate = false;

  bool grouped() const { return !counts.empty(); }
  int32_t groups() const { return grouped() ? static_cast<int32_t>(counts.size()) : 1; }
  int64_t num_rows() const {
    return grouped() ? std::accumulate(counts.begin(), counts.end(), int64_t{0}) : rows;
  }
  bool gemm() const {
    return grouped() ? num_rows() > kGemvRowsPerGroup * groups() : num_rows() > kGemvMaxRows;
  }
};

std::string Describe(const FfnCase& c, DType dtype) {
  return absl::StrCat("d=", c.d, " m=", c.m, " rows=", c.num_rows(), " groups=", c.groups(),
                      c.grouped() ? " (offsets)" : "", " row_index=", c.row_index,
                      " accumulate=", c.accumulate, " dtype=", std::string(DTypeName(dtype)));
}

// One case's operands, on the host and on one device backend.
class FfnOperands {
 public:
  FfnOperands(Backend& gpu, const FfnCase& c, DType dtype, std::mt19937& rng)
      : c_(c),
        gate_up_(gpu, dtype, c.groups(), 2 * c.m, c.d, rng),
        down_(gpu, dtype, c.groups(), c.d, c.m, rng) {
    const int64_t rows = c.num_rows();
    offsets_.assign(static_cast<size_t>(c.groups()) + 1, 0);
    if (c.grouped()) std::partial_sum(c.counts.begin(), c.counts.end(), offsets_.begin() + 1);
    const int64_t x_rows = c.row_index ? rows + 3 : rows;
    x_ = RandomFloats(x_rows * c.d, rng);
    row_index_.resize(static_cast<size_t>(rows));
    std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(x_rows - 1));
    for (int32_t& r : row_index_) r = pick(rng);
    // Sentinels where y is only written: an element left unwritten fails ExpectClose.
    y0_ = c.accumulate ? RandomFloats(rows * c.d, rng)
                       : std::vector<float>(rows * c.d, Sentinel<float>());
    d_x_ = std::make_unique<GuardedDeviceArray<float>>(gpu, x_);
    d_row_index_ = std::make_unique<GuardedDeviceArray<int32_t>>(gpu, row_index_);
    d_offsets_ = std::make_unique<GuardedDeviceArray<int32_t>>(gpu, offsets_);
  }

  // The op's parameters over host or device operands.
  GatedFfnParams Params(bool device, void* workspace, float* y) const {
    const int64_t rows = c_.num_rows();
    return {.x = device ? d_x_->data() : x_.data(),
            .row_index = !c_.row_index ? nullptr
                         : device      ? d_row_index_->data()
                                       : row_index_.data(),
            .num_rows = rows,
            .offsets = !c_.grouped() ? nullptr
                       : device      ? d_offsets_->data()
                                     : offsets_.data(),
            .gate_up = device ? gate_up_.Device() : gate_up_.Host(),
            .down = device ? down_.Device() : down_.Host(),
            .workspace = workspace,
            .workspace_bytes = GatedFfnWorkspaceBytes(rows, c_.m),
            .y = y,
            .accumulate = c_.accumulate};
  }

  // The reference backend's f32 chain.
  std::vector<float> Reference() const {
    std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
    std::vector<float> y = y0_;
    std::vector<float> workspace(
        static_cast<size_t>(GatedFfnWorkspaceBytes(c_.num_rows(), c_.m) / 4));
    const absl::Status s = ref->GatedFfn(Params(false, workspace.data(), y.data()));
    EXPECT_TRUE(s.ok()) << s;
    return y;
  }

  // The BF16 intermediates modelled on the host: x, gate/up and the activations rounded to BF16
  // where the device rounds them, sums in double.
  std::vector<float> Bf16Model() const {
    const std::vector<float> wgu = gate_up_.Values();
    const std::vector<float> wdn = down_.Values();
    const auto bf16 = [](double v) { return Bf16ToFloat(FloatToBf16(static_cast<float>(v))); };
    const int64_t d = c_.d, m = c_.m;
    std::vector<float> y = y0_;
    std::vector<float> act(static_cast<size_t>(m));
    for (int32_t e = 0; e < c_.groups(); ++e) {
      for (int64_t p = offsets_[e]; p < (c_.grouped() ? offsets_[e + 1] : c_.rows); ++p) {
        const int64_t src = c_.row_index ? row_index_[p] : p;
        const float* x = x_.data() + src * d;
        const float* gu = wgu.data() + e * 2 * m * d;
        for (int64_t i = 0; i < m; ++i) {
          double g = 0.0, u = 0.0;
          for (int64_t j = 0; j < d; ++j) {
            g += static_cast<double>(bf16(x[j])) * gu[i * d + j];
            u += static_cast<double>(bf16(x[j])) * gu[(m + i) * d + j];
          }
          const double gr = bf16(g), ur = bf16(u);
          act[i] = bf16(gr / (1.0 + std::exp(-gr)) * ur);
        }
        const float* dn = wdn.data() + e * d * m;
        for (int64_t o = 0; o < d; ++o) {
          double sum = 0.0;
          for (int64_t i = 0; i < m; ++i) sum += static_cast<double>(act[i]) * dn[o * m + i];
          y[p * d + o] = static_cast<float>(sum + (c_.accumulate ? y0_[p * d + o] : 0.0));
        }
      }
    }
    return y;
  }

  // Runs the op on `gpu` (this case's device operands) and returns y.
  std::vector<float> OnDevice(Backend& gpu) const {
    const int64_t rows = c_.num_rows();
    GuardedDeviceArray<float> y(gpu, y0_);
    GuardedDeviceArray<float> workspace(gpu, GatedFfnWorkspaceBytes(rows, c_.m) / 4);
    const absl::Status s = gpu.GatedFfn(Params(true, workspace.data(), y.data()));
    EXPECT_TRUE(s.ok()) << s;
    workspace.Download();  // the guards around the workspace
    return y.Download();
  }

  // The same through the backend's single ops (what the chain launches).
  std::vector<float> ByOpsOnDevice(Backend& gpu) const {
    GuardedDeviceArray<float> y(gpu, y0_);
    GuardedDeviceArray<float> workspace(gpu, GatedFfnWorkspaceBytes(c_.num_rows(), c_.m) / 4);
    const absl::Status s = GatedFfnByOps(gpu, Params(true, workspace.data(), y.data()));
    EXPECT_TRUE(s.ok()) << s;
    return y.Download();
  }

 private:
  FfnCase c_;
  GroupedWeights gate_up_;
  GroupedWeights down_;
  std::vector<int32_t> offsets_;
  std::vector<float> x_;
  std::vector<int32_t> row_index_;
  std::vector<float> y0_;
  std::unique_ptr<GuardedDeviceArray<float>> d_x_;
  std::unique_ptr<GuardedDeviceArray<int32_t>> d_row_index_;
  std::unique_ptr<GuardedDeviceArray<int32_t>> d_offsets_;
};

std::unique_ptr<Backend> MakeBackend(GroupedGemmPath grouped, FfnActivations activations) {
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeCudaBackend({.device = 0, .grouped_gemm = grouped, .ffn_activations = activations});
  EXPECT_TRUE(gpu.ok()) << gpu.status();
  return gpu.ok() ? std::move(gpu).value() : nullptr;
}

// Every case on one grouped-GEMM path, both activation settings, every dtype.
void ExpectParity(GroupedGemmPath grouped, const std::vector<FfnCase>& cases, uint32_t seed) {
  std::unique_ptr<Backend> bf16 = MakeBackend(grouped, FfnActivations::kBf16);
  std::unique_ptr<Backend> f32 = MakeBackend(grouped, FfnActivations::kF32);
  ASSERT_TRUE(bf16 != nullptr && f32 != nullptr);
  std::mt19937 rng(seed);
  for (const FfnCase& c : cases) {
    for (const DType dtype : kWeightDTypes) {
      SCOPED_TRACE(Describe(c, dtype));
      // Operands on `bf16`; `f32` reads them too (one device, one context).
      const FfnOperands operands(*bf16, c, dtype, rng);
      const std::vector<float> want = operands.Reference();
      const std::vector<float> chain = operands.ByOpsOnDevice(*f32);
      const std::vector<float> got_f32 = operands.OnDevice(*f32);
      const std::vector<float> got_bf16 = operands.OnDevice(*bf16);
      EXPECT_EQ(got_f32, chain) << "kF32 runs the single ops";
      ExpectClose(got_f32, want, c.gemm() ? GemmTolerance(dtype) : kF32Tolerance, "kF32");
      if (!c.gemm() || dtype != DType::kBF16) {
        EXPECT_EQ(got_bf16, chain) << "kBf16 falls back to the single ops here";
        continue;
      }
      EXPECT_NE(got_bf16, chain) << "kBf16 took the f32 chain";
      ExpectClose(got_bf16, want, kBf16Tolerance, "kBf16 vs the f32 reference");
      ExpectClose(got_bf16, operands.Bf16Model(), kF16Tolerance, "kBf16 vs the BF16 model");
    }
  }
}

std::vector<FfnCase> DenseCases() {
  return {
      {.d = 16, .m = 8, .rows = 1},                         // GEMV
      {.d = 40, .m = 45, .rows = 8, .accumulate = true},    // GEMV, the last row count
      {.d = 40, .m = 45, .rows = 9},                        // cuBLAS, odd width (scalar SiLU)
      {.d = 64, .m = 96, .rows = 37, .accumulate = true},   // vector SiLU, accumulate
      {.d = 33, .m = 17, .rows = 130, .accumulate = true},  // nothing a multiple of 8
  };
}

std::vector<FfnCase> GroupedCases() {
  std::mt19937 rng(7);
  std::vector<int32_t> spread(14);
  std::uniform_int_distribution<int32_t> rows(0, 40);
  for (int32_t& n : spread) n = rows(rng);
  spread[3] = 0;
  spread[9] = 0;
  spread[0] = std::max(spread[0], 120);  // > 8 rows per group in all
  std::vector<FfnCase> cases;
  for (const bool row_index : {false, true}) {
    cases.push_back({.d = 24, .m = 16, .counts = {2, 0, 1, 3}, .row_index = row_index});  // GEMV
    cases.push_back({.d = 64, .m = 48, .counts = {40, 0, 1, 15}, .row_index = row_index});
    cases.push_back({.d = 40, .m = 33, .counts = {0, 100}, .row_index = row_index});  // one group
    cases.push_back({.d = 37, .m = 17, .counts = {30, 7, 0}, .row_index = row_index});
    cases.push_back({.d = 48, .m = 64, .counts = spread, .row_index = row_index});
  }
  return cases;
}

TEST(CudaGatedFfn, DenseMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  ExpectParity(GroupedGemmPath::kCublas, DenseCases(), 41);
}

TEST(CudaGatedFfn, GroupedOnCublasMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  ExpectParity(GroupedGemmPath::kCublas, GroupedCases(), 42);
}

TEST(CudaGatedFfn, GroupedOnTensorCoresMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  ExpectParity(GroupedGemmPath::kTensorCore, GroupedCases(), 43);
}

TEST(CudaGatedFfn, BadFfnActivationsEnvironmentIsAnError) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  const absl::StatusOr<std::unique_ptr<Backend>> gpu =
      CudaBackendWithEnvironment("CMOE_CUDA_FFN_ACTIVATIONS", "fp8");
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kInvalidArgument) << gpu.status();
  EXPECT_NE(gpu.status().message().find("CMOE_CUDA_FFN_ACTIVATIONS"), std::string::npos);
}

// Bad offsets on the cuBLAS path (read on the host once) and bad parameters: InvalidArgument,
// nothing written.
TEST(CudaGatedFfn, BadOffsetsAndParametersWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  std::unique_ptr<Backend> gpu = MakeBackend(GroupedGemmPath::kCublas, FfnActivations::kBf16);
  ASSERT_NE(gpu, nullptr);
  std::mt19937 rng(44);
  const GroupedWeights gate_up(*gpu, DType::kBF16, 3, 2 * 8, 16, rng);
  const GroupedWeights down(*gpu, DType::kBF16, 3, 16, 8, rng);
  GuardedDeviceArray<float> x(*gpu, RandomFloats(40 * 16, rng));
  GuardedDeviceArray<float> y(*gpu, 40 * 16);
  GuardedDeviceArray<float> workspace(*gpu, GatedFfnWorkspaceBytes(40, 8) / 4);
  GuardedDeviceArray<int32_t> bad(*gpu, std::vector<int32_t>{0, 25, 3, 40});
  GatedFfnParams p{.x = x.data(),
                   .num_rows = 40,  // > 8 * 3: the cuBLAS path reads the offsets
                   .offsets = bad.data(),
                   .gate_up = gate_up.Device(),
                   .down = down.Device(),
                   .workspace = workspace.data(),
                   .workspace_bytes = GatedFfnWorkspaceBytes(40, 8),
                   .y = y.data()};
  absl::Status s = gpu->GatedFfn(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("GatedFfn: offsets decrease at group 1"), std::string::npos) << s;
  p.workspace_bytes -= 4;
  s = gpu->GatedFfn(p);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("workspace"), std::string::npos) << s;
  EXPECT_TRUE(AllSentinels(y.Download()));
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
