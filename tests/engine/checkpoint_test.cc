#include "engine/checkpoint.h"

#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "engine/safetensors.h"
#include "engine/safetensors_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using kernels::DType;
using ::testing::AllOf;
using ::testing::HasSubstr;

// A tiny GQA model: d 8, ffn 12, 2 layers, 4 heads of 2 over 2 kv heads, vocab 16.
ModelConfig TinyConfig(bool tied) {
  ModelConfig c;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 2;
  c.vocab_size = 16;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = tied;
  c.bos_token_id = 1;
  c.eos_token_ids = {2};
  return c;
}

// Tensor name -> shape for `c` (lm_head included unless tied).
std::map<std::string, std::vector<int64_t>> Shapes(const ModelConfig& c) {
  const int64_t d = c.hidden_size, f = c.intermediate_size, v = c.vocab_size;
  const int64_t q = c.num_attention_heads * c.head_dim, kv = c.num_key_value_heads * c.head_dim;
  std::map<std::string, std::vector<int64_t>> s = {{"model.embed_tokens.weight", {v, d}},
                                                   {"model.norm.weight", {d}}};
  if (!c.tie_word_embeddings) s["lm_head.weight"] = {v, d};
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    s[p + "input_layernorm.weight"] = {d};
    s[p + "self_attn.q_proj.weight"] = {q, d};
    s[p + "self_attn.k_proj.weight"] = {kv, d};
    s[p + "self_attn.v_proj.weight"] = {kv, d};
    s[p + "self_attn.o_proj.weight"] = {d, q};
    s[p + "post_attention_layernorm.weight"] = {d};
    s[p + "mlp.gate_proj.weight"] = {f, d};
    s[p + "mlp.up_proj.weight"] = {f, d};
    s[p + "mlp.down_proj.weight"] = {d, f};
  }
  return s;
}

// Element i of tensor `name` (distinct per tensor, exactly representable in f16 and bf16).
float Value(const std::string& name, int64_t i) {
  return static_cast<float>((name.size() * 7 + i) % 64) / 16.0f - 2.0f;
}

std::vector<uint8_t> Encode(const std::string& name, int64_t n, DType dtype) {
  std::vector<uint8_t> out(n * kernels::DTypeSize(dtype));
  for (int64_t i = 0; i < n; ++i) {
    const float v = Value(name, i);
    if (dtype == DType::kF32) {
      std::memcpy(&out[i * 4], &v, 4);
    } else {
      const uint16_t h = dtype == DType::kF16 ? FloatToF16(v) : FloatToBf16(v);
      std::memcpy(&out[i * 2], &h, 2);
    }
  }
  return out;
}

struct Build {
  ModelConfig config = TinyConfig(false);
  std::map<std::string, std::vector<int64_t>> shapes = Shapes(config);
  std::map<std::string, DType> dtypes;  // default F32
  int shards = 1;                       // > 1: round-robin over shard files with an index
};

// Writes config.json and the weights (one file, or `shards` files plus an index).
void WriteCheckpoint(const std::string& dir, const Build& b) {
  testing::WriteFile(dir + "/config.json", ModelConfigToJson(b.config));
  std::vector<SafetensorsWriter> writers(b.shards);
  std::string weight_map;
  int i = 0;
  for (const auto& [name, shape] : b.shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const DType dtype = b.dtypes.contains(name) ? b.dtypes.at(name) : DType::kF32;
    const int shard = i++ % b.shards;
    ASSERT_TRUE(writers[shard].AddOwned(name, dtype, shape, Encode(name, n, dtype)).ok());
    absl::StrAppend(&weight_map, weight_map.empty() ? "" : ", ", "\"", name, "\": \"shard-", shard,
                    ".safetensors\"");
  }
  if (b.shards == 1) {
    ASSERT_TRUE(writers[0].Write(dir + "/model.safetensors").ok());
    return;
  }
  for (int s = 0; s < b.shards; ++s) {
    ASSERT_TRUE(writers[s].Write(absl::StrCat(dir, "/shard-", s, ".safetensors")).ok());
  }
  testing::WriteFile(dir + "/model.safetensors.index.json",
                     "{\"metadata\": {}, \"weight_map\": {" + weight_map + "}}");
}

