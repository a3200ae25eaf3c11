// The CUDA MoE primitives (RouteTopK, BuildDispatch, GroupedMatMul, CombineExperts; kernels in
// kernels/cuda/{route_topk,dispatch,grouped_gemv,gather_rows,combine}.cu, host side in
// cuda_backend_moe.cc) against the reference backend, one by one and chained as the MoE layer of
// kernels/moe_ops.h. Shapes: E from 1 to 1024 (the CUDA limit; 1025 is InvalidArgument), k from 1
// to E, T = 0, 1 and up to 4096, empty experts, every token on one expert; GroupedMatMul on both
// paths (the grouped GEMV while num_rows <= 8 * groups, cuBLAS or the tensor-core kernel above),
// with and without a row_index, every weight dtype, widths on and off the 16-byte vector path,
// groups without rows and one group holding every row. Outputs sit between sentinel guards.
//
// Tolerances:
// - RouteTopK: selected ids equal exactly (random keys lie far apart next to f32 rounding; ties
//   are exact by construction); weights kF32Tolerance (p in f32 vs the reference's double: a few
//   ulps), NaN where the reference has NaN.
// - BuildDispatch: counts, offsets, slot_token, slot_source, token_slot equal exactly.
// - GroupedMatMul, grouped GEMV path: kF32Tolerance for every weight dtype (x stays f32, the
//   weights widen exactly; only the f32 accumulation order differs).
// - GroupedMatMul, cuBLAS path and the tensor-core kernel: F32 weights kF32Tolerance
//   (CUBLAS_COMPUTE_32F, no TF32); F16 kF16Tolerance and BF16 kBf16Tolerance (x is rounded to the
//   weight dtype for the tensor cores).
// - CombineExperts: kF32Tolerance (k + 1 f32 roundings vs one from double).
// - The chained layer: the selected ids equal exactly; the output x kF32Tolerance on the decode
//   (GEMV) path for every dtype and on the prefill path with F32 weights, the dtype's tolerance on
//   the prefill path with F16 / BF16 weights. The chain starts from the router logits, so that
//   both backends route the same logits (the router MatMul has its own tests).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/moe_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

// CudaBackend::GroupedMatMul takes the grouped GEMV while num_rows <= 8 * groups.
constexpr int64_t kGemvRowsPerGroup = 8;

std::vector<int32_t> Download(const GuardedDeviceArray<int32_t>& a) { return a.Download(); }

// NaN where the reference has NaN (but never an unwritten sentinel), else kF32Tolerance.
void ExpectCloseOrBothNan(const std::vector<float>& got, const std::vector<float>& want,
                          const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  std::vector<float> got_finite;
  std::vector<float> want_finite;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_FALSE(IsSentinel(got[i])) << what << ": element " << i << " was not written";
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << what << ": element " << i << " got " << got[i];
    } else {
      got_finite.push_back(got[i]);
      want_finite.push_back(want[i]);
    }
  }
  ExpectClose(got_finite, want_finite, kF32Tolerance, what);
}

// ------------------------------------------------------------------------------------ RouteTopK

struct RouteCase {
  int64_t tokens = 0;
  int32_t experts = 0;
  int32_t k = 0;
  bool abs_score = true;
  bool bias = false;
  bool scale = false;
};

std::string Describe(const RouteCase& c) {
  return absl::StrCat("T=", c.tokens, " E=", c.experts, " k=", c.k, " abs=", c.abs_score,
                      " bias=", c.bias, " scale=", c.scale);
}

struct RouteInputs {
  std::vector<float> logits;  // (T, 2E)
  std::vector<float> bias;    // (E)
  std::vector<float> scale;   // (E)
};

RouteInputs RandomRouteInputs(int64_t tokens, int32_t experts, std::mt19937& rng) {
  return {.logits = RandomFloats(tokens * 2 * experts, rng, -3.0f, 3.0f),
          .bias = RandomFloats(experts, rng, -0.05f, 0.05f),
          .scale = RandomFloats(experts, rng, 0.0f, 2.0f)};
}

struct RouteResult {
  std::vector<int32_t> selected;  // (T, k)
  std::vector<float> weights;     // (T, k)
};

void RouteOnReference(const RouteInputs& in, const RouteCase& c, RouteResult* out) {
  std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
  out->selected.assign(c.tokens * c.k, -1);
  out->weights.assign(c.tokens * c.k, 0.0f);
  CMOE_ASSERT_OK(ref->RouteTopK({.logits = in.logits.data(),
                                 .num_tokens = c.tokens,
                                 .num_experts = c.experts,
                                 .num_activated = c.k,
                                 .abs_score = c.abs_score,
                                 .bias = c.bias ? in.bias.data() : nullptr,
                                 .scale = c.scale ? in.scale.data() : nullptr,
                                 .selected = out->selected.data(),
                                 .weights = out->weights.data()}));
}

