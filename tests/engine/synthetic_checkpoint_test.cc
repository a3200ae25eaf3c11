#include "engine/synthetic_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <set>
#include <string>

#include "common/mapped_file.h"
#include "engine/checkpoint.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using kernels::DType;
using ::testing::HasSubstr;

constexpr char kTiny[] = "custom(hidden=64,ffn=96,layers=2,heads=4,kv_heads=2,vocab=300,ctx=128)";

TEST(SynthShapeTest, Presets) {
  auto t = SynthShapeConfig("tinyllama-1.1b");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->hidden_size, 2048);
  EXPECT_EQ(t->intermediate_size, 5632);
  EXPECT_EQ(t->num_hidden_layers, 22);
  EXPECT_EQ(t->num_attention_heads, 32);
  EXPECT_EQ(t->num_key_value_heads, 4);
  EXPECT_EQ(t->vocab_size, 32000);
  EXPECT_EQ(t->max_position_embeddings, 2048);
  EXPECT_FALSE(t->tie_word_embeddings);
  auto l = SynthShapeConfig("llama2-7b");
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(l->hidden_size, 4096);
  EXPECT_EQ(l->intermediate_size, 11008);
  EXPECT_EQ(l->num_key_value_heads, 32);
  EXPECT_EQ(l->max_position_embeddings, 4096);
}

TEST(SynthShapeTest, CustomSpec) {
  auto c = SynthShapeConfig(
      "custom(hidden=256, ffn=688, layers=4, heads=8, kv_heads=4, vocab=1024, ctx=512)");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 256);
  EXPECT_EQ(c->intermediate_size, 688);
  EXPECT_EQ(c->num_hidden_layers, 4);
  EXPECT_EQ(c->num_attention_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 32);
  EXPECT_EQ(c->vocab_size, 1024);
  EXPECT_EQ(c->max_position_embeddings, 512);
  auto tied = SynthShapeConfig("custom(hidden=64,ffn=64,layers=1,heads=2,vocab=260,tied=1)");
  ASSERT_TRUE(tied.ok()) << tied.status();
  EXPECT_TRUE(tied->tie_word_embeddings);
  EXPECT_EQ(tied->num_key_value_heads, 2);
}

TEST(SynthShapeTest, RejectsBadSpecsNamingTheKey) {
  const std::pair<const char*, const char*> cases[] = {
      {"gpt-5", "unknown shape"},
      {"custom(hidden=64,ffn=64,layers=1,heads=2,vocab=300,colour=3)", "colour"},
      {"custom(ffn=64,layers=1,heads=2,vocab=300)", "hidden"},
      {"custom(hidden=64,ffn=x,layers=1,heads=2,vocab=300)", "ffn"},
      {"custom(hidden=64,ffn=64,layers=1,heads=2,vocab=100)", "vocab"},
      {"custom(hidden=64,ffn=64,layers=1,heads=3,vocab=300)", "heads"},
      {"custom(hidden=64,ffn=64,layers=1,heads=4,kv_heads=3,vocab=300)", "num_key_value_heads"},
      {"custom(hidden=64,ffn=64,layers=0,heads=4,vocab=300)", "num_hidden_layers"},
  };
  for (const auto& [spec, key] : cases) {
    const auto c = SynthShapeConfig(spec);
    ASSERT_FALSE(c.ok()) << spec;
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument) << spec;
    EXPECT_THAT(c.status().message(), HasSubstr(key)) << spec;
  }
  EXPECT_FALSE(ParseSynthDType("f64").ok());
  EXPECT_EQ(*ParseSynthDType("bf16"), DType::kBF16);
}

TEST(SynthTokenizerTest, VocabularyLayout) {
  const auto j = nlohmann::json::parse(SyntheticTokenizerJson(300));
  const auto& vocab = j["model"]["vocab"];
  EXPECT_EQ(vocab.size(), 300u);
  EXPECT_EQ(vocab["<unk>"], 0);
  EXPECT_EQ(vocab["<s>"], 1);
  EXPECT_EQ(vocab["</s>"], 2);
  EXPECT_EQ(vocab["<0x00>"], 3);
  EXPECT_EQ(vocab["<0x0A>"], 13);
  EXPECT_EQ(vocab["<0xFF>"], 258);
  EXPECT_EQ(vocab["\u2581"], 259);
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_TRUE(j["model"]["byte_fallback"].get<bool>());
  EXPECT_TRUE(j["model"]["merges"].empty());
  std::set<int> ids;
  for (const auto& [piece, id] : vocab.items()) ids.insert(id.get<int>());
  EXPECT_EQ(ids.size(), 300u);
  EXPECT_EQ(*ids.rbegin(), 299);
  EXPECT_EQ(nlohmann::json::parse(SyntheticTokenizerJson(40000))["model"]["vocab"].size(), 40000u);
}

std::string ReadAll(const std::string& path) {
  auto s = ReadFileToString(path);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : "";
}

