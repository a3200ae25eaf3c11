#include "engine/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/backend_factory.h"

namespace cmoe::engine {
namespace {

using kernels::DType;
using kernels::WeightView;
using ::testing::HasSubstr;

constexpr int64_t kDim = 48;
constexpr int64_t kHidden = 172;
constexpr int32_t kGroups = 8;  // shared groups + routed experts; widths 22 or 21

uint16_t ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  bits += 0x7fff + ((bits >> 16) & 1);  // round to nearest even
  return static_cast<uint16_t>(bits >> 16);
}

// An owned row-major matrix in F32 or BF16.
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;

  WeightView View() const {
    return {.data = bytes.data(), .dtype = dtype, .rows = rows, .cols = cols};
  }
  size_t ElemSize() const { return kernels::DTypeSize(dtype); }
  const uint8_t* Elem(int64_t r, int64_t c) const {
    return bytes.data() + (r * cols + c) * ElemSize();
  }
};

Matrix RandomMatrix(std::mt19937& rng, int64_t rows, int64_t cols, DType dtype) {
  std::normal_distribution<float> normal(0.0f, 0.3f);
  Matrix m{.dtype = dtype, .rows = rows, .cols = cols};
  m.bytes.resize(static_cast<size_t>(rows * cols) * m.ElemSize());
  for (int64_t i = 0; i < rows * cols; ++i) {
    const float f = normal(rng);
    if (dtype == DType::kF32) {
      std::memcpy(m.bytes.data() + i * 4, &f, 4);
    } else {
      const uint16_t b = ToBf16(f);
      std::memcpy(m.bytes.data() + i * 2, &b, 2);
    }
  }
  return m;
}

// The rows `idx` of m (carving gate/up) or, with by_cols, its columns `idx` (carving down).
Matrix Select(const Matrix& m, const std::vector<int>& idx, bool by_cols) {
  const int64_t n = static_cast<int64_t>(idx.size());
  Matrix out{.dtype = m.dtype, .rows = by_cols ? m.rows : n, .cols = by_cols ? n : m.cols};
  out.bytes.resize(static_cast<size_t>(out.rows * out.cols) * m.ElemSize());
  for (int64_t r = 0; r < out.rows; ++r) {
    for (int64_t c = 0; c < out.cols; ++c) {
      const uint8_t* src = by_cols ? m.Elem(r, idx[c]) : m.Elem(idx[r], c);
      std::memcpy(out.bytes.data() + (r * out.cols + c) * m.ElemSize(), src, m.ElemSize());
    }
  }
  return out;
}

struct OwnedExpert {
  Matrix gate, up, down;
  ExpertWeights View() const { return {.gate = gate.View(), .up = up.View(), .down = down.View()}; }
};

// A dense SwiGLU FFN (d = 48, d_h = 172) and its carving: the neurons shuffled and cut into
// kGroups groups of 22 or 21; the first `shared_groups` form the shared expert.
struct CarvedFfn {
  Matrix gate, up, down;  // dense (d_h, d), (d_h, d), (d, d_h)
  OwnedExpert shared;
  std::vector<OwnedExpert> experts;
  std::vector<int64_t> widths;  // (N_r) routed widths, from the partition
  int64_t shared_width = 0;
  MoeLayerWeights weights;
  int32_t NumExperts() const { return static_cast<int32_t>(experts.size()); }
};

std::vector<std::vector<int>> Partition(std::mt19937& rng) {
  std::vector<int> neurons(kHidden);
  std::iota(neurons.begin(), neurons.end(), 0);
  std::shuffle(neurons.begin(), neurons.end(), rng);
  std::vector<std::vector<int>> groups(kGroups);
  int64_t next = 0;
  for (int32_t g = 0; g < kGroups; ++g) {
    const int64_t width = kHidden / kGroups + (g < kHidden % kGroups ? 1 : 0);
    groups[g].assign(neurons.begin() + next, neurons.begin() + next + width);
    next += width;
  }
  std::shuffle(groups.begin(), groups.end(), rng);  // mix the 22s and 21s
  return groups;
}

