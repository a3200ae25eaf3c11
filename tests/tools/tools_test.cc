// End-to-end tests of the command-line tools, run as real subprocesses on the tiny shared models:
// exit codes, stdout (text and --json), and the "<tool>: error: <message>" line on stderr. Every
// run also checks that the tool did not crash (exit status exactly 0 or 1, no signal, no abort or
// sanitizer report on stderr).
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tests/tools/subprocess.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::testing {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kPrompt[] = "Once upon a time";
constexpr char kSynthShape[] =
    "custom(hidden=64,ffn=172,layers=2,heads=4,kv_heads=2,vocab=300,ctx=128)";

std::string Tinystories() { return SharedModel("tinystories-656k"); }
std::string Stories260kBin() { return SharedModel("stories260K/stories260K.bin"); }
std::string Stories260kTokenizer() { return SharedModel("stories260K/tok512.model"); }

// ---------------------------------------------------------------------------------------------
// The subprocess helper itself, so that a broken harness does not pass as working tools.

TEST(SubprocessTest, CapturesStdoutStderrAndExitCodeSeparately) {
  const SubprocessResult r =
      RunSubprocess({.argv = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3"}});
  EXPECT_TRUE(r.spawned);
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_EQ(r.out, "out\n");
  EXPECT_EQ(r.err, "err\n");
}

TEST(SubprocessTest, KillsAChildPastItsDeadline) {
  const SubprocessResult r =
      RunSubprocess({.argv = {"/bin/sh", "-c", "exec sleep 30"}, .timeout_seconds = 0.3});
  EXPECT_TRUE(r.timed_out);
  EXPECT_NE(r.term_signal, 0);
}

TEST(SubprocessTest, ReportsAProgramThatCannotStart) {
  const SubprocessResult r = RunSubprocess({.argv = {"/nonexistent/program"}});
  // posix_spawn may fail up front or let the child exit 127 after exec fails.
  EXPECT_TRUE(!r.spawned || r.exit_code == 127) << r.Describe();
}

// ---------------------------------------------------------------------------------------------
// cmoe-convert llama2c

std::vector<std::string> ConvertArgs(const std::string& model, const std::string& out) {
  return {"llama2c", "--model", model, "--tokenizer", Stories260kTokenizer(), "--out", out};
}

TEST(CmoeConvertTest, Llama2cWritesACheckpointThatGenerates) {
  ScratchDir scratch;
  const std::string out = scratch.Join("stories260K");
  ASSERT_TRUE(Succeeded(RunTool("cmoe-convert", ConvertArgs(Stories260kBin(), out))));
  for (const char* file : {"config.json", "model.safetensors", "tokenizer.model"}) {
    EXPECT_TRUE(IsFile(out + "/" + file)) << file;
  }
  const Json config = ReadJsonFile(out + "/config.json");
  EXPECT_EQ(config.value("hidden_size", 0), 64);
  EXPECT_EQ(config.value("intermediate_size", 0), 172);
  EXPECT_EQ(config.value("num_hidden_layers", 0), 5);
  EXPECT_EQ(config.value("vocab_size", 0), 512);
  EXPECT_EQ(config.value("max_position_embeddings", 0), 512);

  const SubprocessResult gen =
      RunTool("cmoe-generate", {"--model", out, "--max-new-tokens", "8", "--ignore-eos"});
  ASSERT_TRUE(Succeeded(gen));
  EXPECT_THAT(gen.out, StartsWith(kPrompt));
  EXPECT_GT(gen.out.size(), std::string(kPrompt).size() + 1);
}

TEST(CmoeConvertTest, Llama2cRefusesAnExistingOutputDirWithoutForce) {
  ScratchDir scratch;
  const std::string out = scratch.Join("converted");
  ASSERT_TRUE(Succeeded(RunTool("cmoe-convert", ConvertArgs(Stories260kBin(), out))));
  WriteFile(out + "/marker.txt", "mine");

  ExpectToolError(RunTool("cmoe-convert", ConvertArgs(Stories260kBin(), out)), "cmoe-convert",
                  {out});
  EXPECT_TRUE(IsFile(out + "/marker.txt")) << "a refused conversion must leave the dir alone";

  std::vector<std::string> forced = ConvertArgs(Stories260kBin(), out);
  forced.push_back("--force");
  ASSERT_TRUE(Succeeded(RunTool("cmoe-convert", forced)));
  EXPECT_TRUE(IsFile(out + "/model.safetensors"));
}

TEST(CmoeConvertTest, Llama2cNamesAMissingModelFile) {
  ScratchDir scratch;
  const std::string missing = scratch.Join("no_such_checkpoint.bin");
  const std::string out = scratch.Join("out");
  ExpectToolError(RunTool("cmoe-convert", ConvertArgs(missing, out)), "cmoe-convert",
                  {"no_such_checkpoint.bin"});
  std::vector<std::string> args = ConvertArgs(Stories260kBin(), out);
  args[4] = scratch.Join("no_such_tokenizer.model");
  ExpectToolError(RunTool("cmoe-convert", args), "cmoe-convert", {"no_such_tokenizer.model"});
  EXPECT_FALSE(std::filesystem::exists(out));
}

TEST(CmoeConvertTest, Llama2cRejectsATruncatedBin) {
  ScratchDir scratch;
  const std::string bin = ReadBytes(Stories260kBin());
  ASSERT_GT(bin.size(), 4096u);
  const std::string truncated = scratch.Join("truncated.bin");
  WriteFile(truncated, bin.substr(0, bin.size() / 2));
  const std::string out = scratch.Join("out");
  ExpectToolError(RunTool("cmoe-convert", ConvertArgs(truncated, out)), "cmoe-convert",
                  {"truncated.bin"});
  const std::string header_only = scratch.Join("header_only.bin");
  WriteFile(header_only, bin.substr(0, 10));
  ExpectToolError(RunTool("cmoe-convert", ConvertArgs(header_only, out)), "cmoe-convert",
                  {"header_only.bin"});
  EXPECT_FALSE(std::filesystem::exists(out + "/model.safetensors"));
}

TEST(CmoeConvertTest, RequiresAKnownSubcommand) {
  ScratchDir scratch;
  std::vector<std::string> args = ConvertArgs(Stories260kBin(), scratch.Join("out"));
  args.erase(args.begin());
  ExpectToolError(RunTool("cmoe-convert", args), "cmoe-convert", {"subcommand"});
  args.insert(args.begin(), "gguf");
  ExpectToolError(RunTool("cmoe-convert", args), "cmoe-convert", {"'gguf'"});
}

// ---------------------------------------------------------------------------------------------
// cmoe-generate

std::vector<std::string> GenerateArgs(std::vector<std::string> extra) {
  std::vector<std::string> args{"--model", Tinystories(), "--prompt", kPrompt};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

Json GenerateJson(std::vector<std::string> extra) {
  extra.push_back("--json");
  const SubprocessResult r = RunTool("cmoe-generate", GenerateArgs(std::move(extra)));
  EXPECT_TRUE(Succeeded(r));
  return r.exit_code == 0 ? StdoutJson(r) : Json();
}

TEST(CmoeGenerateTest, TextOutputStartsWithThePrompt) {
  const SubprocessResult r =
      RunTool("cmoe-generate", GenerateArgs({"--max-new-tokens", "10", "--ignore-eos"}));
  ASSERT_TRUE(Succeeded(r));
  EXPECT_THAT(r.out, StartsWith(kPrompt));
  EXPECT_GT(r.out.size(), std::string(kPrompt).size() + 1) << r.out;
}

TEST(CmoeGenerateTest, JsonHasEveryFieldWithItsType) {
  const Json j = GenerateJson({"--max-new-tokens", "10", "--ignore-eos"});
  ASSERT_TRUE(j.is_object());
  ASSERT_TRUE(j.contains("text") && j["text"].is_string()) << j;
  EXPECT_FALSE(j["text"].get<std::string>().empty());
  ASSERT_TRUE(j.contains("token_ids") && j["token_ids"].is_array()) << j;
  EXPECT_EQ(j["token_ids"].size(), 10u);
  for (const Json& id : j["token_ids"]) {
    EXPECT_TRUE(id.is_number_integer() && id.get<int>() >= 0 && id.get<int>() < 2048) << id;
  }
  ASSERT_TRUE(j.contains("prompt_token_ids") && j["prompt_token_ids"].is_array()) << j;
  ASSERT_GE(j["prompt_token_ids"].size(), 2u);
  EXPECT_EQ(j["prompt_token_ids"][0], 1) << "the prompt starts with BOS";
  EXPECT_EQ(j.value("finish_reason", ""), "length");
  for (const char* rate : {"prefill_tokens_per_second", "decode_tokens_per_second"}) {
    ASSERT_TRUE(j.contains(rate) && j[rate].is_number()) << rate;
    EXPECT_GT(j[rate].get<double>(), 0.0) << rate;
  }
}

// The streamed text (prompt, then each detokenized piece) and the JSON text of the same greedy
// generation must agree: the token ids decode the same way on both paths.
TEST(CmoeGenerateTest, StreamedTextMatchesTheJsonText) {
  const std::vector<std::string> common{"--max-new-tokens", "24", "--ignore-eos"};
  const SubprocessResult text = RunTool("cmoe-generate", GenerateArgs(common));
  ASSERT_TRUE(Succeeded(text));
  const Json j = GenerateJson(common);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["token_ids"].size(), 24u);
  EXPECT_EQ(text.out, std::string(kPrompt) + j.value("text", "") + "\n");
}

TEST(CmoeGenerateTest, GreedyIsDeterministic) {
  const Json a = GenerateJson({"--max-new-tokens", "20"});
  const Json b = GenerateJson({"--max-new-tokens", "20", "--temperature", "0"});
  ASSERT_TRUE(a.is_object() && b.is_object());
  EXPECT_EQ(a["token_ids"], b["token_ids"]);
  EXPECT_EQ(a["text"], b["text"]);
}

TEST(CmoeGenerateTest, SamplingIsReproducibleBySeed) {
  const auto sample = [](const char* seed) {
    return GenerateJson(
        {"--max-new-tokens", "48", "--ignore-eos", "--temperature", "0.8", "--seed", seed});
  };
  const Json a = sample("7");
  const Json b = sample("7");
  const Json c = sample("8");
  ASSERT_TRUE(a.is_object() && b.is_object() && c.is_object());
  EXPECT_EQ(a["token_ids"], b["token_ids"]);
  EXPECT_EQ(a["text"], b["text"]);
  EXPECT_NE(a["text"], c["text"]) << "48 sampled tokens should not coincide across seeds";
}

TEST(CmoeGenerateTest, AcceptsDashAndUnderscoreFlagSpellings) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--max-new-tokens", "3", "--ignore-eos"},
        std::vector<std::string>{"--max_new_tokens", "3", "--ignore_eos"},
        std::vector<std::string>{"--max-new-tokens=3", "--ignore-eos=true"}}) {
    SCOPED_TRACE(CommandLine(flags));
    const Json j = GenerateJson(flags);
    ASSERT_TRUE(j.is_object());
    EXPECT_EQ(j["token_ids"].size(), 3u);
  }
}

