#include "engine/expert_parallel.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/single_process_communicator.h"
#include "tests/kernels/threaded_communicator.h"

namespace cmoe::engine {
namespace {

using ::cmoe::testing::RunOnRanks;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// How a step's tokens pick their experts.
enum class Routing {
  kRandom,     // k distinct experts uniformly at random
  kAllToOne,   // every token picks the same k experts: one expert gets every token
  kFewExperts  // tokens pick among the first k + 1 experts: most experts get none
};

constexpr Routing kRoutings[] = {Routing::kRandom, Routing::kAllToOne, Routing::kFewExperts};

std::string Name(Routing routing) {
  switch (routing) {
    case Routing::kRandom:
      return "random";
    case Routing::kAllToOne:
      return "all-to-one";
    case Routing::kFewExperts:
      return "few-experts";
  }
  return "?";
}

// (T, k) expert ids, distinct per token.
std::vector<int32_t> Route(std::mt19937& rng, Routing routing, int64_t num_tokens, int32_t k,
                           int32_t num_experts) {
  std::vector<int32_t> pool(num_experts);
  std::iota(pool.begin(), pool.end(), 0);
  if (routing == Routing::kAllToOne) std::reverse(pool.begin(), pool.end());
  if (routing == Routing::kFewExperts) pool.resize(std::min(num_experts, k + 1));
  std::vector<int32_t> selected;
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (routing != Routing::kAllToOne) std::shuffle(pool.begin(), pool.end(), rng);
    selected.insert(selected.end(), pool.begin(), pool.begin() + k);
  }
  return selected;
}

std::vector<float> Uniform(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// The known expert: E_e(row) = row * (e + 1) + e, elementwise.
float ExpertFn(int32_t expert, float v) {
  return v * static_cast<float>(expert + 1) + static_cast<float>(expert);
}

// One rank's step.
struct RankStep {
  int64_t num_tokens = 0;
  std::vector<float> h;           // (T, dim)
  std::vector<int32_t> selected;  // (T, k)
  std::vector<float> weights;     // (T, k)
  std::vector<float> x;           // (T, dim), the residual before the layer

  ExpertParallelArgs Args(int32_t k, int64_t dim, std::vector<float>& out) const {
    out = x;
    return {.h = h,
            .selected = selected,
            .weights = weights,
            .num_tokens = num_tokens,
            .k = k,
            .dim = dim,
            .x = out};
  }
};

RankStep MakeStep(std::mt19937& rng, Routing routing, int64_t num_tokens, int32_t k,
                  int32_t num_experts, int64_t dim) {
  RankStep step{.num_tokens = num_tokens};
  step.h = Uniform(rng, num_tokens * dim, -1.0f, 1.0f);
  step.selected = Route(rng, routing, num_tokens, k, num_experts);
  step.weights = Uniform(rng, num_tokens * k, 0.0f, 1.0f);
  step.x = Uniform(rng, num_tokens * dim, -1.0f, 1.0f);
  return step;
}

// The single-rank MoE arithmetic, directly: x + sum_j w_j E_{e_j}(h), in double. Also returns
// sum |terms| per element, the scale of the float rounding error.
void ReferenceMoe(const RankStep& step, int32_t k, int64_t dim, std::vector<double>* want,
                  std::vector<double>* scale) {
  want->assign(step.x.begin(), step.x.end());
  scale->assign(step.x.size(), 1.0);
  for (int64_t t = 0; t < step.num_tokens; ++t) {
    for (int32_t j = 0; j < k; ++j) {
      const int32_t e = step.selected[t * k + j];
      for (int64_t i = 0; i < dim; ++i) {
        const double term = double{step.weights[t * k + j]} * ExpertFn(e, step.h[t * dim + i]);
        (*want)[t * dim + i] += term;
        (*scale)[t * dim + i] += std::abs(term);
      }
    }
  }
}

// The callback of rank `rank`: checks it gets rows only for its own experts, applies ExpertFn.
LocalExpertFn MakeExpert(const ExpertPlacement& placement, int32_t rank, int64_t dim) {
  return [&placement, rank, dim](int32_t local, std::span<const float> in,
                                 std::span<float> out) -> absl::Status {
    if (local < 0 || local >= placement.NumLocalExperts(rank) || in.empty() ||
        in.size() % dim != 0 || out.size() != in.size()) {
      return absl::InternalError(absl::StrCat("bad call: local expert ", local, ", ", in.size(),
                                              " in, ", out.size(), " out"));
    }
    const int32_t expert = placement.FirstExpert(rank) + local;
    for (size_t i = 0; i < in.size(); ++i) out[i] = ExpertFn(expert, in[i]);
    return absl::OkStatus();
  };
}

struct Case {
  int32_t world_size;
  int32_t num_experts;
  int32_t k;
  Routing routing;
  int64_t num_tokens;  // 0 or 1: every rank; more: rank r gets num_tokens + r % 3, rank 1 none

  std::string Describe() const {
    return absl::StrCat("W=", world_size, " N_r=", num_experts, " k=", k, " ", Name(routing),
                        " T=", num_tokens);
  }
  int64_t TokensOf(int32_t rank) const {
    if (num_tokens <= 1) return num_tokens;
    if (rank == 1) return 0;  // a rank with nothing to send that still receives
    return num_tokens + rank % 3;
  }
};

// Every world size 1..8 with N_r below, at and above W, divisible by W or not; k in {1, 2, 3}
// where N_r allows; T in {0, 1, 13}; every routing.
std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (int32_t w = 1; w <= 8; ++w) {
    for (int32_t n : {1, 3, 5, 8, 16}) {
      for (int32_t k = 1; k <= std::min(3, n); ++k) {
        for (Routing routing : kRoutings) {
          for (int64_t t : {0, 1, 13}) cases.push_back({w, n, k, routing, t});
        }
      }
    }
  }
  return cases;
}

// ---------------------------------------------------------------------------------------------
// ExpertPlacement

TEST(ExpertPlacementTest, ContiguousBlocksFirstRanksGetTheExtra) {
  for (int32_t w = 1; w <= 8; ++w) {
    for (int32_t n = 1; n <= 20; ++n) {
      SCOPED_TRACE(absl::StrCat("W=", w, " N_r=", n));
      const absl::StatusOr<ExpertPlacement> placement = ExpertPlacement::Create(n, w);
      ASSERT_TRUE(placement.ok()) << placement.status();
      int32_t next = 0;
      for (int32_t r = 0; r < w; ++r) {
        const int32_t size = placement->NumLocalExperts(r);
        EXPECT_EQ(size, n / w + (r < n % w ? 1 : 0));
        ASSERT_EQ(placement->FirstExpert(r), next);
        for (int32_t l = 0; l < size; ++l) {
          ASSERT_EQ(placement->Owner(next + l), r);
          ASSERT_EQ(placement->LocalIndex(next + l), l);
        }
        next += size;
      }
      EXPECT_EQ(next, n);
      EXPECT_EQ(placement->MaxLocalExperts(), (n + w - 1) / w);
    }
  }
}

TEST(ExpertPlacementTest, ExamplesSpelledOut) {
  const ExpertPlacement ten_on_four = ExpertPlacement::Create(10, 4).value();
  std::vector<int32_t> owners(10);
  for (int32_t e = 0; e < 10; ++e) owners[e] = ten_on_four.Owner(e);
  EXPECT_THAT(owners, ElementsAre(0, 0, 0, 1, 1, 1, 2, 2, 3, 3));
  const ExpertPlacement three_on_five = ExpertPlacement::Create(3, 5).value();
  std::vector<int32_t> sizes(5);
  for (int32_t r = 0; r < 5; ++r) sizes[r] = three_on_five.NumLocalExperts(r);
  EXPECT_THAT(sizes, ElementsAre(1, 1, 1, 0, 0));
  EXPECT_EQ(three_on_five.FirstExpert(4), 3);
}

TEST(ExpertPlacementTest, RejectsEmptySizes) {
  for (auto [n, w, what] : {std::tuple{0, 2, "num_experts 0"}, std::tuple{4, 0, "world_size 0"},
                            std::tuple{-1, 1, "num_experts -1"}}) {
    const absl::StatusOr<ExpertPlacement> placement = ExpertPlacement::Create(n, w);
    ASSERT_EQ(placement.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(placement.status().message(), HasSubstr(what));
  }
}

// ---------------------------------------------------------------------------------------------
// The send plan

// Rows of rank r go to the owner of their expert, in expert then token order; each (token,
// k-slot) exactly once; the count matrix agrees with the rows.
void ExpectSendPlanSound(const ExpertSendPlan& plan, const ExpertPlacement& placement,
                         const std::vector<int32_t>& selected, int64_t num_tokens, int32_t k) {
  const int32_t w = placement.world_size();
  const int32_t width = placement.MaxLocalExperts();
  const DispatchPlan& d = plan.dispatch;
  ASSERT_EQ(plan.rank_offsets.size(), static_cast<size_t>(w) + 1);
  ASSERT_EQ(plan.rank_offsets[w], num_tokens * k);
  std::vector<int> seen(num_tokens * k, 0);
  for (int32_t r = 0; r < w; ++r) {
    ASSERT_EQ(plan.rank_offsets[r + 1] - plan.rank_offsets[r], plan.rank_counts[r]);
    std::vector<int64_t> per_local(width, 0);
    for (int64_t p = plan.rank_offsets[r]; p < plan.rank_offsets[r + 1]; ++p) {
      const int32_t source = d.slot_source[p];
      const int32_t expert = selected[source];
      ++seen[source];
      ASSERT_EQ(placement.Owner(expert), r) << "row " << p;
      ASSERT_EQ(plan.row_local_expert[p], placement.LocalIndex(expert)) << "row " << p;
      ASSERT_EQ(d.slot_token[p], source / k) << "row " << p;
      if (p > plan.rank_offsets[r]) {
        const int32_t prev = selected[d.slot_source[p - 1]];
        ASSERT_TRUE(prev < expert || (prev == expert && d.slot_token[p - 1] < d.slot_token[p]))
            << "row " << p << " out of order";
      }
      ++per_local[plan.row_local_expert[p]];
    }
    for (int32_t l = 0; l < width; ++l) ASSERT_EQ(plan.expert_counts[r * width + l], per_local[l]);
  }
  for (size_t s = 0; s < seen.size(); ++s) ASSERT_EQ(seen[s], 1) << "source " << s;
}

TEST(ExpertSendPlanTest, EverySlotGoesOnceToItsOwnerInRankThenExpertOrder) {
  std::mt19937 rng(11);
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.Describe());
    const ExpertPlacement placement = ExpertPlacement::Create(c.num_experts, c.world_size).value();
    const std::vector<int32_t> selected = Route(rng, c.routing, c.num_tokens, c.k, c.num_experts);
    const absl::StatusOr<ExpertSendPlan> plan =
        BuildExpertSendPlan(selected, c.num_tokens, c.k, placement);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ExpectSendPlanSound(*plan, placement, selected, c.num_tokens, c.k);
  }
}