void RouteOnGpu(Backend& gpu, const RouteInputs& in, const RouteCase& c, RouteResult* out) {
  GuardedDeviceArray<float> logits(gpu, in.logits);
  GuardedDeviceArray<float> bias(gpu, in.bias);
  GuardedDeviceArray<float> scale(gpu, in.scale);
  GuardedDeviceArray<int32_t> selected(gpu, c.tokens * c.k);
  GuardedDeviceArray<float> weights(gpu, c.tokens * c.k);
  CMOE_ASSERT_OK(gpu.RouteTopK({.logits = logits.data(),
                                .num_tokens = c.tokens,
                                .num_experts = c.experts,
                                .num_activated = c.k,
                                .abs_score = c.abs_score,
                                .bias = c.bias ? bias.data() : nullptr,
                                .scale = c.scale ? scale.data() : nullptr,
                                .selected = selected.data(),
                                .weights = weights.data()}));
  out->selected = selected.Download();
  out->weights = weights.Download();
}

// One token's softmax in double and its keys float(p) + b, as the reference computes them.
void HostKeys(const RouteInputs& in, const RouteCase& c, int64_t t, std::vector<double>* probs,
              std::vector<float>* keys) {
  const int32_t n = c.experts;
  const float* gate = in.logits.data() + t * 2 * n;
  const float* up = gate + n;
  probs->assign(n, 0.0);
  keys->assign(n, 0.0f);
  double max_score = -std::numeric_limits<double>::infinity();
  for (int32_t e = 0; e < n; ++e) {
    const double g = gate[e];
    const double s = static_cast<double>(up[e]) * (g / (1.0 + std::exp(-g)));
    (*probs)[e] = static_cast<float>(c.abs_score ? std::abs(s) : s);
    max_score = std::max(max_score, (*probs)[e]);
  }
  double sum = 0.0;
  for (double& v : *probs) sum += (v = std::exp(v - max_score));
  for (int32_t e = 0; e < n; ++e) {
    (*probs)[e] /= sum;
    (*keys)[e] = static_cast<float>((*probs)[e]) + (c.bias ? in.bias[e] : 0.0f);
  }
}

// Keys the f32 kernel may order either way: closer than its rounding of p (a few ulps of s,
// amplified by exp: ~1e-5 of p) plus a few ulps of the key. NaN keys are exact ties (index order).
bool NearTie(float a, float b, double p_a, double p_b) {
  if (std::isnan(a) || std::isnan(b)) return false;
  const double bound = 1e-5 * std::max(p_a, p_b) + 4.0 * std::numeric_limits<float>::epsilon() *
                                                       std::max(std::abs(static_cast<double>(a)),
                                                                std::abs(static_cast<double>(b)));
  return std::abs(static_cast<double>(a) - b) <= bound;
}

// Equal to the reference, except that experts whose keys are a near tie may trade places (random
// keys of 256+ experts do come that close); a traded expert's weight is checked against its own
// 1 + p * u.
void ExpectRouteParity(Backend& gpu, const RouteInputs& in, const RouteCase& c) {
  SCOPED_TRACE(Describe(c));
  RouteResult want;
  RouteResult got;
  ASSERT_NO_FATAL_FAILURE(RouteOnReference(in, c, &want));
  ASSERT_NO_FATAL_FAILURE(RouteOnGpu(gpu, in, c, &got));
  std::vector<double> probs;
  std::vector<float> keys;
  std::vector<char> seen(c.experts);
  int traded = 0;
  for (int64_t t = 0; t < c.tokens; ++t) {
    std::fill(seen.begin(), seen.end(), 0);
    for (int32_t j = 0; j < c.k; ++j) {
      const int64_t i = t * c.k + j;
      const int32_t g = got.selected[i];
      const int32_t w = want.selected[i];
      ASSERT_TRUE(g >= 0 && g < c.experts && !seen[g])
          << "token " << t << " position " << j << ": expert " << g << " invalid or repeated";
      seen[g] = 1;
      if (g == w) continue;
      ASSERT_NO_FATAL_FAILURE(HostKeys(in, c, t, &probs, &keys));
      ASSERT_TRUE(NearTie(keys[g], keys[w], probs[g], probs[w]))
          << "token " << t << " position " << j << ": expert " << g << " (key " << keys[g]
          << ") where the reference has " << w << " (key " << keys[w] << ")";
      ++traded;
      want.weights[i] = c.scale ? 1.0f + static_cast<float>(probs[g]) * in.scale[g] : 1.0f;
    }
  }
  EXPECT_LE(traded, std::max<int64_t>(2, c.tokens * c.k / 50)) << "too many near ties";
  ExpectCloseOrBothNan(got.weights, want.weights, "RouteTopK weights");
}

std::vector<int32_t> KValues(int32_t experts) {
  if (experts <= 16) {
    std::vector<int32_t> all(experts);
    std::iota(all.begin(), all.end(), 1);
    return all;
  }
  return {1, 2, 8, experts / 2, experts - 1, experts};
}

TEST(CudaRouteTopK, MatchesReferenceOverShapesAndOptions) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(11);
  for (const int32_t experts : {1, 8, 16, 37, 160, 256}) {
    for (const int64_t tokens : {int64_t{1}, int64_t{7}, int64_t{33}}) {
      const RouteInputs in = RandomRouteInputs(tokens, experts, rng);
      for (const int32_t k : KValues(experts)) {
        for (const bool abs_score : {true, false}) {
          for (const int options : {0, 1, 2, 3}) {
            const RouteCase c{.tokens = tokens,
                              .experts = experts,
                              .k = k,
                              .abs_score = abs_score,
                              .bias = (options & 1) != 0,
                              .scale = (options & 2) != 0};
            ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(*gpu, in, c));
          }
        }
      }
    }
  }
}

