// The dense forward on the three shared models: the fast CPU path against an independent
// double-precision reference, batched against one-at-a-time, and greedy generation that reads as
// English.
#include "engine/model.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <iostream>
#include <set>
#include <sstream>

#include "common/logging.h"
#include "common/mapped_file.h"
#include "engine/generation.h"
#include "engine/model_loader.h"
#include "engine/perplexity.h"
#include "gtest/gtest.h"
#include "tests/engine/reference_forward.h"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

class SharedModelTest : public ::testing::TestWithParam<std::string> {
 protected:
  LoadedModel Load(const std::string& device = "cpu", int threads = 2,
                   kernels::DType kv_dtype = kernels::DType::kF32) {
    absl::StatusOr<std::string> dir = testing::SharedModelDir(GetParam());
    CMOE_CHECK(dir.ok()) << dir.status();
    absl::StatusOr<LoadedModel> m = LoadModel({.model_dir = *dir,
                                               .device = device,
                                               .threads = threads,
                                               .kv_cache_tokens = 4096,
                                               .kv_cache_dtype = kv_dtype});
    CMOE_CHECK(m.ok()) << m.status();
    return std::move(*m);
  }

  std::vector<int32_t> SampleTokens(const LoadedModel& m, size_t bytes) {
    absl::StatusOr<std::vector<int32_t>> ids = m.tokenizer->Encode(
        testing::TinyStoriesSample(bytes), {.add_dummy_prefix = m.tokenizer->DefaultDummyPrefix()});
    CMOE_CHECK(ids.ok()) << ids.status();
    return *ids;
  }
};

// Max over the row of |a - b|, divided by max |b|.
double RowRelativeError(std::span<const float> a, const std::vector<double>& b) {
  double diff = 0.0, scale = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(a[i] - b[i]));
    scale = std::max(scale, std::abs(b[i]));
  }
  return diff / scale;
}

// Runs `tokens` as a prefill of `first` tokens then chunks of `chunk`, returning all logits.
std::vector<std::vector<float>> ChunkedLogits(LoadedModel& m, std::span<const int32_t> tokens,
                                              int64_t first, int64_t chunk) {
  SequenceBlocks seq;
  std::vector<std::vector<float>> rows;
  ForwardOutput out;
  for (int64_t begin = 0; begin < static_cast<int64_t>(tokens.size());) {
    const int64_t n = std::min<int64_t>(begin == 0 ? first : chunk, tokens.size() - begin);
    CMOE_CHECK(m.cache->Reserve(seq, begin + n).ok());
    const SequenceChunk c{
        .tokens = tokens.subspan(begin, n), .start_pos = begin, .blocks = &seq, .all_logits = true};
    const absl::Status status = m.model->Forward({&c, 1}, *m.cache, out);
    CMOE_CHECK(status.ok()) << status;
    for (int64_t i = 0; i < n; ++i) {
      const auto row = out.Logits(0, i);
      rows.emplace_back(row.begin(), row.end());
    }
    begin += n;
  }
  m.cache->Release(seq);
  return rows;
}

TEST_P(SharedModelTest, FastPathMatchesDoublePrecisionReference) {
  LoadedModel m = Load();
  const std::vector<int32_t> tokens = SampleTokens(m, 200);
  ASSERT_GE(tokens.size(), 30u);
  const auto expected =
      testing::ReferenceForward(m.model->config(), m.model->checkpoint().weights(), tokens);
  // Prefill 17 tokens, then single decode steps and chunks of 5: every path through the cache.
  for (int64_t chunk : {1, 5}) {
    const auto got = ChunkedLogits(m, tokens, 17, chunk);
    ASSERT_EQ(got.size(), expected.size());
    for (size_t t = 0; t < got.size(); ++t) {
      ASSERT_LE(RowRelativeError(got[t], expected[t]), 1e-4) << "position " << t;
    }
  }
}

TEST_P(SharedModelTest, ReferenceBackendMatchesDoublePrecisionReference) {
  LoadedModel m = Load("reference", 1);
  const std::vector<int32_t> tokens = SampleTokens(m, 80);
  const auto expected =
      testing::ReferenceForward(m.model->config(), m.model->checkpoint().weights(), tokens);
  const auto got = ChunkedLogits(m, tokens, 7, 3);
  for (size_t t = 0; t < got.size(); ++t) {
    ASSERT_LE(RowRelativeError(got[t], expected[t]), 1e-5) << "position " << t;
  }
}