TEST(ExpertSendPlanTest, RejectsBadRouting) {
  const ExpertPlacement placement = ExpertPlacement::Create(4, 3).value();
  const std::vector<int32_t> out_of_range = {0, 1, 2, 4};
  absl::StatusOr<ExpertSendPlan> plan = BuildExpertSendPlan(out_of_range, 2, 2, placement);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("id 4"));
  plan = BuildExpertSendPlan(std::vector<int32_t>{0, 1, 2}, 2, 2, placement);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("selected has 3"));
  const DispatchPlan five = BuildDispatchPlan(std::vector<int32_t>{4}, 1, 1, 5).value();
  plan = BuildExpertSendPlan(five, placement);
  ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("5 experts, placement 4"));
}

// ---------------------------------------------------------------------------------------------
// The receive plan

TEST(ExpertRecvPlanTest, GroupsReceivedRowsByLocalExpertThenSource) {
  // W = 2, N_r = 3: rank 0 owns experts 0, 1. From source 0: 2 rows for l0, 1 for l1; from
  // source 1: 1 row for l0, 3 for l1. Receive buffer: [s0 l0, s0 l0, s0 l1, s1 l0, s1 l1 x3].
  const ExpertPlacement placement = ExpertPlacement::Create(3, 2).value();
  const absl::StatusOr<ExpertRecvPlan> plan =
      BuildExpertRecvPlan(std::vector<int64_t>{2, 1, 1, 3}, placement, 0);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_THAT(plan->source_counts, ElementsAre(3, 4));
  EXPECT_THAT(plan->source_offsets, ElementsAre(0, 3, 7));
  EXPECT_THAT(plan->expert_counts, ElementsAre(3, 4));
  EXPECT_THAT(plan->expert_offsets, ElementsAre(0, 3, 7));
  EXPECT_THAT(plan->expert_rows, ElementsAre(0, 1, 3, 2, 4, 5, 6));
}