TEST(CmoeGenerateTest, RequiresTheModelFlag) {
  ExpectToolError(RunTool("cmoe-generate", {"--max-new-tokens", "2"}), "cmoe-generate",
                  {"--model"});
}

TEST(CmoeGenerateTest, NamesANonexistentModelDir) {
  ScratchDir scratch;
  const std::string dir = scratch.Join("no_such_model");
  ExpectToolError(RunTool("cmoe-generate", {"--model", dir}), "cmoe-generate", {dir});
}

TEST(CmoeGenerateTest, NamesTheMissingConfigJson) {
  ScratchDir scratch;
  WriteFile(scratch.Join("README"), "not a model");
  ExpectToolError(RunTool("cmoe-generate", {"--model", scratch.path()}), "cmoe-generate",
                  {"config.json"});
}

TEST(CmoeGenerateTest, RejectsTopPZero) {
  const SubprocessResult r = RunTool("cmoe-generate", GenerateArgs({"--top-p", "0"}));
  ExpectToolError(r, "cmoe-generate", {});
  EXPECT_THAT(r.err, ContainsRegex("top[-_]p"));
}

TEST(CmoeGenerateTest, RejectsANegativeTemperature) {
  ExpectToolError(RunTool("cmoe-generate", GenerateArgs({"--temperature", "-1"})), "cmoe-generate",
                  {"temperature"});
}

