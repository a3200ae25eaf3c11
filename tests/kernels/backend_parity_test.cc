// The fast CPU backend against the reference, op by op, for every SIMD level this CPU supports
// (levels it lacks are skipped), every weight dtype, awkward shapes and 1-3 threads.
//
// Tolerances (f32 accumulation against the reference's double): every compared output must have
// a normalised MSE sum((got - want)^2) / sum(want^2) <= 1e-10 and, per element,
// |got - want| <= atol + rtol * |want| with the per-op atol / rtol below. Every output buffer has
// sentinel guard elements on both sides that must keep their exact bits, and outputs that an op
// must not write (rows outside the attention sequences, everything after an error) hold
// sentinels too.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"

namespace cmoe::kernels::cpu {
namespace {

constexpr uint32_t kSentinelBits = 0x7fa5a5a5u;  // a NaN payload no kernel produces
constexpr int64_t kGuard = 16;
constexpr double kMaxNmse = 1e-10;

float Sentinel() { return std::bit_cast<float>(kSentinelBits); }
bool IsSentinel(float f) { return std::bit_cast<uint32_t>(f) == kSentinelBits; }

// n floats with kGuard sentinels on each side.
class Guarded {
 public:
  explicit Guarded(int64_t n, float fill = Sentinel())
      : n_(n), data_(static_cast<size_t>(n + 2 * kGuard), Sentinel()) {
    std::fill(data(), data() + n, fill);
  }
  float* data() { return data_.data() + kGuard; }
  std::span<float> span() { return {data(), static_cast<size_t>(n_)}; }
  bool GuardsIntact() const {
    for (int64_t i = 0; i < kGuard; ++i) {
      if (!IsSentinel(data_[i]) || !IsSentinel(data_[n_ + kGuard + i])) return false;
    }
    return true;
  }
  bool AllSentinel() const {
    return std::all_of(data_.begin(), data_.end(), [](float f) { return IsSentinel(f); });
  }

 private:
  int64_t n_;
  std::vector<float> data_;
};

std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

// A weight matrix stored in `dtype` one byte past an aligned address, as a safetensors offset
// may put it.
struct TestWeights {
  std::vector<uint8_t> storage;
  WeightView view;
};

TestWeights MakeWeights(DType dtype, int64_t rows, int64_t cols, std::mt19937& rng) {
  const std::vector<float> values = RandomFloats(rows * cols, rng);
  TestWeights w;
  const size_t size = DTypeSize(dtype);
  w.storage.resize(values.size() * size + 1);
  for (size_t i = 0; i < values.size(); ++i) {
    uint8_t* dst = w.storage.data() + 1 + i * size;
    if (dtype == DType::kF32) {
      std::memcpy(dst, &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(values[i]) : FloatToF16(values[i]);
      std::memcpy(dst, &h, 2);
    }
  }
  w.view = {.data = w.storage.data() + 1, .dtype = dtype, .rows = rows, .cols = cols};
  return w;
}

// NMSE and per-element bounds; reports the first bad element only.
void ExpectClose(std::span<const float> got, std::span<const float> want, double atol, double rtol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
    norm += static_cast<double>(want[i]) * want[i];
    if (!(std::abs(d) <= atol + rtol * std::abs(want[i]))) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
      return;
    }
  }
  EXPECT_LE(err / std::max(norm, 1e-30), kMaxNmse) << what;
}

const DType kDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};
const int kThreadCounts[] = {1, 2, 3};

class ParityTest : public ::testing::TestWithParam<SimdLevel> {
 protected:
  void SetUp() override {
    if (static_cast<int>(GetParam()) > static_cast<int>(DetectSimdLevel())) {
      GTEST_SKIP() << "this CPU lacks " << SimdLevelName(GetParam());
    }
    for (int threads : kThreadCounts) {
      auto backend = MakeCpuBackend({.threads = threads, .simd = GetParam()});
      ASSERT_TRUE(backend.ok()) << backend.status();
      fast_.push_back(std::move(backend).value());
    }
  }
  std::string Label(size_t backend_index) const {
    return absl::StrCat(std::string(SimdLevelName(GetParam())), " threads ",
                        kThreadCounts[backend_index]);
  }