TEST(ExpertRecvPlanTest, RejectsInconsistentCounts) {
  const ExpertPlacement placement = ExpertPlacement::Create(3, 2).value();  // rank 1 owns 1
  struct Bad {
    std::vector<int64_t> counts;
    int32_t rank;
    const char* what;
  };
  for (const Bad& bad :
       {Bad{{1, 0, 0}, 1, "recv_expert_counts has 3"},
        Bad{{1, 1, 0, 0}, 1, "local expert 1, but this rank owns 1"},
        Bad{{-1, 0, 0, 0}, 0, "sends -1 rows"}, Bad{{0, 0, 0, 0}, 2, "rank 2 outside [0, 2)"}}) {
    const absl::StatusOr<ExpertRecvPlan> plan =
        BuildExpertRecvPlan(bad.counts, placement, bad.rank);
    ASSERT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument) << bad.what;
    EXPECT_THAT(plan.status().message(), HasSubstr(bad.what));
  }
}

// ---------------------------------------------------------------------------------------------
// The round trip over W threads

struct RankResult {
  std::vector<float> x;
  ExpertParallelStats stats;
};

// Runs the case on W threads; steps[r] is rank r's input.
std::vector<RankResult> RunThreaded(const Case& c, const ExpertPlacement& placement,
                                    const std::vector<RankStep>& steps, int64_t dim) {
  std::vector<RankResult> results(c.world_size);
  const std::vector<absl::Status> statuses =
      RunOnRanks(c.world_size, [&](kernels::Communicator& comm) {
        const int32_t r = comm.rank();
        return RunExpertParallelMoe(comm, placement, steps[r].Args(c.k, dim, results[r].x),
                                    MakeExpert(placement, r, dim), &results[r].stats);
      });
  for (int32_t r = 0; r < c.world_size; ++r) EXPECT_TRUE(statuses[r].ok()) << statuses[r];
  return results;
}

