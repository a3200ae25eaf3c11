// CudaBackend::SampleTokens (kernels/cuda/sample_tokens.cu, host side in
// cuda_backend_sampling.cc) against SampleTokensHost on the same logits: rows 1, 3 and 300,
// vocabularies from 1 to 128256 and the largest (2^23), greedy and sampled rows mixed with random
// parameters, logits with exact ties, -inf and NaN. The tokens must be EQUAL: both sides make
// their decisions with the arithmetic of kernels/sample_row.h on integer (fixed-point) masses, so
// the order of summation cannot matter; only the double exp of the device and of the host libm
// may differ by an ulp, which moves a mass across a rounding (and so a decision) with probability
// ~1e-9 per row. The tokens sit between sentinel guards. Also: the parameters the backend caches
// between calls (it skips their upload when they repeat) follow every change, and a bad row
// parameter is an InvalidArgument Status naming the row and the field that writes nothing.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/sampling_host.h"
#include "kernels/sampling.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

std::string Describe(const RowSampling& p) {
  return absl::StrCat("T=", p.temperature, " top_k=", p.top_k, " top_p=", p.top_p,
                      " min_p=", p.min_p, " uniform=", absl::StrFormat("%.17g", p.uniform));
}

template <class T>
T Pick(std::initializer_list<T> values, std::mt19937& rng) {
  std::uniform_int_distribution<size_t> at(0, values.size() - 1);
  return *(values.begin() + at(rng));
}

// One row of one of five kinds: normal of scale 1..10; the same rounded to a handful of values
// (many exact ties); either with ~15% -inf; or with a few NaN (never all entries non-finite).
void AppendRandomRow(int64_t vocab, std::mt19937& rng, std::vector<float>* logits) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const int kind = std::uniform_int_distribution<int>(0, 4)(rng);
  const float scale = 1.0f + 9.0f * unit(rng);
  const size_t start = logits->size();
  for (int64_t i = 0; i < vocab; ++i) {
    float l = normal(rng) * scale;
    if (kind % 2 == 1) l = std::round(l / scale * 1.5f);
    if (kind >= 2 && kind <= 3 && unit(rng) < 0.15f) l = -kInf;
    if (kind == 4 && unit(rng) < 0.02f) l = kNan;
    logits->push_back(l);
  }
  const auto finite = std::uniform_int_distribution<int64_t>(0, vocab - 1)(rng);
  (*logits)[start + finite] = normal(rng);
}

// Greedy with probability 1/5, else random filters; uniform 0 and just below 1 are 1/8 each.
RowSampling RandomSampling(int64_t vocab, std::mt19937& rng) {
  RowSampling p;
  p.temperature = Pick<float>({0.0f, 0.01f, 0.7f, 1.0f, 2.5f}, rng);
  const auto v = static_cast<int32_t>(std::min<int64_t>(vocab, 1 << 30));
  p.top_k = Pick<int32_t>({0, 1, 5, 50, v - 1, v, v + 3}, rng);
  p.top_p = Pick<float>({1.0f, 0.95f, 0.9f, 0.5f, 1e-6f}, rng);
  p.min_p = Pick<float>({0.0f, 0.0f, 0.05f, 1.0f}, rng);
  const int which = std::uniform_int_distribution<int>(0, 7)(rng);
  p.uniform = which == 0   ? 0.0
              : which == 1 ? std::nextafter(1.0, 0.0)
                           : std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  return p;
}

struct Batch {
  int64_t rows = 0;
  int64_t vocab = 0;
  std::vector<float> logits;          // (rows, vocab)
  std::vector<RowSampling> sampling;  // (rows)
};

Batch RandomBatch(int64_t rows, int64_t vocab, std::mt19937& rng) {
  Batch b{.rows = rows, .vocab = vocab};
  b.logits.reserve(static_cast<size_t>(rows * vocab));
  for (int64_t r = 0; r < rows; ++r) {
    AppendRandomRow(vocab, rng, &b.logits);
    b.sampling.push_back(RandomSampling(vocab, rng));
  }
  return b;
}

