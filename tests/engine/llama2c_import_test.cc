// Converts the real llama2.c checkpoints in ../shared/models and checks the result computes exactly
// what llama2.c computes: two independent double-precision forwards, one over the original .bin
// with llama2.c's interleaved RoPE (as run.c), one over the converted safetensors with HF's
// rotate-half RoPE, must greedy-decode the same tokens with the same logits.
#include "engine/llama2c_import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "engine/checkpoint.h"
#include "engine/model_config.h"
#include "engine/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using Vec = std::vector<double>;

// Every weight in double precision; matrices row-major (out, in) as both formats store them.
struct DenseModel {
  int64_t dim = 0, hidden = 0, layers = 0, heads = 0, kv_heads = 0, vocab = 0, seq_len = 0;
  bool tied = true;
  Vec embed{}, rms_final{}, classifier{};
  std::vector<Vec> rms_att{}, wq{}, wk{}, wv{}, wo{}, rms_ffn{}, w1{}, w2{}, w3{};  // per layer
  int64_t head_size() const { return dim / heads; }
  int64_t kv_dim() const { return kv_heads * head_size(); }
};

std::string ReadAll(const std::string& path) {
  auto s = ReadFileToString(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

// (a) The .bin exactly as llama2.c's memory_map_weights walks it.
DenseModel ReadBin(const std::string& path) {
  const std::string bytes = ReadAll(path);
  int32_t h[7];
  std::memcpy(h, bytes.data(), sizeof(h));
  DenseModel m{.dim = h[0],
               .hidden = h[1],
               .layers = h[2],
               .heads = h[3],
               .kv_heads = h[4],
               .vocab = std::abs(h[5]),
               .seq_len = h[6],
               .tied = h[5] > 0};
  const char* p = bytes.data() + 28;
  auto take = [&p](int64_t n) {
    Vec v(n);
    for (int64_t i = 0; i < n; ++i, p += 4) {
      float f;
      std::memcpy(&f, p, 4);
      v[i] = f;
    }
    return v;
  };
  auto per_layer = [&](std::vector<Vec>& dst, int64_t n) {
    for (int64_t l = 0; l < m.layers; ++l) dst.push_back(take(n));
  };
  const int64_t d = m.dim, kv = m.kv_dim(), f = m.hidden;
  m.embed = take(m.vocab * d);
  per_layer(m.rms_att, d);
  per_layer(m.wq, d * d);
  per_layer(m.wk, kv * d);
  per_layer(m.wv, kv * d);
  per_layer(m.wo, d * d);
  per_layer(m.rms_ffn, d);
  per_layer(m.w1, f * d);
  per_layer(m.w2, d * f);
  per_layer(m.w3, f * d);
  m.rms_final = take(d);
  take(m.seq_len * m.head_size());  // freq_cis_real and freq_cis_imag
  m.classifier = m.tied ? m.embed : take(m.vocab * d);
  EXPECT_EQ(p, bytes.data() + bytes.size());
  return m;
}

Vec Tensor(const TensorStore& store, const std::string& name) {
  const TensorInfo* t = store.Find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  EXPECT_EQ(t->dtype, kernels::DType::kF32);
  Vec v(t->elements());
  for (int64_t i = 0; i < t->elements(); ++i) {
    float f;
    std::memcpy(&f, t->data + 4 * i, 4);
    v[i] = f;
  }
  return v;
}

// (b) The converted directory, read with config.json and the TensorStore.
DenseModel ReadConverted(const std::string& dir) {
  auto c = LoadModelConfig(dir);
  EXPECT_TRUE(c.ok()) << c.status();
  auto store = TensorStore::OpenDir(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  const TensorStore& s = **store;
  DenseModel m{.dim = c->hidden_size,
               .hidden = c->intermediate_size,
               .layers = c->num_hidden_layers,
               .heads = c->num_attention_heads,
               .kv_heads = c->num_key_value_heads,
               .vocab = c->vocab_size,
               .seq_len = c->max_position_embeddings,
               .tied = c->tie_word_embeddings};
  m.embed = Tensor(s, "model.embed_tokens.weight");
  m.rms_final = Tensor(s, "model.norm.weight");
  m.classifier = m.tied ? m.embed : Tensor(s, "lm_head.weight");
  for (int64_t l = 0; l < m.layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    m.rms_att.push_back(Tensor(s, p + "input_layernorm.weight"));
    m.wq.push_back(Tensor(s, p + "self_attn.q_proj.weight"));
    m.wk.push_back(Tensor(s, p + "self_attn.k_proj.weight"));
    m.wv.push_back(Tensor(s, p + "self_attn.v_proj.weight"));
    m.wo.push_back(Tensor(s, p + "self_attn.o_proj.weight"));
    m.rms_ffn.push_back(Tensor(s, p + "post_attention_layernorm.weight"));
    m.w1.push_back(Tensor(s, p + "mlp.gate_proj.weight"));
    m.w2.push_back(Tensor(s, p + "mlp.down_proj.weight"));
    m.w3.push_back(Tensor(s, p + "mlp.up_proj.weight"));
  }
  return m;
}

Vec MatVec(const Vec& w, const Vec& x, int64_t rows) {
  const int64_t cols = static_cast<int64_t>(x.size());
  Vec out(rows, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) out[r] += w[r * cols + c] * x[c];
  }
  return out;
}

Vec RmsNorm(const Vec& x, const Vec& weight) {
  double ss = 0;
  for (double v : x) ss += v * v;
  const double scale = 1.0 / std::sqrt(ss / static_cast<double>(x.size()) + 1e-5);
  Vec out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = weight[i] * x[i] * scale;
  return out;
}

enum class Rope { kInterleaved, kHalves };

// llama2.c: pairs (i, i+1) with freq 1/10000^((i % head_size) / head_size).
void RopeInterleaved(Vec& v, int64_t head_size, int64_t pos) {
  for (size_t i = 0; i < v.size(); i += 2) {
    const double freq = 1.0 / std::pow(10000.0, static_cast<double>(i % head_size) / head_size);
    const double c = std::cos(pos * freq), s = std::sin(pos * freq);
    const double v0 = v[i], v1 = v[i + 1];
    v[i] = v0 * c - v1 * s;
    v[i + 1] = v0 * s + v1 * c;
  }
}

// Hugging Face: pairs (i, i + head_size/2) within each head with freq 1/10000^(2i / head_size).
void RopeHalves(Vec& v, int64_t head_size, int64_t pos) {
  const int64_t half = head_size / 2;
  for (size_t h = 0; h < v.size(); h += head_size) {
    for (int64_t i = 0; i < half; ++i) {
      const double freq = 1.0 / std::pow(10000.0, static_cast<double>(2 * i) / head_size);
      const double c = std::cos(pos * freq), s = std::sin(pos * freq);
      const double x0 = v[h + i], x1 = v[h + i + half];
      v[h + i] = x0 * c - x1 * s;
      v[h + i + half] = x0 * s + x1 * c;
    }
  }
}

class Forward {
 public:
  Forward(const DenseModel& m, Rope rope)
      : m_(m), rope_(rope), keys_(m.layers), values_(m.layers) {}

  // Logits (vocab) for `token` at position `pos` (positions must come in order from 0).
  Vec Step(int64_t token, int64_t pos) {
    const int64_t d = m_.dim;
    Vec x(m_.embed.begin() + token * d, m_.embed.begin() + (token + 1) * d);
    for (int64_t l = 0; l < m_.layers; ++l) {
      const Vec att = Attention(l, RmsNorm(x, m_.rms_att[l]), pos);
      for (int64_t i = 0; i < d; ++i) x[i] += att[i];
      const Vec xb = RmsNorm(x, m_.rms_ffn[l]);
      Vec gate = MatVec(m_.w1[l], xb, m_.hidden);
      const Vec up = MatVec(m_.w3[l], xb, m_.hidden);
      for (int64_t i = 0; i < m_.hidden; ++i)
        gate[i] = gate[i] / (1.0 + std::exp(-gate[i])) * up[i];
      const Vec down = MatVec(m_.w2[l], gate, d);
      for (int64_t i = 0; i < d; ++i) x[i] += down[i];
    }
    return MatVec(m_.classifier, RmsNorm(x, m_.rms_final), m_.vocab);
  }

 private:
  Vec Attention(int64_t l, const Vec& xb, int64_t pos) {
    const int64_t hs = m_.head_size(), kv_dim = m_.kv_dim(), group = m_.heads / m_.kv_heads;
    Vec q = MatVec(m_.wq[l], xb, m_.dim), k = MatVec(m_.wk[l], xb, kv_dim);
    if (rope_ == Rope::kInterleaved) {
      RopeInterleaved(q, hs, pos);
      RopeInterleaved(k, hs, pos);
    } else {
      RopeHalves(q, hs, pos);
      RopeHalves(k, hs, pos);
    }
    keys_[l].push_back(k);
    values_[l].push_back(MatVec(m_.wv[l], xb, kv_dim));
    Vec out(m_.dim, 0.0);
    for (int64_t h = 0; h < m_.heads; ++h) {
      const int64_t kv_off = (h / group) * hs;
      Vec scores(pos + 1);
      for (int64_t t = 0; t <= pos; ++t) {
        double dot = 0;
        for (int64_t i = 0; i < hs; ++i) dot += q[h * hs + i] * keys_[l][t][kv_off + i];
        scores[t] = dot / std::sqrt(static_cast<double>(hs));
      }
      const double max = *std::max_element(scores.begin(), scores.end());
      double sum = 0;
      for (double& s : scores) sum += (s = std::exp(s - max));
      for (int64_t t = 0; t <= pos; ++t) {
        for (int64_t i = 0; i < hs; ++i) {
          out[h * hs + i] += scores[t] / sum * values_[l][t][kv_off + i];
        }
      }
    }
    return MatVec(m_.wo[l], out, m_.dim);
  }

  const DenseModel& m_;
  Rope rope_;
  std::vector<std::vector<Vec>> keys_, values_;  // (layer, pos, kv_dim)
};

// "<s> Once upon a time" in tok512 (stories260K), and the start of its greedy continuation
// ", there was a little girl named Lily".
const std::vector<int64_t> kStoriesPrompt = {1, 403, 407, 261, 378};
const std::vector<int64_t> kStoriesContinuation = {432, 383, 286, 261, 376, 298, 315, 421};
// The same prompt in the character-level tok105 (babyllama); it continues ", there w".
const std::vector<int64_t> kBabyPrompt = {1, 3, 34, 9, 22, 4, 3,  18, 20,
                                          7, 9, 3,  5, 3,  6, 10, 16, 4};
const std::vector<int64_t> kBabyContinuation = {25, 3, 6, 8, 4, 13, 4, 3, 17};

// Greedy-decodes `new_tokens` tokens after `prompt` on both forwards; expects the same tokens and
// logits equal to 1e-6 relative at every step. Returns the generated tokens.
std::vector<int64_t> ExpectSameGreedyDecode(const DenseModel& bin, const DenseModel& hf,
                                            std::vector<int64_t> tokens, int64_t new_tokens) {
  Forward a(bin, Rope::kInterleaved), b(hf, Rope::kHalves);
  const int64_t prompt = static_cast<int64_t>(tokens.size());
  std::vector<int64_t> generated;
  for (int64_t pos = 0; pos < prompt + new_tokens - 1; ++pos) {
    const Vec la = a.Step(tokens[pos], pos), lb = b.Step(tokens[pos], pos);
    double max_abs = 0, max_diff = 0;
    for (size_t i = 0; i < la.size(); ++i) {
      max_abs = std::max(max_abs, std::abs(la[i]));
      max_diff = std::max(max_diff, std::abs(la[i] - lb[i]));
    }
    EXPECT_LE(max_diff, 1e-6 * max_abs) << "logits differ at position " << pos;
    const int64_t next_a = std::max_element(la.begin(), la.end()) - la.begin();
    const int64_t next_b = std::max_element(lb.begin(), lb.end()) - lb.begin();
    EXPECT_EQ(next_a, next_b) << "greedy tokens differ at position " << pos;
    if (next_a != next_b) break;
    if (pos + 1 >= prompt) {
      generated.push_back(next_a);
      tokens.push_back(next_a);
    }
  }
  EXPECT_EQ(generated.size(), static_cast<size_t>(new_tokens));
  return generated;
}

// The converted q/k rows are llama2.c's rows regrouped: HF row h*hs + j*hs/2 + i is .bin row
// h*hs + 2i + j.
void ExpectPermutedRows(const Vec& bin, const Vec& hf, int64_t heads, int64_t hs, int64_t cols) {
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t j = 0; j < 2; ++j) {
      for (int64_t i = 0; i < hs / 2; ++i) {
        const int64_t from = h * hs + 2 * i + j, to = h * hs + j * (hs / 2) + i;
        ASSERT_TRUE(std::equal(bin.begin() + from * cols, bin.begin() + (from + 1) * cols,
                               hf.begin() + to * cols))
            << "row " << to;
      }
    }
  }
}