TEST(CudaRouteTopK, LargestExpertCountAndManyTokens) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(12);
  const RouteInputs wide = RandomRouteInputs(5, 1024, rng);
  for (const int32_t k : {1, 3, 1024}) {
    ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(
        *gpu, wide, {.tokens = 5, .experts = 1024, .k = k, .bias = true, .scale = true}));
  }
  const RouteInputs many = RandomRouteInputs(4099, 16, rng);
  ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(
      *gpu, many, {.tokens = 4099, .experts = 16, .k = 2, .bias = true, .scale = true}));
}

TEST(CudaRouteTopK, TiesGoToTheLowerExpert) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  constexpr int32_t kExperts = 12;
  std::mt19937 rng(13);
  RouteInputs in = RandomRouteInputs(3, kExperts, rng);
  // Token 0: every expert has the same logits. Token 1: expert e + 6 copies expert e.
  for (int32_t e = 0; e < kExperts; ++e) {
    in.logits[e] = 0.75f;
    in.logits[kExperts + e] = -1.5f;
  }
  float* token1 = in.logits.data() + 2 * kExperts;
  for (int32_t e = 0; e < kExperts / 2; ++e) {
    token1[e + kExperts / 2] = token1[e];
    token1[kExperts + e + kExperts / 2] = token1[kExperts + e];
  }
  for (int32_t k = 1; k <= kExperts; ++k) {
    for (const bool abs_score : {true, false}) {
      const RouteCase c{
          .tokens = 3, .experts = kExperts, .k = k, .abs_score = abs_score, .scale = true};
      ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(*gpu, in, c));
      RouteResult got;
      ASSERT_NO_FATAL_FAILURE(RouteOnGpu(*gpu, in, c, &got));
      for (int32_t j = 0; j < k; ++j) EXPECT_EQ(got.selected[j], j) << "all-tie token, k=" << k;
      // Token 1: identical keys come out in index order (e before its copy e + 6).
      const int32_t* token1_ids = got.selected.data() + k;
      for (int32_t a = 0; a < k; ++a) {
        for (int32_t b = a + 1; b < k; ++b) {
          EXPECT_NE(token1_ids[a], token1_ids[b] + kExperts / 2) << "copy before original, k=" << k;
        }
      }
    }
  }
}

TEST(CudaRouteTopK, NanKeysRankBelowEveryNumber) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  constexpr int32_t kExperts = 8;
  std::mt19937 rng(14);
  RouteInputs in = RandomRouteInputs(4, kExperts, rng);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  in.bias[1] = nan;
  in.bias[4] = nan;
  in.bias[3] = -inf;
  in.bias[6] = inf;
  for (int32_t k = 1; k <= kExperts; ++k) {
    const RouteCase c{.tokens = 4, .experts = kExperts, .k = k, .bias = true, .scale = true};
    ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(*gpu, in, c));
  }
  RouteResult got;
  ASSERT_NO_FATAL_FAILURE(RouteOnGpu(
      *gpu, in, {.tokens = 4, .experts = kExperts, .k = kExperts, .bias = true, .scale = true},
      &got));
  for (int64_t t = 0; t < 4; ++t) {
    EXPECT_EQ(got.selected[t * kExperts], 6) << "+inf key first, token " << t;
    EXPECT_EQ(got.selected[t * kExperts + kExperts - 3], 3) << "-inf key before NaN, token " << t;
    EXPECT_EQ(got.selected[t * kExperts + kExperts - 2], 1) << "NaN keys last, token " << t;
    EXPECT_EQ(got.selected[t * kExperts + kExperts - 1], 4) << "NaN keys last, token " << t;
  }
}

TEST(CudaRouteTopK, NanScoreMakesEveryProbabilityNan) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  constexpr int32_t kExperts = 6;
  std::mt19937 rng(15);
  RouteInputs in = RandomRouteInputs(2, kExperts, rng);
  in.logits[2] = std::numeric_limits<float>::quiet_NaN();  // token 0, gate of expert 2
  for (const int32_t k : {1, 3, 6}) {
    ASSERT_NO_FATAL_FAILURE(ExpectRouteParity(
        *gpu, in, {.tokens = 2, .experts = kExperts, .k = k, .bias = true, .scale = true}));
  }
}

TEST(CudaRouteTopK, NoTokensAndTooManyExperts) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(16);
  const RouteInputs in = RandomRouteInputs(1, 1025, rng);
  GuardedDeviceArray<float> logits(*gpu, in.logits);
  GuardedDeviceArray<int32_t> selected(*gpu, 4);
  GuardedDeviceArray<float> weights(*gpu, 4);
  RouteTopKParams p{.logits = logits.data(),
                    .num_tokens = 0,
                    .num_experts = 8,
                    .num_activated = 2,
                    .selected = selected.data(),
                    .weights = weights.data()};
  CMOE_ASSERT_OK(gpu->RouteTopK(p));
  p.num_tokens = 1;
  p.num_experts = 1025;
  EXPECT_EQ(gpu->RouteTopK(p).code(), absl::StatusCode::kInvalidArgument);
  for (const int32_t id : selected.Download()) EXPECT_TRUE(IsSentinel(id));
  for (const float w : weights.Download()) EXPECT_TRUE(IsSentinel(w));
}

// -------------------------------------------------------------------------------- BuildDispatch