OwnedExpert Carve(const CarvedFfn& f, const std::vector<int>& neurons) {
  return {.gate = Select(f.gate, neurons, false),
          .up = Select(f.up, neurons, false),
          .down = Select(f.down, neurons, true)};
}

std::unique_ptr<CarvedFfn> MakeCarvedFfn(DType dtype, int shared_groups, uint32_t seed) {
  std::mt19937 rng(seed);
  auto f = std::make_unique<CarvedFfn>();
  f->gate = RandomMatrix(rng, kHidden, kDim, dtype);
  f->up = RandomMatrix(rng, kHidden, kDim, dtype);
  f->down = RandomMatrix(rng, kDim, kHidden, dtype);
  const std::vector<std::vector<int>> groups = Partition(rng);
  std::vector<int> shared_neurons;
  for (int g = 0; g < shared_groups; ++g) {
    shared_neurons.insert(shared_neurons.end(), groups[g].begin(), groups[g].end());
  }
  f->shared_width = static_cast<int64_t>(shared_neurons.size());
  if (!shared_neurons.empty()) f->shared = Carve(*f, shared_neurons);
  for (int g = shared_groups; g < kGroups; ++g) {
    f->experts.push_back(Carve(*f, groups[g]));
    f->widths.push_back(static_cast<int64_t>(groups[g].size()));
  }
  f->weights.shared = f->shared.View();
  for (const OwnedExpert& e : f->experts) f->weights.experts.push_back(e.View());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (int64_t i = 0; i < f->NumExperts() * kDim; ++i) {
    f->weights.router_gate.push_back(normal(rng) / std::sqrt(float{kDim}));
    f->weights.router_up.push_back(normal(rng) / std::sqrt(float{kDim}));
  }
  return f;
}

std::vector<float> RandomVector(uint32_t seed, int64_t n) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

std::unique_ptr<kernels::Backend> MakeBackend(const std::string& device) {
  auto backend = kernels::CreateBackend({.device = device, .threads = 1});
  EXPECT_TRUE(backend.ok()) << backend.status();
  return std::move(backend).value();
}

// x += dense FFN(h) on `backend`, as the dense model does it.
void DenseFfn(kernels::Backend& b, const CarvedFfn& f, const std::vector<float>& h, int64_t t,
              std::vector<float>& x) {
  std::vector<float> gate(t * kHidden), up(t * kHidden);
  ASSERT_TRUE(b.MatMul(h.data(), t, f.gate.View(), gate.data(), kernels::Accumulate::kNo).ok());
  ASSERT_TRUE(b.MatMul(h.data(), t, f.up.View(), up.data(), kernels::Accumulate::kNo).ok());
  ASSERT_TRUE(b.SiluMul(gate.data(), up.data(), t * kHidden, gate.data()).ok());
  ASSERT_TRUE(b.MatMul(gate.data(), t, f.down.View(), x.data(), kernels::Accumulate::kYes).ok());
}

struct Routing {
  std::vector<float> probs;       // (T, N_r)
  std::vector<int32_t> selected;  // (T, k)
  std::vector<float> weights;     // (T, k)
};

Routing RouteForTest(const MoeLayerWeights& w, const std::vector<float>& h, int64_t t, int32_t k) {
  const auto n_r = static_cast<int32_t>(w.experts.size());
  std::vector<float> scores(t * n_r);
  Routing r{.probs = std::vector<float>(t * n_r),
            .selected = std::vector<int32_t>(t * k),
            .weights = std::vector<float>(t * k)};
  EXPECT_TRUE(RouterScores({.x = h,
                            .wr_gate = w.router_gate,
                            .wr_up = w.router_up,
                            .num_tokens = t,
                            .dim = kDim,
                            .num_experts = n_r,
                            .variant = w.variant},
                           scores)
                  .ok());
  EXPECT_TRUE(
      RouteTokens(scores, t,
                  {.bias = w.bias, .scale = w.scale, .num_experts = n_r, .num_activated = k},
                  {.probs = r.probs, .selected = r.selected, .weights = r.weights})
          .ok());
  return r;
}

