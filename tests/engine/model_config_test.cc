#include "engine/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/test_util.h"

namespace cmoe::engine {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

constexpr char kPath[] = "/models/x/config.json";

// The tinystories-656k config.json, trimmed to what matters.
std::string BaseJson(const std::string& extra = "") {
  return R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 2,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 2048,
    "max_position_embeddings": 512, "rms_norm_eps": 1e-06, "rope_theta": 10000.0,
    "rope_scaling": null, "hidden_act": "silu", "attention_bias": false, "mlp_bias": false,
    "tie_word_embeddings": true, "bos_token_id": 1, "eos_token_id": 2,
    "torch_dtype": "float32")" +
         extra + "}";
}

// Replaces `"key": <old value>` by `"key": value` in the base JSON via a later duplicate key
// (nlohmann keeps the last one).
std::string With(const std::string& key, const std::string& value) {
  return BaseJson(", \"" + key + "\": " + value);
}

void ExpectInvalid(const std::string& json, const std::string& key) {
  const auto result = ParseModelConfig(json, kPath);
  ASSERT_FALSE(result.ok()) << "accepted bad " << key;
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(result.status().message(), AllOf(HasSubstr(kPath), HasSubstr(key)));
}

TEST(ModelConfigTest, ParsesTinyStoriesStyleConfig) {
  const auto c = ParseModelConfig(BaseJson(), kPath);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, "LlamaForCausalLM");
  EXPECT_EQ(c->hidden_size, 128);
  EXPECT_EQ(c->intermediate_size, 384);
  EXPECT_EQ(c->num_hidden_layers, 2);
  EXPECT_EQ(c->num_attention_heads, 8);
  EXPECT_EQ(c->num_key_value_heads, 4);
  EXPECT_EQ(c->head_dim, 16);
  EXPECT_EQ(c->vocab_size, 2048);
  EXPECT_EQ(c->max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c->rope_theta, 10000.0);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->bos_token_id, 1);
  EXPECT_EQ(c->eos_token_ids, std::vector<int32_t>{2});
}

TEST(ModelConfigTest, DefaultsWhenOptionalKeysAbsent) {
  const auto c = ParseModelConfig(R"({"model_type": "llama", "hidden_size": 64,
      "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
      "vocab_size": 512, "max_position_embeddings": 512, "bos_token_id": null})",
                                  kPath);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_key_value_heads, 8);  // defaults to the query heads
  EXPECT_EQ(c->head_dim, 8);
  EXPECT_EQ(c->bos_token_id, -1);
  EXPECT_TRUE(c->eos_token_ids.empty());
  EXPECT_FALSE(c->tie_word_embeddings);
}

TEST(ModelConfigTest, HeadDimFromConfigAndEosList) {
  const auto c = ParseModelConfig(With("head_dim", "32") + "", kPath);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 32);
  const auto list = ParseModelConfig(With("eos_token_id", "[2, 7]"), kPath);
  ASSERT_TRUE(list.ok()) << list.status();
  EXPECT_EQ(list->eos_token_ids, (std::vector<int32_t>{2, 7}));
}

TEST(ModelConfigTest, RejectsUnsupportedArchitecture) {
  ExpectInvalid(With("architectures", R"(["MistralForCausalLM"])"), "architectures");
  const auto result = ParseModelConfig(With("architectures", R"(["GPT2LMHeadModel"])"), kPath);
  EXPECT_THAT(result.status().message(), HasSubstr("GPT2LMHeadModel"));
}

TEST(ModelConfigTest, RejectsUnsupportedModelTypeWithoutArchitectures) {
  ExpectInvalid(R"({"model_type": "gpt2", "hidden_size": 64})", "model_type");
}

TEST(ModelConfigTest, RejectsRopeScaling) {
  const std::string json = With("rope_scaling", R"({"type": "linear", "factor": 2.0})");
  ExpectInvalid(json, "rope_scaling");
  EXPECT_THAT(ParseModelConfig(json, kPath).status().message(), HasSubstr("unsupported"));
}

TEST(ModelConfigTest, RejectsOtherActivationAndBiases) {
  ExpectInvalid(With("hidden_act", "\"gelu\""), "hidden_act");
  ExpectInvalid(With("attention_bias", "true"), "attention_bias");
  ExpectInvalid(With("mlp_bias", "true"), "mlp_bias");
}

TEST(ModelConfigTest, RejectsMissingOrMistypedKeys) {
  ExpectInvalid(R"({"architectures": ["LlamaForCausalLM"], "intermediate_size": 4})",
                "hidden_size");
  ExpectInvalid(With("hidden_size", "\"128\""), "hidden_size");
  ExpectInvalid(With("num_hidden_layers", "0"), "num_hidden_layers");
  ExpectInvalid(With("vocab_size", "-5"), "vocab_size");
  ExpectInvalid(With("rms_norm_eps", "\"small\""), "rms_norm_eps");
  ExpectInvalid(With("tie_word_embeddings", "1"), "tie_word_embeddings");
}

TEST(ModelConfigTest, RejectsHeadsThatDoNotDivide) {
  ExpectInvalid(With("num_key_value_heads", "3"), "num_key_value_heads");
  ExpectInvalid(With("num_attention_heads", "7"), "num_attention_heads");
  ExpectInvalid(With("head_dim", "15"), "head_dim");
}

TEST(ModelConfigTest, RejectsTokenIdsOutsideVocabulary) {
  ExpectInvalid(With("eos_token_id", "4096"), "eos_token_id");
  ExpectInvalid(With("bos_token_id", "-2"), "bos_token_id");
}

TEST(ModelConfigTest, RejectsTextThatIsNotAJsonObject) {
  for (const char* text : {"{not json", "[1, 2]"}) {
    const auto result = ParseModelConfig(text, kPath);
    EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(result.status().message(), HasSubstr(kPath));
  }
}

TEST(ModelConfigTest, MissingFileIsNotFoundNamingThePath) {
  testing::ScratchDir dir;
  const auto result = LoadModelConfig(dir.path());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(result.status().message(), HasSubstr(dir.Join("config.json")));
}

TEST(ModelConfigTest, LoadsFromDirectory) {
  testing::ScratchDir dir;
  testing::WriteFile(dir.Join("config.json"), BaseJson());
  const auto c = LoadModelConfig(dir.path());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 128);
}

TEST(ModelConfigTest, ToJsonRoundTrips) {
  ModelConfig c;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 8;
  c.num_key_value_heads = 2;
  c.head_dim = 32;
  c.vocab_size = 1000;
  c.max_position_embeddings = 128;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 1;
  c.eos_token_ids = {2, 3};
  c.torch_dtype = "bfloat16";
  const std::string json = ModelConfigToJson(c);
  EXPECT_THAT(json, HasSubstr("\"architectures\""));
  EXPECT_THAT(json, HasSubstr("\"num_key_value_heads\": 2"));
  const auto back = ParseModelConfig(json, "roundtrip");
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->hidden_size, 256);
  EXPECT_EQ(back->num_key_value_heads, 2);
  EXPECT_EQ(back->head_dim, 32);
  EXPECT_DOUBLE_EQ(back->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(back->rope_theta, 500000.0);
  EXPECT_TRUE(back->tie_word_embeddings);
  EXPECT_EQ(back->eos_token_ids, (std::vector<int32_t>{2, 3}));
  EXPECT_EQ(back->torch_dtype, "bfloat16");
}

}  // namespace
}  // namespace cmoe::engine