// (T, k) distinct ids per token; `skewed`: low experts much more likely.
std::vector<int32_t> RandomSelection(int64_t tokens, int32_t k, int32_t experts, std::mt19937& rng,
                                     bool skewed = false) {
  std::vector<double> odds(experts);
  for (int32_t e = 0; e < experts; ++e) odds[e] = skewed ? std::pow(0.7, e) : 1.0;
  std::vector<int32_t> selected;
  selected.reserve(tokens * k);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<double> left = odds;
    for (int32_t j = 0; j < k; ++j) {
      std::discrete_distribution<int32_t> pick(left.begin(), left.end());
      const int32_t e = pick(rng);
      selected.push_back(e);
      left[e] = 0.0;
    }
  }
  return selected;
}

struct DispatchResult {
  std::vector<int32_t> counts, offsets, slot_token, slot_source, token_slot;
};

void DispatchOnReference(const std::vector<int32_t>& selected, int64_t tokens, int32_t k,
                         int32_t experts, DispatchResult* out) {
  std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
  const int64_t slots = tokens * k;
  out->counts.assign(experts, -1);
  out->offsets.assign(experts + 1, -1);
  out->slot_token.assign(slots, -1);
  out->slot_source.assign(slots, -1);
  out->token_slot.assign(slots, -1);
  CMOE_ASSERT_OK(ref->BuildDispatch({.selected = selected.data(),
                                     .num_tokens = tokens,
                                     .k = k,
                                     .num_experts = experts,
                                     .counts = out->counts.data(),
                                     .offsets = out->offsets.data(),
                                     .slot_token = out->slot_token.data(),
                                     .slot_source = out->slot_source.data(),
                                     .token_slot = out->token_slot.data()}));
}

void DispatchOnGpu(Backend& gpu, const std::vector<int32_t>& selected, int64_t tokens, int32_t k,
                   int32_t experts, DispatchResult* out) {
  const int64_t slots = tokens * k;
  GuardedDeviceArray<int32_t> d_selected(gpu, selected);
  GuardedDeviceArray<int32_t> counts(gpu, experts);
  GuardedDeviceArray<int32_t> offsets(gpu, experts + 1);
  GuardedDeviceArray<int32_t> slot_token(gpu, slots);
  GuardedDeviceArray<int32_t> slot_source(gpu, slots);
  GuardedDeviceArray<int32_t> token_slot(gpu, slots);
  CMOE_ASSERT_OK(gpu.BuildDispatch({.selected = d_selected.data(),
                                    .num_tokens = tokens,
                                    .k = k,
                                    .num_experts = experts,
                                    .counts = counts.data(),
                                    .offsets = offsets.data(),
                                    .slot_token = slot_token.data(),
                                    .slot_source = slot_source.data(),
                                    .token_slot = token_slot.data()}));
  out->counts = Download(counts);
  out->offsets = Download(offsets);
  out->slot_token = Download(slot_token);
  out->slot_source = Download(slot_source);
  out->token_slot = Download(token_slot);
}

void ExpectDispatchParity(Backend& gpu, const std::vector<int32_t>& selected, int64_t tokens,
                          int32_t k, int32_t experts) {
  SCOPED_TRACE(absl::StrCat("T=", tokens, " k=", k, " E=", experts));
  DispatchResult want;
  DispatchResult got;
  ASSERT_NO_FATAL_FAILURE(DispatchOnReference(selected, tokens, k, experts, &want));
  ASSERT_NO_FATAL_FAILURE(DispatchOnGpu(gpu, selected, tokens, k, experts, &got));
  EXPECT_EQ(got.counts, want.counts);
  EXPECT_EQ(got.offsets, want.offsets);
  EXPECT_EQ(got.slot_token, want.slot_token);
  EXPECT_EQ(got.slot_source, want.slot_source);
  EXPECT_EQ(got.token_slot, want.token_slot);
}

TEST(CudaBuildDispatch, MatchesReferenceExactly) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(21);
  struct Shape {
    int64_t tokens;
    int32_t k;
    int32_t experts;
    bool skewed;
  };
  const Shape shapes[] = {{1, 2, 8, false},     {1, 8, 8, false},      {5, 1, 1, false},
                          {37, 5, 5, false},    {100, 2, 16, false},   {4096, 2, 16, false},
                          {4096, 2, 16, true},  {1000, 8, 256, false}, {333, 4, 1024, false},
                          {2000, 1, 64, true},  {513, 2, 3, false},    {40, 256, 256, false},
                          {20000, 2, 14, true}, {3, 1000, 1024, false}};
  for (const Shape& s : shapes) {
    const std::vector<int32_t> selected = RandomSelection(s.tokens, s.k, s.experts, rng, s.skewed);
    ASSERT_NO_FATAL_FAILURE(ExpectDispatchParity(*gpu, selected, s.tokens, s.k, s.experts));
  }
}

TEST(CudaBuildDispatch, EveryTokenOnOneExpert) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  ASSERT_NO_FATAL_FAILURE(ExpectDispatchParity(*gpu, std::vector<int32_t>(300, 5), 300, 1, 8));
  std::vector<int32_t> pairs;
  for (int t = 0; t < 2500; ++t) {
    pairs.push_back(t % 2 == 0 ? 5 : 2);  // order within a token varies
    pairs.push_back(t % 2 == 0 ? 2 : 5);
  }
  ASSERT_NO_FATAL_FAILURE(ExpectDispatchParity(*gpu, pairs, 2500, 2, 8));
}