// acc (d) += w * E(h_row), in double from the widened weights.
void NaiveExpert(const ExpertWeights& e, const float* h_row, double w, std::vector<double>& acc) {
  for (int64_t n = 0; n < e.width(); ++n) {
    double g = 0, u = 0;
    for (int64_t i = 0; i < kDim; ++i) {
      g += double{e.gate.At(n, i)} * h_row[i];
      u += double{e.up.At(n, i)} * h_row[i];
    }
    const double act = g / (1.0 + std::exp(-g)) * u;
    for (int64_t o = 0; o < kDim; ++o) acc[o] += w * e.down.At(o, n) * act;
  }
}

// x0 + Shared(h) + sum_j weights[t, j] * E_selected[t, j](h), token by token.
std::vector<float> NaiveMoe(const CarvedFfn& f, const std::vector<float>& h, int64_t t, int32_t k,
                            const std::vector<int32_t>& selected, const std::vector<float>& weights,
                            const std::vector<float>& x0) {
  std::vector<float> x = x0;
  for (int64_t tok = 0; tok < t; ++tok) {
    std::vector<double> acc(kDim, 0.0);
    const float* row = h.data() + tok * kDim;
    if (f.shared_width > 0) NaiveExpert(f.weights.shared, row, 1.0, acc);
    for (int32_t j = 0; j < k; ++j) {
      NaiveExpert(f.weights.experts[selected[tok * k + j]], row, weights[tok * k + j], acc);
    }
    for (int64_t o = 0; o < kDim; ++o) x[tok * kDim + o] += static_cast<float>(acc[o]);
  }
  return x;
}

// max |got - want| / max |want - x0|: the error relative to the size of the FFN output.
double RelativeError(const std::vector<float>& got, const std::vector<float>& want,
                     const std::vector<float>& x0) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err = std::max(err, std::abs(double{got[i]} - want[i]));
    scale = std::max(scale, std::abs(double{want[i]} - x0[i]));
  }
  EXPECT_GT(scale, 0.1) << "the FFN output is too small to test against";
  return err / scale;
}

std::vector<float> RunMoe(kernels::Backend& b, const CarvedFfn& f, const std::vector<float>& h,
                          int64_t t, int32_t k, const std::vector<float>& x0,
                          MoeStepStats* stats = nullptr) {
  std::vector<float> x = x0;
  MoeLayer layer;
  const absl::Status s = layer.Forward(
      b, f.weights, {.h = h.data(), .num_tokens = t, .num_activated = k, .x = x.data()}, stats);
  EXPECT_TRUE(s.ok()) << s;
  return x;
}

const char* const kDevices[] = {"reference", "cpu"};
const DType kDTypes[] = {DType::kF32, DType::kBF16};

// The key invariant: every routed expert selected with w = 1 is the dense FFN, for any bias.
TEST(MoeLayerTest, AllExpertsActiveEqualsDenseFfn) {
  for (const char* device : kDevices) {
    for (DType dtype : kDTypes) {
      for (int shared_groups : {1, 0}) {
        SCOPED_TRACE(std::string(device) + " " + std::string(kernels::DTypeName(dtype)) +
                     " shared_groups=" + std::to_string(shared_groups));
        auto b = MakeBackend(device);
        auto f = MakeCarvedFfn(dtype, shared_groups, 7);
        f->weights.bias = RandomVector(11, f->NumExperts());
        const int64_t t = 13;
        const std::vector<float> h = RandomVector(1, t * kDim), x0 = RandomVector(2, t * kDim);
        std::vector<float> dense = x0;
        DenseFfn(*b, *f, h, t, dense);
        const std::vector<float> moe = RunMoe(*b, *f, h, t, f->NumExperts(), x0);
        EXPECT_LE(RelativeError(moe, dense, x0), 1e-5);
      }
    }
  }
}