void ExpectMatchesReference(const RankStep& step, const std::vector<float>& got, int32_t k,
                            int64_t dim) {
  std::vector<double> want, scale;
  ReferenceMoe(step, k, dim, &want, &scale);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-6 * scale[i]) << "element " << i;
  }
}

TEST(RunExpertParallelMoeTest, RoundTripMatchesSingleRankArithmetic) {
  std::mt19937 rng(5);
  constexpr int64_t kDim = 3;
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.Describe());
    const ExpertPlacement placement = ExpertPlacement::Create(c.num_experts, c.world_size).value();
    std::vector<RankStep> steps;
    steps.reserve(c.world_size);
    for (int32_t r = 0; r < c.world_size; ++r) {
      steps.push_back(MakeStep(rng, c.routing, c.TokensOf(r), c.k, c.num_experts, kDim));
    }
    const std::vector<RankResult> results = RunThreaded(c, placement, steps, kDim);
    for (int32_t r = 0; r < c.world_size; ++r) {
      SCOPED_TRACE(absl::StrCat("rank ", r));
      ExpectMatchesReference(steps[r], results[r].x, c.k, kDim);
    }
  }
}

TEST(RunExpertParallelMoeTest, CountsAgreeAcrossRanks) {
  std::mt19937 rng(9);
  for (const Case& c : AllCases()) {
    SCOPED_TRACE(c.Describe());
    const ExpertPlacement placement = ExpertPlacement::Create(c.num_experts, c.world_size).value();
    std::vector<RankStep> steps;
    steps.reserve(c.world_size);
    int64_t total_slots = 0;
    for (int32_t r = 0; r < c.world_size; ++r) {
      steps.push_back(MakeStep(rng, c.routing, c.TokensOf(r), c.k, c.num_experts, 1));
      total_slots += steps.back().num_tokens * c.k;
    }
    const std::vector<RankResult> results = RunThreaded(c, placement, steps, 1);
    for (const RankResult& result : results) {
      ASSERT_EQ(result.stats.sent_per_rank.size(), static_cast<size_t>(c.world_size));
      ASSERT_EQ(result.stats.received_per_rank.size(), static_cast<size_t>(c.world_size));
    }
    int64_t computed = 0;
    for (int32_t a = 0; a < c.world_size; ++a) {
      const ExpertParallelStats& sa = results[a].stats;
      ASSERT_EQ(sa.received_per_local_expert.size(),
                static_cast<size_t>(placement.NumLocalExperts(a)));
      for (int32_t b = 0; b < c.world_size; ++b) {
        ASSERT_EQ(sa.sent_per_rank[b], results[b].stats.received_per_rank[a])
            << "rank " << a << " -> rank " << b;
      }
      const auto& received = sa.received_per_rank;
      EXPECT_EQ(std::accumulate(received.begin(), received.end(), int64_t{0}),
                std::accumulate(sa.received_per_local_expert.begin(),
                                sa.received_per_local_expert.end(), int64_t{0}));
      computed += std::accumulate(received.begin(), received.end(), int64_t{0});
    }
    EXPECT_EQ(computed, total_slots);
  }
}

TEST(RunExpertParallelMoeTest, SingleProcessEqualsOneThreadedRank) {
  std::mt19937 rng(3);
  constexpr int64_t kDim = 5;
  for (const Case& c : AllCases()) {
    if (c.world_size != 1) continue;
    SCOPED_TRACE(c.Describe());
    const ExpertPlacement placement = ExpertPlacement::Create(c.num_experts, 1).value();
    const std::vector<RankStep> steps = {
        MakeStep(rng, c.routing, c.num_tokens, c.k, c.num_experts, kDim)};
    const std::vector<RankResult> threaded = RunThreaded(c, placement, steps, kDim);
    kernels::SingleProcessCommunicator comm;
    std::vector<float> x;
    ExpertParallelStats stats;
    ASSERT_TRUE(RunExpertParallelMoe(comm, placement, steps[0].Args(c.k, kDim, x),
                                     MakeExpert(placement, 0, kDim), &stats)
                    .ok());
    EXPECT_EQ(x, threaded[0].x);
    EXPECT_EQ(stats.received_per_local_expert, threaded[0].stats.received_per_local_expert);
    ExpectMatchesReference(steps[0], x, c.k, kDim);
  }
}

// ---------------------------------------------------------------------------------------------
// Bad inputs

// Runs one bad step on every rank of a group of `world` (so no rank waits on another).
void ExpectInvalidOnAllRanks(int32_t world, const ExpertPlacement& placement, const RankStep& step,
                             int32_t k, int64_t dim, const char* what) {
  SCOPED_TRACE(what);
  std::vector<std::vector<float>> xs(world);
  const std::vector<absl::Status> statuses = RunOnRanks(world, [&](kernels::Communicator& comm) {
    const int32_t r = comm.rank();
    return RunExpertParallelMoe(comm, placement, step.Args(k, dim, xs[r]),
                                MakeExpert(placement, r, dim), nullptr);
  });
  for (int32_t r = 0; r < world; ++r) {
    ASSERT_EQ(statuses[r].code(), absl::StatusCode::kInvalidArgument) << statuses[r];
    EXPECT_THAT(statuses[r].message(), HasSubstr(what));
    EXPECT_EQ(xs[r], step.x) << "x changed on rank " << r;
  }
}