TEST(CudaBuildDispatch, NoTokensWritesZeroCountsAndOffsets) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  GuardedDeviceArray<int32_t> counts(*gpu, 8);
  GuardedDeviceArray<int32_t> offsets(*gpu, 9);
  CMOE_ASSERT_OK(gpu->BuildDispatch({.num_tokens = 0,
                                     .k = 2,
                                     .num_experts = 8,
                                     .counts = counts.data(),
                                     .offsets = offsets.data()}));
  EXPECT_EQ(Download(counts), std::vector<int32_t>(8, 0));
  EXPECT_EQ(Download(offsets), std::vector<int32_t>(9, 0));
}

TEST(CudaBuildDispatch, TooManyExpertsIsInvalidArgument) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  GuardedDeviceArray<int32_t> selected(*gpu, std::vector<int32_t>{0});
  GuardedDeviceArray<int32_t> counts(*gpu, 1025);
  GuardedDeviceArray<int32_t> offsets(*gpu, 1026);
  GuardedDeviceArray<int32_t> slots(*gpu, 1);
  const absl::Status s = gpu->BuildDispatch({.selected = selected.data(),
                                             .num_tokens = 1,
                                             .k = 1,
                                             .num_experts = 1025,
                                             .counts = counts.data(),
                                             .offsets = offsets.data(),
                                             .slot_token = slots.data(),
                                             .slot_source = slots.data(),
                                             .token_slot = slots.data()});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const int32_t c : Download(counts)) EXPECT_TRUE(IsSentinel(c));
}

// -------------------------------------------------------------------------------- GroupedMatMul

struct GroupedCase {
  int64_t out = 0;
  int64_t in = 0;
  std::vector<int32_t> counts;  // rows per group; groups = counts.size()
};

void ExpectGroupedParity(Backend& gpu, const GroupedCase& c, DType dtype, bool with_row_index,
                         bool expect_gemv, std::mt19937& rng, int64_t weight_offset = 0) {
  const int32_t groups = static_cast<int32_t>(c.counts.size());
  std::vector<int32_t> offsets(groups + 1, 0);
  std::partial_sum(c.counts.begin(), c.counts.end(), offsets.begin() + 1);
  const int64_t rows = offsets.back();
  SCOPED_TRACE(absl::StrCat("groups=", groups, " rows=", rows, " out=", c.out, " in=", c.in,
                            " dtype=", std::string(DTypeName(dtype)), " row_index=", with_row_index,
                            " weight_offset=", weight_offset));
  ASSERT_EQ(rows <= kGemvRowsPerGroup * groups, expect_gemv) << "the case misses its path";
  const GroupedWeights w(gpu, dtype, groups, c.out, c.in, rng, weight_offset);
  const int64_t x_rows = with_row_index ? rows + 3 : rows;
  const std::vector<float> x = RandomFloats(x_rows * c.in, rng);
  std::vector<int32_t> row_index(rows);
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(x_rows - 1));
  for (int32_t& r : row_index) r = pick(rng);

  std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
  std::vector<float> want(rows * c.out);
  CMOE_ASSERT_OK(ref->GroupedMatMul({.x = x.data(),
                                     .row_index = with_row_index ? row_index.data() : nullptr,
                                     .num_rows = rows,
                                     .offsets = offsets.data(),
                                     .w = w.Host(),
                                     .y = want.data()}));

  GuardedDeviceArray<float> d_x(gpu, x);
  GuardedDeviceArray<int32_t> d_row_index(gpu, row_index);
  GuardedDeviceArray<int32_t> d_offsets(gpu, offsets);
  GuardedDeviceArray<float> y(gpu, rows * c.out);
  CMOE_ASSERT_OK(gpu.GroupedMatMul({.x = d_x.data(),
                                    .row_index = with_row_index ? d_row_index.data() : nullptr,
                                    .num_rows = rows,
                                    .offsets = d_offsets.data(),
                                    .w = w.Device(),
                                    .y = y.data()}));
  ExpectClose(y.Download(), want, expect_gemv ? kF32Tolerance : GemmTolerance(dtype),
              "GroupedMatMul");
}

TEST(CudaGroupedMatMul, GemvPathMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(31);
  const GroupedCase cases[] = {
      {.out = 5, .in = 8, .counts = {1}},                         // 1 row
      {.out = 96, .in = 64, .counts = {0, 1, 0, 0, 1, 0, 0, 0}},  // decode, 2 rows
      {.out = 344, .in = 512, .counts = {0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0}},
      {.out = 16, .in = 16, .counts = {4, 0}},                    // the 4-row variant
      {.out = 24, .in = 24, .counts = {1, 2, 0, 3, 0, 0, 0, 1}},  // chunks of 1..3
      {.out = 13, .in = 37, .counts = {3, 0, 9, 2}},              // scalar path, odd out
      {.out = 40, .in = 128, .counts = {0, 0, 30, 0}},            // one group, 4 chunks
      {.out = 33, .in = 200, .counts = {8, 8, 8, 8}},             // exactly 8 per group
  };
  for (const GroupedCase& c : cases) {
    for (const DType dtype : kWeightDTypes) {
      for (const bool with_row_index : {false, true}) {
        ASSERT_NO_FATAL_FAILURE(
            ExpectGroupedParity(*gpu, c, dtype, with_row_index, /*expect_gemv=*/true, rng));
      }
    }
  }
}