TEST(MoeLayerTest, TopKMatchesNaivePerTokenSum) {
  for (const char* device : kDevices) {
    for (DType dtype : kDTypes) {
      for (int32_t k : {1, 3}) {
        SCOPED_TRACE(std::string(device) + " k=" + std::to_string(k));
        auto b = MakeBackend(device);
        auto f = MakeCarvedFfn(dtype, 1, 21);
        f->weights.bias = RandomVector(5, f->NumExperts());
        for (float& v : f->weights.bias) v *= 0.05f;
        const int64_t t = 17;
        const std::vector<float> h = RandomVector(3, t * kDim), x0 = RandomVector(4, t * kDim);
        const Routing r = RouteForTest(f->weights, h, t, k);
        const std::vector<float> want = NaiveMoe(*f, h, t, k, r.selected, r.weights, x0);
        EXPECT_LE(RelativeError(RunMoe(*b, *f, h, t, k, x0), want, x0), 1e-5);
      }
    }
  }
}

TEST(MoeLayerTest, StatsCountComputedNeurons) {
  auto b = MakeBackend("cpu");
  auto f = MakeCarvedFfn(DType::kF32, 1, 31);
  const int64_t t = 9;
  const int32_t k = 2;
  const std::vector<float> h = RandomVector(6, t * kDim), x0(t * kDim, 0.0f);
  MoeStepStats stats;
  RunMoe(*b, *f, h, t, k, x0, &stats);
  const Routing r = RouteForTest(f->weights, h, t, k);
  std::vector<int64_t> counts(f->NumExperts(), 0);
  for (int32_t e : r.selected) ++counts[e];
  int64_t computed = t * f->shared_width;
  for (int32_t e = 0; e < f->NumExperts(); ++e) computed += counts[e] * f->widths[e];
  EXPECT_EQ(f->shared_width + std::accumulate(f->widths.begin(), f->widths.end(), int64_t{0}),
            kHidden);
  EXPECT_EQ(stats.neurons_computed, computed);
  EXPECT_EQ(stats.neurons_dense, t * kHidden);
  EXPECT_EQ(stats.tokens_per_expert, counts);
  EXPECT_EQ(
      std::accumulate(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end(), int64_t{0}),
      t * k);
}

TEST(MoeLayerTest, OneTokenLeavesExpertsIdle) {
  for (const char* device : kDevices) {
    SCOPED_TRACE(device);
    auto b = MakeBackend(device);
    auto f = MakeCarvedFfn(DType::kBF16, 1, 41);
    const std::vector<float> h = RandomVector(7, kDim), x0 = RandomVector(8, kDim);
    MoeStepStats stats;
    const std::vector<float> got = RunMoe(*b, *f, h, 1, 2, x0, &stats);
    const Routing r = RouteForTest(f->weights, h, 1, 2);
    EXPECT_LE(RelativeError(got, NaiveMoe(*f, h, 1, 2, r.selected, r.weights, x0), x0), 1e-5);
    EXPECT_EQ(std::count(stats.tokens_per_expert.begin(), stats.tokens_per_expert.end(), 0),
              f->NumExperts() - 2);
    EXPECT_EQ(stats.neurons_computed,
              f->shared_width + f->widths[r.selected[0]] + f->widths[r.selected[1]]);
  }
}

TEST(MoeLayerTest, BigBiasSendsEveryTokenToOneExpert) {
  for (const char* device : kDevices) {
    for (int32_t k : {1, 2}) {
      SCOPED_TRACE(std::string(device) + " k=" + std::to_string(k));
      auto b = MakeBackend(device);
      auto f = MakeCarvedFfn(DType::kF32, 0, 51);
      f->weights.bias.assign(f->NumExperts(), 0.0f);
      f->weights.bias[3] = 100.0f;
      const int64_t t = 11;
      const std::vector<float> h = RandomVector(9, t * kDim), x0 = RandomVector(10, t * kDim);
      MoeStepStats stats;
      const std::vector<float> got = RunMoe(*b, *f, h, t, k, x0, &stats);
      EXPECT_EQ(stats.tokens_per_expert[3], t);
      const Routing r = RouteForTest(f->weights, h, t, k);
      EXPECT_LE(RelativeError(got, NaiveMoe(*f, h, t, k, r.selected, r.weights, x0), x0), 1e-5);
    }
  }
}