void ExpectValues(const WeightView& w, const std::string& name) {
  for (int64_t r = 0; r < w.rows; ++r) {
    for (int64_t c = 0; c < w.cols; ++c) {
      ASSERT_EQ(w.At(r, c), Value(name, r * w.cols + c)) << name << " at " << r << "," << c;
    }
  }
}

absl::Status OpenStatus(const std::string& dir) { return Checkpoint::Open(dir).status(); }

TEST(CheckpointTest, LoadsUntiedF32AndBindsEveryWeight) {
  testing::ScratchDir dir;
  Build b;
  WriteCheckpoint(dir.path(), b);
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const ModelWeights& w = (*ckpt)->weights();
  EXPECT_EQ((*ckpt)->config().hidden_size, 8);
  ASSERT_EQ(w.layers.size(), 2u);
  ExpectValues(w.embed, "model.embed_tokens.weight");
  ExpectValues(w.lm_head, "lm_head.weight");
  ExpectValues(w.final_norm, "model.norm.weight");
  ExpectValues(w.layers[1].wq, "model.layers.1.self_attn.q_proj.weight");
  ExpectValues(w.layers[1].w_down, "model.layers.1.mlp.down_proj.weight");
  ExpectValues(w.layers[0].attn_norm, "model.layers.0.input_layernorm.weight");
  EXPECT_EQ(w.final_norm.rows, 1);
  EXPECT_EQ(w.final_norm.cols, 8);
  // GQA: k/v have kv_heads * head_dim rows; o_proj is (d, heads * head_dim).
  EXPECT_EQ(w.layers[0].wq.rows, 8);
  EXPECT_EQ(w.layers[0].wk.rows, 4);
  EXPECT_EQ(w.layers[0].wv.rows, 4);
  EXPECT_EQ(w.layers[0].wo.cols, 8);
  EXPECT_EQ(w.layers[0].w_down.cols, 12);
  int64_t total = 0;
  for (const auto& [name, t] : (*ckpt)->tensors().tensors()) total += t->byte_size;
  EXPECT_EQ((*ckpt)->weight_bytes(), total);
}

TEST(CheckpointTest, LoadsF16AndBf16AndMixedDtypes) {
  for (DType dtype : {DType::kF16, DType::kBF16}) {
    testing::ScratchDir dir;
    Build b;
    for (const auto& [name, shape] : b.shapes) b.dtypes[name] = dtype;
    b.dtypes["model.norm.weight"] = DType::kF32;  // mixed dtypes are allowed
    WriteCheckpoint(dir.path(), b);
    auto ckpt = Checkpoint::Open(dir.path());
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    const ModelWeights& w = (*ckpt)->weights();
    EXPECT_EQ(w.layers[0].w_gate.dtype, dtype);
    EXPECT_EQ(w.final_norm.dtype, DType::kF32);
    ExpectValues(w.layers[0].w_gate, "model.layers.0.mlp.gate_proj.weight");
    ExpectValues(w.embed, "model.embed_tokens.weight");
  }
}

TEST(CheckpointTest, LoadsShardedCheckpoint) {
  testing::ScratchDir dir;
  Build b;
  b.shards = 3;
  WriteCheckpoint(dir.path(), b);
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->tensors().files().size(), 3u);
  ExpectValues((*ckpt)->weights().layers[1].w_up, "model.layers.1.mlp.up_proj.weight");
}

TEST(CheckpointTest, TiedWithOnlyEmbeddingUsesItAsLmHead) {
  testing::ScratchDir dir;
  Build b;
  b.config = TinyConfig(true);
  b.shapes = Shapes(b.config);
  WriteCheckpoint(dir.path(), b);
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->weights().lm_head.data, (*ckpt)->weights().embed.data);
  int64_t total = 0;
  for (const auto& [name, t] : (*ckpt)->tensors().tensors()) total += t->byte_size;
  EXPECT_EQ((*ckpt)->weight_bytes(), total);  // counted once
}