TEST(CudaGroupedMatMul, GemvPathWithUnalignedWeights) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(32);
  const GroupedCase c{.out = 16, .in = 64, .counts = {2, 0, 1, 3}};
  for (const DType dtype : kWeightDTypes) {
    ASSERT_NO_FATAL_FAILURE(ExpectGroupedParity(*gpu, c, dtype, /*with_row_index=*/true,
                                                /*expect_gemv=*/true, rng, /*weight_offset=*/1));
  }
}

TEST(CudaGroupedMatMul, CublasPathMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(33);
  std::vector<int32_t> spread(8);
  std::uniform_int_distribution<int32_t> rows(0, 50);
  for (int32_t& n : spread) n = rows(rng);
  spread[5] = 0;
  spread[0] = std::max(spread[0], 70);  // > 64 rows in all
  const GroupedCase cases[] = {
      {.out = 48, .in = 64, .counts = {40, 0, 1, 15}},
      {.out = 33, .in = 40, .counts = {0, 100}},  // every row in one group
      {.out = 17, .in = 37, .counts = {30, 7, 0}},
      {.out = 256, .in = 384, .counts = spread},
  };
  for (const GroupedCase& c : cases) {
    for (const DType dtype : kWeightDTypes) {
      for (const bool with_row_index : {false, true}) {
        ASSERT_NO_FATAL_FAILURE(
            ExpectGroupedParity(*gpu, c, dtype, with_row_index, /*expect_gemv=*/false, rng));
      }
    }
  }
}

// The tensor-core path (grouped_gemm.cu, CudaBackendOptions::grouped_gemm = kTensorCore): the
// cuBLAS cases plus several row tiles per group, tile edges (64 rows, 64 outputs, k slices of 32)
// on and off, a k not a multiple of 16, and the gate+up width of a Llama-2-7B S2A2E16 expert
// (2 x 688 outputs). F32 weights still take
// cuBLAS there. Same tolerances as cuBLAS: x rounded to the weight dtype, f32 accumulation.
TEST(CudaGroupedMatMul, TensorCorePathMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  absl::StatusOr<std::unique_ptr<Backend>> gpu =
      MakeCudaBackend({.device = 0, .grouped_gemm = GroupedGemmPath::kTensorCore});
  CMOE_ASSERT_OK(gpu.status());
  std::mt19937 rng(35);
  std::vector<int32_t> spread(14);
  std::uniform_int_distribution<int32_t> rows(0, 90);
  for (int32_t& n : spread) n = rows(rng);
  spread[3] = 0;
  spread[9] = 0;
  const GroupedCase cases[] = {
      {.out = 48, .in = 64, .counts = {40, 0, 1, 15}},
      {.out = 33, .in = 40, .counts = {0, 100}},  // every row in one group, two row tiles
      {.out = 17, .in = 37, .counts = {30, 7, 0}},
      {.out = 64, .in = 32, .counts = {64, 64, 0, 1}},    // exact tiles, then one row
      {.out = 65, .in = 33, .counts = {65, 0, 63, 129}},  // one past each edge
      {.out = 130, .in = 200, .counts = spread},
      {.out = 1376, .in = 512, .counts = {37, 40, 35, 0, 39, 36, 41, 38}},
  };
  for (const GroupedCase& c : cases) {
    for (const DType dtype : kWeightDTypes) {
      for (const bool with_row_index : {false, true}) {
        ASSERT_NO_FATAL_FAILURE(
            ExpectGroupedParity(**gpu, c, dtype, with_row_index, /*expect_gemv=*/false, rng));
      }
    }
  }
}

TEST(CudaGroupedMatMul, BadGroupedGemmEnvironmentIsAnError) {
  CMOE_CUDA_BACKEND_OR_SKIP(any_gpu);
  const absl::StatusOr<std::unique_ptr<Backend>> gpu =
      CudaBackendWithEnvironment("CMOE_CUDA_GROUPED_GEMM", "cutlass");
  EXPECT_EQ(gpu.status().code(), absl::StatusCode::kInvalidArgument) << gpu.status();
  EXPECT_NE(gpu.status().message().find("CMOE_CUDA_GROUPED_GEMM"), std::string::npos);
}

TEST(CudaGroupedMatMul, NoRowsAndBadOffsets) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(34);
  const GroupedWeights w(*gpu, DType::kBF16, 3, 8, 16, rng);
  GuardedDeviceArray<float> x(*gpu, RandomFloats(40 * 16, rng));
  GuardedDeviceArray<float> y(*gpu, 40 * 8);
  GuardedDeviceArray<int32_t> empty(*gpu, std::vector<int32_t>{0, 0, 0, 0});
  CMOE_ASSERT_OK(gpu->GroupedMatMul(
      {.x = x.data(), .num_rows = 0, .offsets = empty.data(), .w = w.Device(), .y = y.data()}));
  // 40 rows > 8 * 3: the cuBLAS path reads the offsets and rejects them.
  GuardedDeviceArray<int32_t> bad(*gpu, std::vector<int32_t>{0, 25, 3, 40});
  const absl::Status s = gpu->GroupedMatMul(
      {.x = x.data(), .num_rows = 40, .offsets = bad.data(), .w = w.Device(), .y = y.data()});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const float v : y.Download()) EXPECT_TRUE(IsSentinel(v));
}