  std::unique_ptr<Backend> reference_ = MakeReferenceBackend();
  std::vector<std::unique_ptr<Backend>> fast_;  // one per kThreadCounts entry
  std::mt19937 rng_{1234};
};

// One MatMul case on every fast backend, accumulate off and on, against the reference.
// atol grows with sqrt(in): f32 rounding of a sum of `in` terms of size ~1/3.
void CheckMatMul(Backend& reference, std::span<std::unique_ptr<Backend>> fast, const WeightView& w,
                 int64_t tokens, std::mt19937& rng) {
  const std::string shape =
      absl::StrCat(std::string(DTypeName(w.dtype)), " out ", w.rows, " in ", w.cols, " T ", tokens);
  const std::vector<float> x = RandomFloats(tokens * w.cols, rng);
  const std::vector<float> y0 = RandomFloats(tokens * w.rows, rng);
  const int64_t n = tokens * w.rows;
  std::vector<float> want(static_cast<size_t>(n));
  ASSERT_TRUE(reference.MatMul(x.data(), tokens, w, want.data(), Accumulate::kNo).ok());
  std::vector<float> want_acc(want);
  for (int64_t i = 0; i < n; ++i) want_acc[i] += y0[i];
  const double atol = 1e-5 * std::sqrt(static_cast<double>(w.cols) + 1.0), rtol = 1e-5;
  for (size_t b = 0; b < fast.size(); ++b) {
    for (Accumulate acc : {Accumulate::kNo, Accumulate::kYes}) {
      const bool add = acc == Accumulate::kYes;
      Guarded y(n, std::nanf(""));
      if (add) std::copy(y0.begin(), y0.end(), y.data());
      ASSERT_TRUE(fast[b]->MatMul(x.data(), tokens, w, y.data(), acc).ok());
      const std::string what = absl::StrCat(shape, add ? " accumulate " : " ", kThreadCounts[b],
                                            " threads ", std::string(fast[b]->Name()));
      EXPECT_TRUE(y.GuardsIntact()) << what;
      ExpectClose(y.span(), add ? want_acc : want, atol, rtol, what);
    }
  }
}

TEST_P(ParityTest, MatMulAwkwardShapes) {
  const int64_t sizes[] = {1, 3, 17, 31, 33, 127, 129, 1000};
  for (DType dtype : kDTypes) {
    for (int64_t out : sizes) {
      for (int64_t in : sizes) {
        const TestWeights w = MakeWeights(dtype, out, in, rng_);
        for (int64_t tokens : {1, 2, 5, 64}) {
          CheckMatMul(*reference_, fast_, w.view, tokens, rng_);
          if (HasFailure()) return;
        }
      }
    }
  }
}

TEST_P(ParityTest, MatMulLargeAndBlockEdges) {
  for (DType dtype : kDTypes) {
    const TestWeights large = MakeWeights(dtype, 4096, 1100, rng_);
    for (int64_t tokens : {1, 2, 5, 64}) CheckMatMul(*reference_, fast_, large.view, tokens, rng_);
    // Token counts around the GEMV / GEMM switch and the GEMM token blocks.
    const TestWeights mid = MakeWeights(dtype, 545, 300, rng_);
    for (int64_t tokens : {3, 4, 7, 8, 9, 13, 97, 200}) {
      CheckMatMul(*reference_, fast_, mid.view, tokens, rng_);
    }
    // Rows longer than a GEMV chunk's minimum size.
    const TestWeights wide = MakeWeights(dtype, 40, 40000, rng_);
    for (int64_t tokens : {1, 3, 12}) CheckMatMul(*reference_, fast_, wide.view, tokens, rng_);
    if (HasFailure()) return;
  }
}

TEST_P(ParityTest, MatMulZeroInnerDimension) {
  const TestWeights w = MakeWeights(DType::kBF16, 5, 0, rng_);
  for (auto& backend : fast_) {
    Guarded y(2 * 5, 7.0f);
    const float x = 1.0f;  // (2, 0): never read
    ASSERT_TRUE(backend->MatMul(&x, 2, w.view, y.data(), Accumulate::kYes).ok());
    EXPECT_EQ(y.data()[3], 7.0f);
    ASSERT_TRUE(backend->MatMul(&x, 2, w.view, y.data(), Accumulate::kNo).ok());
    EXPECT_EQ(y.data()[3], 0.0f);
    EXPECT_TRUE(y.GuardsIntact());
  }
}