std::vector<int32_t> OnHost(const Batch& b) {
  std::vector<int32_t> tokens(static_cast<size_t>(b.rows), -1);
  const absl::Status s = cpu::SampleTokensHost({.logits = b.logits.data(),
                                                .rows = b.rows,
                                                .vocab = b.vocab,
                                                .sampling = b.sampling.data(),
                                                .tokens = tokens.data()});
  EXPECT_TRUE(s.ok()) << s;
  return tokens;
}

// SampleTokens on the device with `logits` already there; the tokens come back from between
// their guards.
std::vector<int32_t> OnDevice(Backend& gpu, const GuardedDeviceArray<float>& logits,
                              const Batch& b) {
  GuardedDeviceArray<int32_t> tokens(gpu, b.rows);
  const absl::Status s = gpu.SampleTokens({.logits = logits.data(),
                                           .rows = b.rows,
                                           .vocab = b.vocab,
                                           .sampling = b.sampling.data(),
                                           .tokens = tokens.data()});
  EXPECT_TRUE(s.ok()) << s;
  return tokens.Download();
}

// Equal token by token; names the first few rows that differ with their parameters.
void ExpectSameTokens(const std::vector<int32_t>& got, const std::vector<int32_t>& want,
                      const Batch& b, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t r = 0; r < got.size(); ++r) {
    if (got[r] == want[r]) continue;
    if (++reported > 8) {
      ADD_FAILURE() << what << ": more rows differ";
      return;
    }
    ADD_FAILURE() << what << ": row " << r << " (" << Describe(b.sampling[r]) << "): device "
                  << got[r] << ", host " << want[r];
  }
}

TEST(CudaSampleTokens, MatchesHostExactly) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(31);
  for (int64_t vocab : {1, 31, 257, 32000, 32001, 128256}) {
    for (int64_t rows : {1, 3, 300}) {
      const Batch b = RandomBatch(rows, vocab, rng);
      const GuardedDeviceArray<float> logits(*gpu, b.logits);
      ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b,
                       absl::StrCat("rows ", rows, " vocab ", vocab));
    }
  }
}

// Decoding is greedy for most requests: a whole batch of greedy rows, ties included.
TEST(CudaSampleTokens, GreedyBatchMatchesHost) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(37);
  for (int64_t vocab : {2, 257, 32001}) {
    Batch b = RandomBatch(64, vocab, rng);
    for (RowSampling& p : b.sampling) p.temperature = 0.0f;
    const GuardedDeviceArray<float> logits(*gpu, b.logits);
    ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, absl::StrCat("vocab ", vocab));
  }
}

// The largest vocabulary: the mass total reaches 2^63 when every logit ties, and the id part of
// the keys takes 3 bytes.
TEST(CudaSampleTokens, LargestVocabulary) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  constexpr int64_t kVocab = int64_t{1} << 23;
  std::mt19937 rng(41);
  Batch b = RandomBatch(1, kVocab, rng);
  b.rows = 3;
  b.logits.resize(static_cast<size_t>(3 * kVocab), 0.25f);  // rows 1 and 2 all tied
  b.sampling = {{.temperature = 1.0f, .uniform = 0.3},
                {.temperature = 1.0f, .uniform = std::nextafter(1.0, 0.0)},
                {.temperature = 1.0f, .top_k = kVocab - 1, .top_p = 0.5f, .uniform = 0.75}};
  const GuardedDeviceArray<float> logits(*gpu, b.logits);
  ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, "vocab 2^23");
}

