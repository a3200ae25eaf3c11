#include "engine/moe_dispatch.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// The obvious construction: for each expert, scan (token, j) in order.
DispatchPlan NaivePlan(const std::vector<int32_t>& selected, int64_t num_tokens, int32_t k,
                       int32_t num_experts) {
  DispatchPlan plan{.num_tokens = num_tokens, .k = k, .num_experts = num_experts};
  plan.offsets.push_back(0);
  plan.token_slot.assign(selected.size(), -1);
  for (int32_t e = 0; e < num_experts; ++e) {
    int64_t count = 0;
    for (int64_t t = 0; t < num_tokens; ++t) {
      for (int32_t j = 0; j < k; ++j) {
        if (selected[t * k + j] != e) continue;
        plan.token_slot[t * k + j] = static_cast<int32_t>(plan.slot_token.size());
        plan.slot_token.push_back(static_cast<int32_t>(t));
        plan.slot_source.push_back(static_cast<int32_t>(t * k + j));
        ++count;
      }
    }
    plan.counts.push_back(count);
    plan.offsets.push_back(plan.offsets.back() + count);
  }
  return plan;
}

// T tokens, each selecting k distinct experts of E in random order.
std::vector<int32_t> RandomSelection(std::mt19937& rng, int64_t num_tokens, int32_t k,
                                     int32_t num_experts) {
  std::vector<int32_t> experts(num_experts), selected;
  std::iota(experts.begin(), experts.end(), 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    std::shuffle(experts.begin(), experts.end(), rng);
    selected.insert(selected.end(), experts.begin(), experts.begin() + k);
  }
  return selected;
}

void ExpectSamePlan(const DispatchPlan& got, const DispatchPlan& want) {
  EXPECT_EQ(got.num_tokens, want.num_tokens);
  EXPECT_EQ(got.k, want.k);
  EXPECT_EQ(got.num_experts, want.num_experts);
  EXPECT_EQ(got.counts, want.counts);
  EXPECT_EQ(got.offsets, want.offsets);
  EXPECT_EQ(got.slot_token, want.slot_token);
  EXPECT_EQ(got.slot_source, want.slot_source);
  EXPECT_EQ(got.token_slot, want.token_slot);
}

void ExpectInverseIsPermutation(const DispatchPlan& plan) {
  const size_t slots = plan.slot_source.size();
  std::vector<int32_t> sorted = plan.token_slot;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 0; i < slots; ++i) ASSERT_EQ(sorted[i], static_cast<int32_t>(i));
  for (size_t p = 0; p < slots; ++p)
    ASSERT_EQ(plan.token_slot[plan.slot_source[p]], static_cast<int32_t>(p));
  for (size_t s = 0; s < slots; ++s)
    ASSERT_EQ(plan.slot_source[plan.token_slot[s]], static_cast<int32_t>(s));
}

TEST(BuildDispatchPlanTest, MatchesNaiveOnRandomSelections) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 400; ++trial) {
    const int32_t num_experts = 1 + static_cast<int32_t>(rng() % 16);
    const int32_t k = 1 + static_cast<int32_t>(rng() % std::min(4, num_experts));
    const int64_t num_tokens = trial < 16 ? trial : static_cast<int64_t>(rng() % 301);
    SCOPED_TRACE(testing::Message() << "T=" << num_tokens << " k=" << k << " E=" << num_experts);
    const std::vector<int32_t> selected = RandomSelection(rng, num_tokens, k, num_experts);
    absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(selected, num_tokens, k, num_experts);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ExpectSamePlan(*plan, NaivePlan(selected, num_tokens, k, num_experts));
    ExpectInverseIsPermutation(*plan);
    EXPECT_EQ(std::accumulate(plan->counts.begin(), plan->counts.end(), int64_t{0}),
              num_tokens * k);
    EXPECT_TRUE(ValidateDispatchPlan(*plan, selected, num_tokens, k, num_experts).ok());
  }
}

TEST(BuildDispatchPlanTest, HandExampleWithEmptyExperts) {
  // 3 tokens, k = 2, experts 1 and 3 of 5 never chosen.
  const std::vector<int32_t> selected = {4, 0, 0, 2, 2, 4};
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(selected, 3, 2, 5);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->counts, ElementsAre(2, 0, 2, 0, 2));
  EXPECT_THAT(plan->offsets, ElementsAre(0, 2, 2, 4, 4, 6));
  EXPECT_THAT(plan->slot_token, ElementsAre(0, 1, 1, 2, 0, 2));
  EXPECT_THAT(plan->slot_source, ElementsAre(1, 2, 3, 4, 0, 5));
  EXPECT_THAT(plan->token_slot, ElementsAre(4, 0, 1, 2, 3, 5));
}

TEST(BuildDispatchPlanTest, OneToken) {
  const std::vector<int32_t> selected = {3, 1, 2};
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(selected, 1, 3, 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->counts, ElementsAre(0, 1, 1, 1));
  EXPECT_THAT(plan->offsets, ElementsAre(0, 0, 1, 2, 3));
  EXPECT_THAT(plan->slot_token, ElementsAre(0, 0, 0));
  EXPECT_THAT(plan->slot_source, ElementsAre(1, 2, 0));
  EXPECT_THAT(plan->token_slot, ElementsAre(2, 0, 1));
}

TEST(BuildDispatchPlanTest, AllTokensToOneExpert) {
  const std::vector<int32_t> selected(7, 2);
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(selected, 7, 1, 3);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->counts, ElementsAre(0, 0, 7));
  EXPECT_THAT(plan->offsets, ElementsAre(0, 0, 0, 7));
  EXPECT_THAT(plan->slot_token, ElementsAre(0, 1, 2, 3, 4, 5, 6));
  EXPECT_THAT(plan->slot_source, ElementsAre(0, 1, 2, 3, 4, 5, 6));
  EXPECT_THAT(plan->token_slot, ElementsAre(0, 1, 2, 3, 4, 5, 6));
}

TEST(BuildDispatchPlanTest, ZeroTokens) {
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan({}, 0, 2, 4);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->counts, ElementsAre(0, 0, 0, 0));
  EXPECT_THAT(plan->offsets, ElementsAre(0, 0, 0, 0, 0));
  EXPECT_TRUE(plan->slot_token.empty());
  EXPECT_TRUE(plan->slot_source.empty());
  EXPECT_TRUE(plan->token_slot.empty());
  EXPECT_TRUE(ValidateDispatchPlan(*plan, {}, 0, 2, 4).ok());
}

TEST(BuildDispatchPlanTest, IntoReusesALargerPlan) {
  std::mt19937 rng(3);
  DispatchPlan plan;
  for (int64_t num_tokens : {200, 5, 0, 31}) {
    const std::vector<int32_t> selected = RandomSelection(rng, num_tokens, 2, 6);
    ASSERT_TRUE(BuildDispatchPlanInto(selected, num_tokens, 2, 6, &plan).ok());
    ExpectSamePlan(plan, NaivePlan(selected, num_tokens, 2, 6));
  }
}

TEST(BuildDispatchPlanTest, RejectsIdOutOfRangeNamingTokenAndId) {
  const std::vector<int32_t> high = {0, 1, 2, 4};  // token 1 selects 4 with E = 4
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(high, 2, 2, 4);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("token 1"));
  EXPECT_THAT(plan.status().message(), HasSubstr("id 4"));

  const std::vector<int32_t> negative = {0, 1, 2, 3, -1, 0};
  plan = BuildDispatchPlan(negative, 3, 2, 4);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("token 2"));
  EXPECT_THAT(plan.status().message(), HasSubstr("id -1"));
}

TEST(BuildDispatchPlanTest, RejectsDuplicateNamingToken) {
  // Expert 1 is used by tokens 0 and 1 (fine) and twice by token 2.
  const std::vector<int32_t> selected = {1, 0, 2, 1, 1, 1};
  absl::StatusOr<DispatchPlan> plan = BuildDispatchPlan(selected, 3, 2, 3);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("token 2"));
  EXPECT_THAT(plan.status().message(), HasSubstr("twice"));
}