TEST_P(ParityTest, Embedding) {
  for (DType dtype : kDTypes) {
    for (int64_t dim : {1, 17, 2051}) {
      const TestWeights table = MakeWeights(dtype, 50, dim, rng_);
      const std::vector<int32_t> ids = {0, 49, 7, 7, 23};
      std::vector<float> want(ids.size() * dim);
      ASSERT_TRUE(reference_->Embedding(table.view, ids, want.data()).ok());
      for (size_t b = 0; b < fast_.size(); ++b) {
        Guarded out(static_cast<int64_t>(ids.size()) * dim);
        ASSERT_TRUE(fast_[b]->Embedding(table.view, ids, out.data()).ok());
        EXPECT_TRUE(out.GuardsIntact());
        ExpectClose(out.span(), want, 0.0, 0.0, absl::StrCat("Embedding ", Label(b)));
        for (int32_t bad : {-1, 50}) {
          const std::vector<int32_t> bad_ids = {3, bad};
          Guarded untouched(2 * dim);
          EXPECT_EQ(fast_[b]->Embedding(table.view, bad_ids, untouched.data()).code(),
                    absl::StatusCode::kInvalidArgument);
          EXPECT_TRUE(untouched.AllSentinel());
        }
      }
    }
  }
}

TEST_P(ParityTest, RmsNorm) {
  for (DType dtype : kDTypes) {
    for (int64_t dim : {1, 17, 100, 4099}) {
      for (int64_t rows : {1, 3, 64}) {
        const TestWeights weight = MakeWeights(dtype, 1, dim, rng_);
        const std::vector<float> x = RandomFloats(rows * dim, rng_, -3.0f, 3.0f);
        std::vector<float> want(x.size());
        ASSERT_TRUE(reference_->RmsNorm(x.data(), rows, weight.view, 1e-5f, want.data()).ok());
        for (size_t b = 0; b < fast_.size(); ++b) {
          Guarded y(rows * dim);
          ASSERT_TRUE(fast_[b]->RmsNorm(x.data(), rows, weight.view, 1e-5f, y.data()).ok());
          EXPECT_TRUE(y.GuardsIntact());
          ExpectClose(y.span(), want, 1e-6, 1e-5, absl::StrCat("RmsNorm ", dim, " ", Label(b)));
          Guarded in_place(rows * dim);  // y aliasing x
          std::copy(x.begin(), x.end(), in_place.data());
          ASSERT_TRUE(
              fast_[b]->RmsNorm(in_place.data(), rows, weight.view, 1e-5f, in_place.data()).ok());
          ExpectClose(in_place.span(), want, 1e-6, 1e-5, "RmsNorm in place");
        }
      }
    }
  }
}

