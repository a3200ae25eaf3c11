// Backend::SampleTokens on the host (kernels/cpu/sampling_host.cc, the ground truth of every
// backend) against an independent sort-based reference written here from the semantics of
// kernels/sampling.h (engine/sampler.cc without penalties); its behaviours one by one; the
// reference and CPU backends on several rows at once; and validation.
//
// Exactness against the reference: the primitive's probability masses are fixed point,
// round(exp(s) * 2^40), the reference's are doubles exp(s) (the same double exp of the same float
// s, so min_p decisions are identical). Their top-p cut and their draw can then differ only where
// the reference's target lies within the fixed-point quantisation of a cumulative boundary. The
// reference measures that distance (its margin) and a rigorous bound on the quantisation
// ((n + 4) * (2^-40 + 2 * DBL_EPSILON * total) for n candidates: half a unit per rounded mass on
// both the cumulative and the total, plus the targets' double roundings); every mismatch must
// lie within that bound and mismatches must be rare (< 0.1%; in practice none). Tokens below
// 2^-41 of the most likely one round to mass 0 and are never drawn by design, so the reference
// gives them probability 0 too -- otherwise uniform = nextafter(1, 0) would pick them there.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cpu/sampling_host.h"
#include "kernels/sampling.h"

namespace cmoe::kernels::cpu {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();
const double kBelowOne = std::nextafter(1.0, 0.0);
constexpr int32_t kSentinel = 0x5a5a5a5b;  // no vocabulary here is that large

std::string Describe(const RowSampling& p) {
  return absl::StrCat("T=", p.temperature, " top_k=", p.top_k, " top_p=", p.top_p,
                      " min_p=", p.min_p, " uniform=", absl::StrFormat("%.17g", p.uniform));
}

// ------------------------------------------------------------------------------ the reference

// The first maximal logit; NaN is below every number (and every NaN row gives 0).
int32_t ReferenceArgmax(std::span<const float> logits) {
  int64_t best = -1;
  for (size_t i = 0; i < logits.size(); ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[best]) best = static_cast<int64_t>(i);
  }
  return static_cast<int32_t>(std::max<int64_t>(best, 0));
}

struct Expected {
  int32_t token = -1;
  // Distance of the top-p target and of r = uniform * total from the nearest cumulative boundary
  // around the decision they made (infinite when no such decision was taken).
  double margin = std::numeric_limits<double>::infinity();
  // How far fixed-point masses can move a cumulative against its target.
  double tolerance = 0.0;
};

// Sort-based, double probabilities, in the order the semantics state them.
Expected ReferenceSample(std::span<const float> logits, const RowSampling& p) {
  const int32_t argmax = ReferenceArgmax(logits);
  if (p.temperature == 0.0f) return {.token = argmax};
  const double best = logits[argmax];
  struct Candidate {
    float s;
    int32_t id;
    double prob;
  };
  std::vector<Candidate> cands;
  for (size_t i = 0; i < logits.size(); ++i) {
    // NaN orders below -inf and has no probability: it can only sit in the tail, never drawn.
    if (std::isnan(logits[i])) continue;
    const double scaled = (static_cast<double>(logits[i]) - best) / p.temperature;
    const float s = scaled < -static_cast<double>(FLT_MAX) ? -kInf : static_cast<float>(scaled);
    cands.push_back({s, static_cast<int32_t>(i), std::exp(static_cast<double>(s))});
  }
  if (cands.empty()) return {.token = argmax};
  std::sort(cands.begin(), cands.end(), [](const Candidate& a, const Candidate& b) {
    return a.s > b.s || (a.s == b.s && a.id < b.id);
  });
  size_t n = cands.size();
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < n) n = static_cast<size_t>(p.top_k);
  if (p.min_p > 0.0f) {
    while (n > 1 && cands[n - 1].prob < static_cast<double>(p.min_p)) --n;
  }
  std::vector<double> w(n);
  for (size_t i = 0; i < n; ++i) w[i] = cands[i].prob < 0x1p-41 ? 0.0 : cands[i].prob;
  const auto sum = [&](size_t count) {
    double total = 0.0;
    for (size_t i = 0; i < count; ++i) total += w[i];
    return total;
  };
  double total = sum(n);
  Expected out;
  out.tolerance = static_cast<double>(n + 4) * (0x1p-40 + 2.0 * DBL_EPSILON * total);
  if (p.top_p < 1.0f) {
    const double target = static_cast<double>(p.top_p) * total;
    double mass = 0.0, before = 0.0;
    size_t cut = 0;
    while (cut < n && mass < target) {
      before = mass;
      mass += w[cut++];
    }
    out.margin = std::min(mass - target, target - before);
    n = std::max<size_t>(cut, 1);
    total = sum(n);
  }
  const double r = p.uniform * total;
  double cum = 0.0;
  for (size_t i = 0; i < n; ++i) {
    if (w[i] > 0.0 && cum + w[i] > r) {
      out.token = cands[i].id;
      out.margin = std::min({out.margin, r - cum, cum + w[i] - r});
      return out;
    }
    cum += w[i];
  }
  // r reached the total by rounding: the last token with a probability.
  for (size_t i = n; i-- > 0;) {
    if (w[i] > 0.0) {
      out.token = cands[i].id;
      break;
    }
  }
  out.margin = 0.0;
  return out;
}

// --------------------------------------------------------------------------------- random rows

struct Row {
  std::vector<float> logits;
  RowSampling sampling;
};

template <class T>
T Pick(std::initializer_list<T> values, std::mt19937& rng) {
  std::uniform_int_distribution<size_t> at(0, values.size() - 1);
  return *(values.begin() + at(rng));
}

// Logits of one of four kinds: normal of scale 1..10; the same with many exact ties (a handful of
// distinct values); either with ~15% -inf entries (never all of them).
std::vector<float> RandomLogits(int64_t vocab, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale_dist(1.0f, 10.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const int kind = std::uniform_int_distribution<int>(0, 3)(rng);
  const float scale = scale_dist(rng);
  std::vector<float> logits(static_cast<size_t>(vocab));
  for (float& l : logits) {
    l = normal(rng) * scale;
    if (kind % 2 == 1) l = std::round(l / scale * 1.5f);  // ~10 distinct values
    if (kind >= 2 && unit(rng) < 0.15f) l = -kInf;
  }
  const auto finite = std::uniform_int_distribution<int64_t>(0, vocab - 1)(rng);
  if (std::isinf(logits[finite])) logits[finite] = normal(rng);
  return logits;
}

RowSampling RandomSampling(int64_t vocab, std::mt19937& rng) {
  RowSampling p;
  p.temperature = Pick<float>({0.0f, 0.01f, 0.7f, 1.0f, 2.5f}, rng);
  const auto v = static_cast<int32_t>(vocab);
  p.top_k = Pick<int32_t>({0, 1, 5, v - 1, v, v + 3}, rng);
  p.top_p = Pick<float>({1.0f, 0.9f, 0.5f, 1e-6f}, rng);
  p.min_p = Pick<float>({0.0f, 0.05f, 1.0f}, rng);
  const int which = std::uniform_int_distribution<int>(0, 7)(rng);
  p.uniform = which == 0   ? 0.0
              : which == 1 ? kBelowOne
                           : std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  return p;
}

// ------------------------------------------------------------------ against the reference

TEST(SampleRowHost, MatchesSortedReference) {
  struct Case {
    int64_t vocab;
    int rows;
  };
  // Fewer rows for the big vocabularies: both sides are O(vocab) or O(vocab log vocab) per row.
  const Case cases[] = {{1, 300},    {2, 2000},   {7, 3000},   {255, 1500},    {256, 1500},
                        {257, 1500}, {1000, 800}, {32000, 30}, {65536 + 3, 20}};
  std::mt19937 rng(20240611);
  int64_t rows = 0, mismatches = 0;
  for (const Case& c : cases) {
    for (int r = 0; r < c.rows; ++r) {
      const Row row{RandomLogits(c.vocab, rng), RandomSampling(c.vocab, rng)};
      const int32_t got = SampleRowHost(row.logits, row.sampling);
      const Expected want = ReferenceSample(row.logits, row.sampling);
      ++rows;
      ASSERT_GE(got, 0);
      ASSERT_LT(got, c.vocab);
      if (got == want.token) continue;
      ++mismatches;
      // Only a near tie of the reference's r (or top-p target) with a boundary may flip.
      EXPECT_LE(want.margin, want.tolerance)
          << "vocab " << c.vocab << " row " << r << " (" << Describe(row.sampling) << "): got "
          << got << " (logit " << row.logits[got] << "), want " << want.token << " (logit "
          << row.logits[want.token] << "), margin " << want.margin << " > " << want.tolerance;
    }
  }
  RecordProperty("near_tie_mismatches", static_cast<int>(mismatches));
  EXPECT_LE(mismatches * 1000, rows) << mismatches << " near-tie mismatches in " << rows;
}

// --------------------------------------------------------------------------------- behaviours

TEST(SampleRowHost, GreedyPicksTheLowestIdAmongEqualMaxima) {
  const RowSampling greedy{.temperature = 0.0f, .top_k = 3, .top_p = 0.5f, .uniform = 0.9};
  EXPECT_EQ(SampleRowHost(std::vector<float>{1, 3, -kInf, 3, kNan, 3}, greedy), 1);
  EXPECT_EQ(SampleRowHost(std::vector<float>{kNan, 2, 2}, greedy), 1);
  EXPECT_EQ(SampleRowHost(std::vector<float>{-kInf, -kInf, -5}, greedy), 2);
  // -0 and +0 are the same number: the lower id, whichever sign it has.
  EXPECT_EQ(SampleRowHost(std::vector<float>{-0.0f, 0.0f}, greedy), 0);
  EXPECT_EQ(SampleRowHost(std::vector<float>{0.0f, -0.0f}, greedy), 0);
  // Ties far apart, past the first byte of the id (vocab > 256).
  std::vector<float> wide(70000, -1.0f);
  wide[69999] = 4.0f;
  wide[300] = 4.0f;
  wide[65536] = 4.0f;
  EXPECT_EQ(SampleRowHost(wide, greedy), 300);
  std::mt19937 rng(7);
  for (int r = 0; r < 200; ++r) {
    const std::vector<float> logits = RandomLogits(257, rng);
    RowSampling p = RandomSampling(257, rng);
    p.temperature = 0.0f;
    EXPECT_EQ(SampleRowHost(logits, p), ReferenceArgmax(logits)) << Describe(p);
  }
}

TEST(SampleRowHost, TopKOneIsArgmaxAtAnyTemperature) {
  std::mt19937 rng(11);
  for (int r = 0; r < 500; ++r) {
    const int64_t vocab = Pick<int64_t>({1, 2, 7, 256, 257, 1000}, rng);
    const std::vector<float> logits = RandomLogits(vocab, rng);
    RowSampling p = RandomSampling(vocab, rng);
    p.temperature = Pick<float>({1e-6f, 0.01f, 0.7f, 1.0f, 2.5f, 100.0f}, rng);
    p.top_k = 1;
    EXPECT_EQ(SampleRowHost(logits, p), ReferenceArgmax(logits)) << Describe(p);
  }
}

TEST(SampleRowHost, UniformZeroPicksTheMostLikely) {
  std::mt19937 rng(13);
  for (int r = 0; r < 500; ++r) {
    const int64_t vocab = Pick<int64_t>({1, 2, 7, 256, 257, 1000}, rng);
    const std::vector<float> logits = RandomLogits(vocab, rng);
    RowSampling p = RandomSampling(vocab, rng);
    p.temperature = Pick<float>({0.01f, 0.7f, 1.0f, 2.5f, 100.0f}, rng);
    p.uniform = 0.0;
    EXPECT_EQ(SampleRowHost(logits, p), ReferenceArgmax(logits)) << Describe(p);
  }
}

// Probabilities by id 0.10 0.30 0.05 0.25 0.20 0.10 0: order 1, 3, 4, 0, 5 (tied with 0, higher
// id), 2, then 6 (-inf). Ids are shuffled against the order so that a sort by id would show.
std::vector<float> KnownLogits() {
  const double probs[] = {0.10, 0.30, 0.05, 0.25, 0.20, 0.10};
  std::vector<float> logits;
  for (double q : probs) logits.push_back(static_cast<float>(std::log(q)));
  logits.push_back(-kInf);
  return logits;
}

TEST(SampleRowHost, UniformBelowOnePicksTheLastKeptToken) {
  const std::vector<float> logits = KnownLogits();
  struct Case {
    RowSampling p;
    int32_t last;
  };
  const Case cases[] = {
      // Everything kept: the last token with a probability (6 is -inf).
      {{.temperature = 1.0f}, 2},
      {{.temperature = 1.0f, .top_k = 7}, 2},
      {{.temperature = 1.0f, .top_k = 3}, 4},
      {{.temperature = 1.0f, .top_k = 4}, 0},  // of the tie 0 / 5, the lower id comes first
      {{.temperature = 1.0f, .top_k = 5}, 5},
      {{.temperature = 2.0f, .top_k = 3}, 4},
      {{.temperature = 1.0f, .top_p = 0.7f}, 4},               // 0.30 + 0.25 + 0.20 reaches 0.70
      {{.temperature = 1.0f, .top_p = 0.5f}, 3},               // 0.30 + 0.25 reaches 0.50
      {{.temperature = 1.0f, .min_p = 0.5f}, 4},               // p / p_max >= 0.5: 1, 0.83, 0.67
      {{.temperature = 1.0f, .min_p = 0.3f}, 5},               // 0.1 / 0.3 passes as well
      {{.temperature = 1.0f, .min_p = 1.0f}, 1},               // the maximum alone
      {{.temperature = 1.0f, .top_k = 5, .top_p = 0.85f}, 0},  // 0.85 of the 0.95 left: 1, 3, 4, 0
  };
  for (const Case& c : cases) {
    RowSampling p = c.p;
    p.uniform = kBelowOne;
    EXPECT_EQ(SampleRowHost(logits, p), c.last) << Describe(p);
    EXPECT_EQ(ReferenceSample(logits, p).token, c.last) << "reference, " << Describe(p);
  }
}

// Sweeps uniforms across [0, 1) under every filter combination; every token drawn must pass
// `allowed`.
template <class Allowed>
void ExpectOnlyAllowedDrawn(const std::vector<float>& logits, Allowed allowed,
                            const std::string& what) {
  const auto vocab = static_cast<int32_t>(logits.size());
  for (float t : {0.0f, 0.01f, 1.0f, 2.5f, 1000.0f}) {
    for (int32_t k : {0, 1, 3, vocab - 1, vocab + 3}) {
      for (float top_p : {1.0f, 0.9f, 1e-6f}) {
        for (float min_p : {0.0f, 0.05f, 1.0f}) {
          for (int i = 0; i <= 64; ++i) {
            const RowSampling p{.temperature = t,
                                .top_k = k,
                                .top_p = top_p,
                                .min_p = min_p,
                                .uniform = i == 64 ? kBelowOne : i / 64.0};
            const int32_t got = SampleRowHost(logits, p);
            ASSERT_TRUE(got >= 0 && got < vocab && allowed(got))
                << what << ": " << Describe(p) << " drew " << got;
          }
        }
      }
    }
  }
}

TEST(SampleRowHost, NegativeInfinityIsNeverDrawn) {
  std::mt19937 rng(17);
  for (int r = 0; r < 4; ++r) {
    std::vector<float> logits = RandomLogits(50, rng);
    // The lowest ids are -inf so that ties to the lower id would favour them.
    for (int i = 0; i < 50; i += (i < 10 ? 1 : 3)) logits[i] = -kInf;
    logits[20] = 0.5f;
    ExpectOnlyAllowedDrawn(
        logits, [&](int32_t id) { return logits[id] != -kInf; }, "random");
  }
  std::vector<float> single(40, -kInf);
  single[33] = -100.0f;
  ExpectOnlyAllowedDrawn(
      single, [](int32_t id) { return id == 33; }, "one finite");
  // A temperature so large that every finite probability is ~1 still leaves -inf at 0.
  const std::vector<float> flat = {-kInf, 1.0f, -kInf, 1.0f, -kInf};
  ExpectOnlyAllowedDrawn(
      flat, [](int32_t id) { return id == 1 || id == 3; }, "flat");
}

TEST(SampleRowHost, NanIsNeverDrawnWhenAFiniteLogitExists) {
  std::mt19937 rng(19);
  for (int r = 0; r < 4; ++r) {
    std::vector<float> logits = RandomLogits(50, rng);
    for (int i = 0; i < 50; i += (i < 10 ? 1 : 4)) logits[i] = kNan;
    logits[20] = 0.5f;
    ExpectOnlyAllowedDrawn(
        logits, [&](int32_t id) { return !std::isnan(logits[id]); }, "random");
  }
  std::vector<float> single(40, kNan);
  single[33] = -100.0f;
  single[5] = -kInf;
  ExpectOnlyAllowedDrawn(
      single, [](int32_t id) { return id == 33; }, "one finite");
  // Every logit NaN: nothing to prefer, but still an id inside the vocabulary.
  const std::vector<float> all_nan(9, kNan);
  ExpectOnlyAllowedDrawn(
      all_nan, [](int32_t) { return true; }, "all NaN");
}

TEST(SampleRowHost, TinyTemperatureIsArgmax) {
  std::mt19937 rng(23);
  for (int r = 0; r < 300; ++r) {
    const int64_t vocab = Pick<int64_t>({2, 7, 256, 257, 1000}, rng);
    std::vector<float> logits = RandomLogits(vocab, rng);
    // A unique maximum 0.01 clear of the rest: 0.01 / 1e-6 leaves the others at exp(-1e4) = 0.
    const int32_t top = ReferenceArgmax(logits);
    logits[top] += 0.01f;
    RowSampling p = RandomSampling(vocab, rng);
    p.temperature = 1e-6f;
    EXPECT_EQ(SampleRowHost(logits, p), top) << Describe(p);
  }
}

// n evenly spaced uniforms (i + 0.5) / n: token i owns an interval of length q_i of [0, 1), which
// holds q_i * n of those points up to one, so the counts are deterministic and the bound is ~1/n.
TEST(SampleRowHost, EvenlySpacedUniformsReproduceTheDistribution) {
  const std::vector<float> logits = KnownLogits();
  struct Case {
    RowSampling p;
    std::vector<int32_t> kept;  // the tokens the filters keep, whose softmax is the target
  };
  const Case cases[] = {
      {{.temperature = 1.0f}, {0, 1, 2, 3, 4, 5}},
      {{.temperature = 2.0f}, {0, 1, 2, 3, 4, 5}},
      {{.temperature = 0.5f}, {0, 1, 2, 3, 4, 5}},
      {{.temperature = 1.0f, .top_k = 3}, {1, 3, 4}},
      {{.temperature = 1.0f, .top_k = 5}, {0, 1, 3, 4, 5}},
      {{.temperature = 1.0f, .top_p = 0.7f}, {1, 3, 4}},
      {{.temperature = 1.0f, .top_p = 0.6f}, {1, 3, 4}},
      {{.temperature = 1.0f, .top_k = 2, .top_p = 0.9f}, {1, 3}},
      {{.temperature = 1.0f, .min_p = 0.3f}, {0, 1, 3, 4, 5}},
  };
  constexpr int kDraws = 20000;
  for (const Case& c : cases) {
    std::vector<double> want(logits.size(), 0.0);
    double total = 0.0;
    for (int32_t id : c.kept) total += want[id] = std::exp(logits[id] / c.p.temperature);
    std::vector<int> counts(logits.size(), 0);
    for (int i = 0; i < kDraws; ++i) {
      RowSampling p = c.p;
      p.uniform = (i + 0.5) / kDraws;
      ++counts[SampleRowHost(logits, p)];
    }
    for (size_t id = 0; id < logits.size(); ++id) {
      EXPECT_NEAR(counts[id], want[id] / total * kDraws, 1.01) << Describe(c.p) << ": token " << id;
    }
  }
}

// The largest vocabulary with every logit tied: the mass total is exactly 2^23 * 2^40 = 2^63,
// the edge of uint64, the id part of the keys takes 3 bytes, and the draw is uniform over the ids.
// (Two draws only: each costs ~0.5 s.)
TEST(SampleRowHost, LargestVocabularyAllTied) {
  constexpr int64_t kVocab = int64_t{1} << 23;
  const std::vector<float> logits(kVocab, 0.25f);
  const auto draw = [&](double uniform, int32_t top_k = 0, float top_p = 1.0f) {
    return SampleRowHost(logits,
                         {.temperature = 1.0f, .top_k = top_k, .top_p = top_p, .uniform = uniform});
  };
  EXPECT_EQ(draw(kBelowOne), kVocab - 1);
  // top_k keeps ids 0..k-1 (k - 1 = 0x7ffffe), top_p 0.5 then the first 2^22 of them.
  EXPECT_EQ(draw(kBelowOne, kVocab - 1, 0.5f), kVocab / 2 - 1);
}

// ----------------------------------------------------------------- backends and several rows

struct Batch {
  int64_t rows = 0;
  int64_t vocab = 0;
  std::vector<float> logits;          // (rows, vocab)
  std::vector<RowSampling> sampling;  // (rows)
};

Batch RandomBatch(int64_t rows, int64_t vocab, std::mt19937& rng) {
  Batch b{.rows = rows, .vocab = vocab};
  for (int64_t r = 0; r < rows; ++r) {
    const std::vector<float> row = RandomLogits(vocab, rng);
    b.logits.insert(b.logits.end(), row.begin(), row.end());
    b.sampling.push_back(RandomSampling(vocab, rng));
  }
  return b;
}

// kGuard sentinels on each side of `rows` sentinel tokens.
constexpr int64_t kGuard = 8;
std::vector<int32_t> GuardedTokens(int64_t rows) {
  return std::vector<int32_t>(static_cast<size_t>(rows + 2 * kGuard), kSentinel);
}

std::vector<std::unique_ptr<Backend>> AllHostBackends() {
  std::vector<std::unique_ptr<Backend>> backends;
  backends.push_back(MakeReferenceBackend());
  for (int threads : {1, 2}) {
    absl::StatusOr<std::unique_ptr<Backend>> cpu = MakeCpuBackend({.threads = threads});
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    if (cpu.ok()) backends.push_back(std::move(cpu).value());
  }
  return backends;
}

TEST(SampleTokens, BackendsAgreeRowByRow) {
  std::mt19937 rng(29);
  for (int64_t vocab : {1, 257, 1000}) {
    const Batch b = RandomBatch(37, vocab, rng);
    // Each row alone is the truth: a row's token must not depend on its neighbours.
    std::vector<int32_t> alone(b.rows);
    for (int64_t r = 0; r < b.rows; ++r) {
      alone[r] =
          SampleRowHost({b.logits.data() + r * vocab, static_cast<size_t>(vocab)}, b.sampling[r]);
    }
    std::vector<int32_t> host(b.rows, kSentinel);
    ASSERT_TRUE(SampleTokensHost({.logits = b.logits.data(),
                                  .rows = b.rows,
                                  .vocab = vocab,
                                  .sampling = b.sampling.data(),
                                  .tokens = host.data()})
                    .ok());
    EXPECT_EQ(host, alone) << "vocab " << vocab;

    // The rows in reverse order give the same tokens in reverse order.
    Batch reversed_rows = b;
    for (int64_t r = 0; r < b.rows; ++r) {
      std::copy_n(b.logits.begin() + (b.rows - 1 - r) * vocab, vocab,
                  reversed_rows.logits.begin() + r * vocab);
      reversed_rows.sampling[r] = b.sampling[b.rows - 1 - r];
    }
    const Batch& reversed = reversed_rows;
    for (const std::unique_ptr<Backend>& backend : AllHostBackends()) {
      for (const Batch* batch : {&b, &reversed}) {
        std::vector<int32_t> tokens = GuardedTokens(b.rows);
        const absl::Status s = backend->SampleTokens({.logits = batch->logits.data(),
                                                      .rows = b.rows,
                                                      .vocab = vocab,
                                                      .sampling = batch->sampling.data(),
                                                      .tokens = tokens.data() + kGuard});
        ASSERT_TRUE(s.ok()) << backend->Name() << ": " << s;
        std::vector<int32_t> want = alone;
        if (batch == &reversed) std::reverse(want.begin(), want.end());
        EXPECT_EQ(std::vector<int32_t>(tokens.begin() + kGuard, tokens.end() - kGuard), want)
            << backend->Name() << " vocab " << vocab << (batch == &b ? "" : " reversed");
        for (int64_t g = 0; g < kGuard; ++g) {
          EXPECT_EQ(tokens[g], kSentinel) << backend->Name() << " guard before";
          EXPECT_EQ(tokens[b.rows + kGuard + g], kSentinel) << backend->Name() << " guard after";
        }
      }
    }
  }
}

TEST(SampleTokens, NoRowsNeedNoOperands) {
  for (const std::unique_ptr<Backend>& backend : AllHostBackends()) {
    EXPECT_TRUE(backend->SampleTokens({.rows = 0, .vocab = 5}).ok()) << backend->Name();
  }
  EXPECT_TRUE(SampleTokensHost({.rows = 0, .vocab = 1}).ok());
}

// --------------------------------------------------------------------------------- validation

// `params` must fail with InvalidArgument naming every piece of `names` and write no token.
void ExpectInvalid(SampleTokensParams params, const std::vector<std::string>& names,
                   const std::string& what) {
  std::vector<std::unique_ptr<Backend>> backends = AllHostBackends();
  for (size_t b = 0; b <= backends.size(); ++b) {
    std::vector<int32_t> tokens = GuardedTokens(std::max<int64_t>(params.rows, 0));
    if (params.tokens != nullptr) params.tokens = tokens.data() + kGuard;
    const absl::Status s =
        b < backends.size() ? backends[b]->SampleTokens(params) : SampleTokensHost(params);
    const std::string who(b < backends.size() ? backends[b]->Name() : "SampleTokensHost");
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << who << ", " << what << ": " << s;
    for (const std::string& name : names) {
      EXPECT_NE(s.message().find(name), std::string::npos)
          << who << ", " << what << ": \"" << s.message() << "\" does not name " << name;
    }
    EXPECT_TRUE(std::all_of(tokens.begin(), tokens.end(), [](int32_t t) { return t == kSentinel; }))
        << who << ", " << what << ": a token was written";
  }
}

TEST(SampleTokens, RejectsBadShapesAndNullOperands) {
  std::vector<float> logits(3 * 4, 0.0f);
  std::vector<RowSampling> sampling(3, RowSampling{.temperature = 1.0f, .uniform = 0.5});
  int32_t placeholder = 0;  // replaced by a guarded buffer in ExpectInvalid
  const SampleTokensParams good{.logits = logits.data(),
                                .rows = 3,
                                .vocab = 4,
                                .sampling = sampling.data(),
                                .tokens = &placeholder};
  SampleTokensParams p = good;
  p.rows = -1;
  ExpectInvalid(p, {"rows -1"}, "rows < 0");
  p = good;
  p.vocab = 0;
  ExpectInvalid(p, {"vocab 0"}, "vocab 0");
  p = good;
  p.vocab = (int64_t{1} << 23) + 1;  // validated before anything is read
  ExpectInvalid(p, {"vocab 8388609"}, "vocab > 2^23");
  p = good;
  p.logits = nullptr;
  ExpectInvalid(p, {"logits"}, "null logits");
  p = good;
  p.sampling = nullptr;
  ExpectInvalid(p, {"sampling"}, "null sampling");
  p = good;
  p.tokens = nullptr;
  ExpectInvalid(p, {"tokens"}, "null tokens");
}

TEST(SampleTokens, RejectsEachBadRowFieldNamingRowAndField) {
  struct Bad {
    const char* field;
    void (*spoil)(RowSampling&);
  };
  const Bad bads[] = {
      {"temperature", [](RowSampling& s) { s.temperature = -1.0f; }},
      {"temperature", [](RowSampling& s) { s.temperature = kNan; }},
      {"temperature", [](RowSampling& s) { s.temperature = kInf; }},
      {"top_k", [](RowSampling& s) { s.top_k = -1; }},
      {"top_p", [](RowSampling& s) { s.top_p = 0.0f; }},
      {"top_p", [](RowSampling& s) { s.top_p = 1.5f; }},
      {"top_p", [](RowSampling& s) { s.top_p = kNan; }},
      {"min_p", [](RowSampling& s) { s.min_p = -0.1f; }},
      {"min_p", [](RowSampling& s) { s.min_p = 1.5f; }},
      {"uniform", [](RowSampling& s) { s.uniform = -0.1; }},
      {"uniform", [](RowSampling& s) { s.uniform = 1.0; }},
      {"uniform", [](RowSampling& s) { s.uniform = std::nan(""); }},
  };
  std::vector<float> logits(4 * 5, 1.0f);
  int32_t placeholder = 0;
  for (const Bad& bad : bads) {
    // Row 0 greedy, the others sampled; the bad row sits between good ones.
    std::vector<RowSampling> sampling(4, RowSampling{.temperature = 0.7f, .uniform = 0.25});
    sampling[0].temperature = 0.0f;
    bad.spoil(sampling[2]);
    const SampleTokensParams p{.logits = logits.data(),
                               .rows = 4,
                               .vocab = 5,
                               .sampling = sampling.data(),
                               .tokens = &placeholder};
    ExpectInvalid(p, {"row 2", bad.field}, Describe(sampling[2]));
  }
}

}  // namespace
}  // namespace cmoe::kernels::cpu
