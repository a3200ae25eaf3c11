// Backend::GatedFfn on the host backends (the default: GatedFfnByOps) against a direct evaluation
// of down . (silu(gate . x) * (up . x)) in double, and ValidateGatedFfn's answers to bad
// parameters (InvalidArgument naming what is wrong, nothing written).
#include <cmath>
#include <cstdint>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/ffn_ops.h"

namespace cmoe::kernels {
namespace {

std::vector<float> Uniform(int64_t n, float bound, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-bound, bound);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

// An FFN over E groups of F32 weights with its inputs, and the answer in double.
struct Ffn {
  int64_t d = 0;
  int64_t m = 0;
  std::vector<int32_t> offsets;  // (E + 1)
  std::vector<float> gate_up;    // (E, 2m, d)
  std::vector<float> down;       // (E, d, m)
  std::vector<float> x;          // (x rows, d)
  std::vector<int32_t> row_index;

  Ffn(int64_t d_in, int64_t m_in, const std::vector<int32_t>& counts, bool with_index,
      std::mt19937& rng)
      : d(d_in), m(m_in), offsets(counts.size() + 1, 0) {
    std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
    const auto groups = static_cast<int64_t>(counts.size());
    gate_up = Uniform(groups * 2 * m * d, 1.0f / std::sqrt(static_cast<float>(d)), rng);
    down = Uniform(groups * d * m, 1.0f / std::sqrt(static_cast<float>(m)), rng);
    const int64_t x_rows = rows() + (with_index ? 5 : 0);
    x = Uniform(x_rows * d, 1.0f, rng);
    if (with_index) {
      std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(x_rows - 1));
      row_index.resize(static_cast<size_t>(rows()));
      for (int32_t& r : row_index) r = pick(rng);
    }
  }

  int64_t rows() const { return offsets.back(); }
  int32_t groups() const { return static_cast<int32_t>(offsets.size() - 1); }

  GatedFfnParams Params(bool grouped, void* workspace, float* y, bool accumulate) const {
    return {.x = x.data(),
            .row_index = row_index.empty() ? nullptr : row_index.data(),
            .num_rows = rows(),
            .offsets = grouped ? offsets.data() : nullptr,
            .gate_up = {.data = gate_up.data(),
                        .dtype = DType::kF32,
                        .groups = groups(),
                        .rows = 2 * m,
                        .cols = d},
            .down = {.data = down.data(),
                     .dtype = DType::kF32,
                     .groups = groups(),
                     .rows = d,
                     .cols = m},
            .workspace = workspace,
            .workspace_bytes = GatedFfnWorkspaceBytes(rows(), m),
            .y = y,
            .accumulate = accumulate};
  }

  // y0 + the FFN of every row, in double.
  std::vector<double> Expected(const std::vector<float>& y0) const {
    std::vector<double> y(y0.begin(), y0.end());
    std::vector<double> act(static_cast<size_t>(m));
    for (int32_t e = 0; e < groups(); ++e) {
      for (int64_t p = offsets[e]; p < offsets[e + 1]; ++p) {
        const float* xp = x.data() + (row_index.empty() ? p : row_index[p]) * d;
        const float* w = gate_up.data() + e * 2 * m * d;
        for (int64_t i = 0; i < m; ++i) {
          double g = 0.0, u = 0.0;
          for (int64_t j = 0; j < d; ++j) {
            g += static_cast<double>(xp[j]) * w[i * d + j];
            u += static_cast<double>(xp[j]) * w[(m + i) * d + j];
          }
          act[i] = g / (1.0 + std::exp(-g)) * u;
        }
        const float* wd = down.data() + e * d * m;
        for (int64_t o = 0; o < d; ++o) {
          double sum = 0.0;
          for (int64_t i = 0; i < m; ++i) sum += act[i] * wd[o * m + i];
          y[p * d + o] += sum;
        }
      }
    }
    return y;
  }
};

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5 + 1e-4 * std::abs(want[i])) << "element " << i;
  }
}

std::vector<std::unique_ptr<Backend>> HostBackends() {
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(cpu::MakeReferenceBackend());
  for (const int threads : {1, 2}) {
    auto fast = cpu::MakeCpuBackend({.threads = threads});
    EXPECT_TRUE(fast.ok()) << fast.status();
    if (fast.ok()) backends.push_back(std::move(fast).value());
  }
  return backends;
}