TEST_P(ParityTest, RopeAtLargePositions) {
  const std::vector<int32_t> positions = {0, 1, 17, 4095, 100000, 1 << 20};
  for (int32_t head_dim : {2, 6, 64, 128}) {
    for (int32_t n_heads : {1, 3}) {
      for (float theta : {10000.0f, 500000.0f}) {
        const auto n = static_cast<int64_t>(positions.size()) * n_heads * head_dim;
        const std::vector<float> x = RandomFloats(n, rng_);
        std::vector<float> want(x);
        ASSERT_TRUE(reference_->Rope(want.data(), positions, n_heads, head_dim, theta).ok());
        for (size_t b = 0; b < fast_.size(); ++b) {
          Guarded got(n);
          std::copy(x.begin(), x.end(), got.data());
          ASSERT_TRUE(fast_[b]->Rope(got.data(), positions, n_heads, head_dim, theta).ok());
          EXPECT_TRUE(got.GuardsIntact());
          ExpectClose(got.span(), want, 1e-6, 1e-5, absl::StrCat("Rope hd ", head_dim));
        }
      }
    }
  }
  Guarded untouched(3);
  EXPECT_EQ(fast_[0]->Rope(untouched.data(), positions, 1, 3, 10000.0f).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(untouched.AllSentinel());
}

TEST_P(ParityTest, SiluMul) {
  for (int64_t count : {1, 15, 16, 17, 1000, 100003}) {
    std::vector<float> gate = RandomFloats(count, rng_, -20.0f, 20.0f);
    gate[0] = count > 1 ? -100.0f : 100.0f;
    const std::vector<float> up = RandomFloats(count, rng_, -2.0f, 2.0f);
    std::vector<float> want(gate.size());
    ASSERT_TRUE(reference_->SiluMul(gate.data(), up.data(), count, want.data()).ok());
    for (size_t b = 0; b < fast_.size(); ++b) {
      Guarded out(count);
      ASSERT_TRUE(fast_[b]->SiluMul(gate.data(), up.data(), count, out.data()).ok());
      EXPECT_TRUE(out.GuardsIntact());
      ExpectClose(out.span(), want, 1e-6, 2e-6, absl::StrCat("SiluMul ", count, " ", Label(b)));
      Guarded in_place(count);  // out aliasing gate
      std::copy(gate.begin(), gate.end(), in_place.data());
      ASSERT_TRUE(fast_[b]->SiluMul(in_place.data(), up.data(), count, in_place.data()).ok());
      ExpectClose(in_place.span(), want, 1e-6, 2e-6, "SiluMul in place");
    }
  }
}

TEST_P(ParityTest, KvWrite) {
  const PagedKvLayer shape{.num_blocks = 4, .block_size = 2, .n_kv_heads = 2, .head_dim = 3};
  const int64_t width = 6, slots_total = 8;
  const std::vector<float> k = RandomFloats(3 * width, rng_), v = RandomFloats(3 * width, rng_);
  const std::vector<int32_t> slots = {5, 0, 7};
  for (auto& backend : fast_) {
    Guarded kc(slots_total * width), vc(slots_total * width);
    PagedKvLayer cache = shape;
    cache.k = kc.data();
    cache.v = vc.data();
    ASSERT_TRUE(backend->KvWrite(k.data(), v.data(), slots, cache).ok());
    EXPECT_TRUE(kc.GuardsIntact() && vc.GuardsIntact());
    for (size_t t = 0; t < slots.size(); ++t) {
      for (int64_t i = 0; i < width; ++i) {
        EXPECT_EQ(kc.data()[slots[t] * width + i], k[t * width + i]);
        EXPECT_EQ(vc.data()[slots[t] * width + i], v[t * width + i]);
      }
    }
    EXPECT_TRUE(IsSentinel(kc.data()[1 * width]));  // slot 1 not written
    for (int32_t bad : {-1, 8}) {
      Guarded kb(slots_total * width), vb(slots_total * width);
      cache.k = kb.data();
      cache.v = vb.data();
      const std::vector<int32_t> bad_slots = {2, bad};
      EXPECT_EQ(backend->KvWrite(k.data(), v.data(), bad_slots, cache).code(),
                absl::StatusCode::kInvalidArgument);
      EXPECT_TRUE(kb.AllSentinel() && vb.AllSentinel());
    }
  }
}

// A BF16 cache: every backend stores round-to-nearest-even of the f32 keys and values (the bits
// common/half.h computes) at the slots, nothing elsewhere; other cache dtypes are refused.
TEST_P(ParityTest, KvWriteBf16) {
  const PagedKvLayer shape{
      .dtype = DType::kBF16, .num_blocks = 4, .block_size = 2, .n_kv_heads = 2, .head_dim = 3};
  const int64_t width = 6, slots_total = 8;
  std::vector<float> k = RandomFloats(3 * width, rng_), v = RandomFloats(3 * width, rng_);
  k[0] = 1.0f + 1.0f / 256;  // a tie: rounds to even (1.0)
  k[1] = 1.0f + 3.0f / 256;  // a tie: rounds to even (1 + 4/256)
  const std::vector<int32_t> slots = {5, 0, 7};
  std::vector<Backend*> backends = {reference_.get()};
  for (auto& b : fast_) backends.push_back(b.get());
  constexpr uint16_t kUntouched = 0x7fc1;
  for (Backend* backend : backends) {
    std::vector<uint16_t> kc(slots_total * width, kUntouched), vc(slots_total * width, kUntouched);
    PagedKvLayer cache = shape;
    cache.k = kc.data();
    cache.v = vc.data();
    ASSERT_TRUE(backend->KvWrite(k.data(), v.data(), slots, cache).ok());
    for (size_t t = 0; t < slots.size(); ++t) {
      for (int64_t i = 0; i < width; ++i) {
        EXPECT_EQ(kc[slots[t] * width + i], FloatToBf16(k[t * width + i])) << backend->Name();
        EXPECT_EQ(vc[slots[t] * width + i], FloatToBf16(v[t * width + i])) << backend->Name();
      }
    }
    EXPECT_EQ(kc[5 * width], 0x3f80);  // the tie at 1 + 1/256 went to 1.0
    EXPECT_EQ(kc[5 * width + 1], 0x3f82);
    for (int64_t i = 0; i < width; ++i) EXPECT_EQ(kc[1 * width + i], kUntouched);  // slot 1
    cache.dtype = DType::kF16;
    const absl::Status bad = backend->KvWrite(k.data(), v.data(), slots, cache);
    EXPECT_EQ(bad.code(), absl::StatusCode::kInvalidArgument) << backend->Name();
    EXPECT_NE(bad.message().find("F16"), std::string::npos) << bad;
  }
}

// A batch of three sequences: a 7-token prefill chunk, one decode token at context 45 and a
// 5-token chunk continuing a context of 30, with uncovered rows between and after them.
struct AttentionCase {
  std::vector<float> k, v, q;
  std::vector<std::vector<int32_t>> tables;
  std::vector<AttentionSequence> seqs;
  AttentionParams params;
};

AttentionCase MakeAttentionCase(int32_t n_heads, int32_t n_kv, int32_t head_dim, int32_t block_size,
                                std::mt19937& rng) {
  AttentionCase c;
  const int64_t contexts[] = {7, 45, 30}, tokens[] = {7, 1, 5}, first_rows[] = {0, 8, 9};
  const int64_t num_rows = 15;
  int64_t num_blocks = 0;
  for (int64_t ctx : contexts) num_blocks += (ctx + block_size - 1) / block_size;
  num_blocks += 3;  // unused blocks
  std::vector<int32_t> order(static_cast<size_t>(num_blocks));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::shuffle(order.begin(), order.end(), rng);
  const int64_t cache_floats = num_blocks * block_size * n_kv * head_dim;
  c.k = RandomFloats(cache_floats, rng);
  c.v = RandomFloats(cache_floats, rng);
  c.q = RandomFloats(num_rows * n_heads * head_dim, rng, -2.0f, 2.0f);
  size_t next = 0;
  for (int s = 0; s < 3; ++s) {
    const int64_t blocks = (contexts[s] + block_size - 1) / block_size;
    c.tables.emplace_back(order.begin() + next, order.begin() + next + blocks);
    next += blocks;
  }
  for (int s = 0; s < 3; ++s) {
    c.seqs.push_back({.first_row = first_rows[s],
                      .num_tokens = tokens[s],
                      .context_len = contexts[s],
                      .block_table = c.tables[s]});
  }
  c.params = {.q = c.q.data(),
              .num_rows = num_rows,
              .n_heads = n_heads,
              .scale = 1.0f / std::sqrt(static_cast<float>(head_dim)),
              .sequences = c.seqs,
              .cache = {.k = c.k.data(),
                        .v = c.v.data(),
                        .num_blocks = num_blocks,
                        .block_size = block_size,
                        .n_kv_heads = n_kv,
                        .head_dim = head_dim}};
  return c;
}

bool RowCovered(const AttentionCase& c, int64_t row) {
  return std::any_of(c.seqs.begin(), c.seqs.end(), [row](const AttentionSequence& s) {
    return row >= s.first_row && row < s.first_row + s.num_tokens;
  });
}

TEST_P(ParityTest, AttentionMixedBatchGqa) {
  const int32_t heads[][2] = {{8, 4}, {4, 1}, {2, 2}, {32, 1}, {6, 2}};
  for (const auto& [n_heads, n_kv] : heads) {
    for (int32_t head_dim : {36, 64}) {
      for (int32_t block_size : {1, 16}) {
        AttentionCase c = MakeAttentionCase(n_heads, n_kv, head_dim, block_size, rng_);
        const int64_t row_floats = static_cast<int64_t>(n_heads) * head_dim;
        std::vector<float> want(static_cast<size_t>(c.params.num_rows * row_floats));
        c.params.out = want.data();
        ASSERT_TRUE(reference_->Attention(c.params).ok());
        for (size_t b = 0; b < fast_.size(); ++b) {
          Guarded out(c.params.num_rows * row_floats);
          c.params.out = out.data();
          ASSERT_TRUE(fast_[b]->Attention(c.params).ok());
          EXPECT_TRUE(out.GuardsIntact());
          const std::string what = absl::StrCat("Attention ", n_heads, "/", n_kv, " hd ", head_dim,
                                                " block ", block_size, " ", Label(b));
          for (int64_t row = 0; row < c.params.num_rows; ++row) {
            std::span<const float> got(out.data() + row * row_floats, row_floats);
            if (!RowCovered(c, row)) {
              EXPECT_TRUE(std::all_of(got.begin(), got.end(), IsSentinel)) << what << " " << row;
              continue;
            }
            ExpectClose(got, std::span<const float>(want).subspan(row * row_floats, row_floats),
                        2e-6, 1e-5, absl::StrCat(what, " row ", row));
          }
        }
      }
    }
  }
}

// Attention over a BF16 cache reads the keys and values widened exactly: the reference gives
// bitwise what it gives over an F32 cache holding the same rounded values, and the fast backends
// match it within the F32 bounds.
TEST_P(ParityTest, AttentionBf16Cache) {
  for (int32_t head_dim : {36, 64}) {
    for (int32_t block_size : {1, 16}) {
      AttentionCase c = MakeAttentionCase(8, 2, head_dim, block_size, rng_);
      std::vector<uint16_t> k16(c.k.size()), v16(c.v.size());
      std::vector<float> k_rounded(c.k.size()), v_rounded(c.v.size());
      for (size_t i = 0; i < c.k.size(); ++i) {
        k16[i] = FloatToBf16(c.k[i]);
        v16[i] = FloatToBf16(c.v[i]);
        k_rounded[i] = Bf16ToFloat(k16[i]);
        v_rounded[i] = Bf16ToFloat(v16[i]);
      }
      const int64_t n = c.params.num_rows * 8 * head_dim;
      std::vector<float> want(static_cast<size_t>(n), 0.0f), rounded(want);
      c.params.cache.k = k_rounded.data();
      c.params.cache.v = v_rounded.data();
      c.params.out = rounded.data();
      ASSERT_TRUE(reference_->Attention(c.params).ok());
      c.params.cache.k = k16.data();
      c.params.cache.v = v16.data();
      c.params.cache.dtype = DType::kBF16;
      c.params.out = want.data();
      ASSERT_TRUE(reference_->Attention(c.params).ok());
      EXPECT_EQ(want, rounded) << "hd " << head_dim << " block " << block_size;
      for (size_t b = 0; b < fast_.size(); ++b) {
        Guarded out(n);
        c.params.out = out.data();
        ASSERT_TRUE(fast_[b]->Attention(c.params).ok());
        EXPECT_TRUE(out.GuardsIntact());
        for (int64_t row = 0; row < c.params.num_rows; ++row) {
          if (!RowCovered(c, row)) continue;
          const int64_t w = 8 * head_dim;
          ExpectClose(std::span<const float>(out.data() + row * w, w),
                      std::span<const float>(want).subspan(row * w, w), 2e-6, 1e-5,
                      absl::StrCat("bf16 cache hd ", head_dim, " block ", block_size, " ", Label(b),
                                   " row ", row));
        }
      }
    }
  }
}

TEST_P(ParityTest, AttentionRejectsBadInputsAndWritesNothing) {
  const auto bad_cases = [&](int which, AttentionCase& c) {
    if (which == 0) c.tables[1][2] = static_cast<int32_t>(c.params.cache.num_blocks);  // block
    if (which == 1) c.tables[2][0] = -1;
    if (which == 2) c.seqs[1].block_table = std::span<const int32_t>(c.tables[1]).first(2);
    if (which == 3) c.seqs[2].first_row = 12;   // rows past the batch
    if (which == 4) c.params.n_heads = 6;       // not a multiple of n_kv_heads
    if (which == 5) c.seqs[0].context_len = 3;  // shorter than num_tokens
  };
  for (int which = 0; which < 6; ++which) {
    for (auto& backend : fast_) {
      AttentionCase c = MakeAttentionCase(8, 4, 64, 16, rng_);
      bad_cases(which, c);
      c.params.sequences = c.seqs;
      Guarded out(c.params.num_rows * 8 * 64);
      c.params.out = out.data();
      EXPECT_EQ(backend->Attention(c.params).code(), absl::StatusCode::kInvalidArgument) << which;
      EXPECT_TRUE(out.AllSentinel()) << which;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Levels, ParityTest,
                         ::testing::Values(SimdLevel::kScalar, SimdLevel::kAvx2,
                                           SimdLevel::kAvx512),
                         [](const ::testing::TestParamInfo<SimdLevel>& info) {
                           return std::string(SimdLevelName(info.param));
                         });

TEST(SimdLevelTest, DetectAndNames) {
  EXPECT_NE(DetectSimdLevel(), SimdLevel::kAuto);
  EXPECT_EQ(SimdLevelName(SimdLevel::kScalar), "scalar");
  EXPECT_EQ(SimdLevelName(SimdLevel::kAvx2), "avx2");
  EXPECT_EQ(SimdLevelName(SimdLevel::kAvx512), "avx512");
  EXPECT_EQ(SimdLevelName(SimdLevel::kAuto), "auto");
  auto backend = MakeCpuBackend({.threads = 1});
  ASSERT_TRUE(backend.ok());
  EXPECT_EQ((*backend)->Name(),
            absl::StrCat("cpu-", std::string(SimdLevelName(DetectSimdLevel()))));
  auto scalar = MakeCpuBackend({.threads = 1, .simd = SimdLevel::kScalar});
  ASSERT_TRUE(scalar.ok());
  EXPECT_EQ((*scalar)->Name(), "cpu-scalar");
}

TEST(SimdLevelTest, ForcingAnUnsupportedLevelFails) {
  if (DetectSimdLevel() == SimdLevel::kAvx512) GTEST_SKIP() << "this CPU supports every level";
  auto backend = MakeCpuBackend({.threads = 1, .simd = SimdLevel::kAvx512});
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
}

// Backend::MatMuls (the default every host backend uses): each output equals its own MatMul bit
// for bit, and a bad output is InvalidArgument before any output is written.
TEST(MatMuls, EqualMatMulOneByOneAndCheckEveryOutputFirst) {
  std::mt19937 rng(21);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  const auto random = [&](int64_t n) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& f : v) f = dist(rng);
    return v;
  };
  const int64_t rows = 5, in = 40;
  const std::vector<float> x = random(rows * in);
  const std::vector<float> wq = random(64 * in), wk = random(16 * in);
  const WeightView q{.data = wq.data(), .dtype = DType::kF32, .rows = 64, .cols = in};
  const WeightView k{.data = wk.data(), .dtype = DType::kF32, .rows = 16, .cols = in};
  auto fast = MakeCpuBackend({.threads = 2});
  ASSERT_TRUE(fast.ok()) << fast.status();
  std::unique_ptr<Backend> backends[] = {MakeReferenceBackend(), std::move(fast).value()};
  for (const auto& b : backends) {
    std::vector<float> q1(rows * 64), k1(rows * 16), q2(rows * 64, NAN), k2(rows * 16, NAN);
    ASSERT_TRUE(b->MatMul(x.data(), rows, q, q1.data(), Accumulate::kNo).ok());
    ASSERT_TRUE(b->MatMul(x.data(), rows, k, k1.data(), Accumulate::kNo).ok());
    const Backend::MatMulOutput outputs[] = {{q, q2.data()}, {k, k2.data()}};
    ASSERT_TRUE(b->MatMuls(x.data(), rows, outputs).ok());
    EXPECT_EQ(q2, q1) << b->Name();
    EXPECT_EQ(k2, k1) << b->Name();
    std::vector<float> q3(rows * 64, NAN);
    const Backend::MatMulOutput bad[] = {{q, q3.data()}, {k, nullptr}};
    EXPECT_EQ(b->MatMuls(x.data(), rows, bad).code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(std::all_of(q3.begin(), q3.end(), [](float v) { return std::isnan(v); }))
        << b->Name() << ": the first output was written";
  }
}

}  // namespace
}  // namespace cmoe::kernels::cpu