// w = 1 + p * u: the expected weights are built here from the softmax probabilities.
TEST(MoeLayerTest, ScaleWeightsExpertOutputs) {
  for (const char* device : kDevices) {
    SCOPED_TRACE(device);
    auto b = MakeBackend(device);
    auto f = MakeCarvedFfn(DType::kF32, 1, 61);
    const int32_t n_r = f->NumExperts();
    const int64_t t = 6;
    const std::vector<float> h = RandomVector(12, t * kDim), x0 = RandomVector(13, t * kDim);
    const std::vector<float> unscaled = RunMoe(*b, *f, h, t, n_r, x0);
    f->weights.scale = RandomVector(14, n_r);
    for (float& u : f->weights.scale) u = 2.0f + 3.0f * u;
    const std::vector<float> got = RunMoe(*b, *f, h, t, n_r, x0);
    const Routing r = RouteForTest(f->weights, h, t, n_r);
    std::vector<float> w(t * n_r);
    for (int64_t i = 0; i < t * n_r; ++i) {
      const int32_t e = r.selected[i];
      w[i] = 1.0f + r.probs[(i / n_r) * n_r + e] * f->weights.scale[e];
    }
    EXPECT_LE(RelativeError(got, NaiveMoe(*f, h, t, n_r, r.selected, w, x0), x0), 1e-5);
    EXPECT_GT(RelativeError(got, unscaled, x0), 1e-3);
  }
}

TEST(MoeLayerTest, RejectsNumActivatedOutOfRangeAndLeavesXUntouched) {
  auto b = MakeBackend("reference");
  auto f = MakeCarvedFfn(DType::kF32, 1, 71);
  const int64_t t = 4;
  const std::vector<float> h = RandomVector(15, t * kDim), x0 = RandomVector(16, t * kDim);
  for (int32_t k : {0, -1, f->NumExperts() + 1}) {
    SCOPED_TRACE(k);
    std::vector<float> x = x0;
    MoeLayer layer;
    const absl::Status s =
        layer.Forward(*b, f->weights,
                      {.h = h.data(), .num_tokens = t, .num_activated = k, .x = x.data()}, nullptr);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(s.message()), HasSubstr("num_activated"));
    EXPECT_EQ(x, x0);
  }
}

TEST(MoeLayerTest, RejectsMismatchedExpertShapes) {
  auto b = MakeBackend("reference");
  auto f = MakeCarvedFfn(DType::kF32, 1, 81);
  f->weights.experts[2].down.cols -= 1;
  const std::vector<float> h = RandomVector(17, kDim), x0 = RandomVector(18, kDim);
  std::vector<float> x = x0;
  MoeLayer layer;
  const absl::Status s = layer.Forward(
      *b, f->weights, {.h = h.data(), .num_tokens = 1, .num_activated = 2, .x = x.data()}, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("expert 2"));
  EXPECT_EQ(x, x0);
}

// One layer across steps of different sizes gives what a fresh layer gives.
TEST(MoeLayerTest, WorkspaceReuseAcrossStepSizes) {
  auto b = MakeBackend("cpu");
  auto f = MakeCarvedFfn(DType::kF32, 1, 91);
  MoeLayer layer;
  for (int64_t t : {20, 3, 0, 7}) {
    SCOPED_TRACE(t);
    const std::vector<float> h = RandomVector(19 + t, t * kDim), x0 = RandomVector(20, t * kDim);
    std::vector<float> x = x0;
    MoeStepStats stats;
    ASSERT_TRUE(layer
                    .Forward(*b, f->weights,
                             {.h = h.data(), .num_tokens = t, .num_activated = 3, .x = x.data()},
                             &stats)
                    .ok());
    EXPECT_EQ(x, RunMoe(*b, *f, h, t, 3, x0));
    EXPECT_EQ(stats.neurons_dense, t * kHidden);
  }
}

}  // namespace
}  // namespace cmoe::engine