// Abseil reports flag errors itself ("ERROR: Unknown command line flag ..."), so these only
// need exit 1 and the flag's name.
TEST(CmoeGenerateTest, RejectsAnUnknownFlag) {
  const SubprocessResult r = RunTool("cmoe-generate", GenerateArgs({"--bogus-flag", "3"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("bogus-flag"));
}

TEST(CmoeGenerateTest, RejectsAMalformedFlagValue) {
  const SubprocessResult r = RunTool("cmoe-generate", GenerateArgs({"--max-new-tokens", "ten"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("max_new_tokens"));
}

// Without a CUDA backend or device, a clear error; with one, a normal run.
TEST(CmoeGenerateTest, ExplainsThatThereIsNoCuda) {
  const SubprocessResult r =
      RunTool("cmoe-generate", GenerateArgs({"--device", "cuda", "--max-new-tokens", "2"}));
  if (r.exit_code == 0) {
    EXPECT_THAT(r.out, StartsWith(kPrompt));
  } else {
    ExpectToolError(r, "cmoe-generate", {"CUDA"});
  }
}

TEST(CmoeGenerateTest, NamesAnUnknownDevice) {
  ExpectToolError(RunTool("cmoe-generate", GenerateArgs({"--device", "tpu"})), "cmoe-generate",
                  {"'tpu'"});
}

// 600 new tokens do not fit after the prompt in the 512-token context: generation stops at the
// context (every position 0..511 used) with finish_reason "context", not with an error.
TEST(CmoeGenerateTest, StopsAtTheEndOfTheContext) {
  const Json j = GenerateJson({"--max-new-tokens", "600", "--ignore-eos"});
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.value("finish_reason", ""), "context");
  const size_t prompt = j["prompt_token_ids"].size();
  // The last token is sampled from position 511's logits and never fed back.
  EXPECT_EQ(j["token_ids"].size(), 512 - prompt + 1);
}

// ---------------------------------------------------------------------------------------------
// cmoe-eval ppl

// The opening paragraphs of the TinyStories validation text: ~12 KB, far more than 3 windows of
// 128 tokens, small enough to tokenize in no time.
std::string WriteEvalText(const ScratchDir& scratch) {
  std::ifstream in(SharedData("tinystories_val.txt"));
  std::string text, line;
  while (text.size() < 12000 && std::getline(in, line)) text += line + "\n";
  EXPECT_GE(text.size(), 12000u) << "shared data missing?";
  const std::string path = scratch.Join("eval.txt");
  WriteFile(path, text);
  return path;
}

std::vector<std::string> EvalArgs(const std::string& text, std::vector<std::string> extra) {
  std::vector<std::string> args{"ppl", "--model", Tinystories(), "--text", text};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

TEST(CmoeEvalTest, PplJsonOnThreeWindows) {
  ScratchDir scratch;
  const SubprocessResult r =
      RunTool("cmoe-eval",
              EvalArgs(WriteEvalText(scratch), {"--ctx", "128", "--max-windows", "3", "--json"}));
  ASSERT_TRUE(Succeeded(r));
  const Json j = StdoutJson(r);
  ASSERT_TRUE(j.is_object());
  for (const char* f : {"ppl", "nll"}) ASSERT_TRUE(j.contains(f) && j[f].is_number()) << f;
  for (const char* f : {"tokens_scored", "windows", "ctx"}) {
    ASSERT_TRUE(j.contains(f) && j[f].is_number_integer()) << f;
  }
  EXPECT_EQ(j["windows"], 3);
  EXPECT_EQ(j["ctx"], 128);
  EXPECT_EQ(j["tokens_scored"].get<int64_t>(),
            j["windows"].get<int64_t>() * (j["ctx"].get<int64_t>() - 1));
  const double ppl = j["ppl"].get<double>();
  EXPECT_GT(ppl, 1.0);
  EXPECT_LT(ppl, 200.0);
  EXPECT_NEAR(std::log(ppl), j["nll"].get<double>(), 1e-6);
}

TEST(CmoeEvalTest, PplTextSummaryLine) {
  ScratchDir scratch;
  const SubprocessResult r =
      RunTool("cmoe-eval", EvalArgs(WriteEvalText(scratch), {"--ctx", "64", "--max-windows", "1"}));
  ASSERT_TRUE(Succeeded(r));
  EXPECT_THAT(r.out, StartsWith("ppl "));
  EXPECT_THAT(r.out, HasSubstr("windows 1"));
}

TEST(CmoeEvalTest, RejectsATextShorterThanOneWindow) {
  ScratchDir scratch;
  const std::string text = scratch.Join("short.txt");
  WriteFile(text, "Once upon a time, there was a cat.\n");
  ExpectToolError(RunTool("cmoe-eval", EvalArgs(text, {"--ctx", "128"})), "cmoe-eval", {"window"});
}

TEST(CmoeEvalTest, NamesAMissingTextFile) {
  ScratchDir scratch;
  ExpectToolError(RunTool("cmoe-eval", EvalArgs(scratch.Join("no_such_text.txt"), {})), "cmoe-eval",
                  {"no_such_text.txt"});
}

TEST(CmoeEvalTest, RequiresThePplSubcommand) {
  ScratchDir scratch;
  const std::string text = WriteEvalText(scratch);
  std::vector<std::string> args = EvalArgs(text, {});
  args[0] = "perplexity";
  ExpectToolError(RunTool("cmoe-eval", args), "cmoe-eval", {"'ppl'", "'perplexity'"});
  args.erase(args.begin());
  ExpectToolError(RunTool("cmoe-eval", args), "cmoe-eval", {"'ppl'"});
}

TEST(CmoeEvalTest, RejectsNegativeCtxAndMaxWindows) {
  ScratchDir scratch;
  const std::string text = WriteEvalText(scratch);
  ExpectToolError(RunTool("cmoe-eval", EvalArgs(text, {"--ctx", "-5"})), "cmoe-eval", {"--ctx"});
  ExpectToolError(RunTool("cmoe-eval", EvalArgs(text, {"--ctx", "64", "--max-windows", "-1"})),
                  "cmoe-eval", {"--max-windows"});
}

TEST(CmoeEvalTest, RejectsACtxBeyondTheModelsContext) {
  ScratchDir scratch;
  ExpectToolError(RunTool("cmoe-eval", EvalArgs(WriteEvalText(scratch), {"--ctx", "4096"})),
                  "cmoe-eval", {"--ctx", "512"});
}

// ---------------------------------------------------------------------------------------------
// cmoe-synth

std::vector<std::string> SynthArgs(const std::string& out, const std::string& seed) {
  return {"--shape", kSynthShape, "--dtype", "bf16", "--seed", seed, "--out", out};
}

TEST(CmoeSynthTest, WritesACheckpointThatGenerates) {
  ScratchDir scratch;
  const std::string out = scratch.Join("synth");
  ASSERT_TRUE(Succeeded(RunTool("cmoe-synth", SynthArgs(out, "1"))));
  const Json config = ReadJsonFile(out + "/config.json");
  EXPECT_EQ(config.value("hidden_size", 0), 64);
  EXPECT_EQ(config.value("intermediate_size", 0), 172);
  EXPECT_EQ(config.value("num_hidden_layers", 0), 2);
  EXPECT_EQ(config.value("num_attention_heads", 0), 4);
  EXPECT_EQ(config.value("num_key_value_heads", 0), 2);
  EXPECT_EQ(config.value("vocab_size", 0), 300);
  EXPECT_EQ(config.value("max_position_embeddings", 0), 128);

  const SubprocessResult gen =
      RunTool("cmoe-generate", {"--model", out, "--max-new-tokens", "5", "--ignore-eos", "--json"});
  ASSERT_TRUE(Succeeded(gen));
  EXPECT_EQ(StdoutJson(gen)["token_ids"].size(), 5u);
}

TEST(CmoeSynthTest, SameSeedGivesIdenticalBytesAndAnotherSeedDoesNot) {
  ScratchDir scratch;
  const std::string a = scratch.Join("a"), b = scratch.Join("b"), c = scratch.Join("c");
  ASSERT_TRUE(Succeeded(RunTool("cmoe-synth", SynthArgs(a, "1"))));
  ASSERT_TRUE(Succeeded(RunTool("cmoe-synth", SynthArgs(b, "1"))));
  ASSERT_TRUE(Succeeded(RunTool("cmoe-synth", SynthArgs(c, "2"))));
  const std::string bytes_a = ReadBytes(a + "/model.safetensors");
  ASSERT_GT(bytes_a.size(), 100000u);
  EXPECT_TRUE(bytes_a == ReadBytes(b + "/model.safetensors")) << "seed 1 twice differs";
  const std::string bytes_c = ReadBytes(c + "/model.safetensors");
  EXPECT_EQ(bytes_a.size(), bytes_c.size());
  EXPECT_FALSE(bytes_a == bytes_c) << "seeds 1 and 2 gave the same weights";
}

TEST(CmoeSynthTest, NamesABadShape) {
  ScratchDir scratch;
  std::vector<std::string> args = SynthArgs(scratch.Join("out"), "1");
  args[1] = "gpt-17";
  ExpectToolError(RunTool("cmoe-synth", args), "cmoe-synth", {"gpt-17"});
  args[1] = "custom(hidden=64,ffn=172,layers=2,heads=4,wings=2,vocab=300)";
  ExpectToolError(RunTool("cmoe-synth", args), "cmoe-synth", {"wings"});
  args[1] = "custom(hidden=sixty,ffn=172,layers=2,heads=4,vocab=300)";
  ExpectToolError(RunTool("cmoe-synth", args), "cmoe-synth", {"sixty"});
  EXPECT_FALSE(std::filesystem::exists(scratch.Join("out")));
}

TEST(CmoeSynthTest, NamesABadDtype) {
  ScratchDir scratch;
  std::vector<std::string> args = SynthArgs(scratch.Join("out"), "1");
  args[3] = "fp8";
  ExpectToolError(RunTool("cmoe-synth", args), "cmoe-synth", {"fp8"});
  EXPECT_FALSE(std::filesystem::exists(scratch.Join("out")));
}

// ---------------------------------------------------------------------------------------------
// cmoe-bench

void ExpectPositiveNumber(const Json& j, const char* field) {
  ASSERT_TRUE(j.contains(field) && j[field].is_number()) << field << " in " << j;
  EXPECT_GT(j[field].get<double>(), 0.0) << field;
}

TEST(CmoeBenchTest, DecodeJson) {
  const SubprocessResult r =
      RunTool("cmoe-bench", {"decode", "--model", Tinystories(), "--batch", "2", "--tokens", "4",
                             "--bandwidth-mib", "64", "--json"});
  ASSERT_TRUE(Succeeded(r));
  const Json j = StdoutJson(r);
  ASSERT_TRUE(j.is_object());
  for (const char* f : {"tokens_per_second", "weight_bytes_per_step", "achieved_gbps",
                        "read_bandwidth_gbps", "bandwidth_ratio"}) {
    ExpectPositiveNumber(j, f);
  }
  if (j.contains("achieved_gbps") && j.contains("read_bandwidth_gbps") &&
      j.contains("bandwidth_ratio")) {
    EXPECT_NEAR(j["bandwidth_ratio"].get<double>(),
                j["achieved_gbps"].get<double>() / j["read_bandwidth_gbps"].get<double>(), 1e-9);
  }
  EXPECT_EQ(j.value("batch", 0), 2);
  EXPECT_EQ(j.value("steps", 0), 4);
}

TEST(CmoeBenchTest, PrefillJson) {
  const SubprocessResult r =
      RunTool("cmoe-bench", {"prefill", "--model", Tinystories(), "--tokens", "64", "--json"});
  ASSERT_TRUE(Succeeded(r));
  const Json j = StdoutJson(r);
  ASSERT_TRUE(j.is_object());
  ExpectPositiveNumber(j, "gflops");
  ExpectPositiveNumber(j, "tokens_per_second");
  EXPECT_EQ(j.value("tokens", 0), 64);
}

TEST(CmoeBenchTest, RejectsABadSubcommandAndBadSizes) {
  ExpectToolError(RunTool("cmoe-bench", {"train", "--model", Tinystories()}), "cmoe-bench",
                  {"decode", "prefill"});
  ExpectToolError(RunTool("cmoe-bench", {"--model", Tinystories()}), "cmoe-bench", {"decode"});
  ExpectToolError(RunTool("cmoe-bench", {"decode", "--model", Tinystories(), "--batch", "0"}),
                  "cmoe-bench", {"--batch"});
  ExpectToolError(RunTool("cmoe-bench", {"decode", "--model", Tinystories(), "--tokens", "4",
                                         "--bandwidth-mib", "-1"}),
                  "cmoe-bench", {"--bandwidth-mib"});
  ExpectToolError(RunTool("cmoe-bench", {"prefill", "--model", Tinystories(), "--tokens", "600"}),
                  "cmoe-bench", {"--tokens", "512"});
}

}  // namespace
}  // namespace cmoe::testing