TEST(BuildDispatchPlanTest, RejectsBadShapes) {
  const std::vector<int32_t> selected = {0, 1, 2};
  EXPECT_THAT(BuildDispatchPlan(selected, 2, 2, 3).status().message(), HasSubstr(": selected has"));
  EXPECT_THAT(BuildDispatchPlan(selected, 3, 0, 3).status().message(), HasSubstr("k 0"));
  EXPECT_THAT(BuildDispatchPlan(selected, 1, 3, 2).status().message(), HasSubstr("k 3"));
  EXPECT_EQ(BuildDispatchPlan(selected, 3, 1, 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildDispatchPlan(selected, -1, 1, 3).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ValidateDispatchPlanTest, DetectsCorruption) {
  std::mt19937 rng(11);
  const std::vector<int32_t> selected = RandomSelection(rng, 20, 2, 5);
  const DispatchPlan good = *BuildDispatchPlan(selected, 20, 2, 5);
  ASSERT_TRUE(ValidateDispatchPlan(good, selected, 20, 2, 5).ok());

  DispatchPlan bad = good;
  std::swap(bad.slot_token[0], bad.slot_token[1]);
  std::swap(bad.slot_source[0], bad.slot_source[1]);
  std::swap(bad.token_slot[bad.slot_source[0]], bad.token_slot[bad.slot_source[1]]);
  EXPECT_FALSE(ValidateDispatchPlan(bad, selected, 20, 2, 5).ok()) << "order within an expert";

  bad = good;
  bad.token_slot[0] = bad.token_slot[1];
  EXPECT_FALSE(ValidateDispatchPlan(bad, selected, 20, 2, 5).ok()) << "inverse";

  bad = good;
  ++bad.counts[0];
  --bad.counts[1];
  EXPECT_FALSE(ValidateDispatchPlan(bad, selected, 20, 2, 5).ok()) << "counts";

  bad = good;
  bad.slot_token.pop_back();
  EXPECT_FALSE(ValidateDispatchPlan(bad, selected, 20, 2, 5).ok()) << "size";

  bad = good;
  bad.slot_token[3] = (bad.slot_token[3] + 1) % 20;
  EXPECT_FALSE(ValidateDispatchPlan(bad, selected, 20, 2, 5).ok()) << "slot_token";
}

struct Routed {
  std::vector<float> probs;
  std::vector<int32_t> selected;
  std::vector<float> weights;
};

absl::StatusOr<Routed> Route(const std::vector<float>& scores, int64_t num_tokens,
                             const RouterParams& params) {
  // Sized for a valid k; an invalid one (possibly negative) must be rejected before any write.
  const int64_t slots = num_tokens * std::max(0, params.num_activated);
  Routed r{.probs = std::vector<float>(scores.size()),
           .selected = std::vector<int32_t>(slots),
           .weights = std::vector<float>(slots)};
  absl::Status status = RouteTokens(
      scores, num_tokens, params, {.probs = r.probs, .selected = r.selected, .weights = r.weights});
  if (!status.ok()) return status;
  return r;
}

TEST(RouteTokensTest, SoftmaxSumsToOneAndIsStable) {
  const std::vector<float> scores = {0.0f, 1.0f, 2.0f, 1000.0f, 1001.0f, 1002.0f};
  absl::StatusOr<Routed> r = Route(scores, 2, {.num_experts = 3, .num_activated = 1});
  ASSERT_TRUE(r.ok()) << r.status();
  const double z = 1.0 + std::exp(1.0) + std::exp(2.0);
  for (int t = 0; t < 2; ++t) {
    EXPECT_NEAR(r->probs[t * 3 + 0] + r->probs[t * 3 + 1] + r->probs[t * 3 + 2], 1.0, 1e-6);
    EXPECT_NEAR(r->probs[t * 3 + 0], 1.0 / z, 1e-6);
    EXPECT_NEAR(r->probs[t * 3 + 2], std::exp(2.0) / z, 1e-6);
  }
  EXPECT_THAT(r->selected, ElementsAre(2, 2));
}

TEST(RouteTokensTest, TopKByDescendingProbability) {
  const std::vector<float> scores = {0.3f, 2.0f, -1.0f, 1.5f, 0.9f};
  absl::StatusOr<Routed> r = Route(scores, 1, {.num_experts = 5, .num_activated = 3});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->selected, ElementsAre(1, 3, 4));
}

TEST(RouteTokensTest, LargeBiasForcesExpertIn) {
  const std::vector<float> scores = {5.0f, 4.0f, 3.0f, -5.0f};
  const std::vector<float> bias = {0.0f, 0.0f, 0.0f, 2.0f};
  absl::StatusOr<Routed> r = Route(scores, 1, {.bias = bias, .num_experts = 4, .num_activated = 2});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->selected, ElementsAre(3, 0));
  // The bias steers selection only: the weight still uses p, and p ignores the bias.
  EXPECT_LT(r->probs[3], 1e-4f);
}

TEST(RouteTokensTest, TiesGoToLowerIndex) {
  const std::vector<float> scores = {1.0f, 2.0f, 2.0f, 2.0f, 1.0f};
  absl::StatusOr<Routed> r = Route(scores, 1, {.num_experts = 5, .num_activated = 2});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->selected, ElementsAre(1, 2));
  r = Route(scores, 1, {.num_experts = 5, .num_activated = 4});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->selected, ElementsAre(1, 2, 3, 0));
}

TEST(RouteTokensTest, WeightsAreOneWithoutScaleAndOnePlusPuWithIt) {
  const std::vector<float> scores = {0.1f, 0.7f, 0.4f, 2.0f, 1.0f, 0.0f};
  const std::vector<float> zero(3, 0.0f);
  absl::StatusOr<Routed> r = Route(scores, 2, {.num_experts = 3, .num_activated = 2});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->weights, ElementsAre(1.0f, 1.0f, 1.0f, 1.0f));
  r = Route(scores, 2, {.scale = zero, .num_experts = 3, .num_activated = 2});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->weights, ElementsAre(1.0f, 1.0f, 1.0f, 1.0f));

  const std::vector<float> scale = {0.5f, -2.0f, 3.0f};
  r = Route(scores, 2, {.scale = scale, .num_experts = 3, .num_activated = 2});
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_THAT(r->selected, ElementsAre(1, 2, 0, 1));
  std::vector<float> want;
  for (int t = 0; t < 2; ++t) {
    for (int j = 0; j < 2; ++j) {
      const int32_t e = r->selected[t * 2 + j];
      want.push_back(1.0f + r->probs[t * 3 + e] * scale[e]);
    }
  }
  EXPECT_THAT(r->weights, ElementsAreArray(want));
  EXPECT_NE(r->weights[0], 1.0f);
}

TEST(RouteTokensTest, RejectsKOutOfRange) {
  const std::vector<float> scores(6, 0.0f);
  for (int32_t k : {0, -1, 4}) {
    absl::StatusOr<Routed> r = Route(scores, 2, {.num_experts = 3, .num_activated = k});
    ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << k;
    EXPECT_THAT(r.status().message(), HasSubstr("num_activated"));
  }
}

TEST(RouteTokensTest, RejectsBadSizesNamingTheOperand) {
  const std::vector<float> scores(6, 0.0f);
  const std::vector<float> bias(2, 0.0f);
  absl::StatusOr<Routed> r = Route(scores, 2, {.bias = bias, .num_experts = 3, .num_activated = 1});
  EXPECT_THAT(r.status().message(), HasSubstr(": bias has"));
  r = Route(scores, 3, {.num_experts = 3, .num_activated = 1});
  EXPECT_THAT(r.status().message(), HasSubstr(": scores has"));
  std::vector<int32_t> selected(1);
  std::vector<float> weights(2);
  EXPECT_THAT(RouteTokens(scores, 2, {.num_experts = 3, .num_activated = 1},
                          {.selected = selected, .weights = weights})
                  .message(),
              HasSubstr(": selected has"));
}

TEST(RouteTokensTest, RejectsNonFiniteScoreNamingToken) {
  const std::vector<float> scores = {0.0f, 1.0f, NAN, 2.0f};
  absl::StatusOr<Routed> r = Route(scores, 2, {.num_experts = 2, .num_activated = 1});
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("token 1"));
}

TEST(RouteTokensTest, ZeroTokens) {
  absl::StatusOr<Routed> r = Route({}, 0, {.num_experts = 3, .num_activated = 2});
  EXPECT_TRUE(r.ok()) << r.status();
}

// x = [[1, 2], [0, 0]]; expert rows: gate [1, 0], up [0, -1]  -> g = 1,  u = -2
//                                    gate [0, 0], up [1, 1]   -> g = 0,  u = 3
//                                    gate [-1, 0], up [1, 1]  -> g = -1, u = 3
TEST(RouterScoresTest, ReferenceAndPaperOnHandExample) {
  const std::vector<float> x = {1, 2, 0, 0};
  const std::vector<float> gate = {1, 0, 0, 0, -1, 0};
  const std::vector<float> up = {0, -1, 1, 1, 1, 1};
  const double silu1 = 1.0 / (1.0 + std::exp(-1.0));
  const double silu_m1 = -1.0 / (1.0 + std::exp(1.0));
  RouterScoresArgs args{.x = x,
                        .wr_gate = gate,
                        .wr_up = up,
                        .num_tokens = 2,
                        .dim = 2,
                        .num_experts = 3,
                        .variant = RouterVariant::kPaper};
  std::vector<float> s(6, 99.0f);
  ASSERT_TRUE(RouterScores(args, s).ok());
  EXPECT_FLOAT_EQ(s[0], static_cast<float>(-2.0 * silu1));
  EXPECT_FLOAT_EQ(s[1], 0.0f);
  EXPECT_FLOAT_EQ(s[2], static_cast<float>(3.0 * silu_m1));
  for (int e = 0; e < 3; ++e) EXPECT_FLOAT_EQ(s[3 + e], 0.0f);

  args.variant = RouterVariant::kReference;
  ASSERT_TRUE(RouterScores(args, s).ok());
  EXPECT_FLOAT_EQ(s[0], static_cast<float>(2.0 * silu1));
  EXPECT_FLOAT_EQ(s[1], 0.0f);
  EXPECT_FLOAT_EQ(s[2], static_cast<float>(-3.0 * silu_m1));
  EXPECT_GT(s[2], 0.0f);
}

TEST(RouterScoresTest, RejectsBadShapesNamingTheOperand) {
  const std::vector<float> x(4), w(6), short_w(5);
  std::vector<float> s(6);
  RouterScoresArgs args{
      .x = x, .wr_gate = w, .wr_up = short_w, .num_tokens = 2, .dim = 2, .num_experts = 3};
  EXPECT_THAT(RouterScores(args, s).message(), HasSubstr(": wr_up has"));
  args.wr_up = w;
  std::vector<float> short_s(5);
  EXPECT_THAT(RouterScores(args, short_s).message(), HasSubstr(": scores has"));
  args.num_tokens = 3;
  EXPECT_THAT(RouterScores(args, s).message(), HasSubstr(": x has"));
}

TEST(UpdateBalanceBiasTest, HandExample) {
  const std::vector<int64_t> counts = {4, 2, 3, 3};  // mean 3
  std::vector<float> bias = {0.5f, 0.5f, 0.5f, -0.25f};
  UpdateBalanceBias(counts, 0.125f, bias);
  EXPECT_THAT(bias, ElementsAre(0.375f, 0.625f, 0.5f, -0.25f));

  const std::vector<int64_t> uneven = {1, 2};  // mean 1.5: neither equals it
  std::vector<float> b2 = {0.0f, 0.0f};
  UpdateBalanceBias(uneven, 1e-3f, b2);
  EXPECT_THAT(b2, ElementsAre(1e-3f, -1e-3f));

  const std::vector<int64_t> equal = {5, 5, 5};
  std::vector<float> b3 = {0.1f, 0.2f, 0.3f};
  UpdateBalanceBias(equal, 1e-3f, b3);
  EXPECT_THAT(b3, ElementsAre(0.1f, 0.2f, 0.3f));
}

TEST(ExpertLoadTest, AccumulatesAcrossSteps) {
  ExpertLoad load(3);
  EXPECT_EQ(load.MaxOverMean(), 0.0);
  const std::vector<int64_t> a = {1, 0, 2}, b = {3, 1, 5};
  ASSERT_TRUE(load.Add(a).ok());
  ASSERT_TRUE(load.Add(b).ok());
  EXPECT_THAT(load.counts, ElementsAre(4, 1, 7));
  EXPECT_EQ(load.steps, 2);
  EXPECT_EQ(load.Total(), 12);
  EXPECT_DOUBLE_EQ(load.MaxOverMean(), 7.0 / 4.0);
  const std::vector<int64_t> wrong = {1, 2};
  EXPECT_EQ(load.Add(wrong).code(), absl::StatusCode::kInvalidArgument);
  load.Reset();
  EXPECT_THAT(load.counts, ElementsAre(0, 0, 0));
  EXPECT_EQ(load.steps, 0);
}

}  // namespace
}  // namespace cmoe::engine