struct Case {
  const char* model;
  const char* bin;
  const char* tokenizer;
  const std::vector<int64_t>* prompt;
  const std::vector<int64_t>* continuation;  // the known start of the greedy output
};

class Llama2cImportTest : public ::testing::TestWithParam<Case> {
 protected:
  std::string Bin() const { return testing::SharedModel(GetParam().model) + "/" + GetParam().bin; }
  std::string Tok() const {
    return testing::SharedModel(GetParam().model) + "/" + GetParam().tokenizer;
  }
};

TEST_P(Llama2cImportTest, ConvertedModelDecodesLikeLlama2c) {
  testing::ScratchDir dir;
  const std::string out = dir.Join("hf");
  const absl::Status s =
      ConvertLlama2c({.model_path = Bin(), .tokenizer_path = Tok(), .out_dir = out});
  ASSERT_TRUE(s.ok()) << s;
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  }
  EXPECT_EQ(ReadAll(out + "/tokenizer.model"), ReadAll(Tok()));
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelConfig& c = (*ckpt)->config();
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, std::vector<int32_t>{2});
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.num_attention_heads, 8);

  const DenseModel bin = ReadBin(Bin()), hf = ReadConverted(out);
  EXPECT_EQ(c.max_position_embeddings, bin.seq_len);
  ExpectPermutedRows(bin.wq[0], hf.wq[0], bin.heads, bin.head_size(), bin.dim);
  ExpectPermutedRows(bin.wk[2], hf.wk[2], bin.kv_heads, bin.head_size(), bin.dim);
  EXPECT_EQ(bin.wv[1], hf.wv[1]);
  const std::vector<int64_t> generated = ExpectSameGreedyDecode(bin, hf, *GetParam().prompt, 40);
  // The trained model tells its story (checks the reference forward itself).
  const std::vector<int64_t>& expected = *GetParam().continuation;
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), generated.begin()));
}

INSTANTIATE_TEST_SUITE_P(SharedModels, Llama2cImportTest,
                         ::testing::Values(Case{"stories260K", "stories260K.bin", "tok512.model",
                                                &kStoriesPrompt, &kStoriesContinuation},
                                           Case{"babyllama-tok105", "model5000.bin", "tok105.model",
                                                &kBabyPrompt, &kBabyContinuation}),
                         [](const auto& info) {
                           return std::string(info.param.model == std::string("stories260K")
                                                  ? "Stories260K"
                                                  : "BabyLlama");
                         });

// --- an untied classifier, and malformed input ---

class Llama2cErrorsTest : public ::testing::Test {
 protected:
  std::string bin_ = testing::SharedModel("stories260K") + "/stories260K.bin";
  std::string tok_ = testing::SharedModel("stories260K") + "/tok512.model";
  testing::ScratchDir dir_;

  // Writes a modified copy of stories260K.bin and converts it; returns the status.
  absl::Status ConvertModified(const std::function<void(std::string&)>& edit) {
    std::string bytes = ReadAll(bin_);
    edit(bytes);
    testing::WriteFile(dir_.Join("m.bin"), bytes);
    return ConvertLlama2c(
        {.model_path = dir_.Join("m.bin"), .tokenizer_path = tok_, .out_dir = dir_.Join("out")});
  }
  void ExpectBinError(const absl::Status& s, const std::string& what) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), AllOf(HasSubstr(dir_.Join("m.bin")), HasSubstr(what)));
    EXPECT_FALSE(std::filesystem::exists(dir_.Join("out")));
  }
  // Nothing but the files the test wrote is left in the scratch directory.
  void ExpectNoLeftovers(const std::vector<std::string>& allowed) {
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), e.path().filename()), allowed.end())
          << "left behind: " << e.path();
    }
  }
};

void SetHeader(std::string& bytes, int field, int32_t value) {
  std::memcpy(bytes.data() + 4 * field, &value, 4);
}

TEST_F(Llama2cErrorsTest, UntiedClassifierBecomesLmHead) {
  std::string bytes = ReadAll(bin_);
  SetHeader(bytes, 5, -512);
  std::string classifier(512 * 64 * 4, '\0');
  for (size_t i = 0; i < classifier.size() / 4; ++i) {
    const float v = std::sin(static_cast<float>(i)) * 0.1f;
    std::memcpy(classifier.data() + 4 * i, &v, 4);
  }
  testing::WriteFile(dir_.Join("m.bin"), bytes + classifier);
  const std::string out = dir_.Join("out");
  ASSERT_TRUE(
      ConvertLlama2c({.model_path = dir_.Join("m.bin"), .tokenizer_path = tok_, .out_dir = out})
          .ok());
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE((*ckpt)->config().tie_word_embeddings);
  EXPECT_EQ(std::memcmp((*ckpt)->weights().lm_head.data, classifier.data(), classifier.size()), 0);
  const DenseModel bin = ReadBin(dir_.Join("m.bin")), hf = ReadConverted(out);
  ExpectSameGreedyDecode(bin, hf, kStoriesPrompt, 10);
}