// ------------------------------------------------------------------------------- CombineExperts

TEST(CudaCombineExperts, MatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(41);
  struct Shape {
    int64_t tokens;
    int32_t k;
    int64_t dim;
  };
  for (const Shape& s : {Shape{1, 1, 4096}, Shape{5, 2, 37}, Shape{64, 4, 128}, Shape{3, 8, 1},
                         Shape{17, 3, 6}, Shape{300, 2, 260}}) {
    SCOPED_TRACE(absl::StrCat("T=", s.tokens, " k=", s.k, " dim=", s.dim));
    const int32_t experts = std::max(8, s.k);
    DispatchResult plan;
    ASSERT_NO_FATAL_FAILURE(DispatchOnReference(RandomSelection(s.tokens, s.k, experts, rng),
                                                s.tokens, s.k, experts, &plan));
    const int64_t slots = s.tokens * s.k;
    const std::vector<float> expert_out = RandomFloats(slots * s.dim, rng);
    const std::vector<float> weights = RandomFloats(slots, rng, 0.5f, 1.5f);
    const std::vector<float> x = RandomFloats(s.tokens * s.dim, rng);

    std::vector<float> want = x;
    std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
    CMOE_ASSERT_OK(ref->CombineExperts({.expert_out = expert_out.data(),
                                        .token_slot = plan.token_slot.data(),
                                        .weights = weights.data(),
                                        .num_tokens = s.tokens,
                                        .k = s.k,
                                        .dim = s.dim,
                                        .x = want.data()}));
    GuardedDeviceArray<float> d_out(*gpu, expert_out);
    GuardedDeviceArray<int32_t> d_slots(*gpu, plan.token_slot);
    GuardedDeviceArray<float> d_weights(*gpu, weights);
    GuardedDeviceArray<float> d_x(*gpu, x);
    CMOE_ASSERT_OK(gpu->CombineExperts({.expert_out = d_out.data(),
                                        .token_slot = d_slots.data(),
                                        .weights = d_weights.data(),
                                        .num_tokens = s.tokens,
                                        .k = s.k,
                                        .dim = s.dim,
                                        .x = d_x.data()}));
    ExpectClose(d_x.Download(), want, kF32Tolerance, "CombineExperts");
  }
}

TEST(CudaCombineExperts, NoTokensLeavesXAlone) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  GuardedDeviceArray<float> x(*gpu, 8);
  CMOE_ASSERT_OK(gpu->CombineExperts({.num_tokens = 0, .k = 2, .dim = 8, .x = x.data()}));
  for (const float v : x.Download()) EXPECT_TRUE(IsSentinel(v));
}

// ------------------------------------------------------------------------ The chained MoE layer

// Pointers into one backend's memory (host for the reference, device for CUDA).
struct LayerOperands {
  const float* logits = nullptr;  // (T, 2E)
  const float* h = nullptr;       // (T, d)
  const float* bias = nullptr;    // (E)
  const float* scale = nullptr;   // (E)
  GroupedWeightView w_gate_up;    // (E, 2m, d)
  GroupedWeightView w_down;       // (E, d, m)
  int64_t tokens = 0;
  int32_t k = 0;
  float* x = nullptr;  // (T, d), read and written
};