TEST_P(SharedModelTest, BatchedStepsEqualOneAtATime) {
  LoadedModel m = Load();
  const std::vector<int32_t> all = SampleTokens(m, 400);
  ASSERT_GE(all.size(), 60u);
  // Three prompts of different lengths; prompt B is prefilled in two chunks.
  const std::vector<std::vector<int32_t>> prompts = {{all.begin(), all.begin() + 9},
                                                     {all.begin() + 10, all.begin() + 41},
                                                     {all.begin() + 45, all.begin() + 46}};
  const int kDecode = 6;
  // Alone: greedy continuation of each prompt.
  std::vector<std::vector<int32_t>> alone;
  for (const auto& p : prompts) {
    auto r = GenerateTokens(*m.model, *m.cache, p, {.max_new_tokens = kDecode, .ignore_eos = true});
    ASSERT_TRUE(r.ok()) << r.status();
    alone.push_back(r->tokens);
  }
  // Batched: step 1 = A prefill + B first chunk + C prefill; step 2 = A decode + B second chunk
  // + C decode; then all decode together.
  std::vector<SequenceBlocks> seqs(3);
  std::vector<std::vector<int32_t>> gen(3);
  std::vector<int64_t> done(3, 0);  // prompt tokens consumed
  ForwardOutput out;
  for (int step = 0; gen[1].size() < kDecode; ++step) {
    std::vector<SequenceChunk> chunks;
    std::vector<int> which;
    for (int s = 0; s < 3; ++s) {
      if (static_cast<int>(gen[s].size()) >= kDecode) continue;
      const auto& p = prompts[s];
      int64_t start = done[s];
      std::span<const int32_t> toks;
      if (done[s] < static_cast<int64_t>(p.size())) {
        const int64_t n = (s == 1 && step == 0) ? 20 : static_cast<int64_t>(p.size()) - done[s];
        toks = std::span<const int32_t>(p).subspan(done[s], n);
      } else {
        start = static_cast<int64_t>(p.size() + gen[s].size()) - 1;
        toks = {&gen[s].back(), 1};
      }
      ASSERT_TRUE(m.cache->Reserve(seqs[s], start + toks.size()).ok());
      chunks.push_back({.tokens = toks, .start_pos = start, .blocks = &seqs[s]});
      which.push_back(s);
    }
    ASSERT_TRUE(m.model->Forward(chunks, *m.cache, out).ok());
    for (size_t i = 0; i < which.size(); ++i) {
      const int s = which[i];
      const bool prompt_finished = done[s] + static_cast<int64_t>(chunks[i].tokens.size()) >=
                                   static_cast<int64_t>(prompts[s].size());
      if (done[s] < static_cast<int64_t>(prompts[s].size())) done[s] += chunks[i].tokens.size();
      if (!prompt_finished) continue;
      const auto logits = out.Logits(i);
      gen[s].push_back(
          static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
    }
  }
  for (int s = 0; s < 3; ++s) {
    EXPECT_EQ(gen[s], alone[s]) << "sequence " << s;
    m.cache->Release(seqs[s]);
  }
}

std::set<std::string> TinyStoriesWords() {
  absl::StatusOr<std::string> text = ReadFileToString(testing::SharedData("tinystories_val.txt"));
  CMOE_CHECK(text.ok());
  std::set<std::string> words;
  std::string word;
  for (char c : *text) {
    if (std::isalpha(static_cast<unsigned char>(c))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    } else if (!word.empty()) {
      words.insert(word);
      word.clear();
    }
  }
  return words;
}

TEST_P(SharedModelTest, GreedyGenerationIsEnglish) {
  LoadedModel m = Load();
  auto prompt = m.tokenizer->Encode("Once upon a time",
                                    {.add_dummy_prefix = m.tokenizer->DefaultDummyPrefix()});
  ASSERT_TRUE(prompt.ok());
  // 80 tokens are ~15 words for the character-level babyllama, ~60 for the others.
  auto r = GenerateTokens(*m.model, *m.cache, *prompt, {.max_new_tokens = 80});
  ASSERT_TRUE(r.ok()) << r.status();
  auto text = m.tokenizer->Decode(r->tokens);
  ASSERT_TRUE(text.ok());
  std::cout << GetParam() << ": Once upon a time" << *text << "\n";
  static const std::set<std::string> known = TinyStoriesWords();
  std::istringstream stream(*text);
  int words = 0, english = 0;
  std::string raw;
  while (stream >> raw) {
    std::string w;
    for (char c : raw) {
      if (std::isalpha(static_cast<unsigned char>(c))) {
        w += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      }
    }
    if (w.empty()) continue;
    ++words;
    english += known.count(w) ? 1 : 0;
  }
  EXPECT_GE(words, 12);
  EXPECT_GE(english, words * 9 / 10) << *text;
}

TEST_P(SharedModelTest, PerplexityOnTinyStoriesIsThatOfATrainedModel) {
  LoadedModel m = Load();
  absl::StatusOr<std::string> text = ReadFileToString(testing::SharedData("tinystories_val.txt"));
  ASSERT_TRUE(text.ok());
  auto ids = m.tokenizer->Encode(text->substr(0, 60000),
                                 {.add_dummy_prefix = m.tokenizer->DefaultDummyPrefix()});
  ASSERT_TRUE(ids.ok());
  auto r = EvaluatePerplexity(*m.model, *m.cache, *ids, {.max_windows = 8});
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << GetParam() << ": ppl " << r->ppl << " over " << r->tokens_scored << " tokens\n";
  EXPECT_EQ(r->tokens_scored, r->windows * (r->ctx - 1));
  EXPECT_GT(r->ppl, 1.0);
  // A uniform guess over the vocabulary scores ppl = vocab; trained models are far below.
  EXPECT_LT(r->ppl, m.model->config().vocab_size / 10.0);
  if (GetParam() == "stories260K") {
    EXPECT_LT(r->ppl, 10.0);
  }
}

// A BF16 KV cache (half the memory) rounds keys and values to 8 mantissa bits; the model's
// perplexity must stay within 0.5 % of the F32 cache's.
TEST_P(SharedModelTest, Bf16KvCacheKeepsPerplexity) {
  LoadedModel f32 = Load();
  LoadedModel bf16 = Load("cpu", 2, kernels::DType::kBF16);
  EXPECT_EQ(bf16.cache->dtype(), kernels::DType::kBF16);
  const std::vector<int32_t> ids = SampleTokens(f32, 30000);
  auto p32 = EvaluatePerplexity(*f32.model, *f32.cache, ids, {.max_windows = 4});
  auto p16 = EvaluatePerplexity(*bf16.model, *bf16.cache, ids, {.max_windows = 4});
  ASSERT_TRUE(p32.ok()) << p32.status();
  ASSERT_TRUE(p16.ok()) << p16.status();
  std::cout << GetParam() << ": ppl f32 cache " << p32->ppl << ", bf16 cache " << p16->ppl << "\n";
  EXPECT_NE(p16->ppl, p32->ppl) << "the bf16 cache was not used";
  EXPECT_NEAR(p16->ppl / p32->ppl, 1.0, 0.005);
}

INSTANTIATE_TEST_SUITE_P(AllSharedModels, SharedModelTest,
                         ::testing::ValuesIn(testing::SharedModelNames()), [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(ModelTest, RejectsBadChunksWithoutTouchingTheCache) {
  absl::StatusOr<LoadedModel> m =
      LoadModel({.model_dir = testing::SharedModel("tinystories-656k"), .threads = 1});
  ASSERT_TRUE(m.ok()) << m.status();
  SequenceBlocks seq;
  ASSERT_TRUE(m->cache->Reserve(seq, 4).ok());
  ForwardOutput out;
  const std::vector<int32_t> bad = {1, 5000};
  SequenceChunk chunk{.tokens = bad, .start_pos = 0, .blocks = &seq};
  absl::Status status = m->model->Forward({&chunk, 1}, *m->cache, out);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("5000"), std::string_view::npos) << status;
  const std::vector<int32_t> ok = {1, 2, 3, 4, 5};
  chunk = {.tokens = ok, .start_pos = 0, .blocks = &seq};  // 5 positions, room for 4... blocks
  SequenceBlocks small;
  ASSERT_TRUE(m->cache->Reserve(small, 2).ok());
  chunk.blocks = &small;
  EXPECT_EQ(m->model->Forward({&chunk, 1}, *m->cache, out).code(),
            absl::StatusCode::kInvalidArgument);
  chunk = {.tokens = ok, .start_pos = 510, .blocks = &seq};
  EXPECT_EQ(m->model->Forward({&chunk, 1}, *m->cache, out).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(m->model->Forward({}, *m->cache, out).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cmoe::engine