TEST_F(Llama2cErrorsTest, TruncatedFile) {
  ExpectBinError(ConvertModified([](std::string& b) { b.resize(b.size() - 100); }), "truncated");
  ExpectBinError(ConvertModified([](std::string& b) { b.resize(10); }), "28-byte header");
  ExpectBinError(ConvertModified([](std::string& b) { b += "tail"; }), "implies");
  ExpectNoLeftovers({"m.bin"});
}

TEST_F(Llama2cErrorsTest, BadHeaderValues) {
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 3, 0); }), "n_heads");
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 4, 3); }), "n_kv_heads");
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 0, -64); }), "dim");
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 3, 5); }), "n_heads");
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 6, 1 << 30); }), "seq_len");
  ExpectNoLeftovers({"m.bin"});
}

TEST_F(Llama2cErrorsTest, NegativeVocabWithoutClassifier) {
  ExpectBinError(ConvertModified([](std::string& b) { SetHeader(b, 5, -512); }),
                 "lacks the untied classifier");
}

TEST_F(Llama2cErrorsTest, BadTokenizer) {
  testing::WriteFile(dir_.Join("bad.model"), "\xff\xff\xff garbage");
  absl::Status s = ConvertLlama2c(
      {.model_path = bin_, .tokenizer_path = dir_.Join("bad.model"), .out_dir = dir_.Join("out")});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(dir_.Join("bad.model")));
  // tok512 has more pieces than babyllama's 105-token vocabulary.
  s = ConvertLlama2c({.model_path = testing::SharedModel("babyllama-tok105") + "/model5000.bin",
                      .tokenizer_path = tok_,
                      .out_dir = dir_.Join("out")});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("512"), HasSubstr("105")));
  ExpectNoLeftovers({"bad.model"});
}