TEST(RunExpertParallelMoeTest, BadInputsAreInvalidArgumentAndLeaveXAlone) {
  std::mt19937 rng(1);
  constexpr int64_t kDim = 2;
  const ExpertPlacement placement = ExpertPlacement::Create(5, 3).value();
  const RankStep good = MakeStep(rng, Routing::kRandom, 4, 2, 5, kDim);

  RankStep bad = good;
  bad.selected[3] = 5;
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "id 5");
  bad = good;
  bad.selected[2] = -1;
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "id -1");
  bad = good;
  bad.h.pop_back();
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "h has 7");
  bad = good;
  bad.weights.push_back(1.0f);
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "weights has 9");
  bad = good;
  bad.selected.pop_back();
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "selected has 7");
  bad = good;
  bad.x.pop_back();
  ExpectInvalidOnAllRanks(3, placement, bad, 2, kDim, "x has 7");
  ExpectInvalidOnAllRanks(3, placement, good, 6, kDim, "k 6 outside [1, 5]");
  ExpectInvalidOnAllRanks(2, placement, good, 2, kDim, "placement world size 3");

  kernels::SingleProcessCommunicator single;
  bad = good;
  bad.selected[0] = 7;
  std::vector<float> x;
  const ExpertPlacement one_rank = ExpertPlacement::Create(5, 1).value();
  const absl::Status status = RunExpertParallelMoe(single, one_rank, bad.Args(2, kDim, x),
                                                   MakeExpert(one_rank, 0, kDim), nullptr);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("id 7"));
}

TEST(SingleProcessCommunicatorTest, CopiesAndRejectsMismatchedSizes) {
  kernels::SingleProcessCommunicator comm;
  EXPECT_EQ(comm.rank(), 0);
  EXPECT_EQ(comm.world_size(), 1);
  std::vector<int64_t> counts = {4, 5}, got(2);
  ASSERT_TRUE(comm.AllToAllCounts(counts, got, 2).ok());
  EXPECT_EQ(got, counts);
  EXPECT_THAT(comm.AllToAllCounts(counts, got, 1).message(), HasSubstr("send has 2"));
  std::vector<int64_t> long_recv(2);
  const absl::Status counts_status = comm.AllToAllCounts(std::vector<int64_t>{4}, long_recv, 1);
  ASSERT_EQ(counts_status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(counts_status.message(), HasSubstr("recv has 2 elements, expected 1"));
  std::vector<float> send = {1, 2, 3, 4}, recv(4), half_recv(2);
  const std::vector<int64_t> two = {2}, one = {1}, minus = {-2};
  ASSERT_TRUE(
      comm.AllToAllRows(
              {.send = send, .send_counts = two, .recv = recv, .recv_counts = two, .row_width = 2})
          .ok());
  EXPECT_EQ(recv, send);
  struct Bad {
    kernels::AllToAllRowsArgs args;
    const char* what;
  };
  for (const Bad& bad :
       {Bad{{.send = send, .send_counts = two, .recv = recv, .recv_counts = one, .row_width = 2},
            "recv has 4 elements, expected 2"},
        Bad{{.send = send, .send_counts = one, .recv = recv, .recv_counts = one, .row_width = 2},
            "send has 4 elements, expected 2"},
        Bad{{.send = send,
        .send_counts = two,
        .recv = half_recv,
        .recv_counts = one,
        .row_width = 2},
            "recv_counts[0] = 1 but send_counts[0] = 2"},
        Bad{{.send = send, .send_counts = minus, .recv = recv, .recv_counts = two, .row_width = 2},
            "send_counts[0] = -2"},
        Bad{{.send = send, .send_counts = two, .recv = recv, .recv_counts = two, .row_width = 0},
            "row_width 0"},
        Bad{{.send = send, .send_counts = counts, .recv = recv, .recv_counts = two, .row_width = 2},
            "send_counts has 2 elements, expected 1"}}) {
    const absl::Status status = comm.AllToAllRows(bad.args);
    ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad.what;
    EXPECT_THAT(status.message(), HasSubstr(bad.what));
  }
}

}  // namespace
}  // namespace cmoe::engine