// The routed half of a carved FFN, as kernels/moe_ops.h chains it; `selected` gets the routing.
absl::Status RunMoeLayer(Backend& be, const LayerOperands& l, std::vector<int32_t>* selected) {
  const int32_t experts = l.w_gate_up.groups;
  const int64_t d = l.w_down.rows;
  const int64_t m = l.w_down.cols;
  const int64_t slots = l.tokens * l.k;
  auto floats = [&be](int64_t n) { return be.Allocate(n * static_cast<int64_t>(sizeof(float))); };
  auto ints = [&be](int64_t n) { return be.Allocate(n * static_cast<int64_t>(sizeof(int32_t))); };
  CMOE_ASSIGN_OR_RETURN(Buffer sel, ints(slots));
  CMOE_ASSIGN_OR_RETURN(Buffer weights, floats(slots));
  CMOE_ASSIGN_OR_RETURN(Buffer counts, ints(experts));
  CMOE_ASSIGN_OR_RETURN(Buffer offsets, ints(experts + 1));
  CMOE_ASSIGN_OR_RETURN(Buffer slot_token, ints(slots));
  CMOE_ASSIGN_OR_RETURN(Buffer slot_source, ints(slots));
  CMOE_ASSIGN_OR_RETURN(Buffer token_slot, ints(slots));
  CMOE_ASSIGN_OR_RETURN(Buffer gate_up, floats(slots * 2 * m));
  CMOE_ASSIGN_OR_RETURN(Buffer act, floats(slots * m));
  CMOE_ASSIGN_OR_RETURN(Buffer out, floats(slots * d));
  CMOE_RETURN_IF_ERROR(be.RouteTopK({.logits = l.logits,
                                     .num_tokens = l.tokens,
                                     .num_experts = experts,
                                     .num_activated = l.k,
                                     .bias = l.bias,
                                     .scale = l.scale,
                                     .selected = sel.as<int32_t>(),
                                     .weights = weights.as<float>()}));
  CMOE_RETURN_IF_ERROR(be.BuildDispatch({.selected = sel.as<int32_t>(),
                                         .num_tokens = l.tokens,
                                         .k = l.k,
                                         .num_experts = experts,
                                         .counts = counts.as<int32_t>(),
                                         .offsets = offsets.as<int32_t>(),
                                         .slot_token = slot_token.as<int32_t>(),
                                         .slot_source = slot_source.as<int32_t>(),
                                         .token_slot = token_slot.as<int32_t>()}));
  CMOE_RETURN_IF_ERROR(be.GroupedMatMul({.x = l.h,
                                         .row_index = slot_token.as<int32_t>(),
                                         .num_rows = slots,
                                         .offsets = offsets.as<int32_t>(),
                                         .w = l.w_gate_up,
                                         .y = gate_up.as<float>()}));
  CMOE_RETURN_IF_ERROR(be.SiluMulPacked(gate_up.as<float>(), slots, m, act.as<float>()));
  CMOE_RETURN_IF_ERROR(be.GroupedMatMul({.x = act.as<float>(),
                                         .num_rows = slots,
                                         .offsets = offsets.as<int32_t>(),
                                         .w = l.w_down,
                                         .y = out.as<float>()}));
  CMOE_RETURN_IF_ERROR(be.CombineExperts({.expert_out = out.as<float>(),
                                          .token_slot = token_slot.as<int32_t>(),
                                          .weights = weights.as<float>(),
                                          .num_tokens = l.tokens,
                                          .k = l.k,
                                          .dim = d,
                                          .x = l.x}));
  selected->resize(slots);
  return be.CopyToHost(selected->data(), sel.data(), slots * static_cast<int64_t>(sizeof(int32_t)));
}

void ExpectLayerParity(Backend& gpu, int64_t tokens, DType dtype, const Tolerance& tol) {
  constexpr int32_t kExperts = 8;
  constexpr int32_t kK = 2;
  constexpr int64_t kDim = 128;
  constexpr int64_t kWidth = 48;
  SCOPED_TRACE(absl::StrCat("T=", tokens, " dtype=", std::string(DTypeName(dtype))));
  std::mt19937 rng(51);
  const GroupedWeights w_gate_up(gpu, dtype, kExperts, 2 * kWidth, kDim, rng);
  const GroupedWeights w_down(gpu, dtype, kExperts, kDim, kWidth, rng);
  const std::vector<float> logits = RandomFloats(tokens * 2 * kExperts, rng, -3.0f, 3.0f);
  const std::vector<float> h = RandomFloats(tokens * kDim, rng);
  const std::vector<float> bias = RandomFloats(kExperts, rng, -0.05f, 0.05f);
  const std::vector<float> scale = RandomFloats(kExperts, rng, 0.0f, 2.0f);
  const std::vector<float> x = RandomFloats(tokens * kDim, rng);

  std::unique_ptr<Backend> ref = cpu::MakeReferenceBackend();
  std::vector<float> want = x;
  std::vector<int32_t> want_selected;
  CMOE_ASSERT_OK(RunMoeLayer(*ref,
                             {.logits = logits.data(),
                              .h = h.data(),
                              .bias = bias.data(),
                              .scale = scale.data(),
                              .w_gate_up = w_gate_up.Host(),
                              .w_down = w_down.Host(),
                              .tokens = tokens,
                              .k = kK,
                              .x = want.data()},
                             &want_selected));

  GuardedDeviceArray<float> d_logits(gpu, logits);
  GuardedDeviceArray<float> d_h(gpu, h);
  GuardedDeviceArray<float> d_bias(gpu, bias);
  GuardedDeviceArray<float> d_scale(gpu, scale);
  GuardedDeviceArray<float> d_x(gpu, x);
  std::vector<int32_t> got_selected;
  CMOE_ASSERT_OK(RunMoeLayer(gpu,
                             {.logits = d_logits.data(),
                              .h = d_h.data(),
                              .bias = d_bias.data(),
                              .scale = d_scale.data(),
                              .w_gate_up = w_gate_up.Device(),
                              .w_down = w_down.Device(),
                              .tokens = tokens,
                              .k = kK,
                              .x = d_x.data()},
                             &got_selected));
  ASSERT_EQ(got_selected, want_selected);
  ExpectClose(d_x.Download(), want, tol, "MoE layer output");
}

TEST(CudaMoeLayer, DecodeStepOnTheGemvPathMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  for (const DType dtype : kWeightDTypes) {
    for (const int64_t tokens : {int64_t{1}, int64_t{4}, int64_t{32}}) {  // P = 2, 8, 64 <= 64
      ASSERT_NO_FATAL_FAILURE(ExpectLayerParity(*gpu, tokens, dtype, kF32Tolerance));
    }
  }
}

TEST(CudaMoeLayer, PrefillOnTheCublasPathMatchesReference) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  for (const DType dtype : kWeightDTypes) {
    for (const int64_t tokens : {int64_t{33}, int64_t{257}}) {  // P = 66, 514 > 64
      ASSERT_NO_FATAL_FAILURE(ExpectLayerParity(*gpu, tokens, dtype, GemmTolerance(dtype)));
    }
  }
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