TEST_F(Llama2cErrorsTest, MissingFilesAreNotFound) {
  absl::Status s = ConvertLlama2c(
      {.model_path = dir_.Join("nope.bin"), .tokenizer_path = tok_, .out_dir = dir_.Join("out")});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir_.Join("nope.bin")));
  s = ConvertLlama2c(
      {.model_path = bin_, .tokenizer_path = dir_.Join("nope.model"), .out_dir = dir_.Join("out")});
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir_.Join("nope.model")));
  ExpectNoLeftovers({});
}

TEST_F(Llama2cErrorsTest, RefusesNonEmptyOutputDirUnlessForced) {
  const std::string out = dir_.Join("out");
  std::filesystem::create_directory(out);
  testing::WriteFile(out + "/keep.txt", "precious");
  const Llama2cConvertOptions options{.model_path = bin_, .tokenizer_path = tok_, .out_dir = out};
  const absl::Status s = ConvertLlama2c(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(out), HasSubstr("--force")));
  EXPECT_EQ(ReadAll(out + "/keep.txt"), "precious");
  EXPECT_FALSE(std::filesystem::exists(out + "/config.json"));
  ExpectNoLeftovers({"out"});

  // --force replaces a model directory, never an arbitrary one.
  Llama2cConvertOptions forced = options;
  forced.force = true;
  const absl::Status refused = ConvertLlama2c(forced);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_THAT(refused.message(), AllOf(HasSubstr(out), HasSubstr("config.json")));
  EXPECT_EQ(ReadAll(out + "/keep.txt"), "precious");
  testing::WriteFile(out + "/config.json", "{}");  // now it looks like an old checkpoint
  ASSERT_TRUE(ConvertLlama2c(forced).ok());
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
  EXPECT_FALSE(std::filesystem::exists(out + "/keep.txt"));
  ExpectNoLeftovers({"out"});
}

TEST_F(Llama2cErrorsTest, EmptyOutputDirIsUsed) {
  const std::string out = dir_.Join("out");
  std::filesystem::create_directory(out);
  ASSERT_TRUE(ConvertLlama2c({.model_path = bin_, .tokenizer_path = tok_, .out_dir = out}).ok());
  EXPECT_TRUE(std::filesystem::exists(out + "/model.safetensors"));
}

// Not a conversion, but the other shared HF model: only lm_head.weight is stored while tied.
TEST(SharedHfCheckpointTest, TinyStories656kLoadsWithTiedLmHeadOnly) {
  auto ckpt = Checkpoint::Open(testing::SharedModel("tinystories-656k"));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelWeights& w = (*ckpt)->weights();
  EXPECT_EQ(w.embed.data, w.lm_head.data);
  EXPECT_EQ(w.embed.rows, 2048);
  EXPECT_EQ(w.embed.cols, 128);
  EXPECT_EQ(w.layers.size(), 2u);
  EXPECT_EQ(w.layers[0].wk.rows, 64);  // 4 kv heads of 16
  EXPECT_DOUBLE_EQ((*ckpt)->config().rms_norm_eps, 1e-6);
  EXPECT_EQ((*ckpt)->tensors().Find("model.embed_tokens.weight"), nullptr);
}

}  // namespace
}  // namespace cmoe::engine