TEST(SynthCheckpointTest, WritesLoadableCheckpointWithSaneValues) {
  testing::ScratchDir dir;
  const std::string out = dir.Join("model");
  ASSERT_TRUE(
      WriteSyntheticCheckpoint(
          {.shape = kTiny, .dtype = DType::kBF16, .seed = 7, .out_dir = out, .log_progress = false})
          .ok());
  for (const char* f :
       {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json", "generation_config.json"}) {
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  }
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelConfig& c = (*ckpt)->config();
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.torch_dtype, "bfloat16");
  const ModelWeights& w = (*ckpt)->weights();
  EXPECT_NE(w.lm_head.data, w.embed.data);  // untied
  EXPECT_EQ(w.layers[1].w_up.dtype, DType::kBF16);
  for (int64_t i = 0; i < 64; ++i) ASSERT_EQ(w.layers[1].ffn_norm.At(0, i), 1.0f);
  double sum = 0, sum_sq = 0, max_abs = 0;
  const WeightView& m = w.layers[0].w_gate;
  for (int64_t r = 0; r < m.rows; ++r) {
    for (int64_t col = 0; col < m.cols; ++col) {
      const double v = m.At(r, col);
      sum += v;
      sum_sq += v * v;
      max_abs = std::max(max_abs, std::abs(v));
    }
  }
  const double n = static_cast<double>(m.elements());
  EXPECT_NEAR(sum / n, 0.0, 0.002);
  EXPECT_NEAR(std::sqrt(sum_sq / n), 0.02, 0.002);
  EXPECT_LE(max_abs, 0.0350);
  const auto tok = nlohmann::json::parse(ReadAll(out + "/tokenizer.json"));
  EXPECT_EQ(tok["model"]["vocab"].size(), 300u);
}

TEST(SynthCheckpointTest, TokenizerLoadsWithTheNormalLoader) {
  testing::ScratchDir dir;
  const std::string out = dir.Join("model");
  ASSERT_TRUE(
      WriteSyntheticCheckpoint({.shape = kTiny, .seed = 1, .out_dir = out, .log_progress = false})
          .ok());
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto tok = LoadTokenizer(out, (*ckpt)->config());
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ((*tok)->vocab_size(), 300);
  EXPECT_EQ((*tok)->bos_id(), 1);
  EXPECT_EQ((*tok)->eos_id(), 2);
  const std::string text = "Hello, world! \xc3\xa9";  // ASCII pieces and byte fallback
  auto ids = (*tok)->Encode(text, {});
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(ids->front(), 1);
  for (int32_t id : *ids) EXPECT_LT(id, 300);
  auto back = (*tok)->Decode(*ids);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, text);
}

TEST(SynthCheckpointTest, DeterministicForSeedAndThreadCount) {
  testing::ScratchDir dir;
  auto write = [&](const std::string& name, uint64_t seed, int threads) {
    const std::string out = dir.Join(name);
    EXPECT_TRUE(WriteSyntheticCheckpoint({.shape = kTiny,
                                          .dtype = DType::kF16,
                                          .seed = seed,
                                          .out_dir = out,
                                          .threads = threads,
                                          .log_progress = false})
                    .ok());
    return ReadAll(out + "/model.safetensors");
  };
  const std::string a = write("a", 3, 2);
  EXPECT_FALSE(a.empty());
  EXPECT_EQ(a, write("b", 3, 1));
  EXPECT_NE(a, write("c", 4, 2));
}

TEST(SynthCheckpointTest, F32AndTiedVariants) {
  testing::ScratchDir dir;
  const std::string out = dir.Join("m");
  ASSERT_TRUE(WriteSyntheticCheckpoint(
                  {.shape = "custom(hidden=32,ffn=48,layers=1,heads=2,vocab=270,tied=1)",
                   .dtype = DType::kF32,
                   .seed = 1,
                   .out_dir = out,
                   .log_progress = false})
                  .ok());
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->weights().lm_head.data, (*ckpt)->weights().embed.data);
  EXPECT_EQ((*ckpt)->weights().embed.dtype, DType::kF32);
  EXPECT_EQ((*ckpt)->tensors().Find("lm_head.weight"), nullptr);
}

TEST(SynthCheckpointTest, RefusesNonEmptyOutputUnlessForced) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.Join("keep.txt"), "precious");
  const SynthOptions options{.shape = kTiny,
                             .dtype = DType::kBF16,
                             .seed = 1,
                             .out_dir = dir.path(),
                             .log_progress = false};
  const absl::Status s = WriteSyntheticCheckpoint(options);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(s.message(), HasSubstr(dir.path()));
  EXPECT_TRUE(std::filesystem::exists(dir.Join("keep.txt")));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("config.json")));

  // --force replaces a model directory, never an arbitrary one.
  SynthOptions forced = options;
  forced.force = true;
  EXPECT_EQ(WriteSyntheticCheckpoint(forced).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(std::filesystem::exists(dir.Join("keep.txt")));
  testing::WriteFile(dir.Join("config.json"), "{}");
  ASSERT_TRUE(WriteSyntheticCheckpoint(forced).ok());
  EXPECT_TRUE(std::filesystem::exists(dir.Join("model.safetensors")));
  EXPECT_FALSE(std::filesystem::exists(dir.Join("keep.txt")));
}

TEST(SynthCheckpointTest, BadShapeLeavesNothingBehind) {
  testing::ScratchDir dir;
  const absl::Status s = WriteSyntheticCheckpoint(
      {.shape = "custom(hidden=64)", .out_dir = dir.Join("m"), .log_progress = false});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path()));
}

}  // namespace
}  // namespace cmoe::engine