TEST(CheckpointTest, TiedWithOnlyLmHeadUsesItAsEmbedding) {
  testing::ScratchDir dir;
  Build b;
  b.config = TinyConfig(true);
  b.shapes = Shapes(TinyConfig(false));
  b.shapes.erase("model.embed_tokens.weight");  // as tinystories-656k stores it
  WriteCheckpoint(dir.path(), b);
  auto ckpt = Checkpoint::Open(dir.path());
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->weights().embed.data, (*ckpt)->weights().lm_head.data);
  ExpectValues((*ckpt)->weights().embed, "lm_head.weight");
}

TEST(CheckpointTest, UntiedWithoutLmHeadIsAnError) {
  testing::ScratchDir dir;
  Build b;
  b.shapes.erase("lm_head.weight");
  WriteCheckpoint(dir.path(), b);
  const absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("lm_head.weight"), HasSubstr(dir.path()),
                                 HasSubstr("tie_word_embeddings")));
}

TEST(CheckpointTest, MissingTensorNamesIt) {
  testing::ScratchDir dir;
  Build b;
  b.shapes.erase("model.layers.1.mlp.up_proj.weight");
  WriteCheckpoint(dir.path(), b);
  const absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model.layers.1.mlp.up_proj.weight"),
                                 HasSubstr(dir.Join("model.safetensors"))));
}

TEST(CheckpointTest, ShapeDisagreeingWithConfigNamesTensorAndShapes) {
  testing::ScratchDir dir;
  Build b;
  b.shapes["model.layers.0.self_attn.k_proj.weight"] = {8, 8};  // MHA shape, config says GQA
  WriteCheckpoint(dir.path(), b);
  const absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("model.layers.0.self_attn.k_proj.weight"),
                                 HasSubstr(dir.Join("model.safetensors")), HasSubstr("[8, 8]"),
                                 HasSubstr("[4, 8]")));
}

TEST(CheckpointTest, NormStoredAsMatrixIsRejected) {
  testing::ScratchDir dir;
  Build b;
  b.shapes["model.norm.weight"] = {1, 8};
  WriteCheckpoint(dir.path(), b);
  EXPECT_THAT(OpenStatus(dir.path()).message(),
              AllOf(HasSubstr("model.norm.weight"), HasSubstr("[1, 8]"), HasSubstr("[8]")));
}

TEST(CheckpointTest, ExtraTensorIsRejectedButRotaryInvFreqTolerated) {
  testing::ScratchDir dir;
  Build b;
  b.shapes["model.layers.0.self_attn.rotary_emb.inv_freq"] = {1};
  WriteCheckpoint(dir.path(), b);
  ASSERT_TRUE(OpenStatus(dir.path()).ok());

  testing::ScratchDir dir2;
  b.shapes["model.layers.0.mlp.experts.0.weight"] = {2};
  WriteCheckpoint(dir2.path(), b);
  const absl::Status s = OpenStatus(dir2.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("unexpected tensor model.layers.0.mlp.experts.0.weight"),
                                 HasSubstr(dir2.Join("model.safetensors"))));
}

TEST(CheckpointTest, MissingFilesAreNotFound) {
  testing::ScratchDir dir;
  absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir.Join("config.json")));

  testing::WriteFile(dir.Join("config.json"), ModelConfigToJson(TinyConfig(false)));
  s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr(dir.Join("model.safetensors")));
}

TEST(CheckpointTest, BadConfigIsReportedBeforeWeights) {
  testing::ScratchDir dir;
  Build b;
  WriteCheckpoint(dir.path(), b);
  testing::WriteFile(dir.Join("config.json"),
                     "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, "
                     "\"rope_scaling\": {\"type\": \"dynamic\"}}");
  const absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr(dir.Join("config.json")), HasSubstr("rope_scaling")));
}

TEST(CheckpointTest, CorruptWeightsFileNamesIt) {
  testing::ScratchDir dir;
  Build b;
  WriteCheckpoint(dir.path(), b);
  testing::WriteFile(dir.Join("model.safetensors"), "1234");
  const absl::Status s = OpenStatus(dir.path());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(dir.Join("model.safetensors")));
}

}  // namespace
}  // namespace cmoe::engine