TEST(GatedFfn, DenseOnHostBackendsMatchesDouble) {
  std::mt19937 rng(1);
  for (const auto& backend : HostBackends()) {
    for (const int64_t rows : {1, 7, 33}) {
      SCOPED_TRACE(std::string(backend->Name()) + " rows " + std::to_string(rows));
      const Ffn ffn(40, 27, {static_cast<int32_t>(rows)}, false, rng);
      for (const bool accumulate : {false, true}) {
        std::vector<float> y0 =
            accumulate ? Uniform(rows * ffn.d, 1.0f, rng) : std::vector<float>(rows * ffn.d, 0.0f);
        std::vector<float> y = accumulate ? y0 : std::vector<float>(y0.size(), NAN);
        std::vector<float> workspace(GatedFfnWorkspaceBytes(rows, ffn.m) / 4);
        ASSERT_TRUE(
            backend->GatedFfn(ffn.Params(false, workspace.data(), y.data(), accumulate)).ok());
        ExpectNear(y, ffn.Expected(y0));
      }
    }
  }
}

TEST(GatedFfn, GroupedOnHostBackendsMatchesDouble) {
  std::mt19937 rng(2);
  const std::vector<std::vector<int32_t>> shapes = {{3, 0, 1, 9}, {0, 20}, {1}, {0, 0, 0}};
  for (const auto& backend : HostBackends()) {
    for (const auto& counts : shapes) {
      for (const bool with_index : {false, true}) {
        SCOPED_TRACE(std::string(backend->Name()) + " groups " + std::to_string(counts.size()) +
                     " row_index " + std::to_string(with_index));
        const Ffn ffn(24, 19, counts, with_index, rng);
        std::vector<float> y(ffn.rows() * ffn.d, NAN);
        std::vector<float> workspace(GatedFfnWorkspaceBytes(ffn.rows(), ffn.m) / 4);
        ASSERT_TRUE(backend->GatedFfn(ffn.Params(true, workspace.data(), y.data(), false)).ok());
        ExpectNear(y, ffn.Expected(std::vector<float>(y.size(), 0.0f)));
      }
    }
  }
}

TEST(GatedFfn, BadParametersAreInvalidArgumentAndWriteNothing) {
  std::mt19937 rng(3);
  const Ffn one(16, 8, {12}, false, rng);
  const Ffn three(16, 8, {4, 0, 8}, true, rng);
  std::vector<float> workspace(GatedFfnWorkspaceBytes(12, 8) / 4);
  std::vector<float> y(12 * 16, NAN);
  std::unique_ptr<Backend> backend = cpu::MakeReferenceBackend();
  struct Case {
    std::string expect;  // in the message
    GatedFfnParams params;
  };
  std::vector<Case> cases;
  const GatedFfnParams good = one.Params(false, workspace.data(), y.data(), true);
  ASSERT_TRUE(ValidateGatedFfn(good).ok());
  {
    GatedFfnParams p = good;
    p.gate_up.rows = 15;  // not 2m
    cases.push_back({"are not (E, 2m, d) and (E, d, m)", p});
  }
  {
    GatedFfnParams p = good;
    p.down.dtype = DType::kBF16;
    cases.push_back({"of one dtype", p});
  }
  {
    GatedFfnParams p = good;
    p.gate_up.dtype = DType::kI32;
    p.down.dtype = DType::kI32;
    cases.push_back({"float weights", p});
  }
  {
    GatedFfnParams p = three.Params(true, workspace.data(), y.data(), false);
    p.offsets = nullptr;
    cases.push_back({"3 groups need offsets", p});
  }
  {
    GatedFfnParams p = good;
    p.row_index = three.row_index.data();
    cases.push_back({"a row_index needs offsets", p});
  }
  {
    GatedFfnParams p = three.Params(true, workspace.data(), y.data(), true);
    cases.push_back({"accumulate is for one group", p});
  }
  {
    GatedFfnParams p = good;
    p.workspace_bytes -= 1;
    cases.push_back({"workspace of", p});
  }
  {
    GatedFfnParams p = good;
    p.workspace = nullptr;
    cases.push_back({"workspace is null", p});
  }
  {
    GatedFfnParams p = good;
    p.x = nullptr;
    cases.push_back({"x is null", p});
  }
  {
    GatedFfnParams p = good;
    p.num_rows = -1;
    cases.push_back({"num_rows -1 < 0", p});
  }
  {
    GatedFfnParams p = good;
    p.down.data = nullptr;
    cases.push_back({"down weights is null", p});
  }
  for (const Case& c : cases) {
    const absl::Status s = backend->GatedFfn(c.params);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.expect << ": " << s;
    EXPECT_NE(s.message().find("GatedFfn: "), std::string::npos) << s;
    EXPECT_NE(s.message().find(c.expect), std::string::npos) << s;
  }
  for (const float v : y) EXPECT_TRUE(std::isnan(v));
  // No rows: nothing to do, not even with null operands.
  GatedFfnParams empty = good;
  empty.num_rows = 0;
  empty.x = nullptr;
  empty.y = nullptr;
  empty.workspace = nullptr;
  EXPECT_TRUE(backend->GatedFfn(empty).ok());
}

}  // namespace
}  // namespace cmoe::kernels