// The backend skips uploading the rows' parameters when they equal the last call's: a change to
// one field of one row, a change in the number of rows, and new logits under the same
// parameters must all show.
TEST(CudaSampleTokens, FollowsChangingParameters) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(43);
  constexpr int64_t kVocab = 1000;
  Batch b = RandomBatch(5, kVocab, rng);
  for (RowSampling& p : b.sampling) p = {.temperature = 1.0f, .uniform = 0.0};
  const GuardedDeviceArray<float> logits(*gpu, b.logits);
  ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, "first call");
  for (int step = 0; step < 20; ++step) {
    b.sampling[step % 5].uniform = (step + 0.5) / 20.0;  // one field of one row
    ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, absl::StrCat("step ", step));
  }
  b.sampling[2].top_k = 3;
  ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, "top_k changed");
  b.sampling[2].temperature = 0.0f;
  ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, "greedy row");

  Batch fewer = b;  // the same leading parameters, fewer rows
  fewer.rows = 2;
  fewer.sampling.resize(2);
  fewer.logits.resize(2 * kVocab);
  ExpectSameTokens(OnDevice(*gpu, logits, fewer), OnHost(fewer), fewer, "fewer rows");
  ExpectSameTokens(OnDevice(*gpu, logits, b), OnHost(b), b, "rows back");

  Batch other = RandomBatch(5, kVocab, rng);  // new logits, the same parameters
  other.sampling = b.sampling;
  const GuardedDeviceArray<float> other_logits(*gpu, other.logits);
  ExpectSameTokens(OnDevice(*gpu, other_logits, other), OnHost(other), other, "new logits");

  Batch more = RandomBatch(300, kVocab, rng);  // a larger upload than any before
  const GuardedDeviceArray<float> more_logits(*gpu, more.logits);
  ExpectSameTokens(OnDevice(*gpu, more_logits, more), OnHost(more), more, "more rows");
}

TEST(CudaSampleTokens, NoRowsNeedNoOperands) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  CMOE_ASSERT_OK(gpu->SampleTokens({.rows = 0, .vocab = 7}));
}

// A bad row parameter (or shape) is a Status from validation, before any launch: the tokens keep
// their sentinels, and the backend still works afterwards.
TEST(CudaSampleTokens, RejectsBadParametersWithoutWriting) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::mt19937 rng(47);
  const Batch good = RandomBatch(4, 33, rng);
  const GuardedDeviceArray<float> logits(*gpu, good.logits);
  struct Bad {
    const char* field;
    void (*spoil)(RowSampling&);
  };
  const Bad bads[] = {
      {"temperature", [](RowSampling& s) { s.temperature = -1.0f; }},
      {"temperature", [](RowSampling& s) { s.temperature = kNan; }},
      {"top_k", [](RowSampling& s) { s.top_k = -1; }},
      {"top_p", [](RowSampling& s) { s.top_p = 0.0f; }},
      {"min_p", [](RowSampling& s) { s.min_p = 1.5f; }},
      {"uniform", [](RowSampling& s) { s.uniform = 1.0; }},
  };
  for (const Bad& bad : bads) {
    Batch b = good;
    bad.spoil(b.sampling[3]);
    GuardedDeviceArray<int32_t> tokens(*gpu, b.rows);
    const absl::Status s = gpu->SampleTokens({.logits = logits.data(),
                                              .rows = b.rows,
                                              .vocab = b.vocab,
                                              .sampling = b.sampling.data(),
                                              .tokens = tokens.data()});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << bad.field << ": " << s;
    EXPECT_NE(s.message().find("row 3"), std::string::npos) << s.message();
    EXPECT_NE(s.message().find(bad.field), std::string::npos) << s.message();
    for (int32_t t : tokens.Download()) EXPECT_TRUE(IsSentinel(t)) << bad.field << ": written";
  }
  for (int64_t vocab : {int64_t{0}, (int64_t{1} << 23) + 1}) {
    GuardedDeviceArray<int32_t> tokens(*gpu, good.rows);
    const absl::Status s = gpu->SampleTokens({.logits = logits.data(),
                                              .rows = good.rows,
                                              .vocab = vocab,
                                              .sampling = good.sampling.data(),
                                              .tokens = tokens.data()});
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "vocab " << vocab << ": " << s;
    for (int32_t t : tokens.Download()) EXPECT_TRUE(IsSentinel(t)) << "vocab " << vocab;
  }
  ExpectSameTokens(OnDevice(*gpu, logits, good), OnHost(good), good, "after the errors");
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing
