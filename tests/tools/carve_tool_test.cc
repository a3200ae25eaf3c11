// End-to-end tests of cmoe-carve (and of the carve-related flags of cmoe-eval and cmoe-generate),
// run as real subprocesses on the tiny shared TinyStories model with a tiny calibration (2 x 64
// tokens), so that a whole carve takes well under a second. Every run checks that the tool did
// not crash (exit status exactly 0 or 1, no signal); every refused carve checks exit 1, the
// "cmoe-carve: error: ..." line naming the problem, and that nothing was left behind: neither the
// output directory nor an <out>.tmp-XXXXXX staging directory beside it.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/test_util.h"
#include "tests/tools/subprocess.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::testing {
namespace {

namespace fs = std::filesystem;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kPrompt[] = "Once upon a time";
constexpr char kCalibRange[] = "0:200000";      // the carve calibrates here ...
constexpr char kEvalRange[] = "200000:300000";  // ... and is evaluated on text it never saw

std::string Tinystories() { return SharedModel("tinystories-656k"); }
std::string ValText() { return SharedData("tinystories_val.txt"); }

// --- Carve helpers ------------------------------------------------------------------------------

// A carve of `model` calibrated on bytes `range` of `calib` (2 x 64 tokens) into `out`; `extra`
// adds the config and the rest.
std::vector<std::string> CarveArgsFrom(const std::string& model, const std::string& calib,
                                       const std::string& range, const std::string& out,
                                       const std::vector<std::string>& extra) {
  std::vector<std::string> args{"--model",      model, "--calib",     calib, "--calib-range", range,
                                "--calib-seqs", "2",   "--calib-len", "64",  "--out",         out};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// The same with the shared model and text.
std::vector<std::string> CarveArgs(const std::string& out, const std::vector<std::string>& extra,
                                   const std::string& model = Tinystories()) {
  return CarveArgsFrom(model, ValText(), kCalibRange, out, extra);
}

// The sorted names in `dir` (empty when it does not exist).
std::vector<std::string> Entries(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec))
    names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// No staging directory (<out>.tmp-XXXXXX, or its .old) left in `dir`.
void ExpectNoStaging(const std::string& dir) {
  for (const std::string& name : Entries(dir)) {
    EXPECT_THAT(name, Not(HasSubstr(".tmp-"))) << "left behind in " << dir;
  }
}

// Carves into `out` and expects success; returns the run.
SubprocessResult Carve(const std::string& out, std::vector<std::string> extra,
                       const std::string& model = Tinystories()) {
  SubprocessResult r = RunTool("cmoe-carve", CarveArgs(out, std::move(extra), model));
  EXPECT_TRUE(Succeeded(r));
  return r;
}

// Runs cmoe-carve with `args` (out = <scratch>/out) and expects it refused: exit 1, an error line
// with every one of `mentions`, nothing on stdout, and no out dir or staging dir created.
void ExpectCarveRefused(const ScratchDir& scratch, const std::vector<std::string>& args,
                        const std::vector<std::string>& mentions) {
  SCOPED_TRACE(CommandLine(args));
  const SubprocessResult r = RunTool("cmoe-carve", args);
  ExpectToolError(r, "cmoe-carve", mentions);
  EXPECT_THAT(r.out, IsEmpty());
  EXPECT_FALSE(fs::exists(scratch.Join("out"))) << "a refused carve created its --out";
  ExpectNoStaging(scratch.path());
}

int64_t DenseLayers() {
  return ReadJsonFile(Tinystories() + "/config.json").value("num_hidden_layers", int64_t{0});
}

// cmoe-eval ppl --json on kEvalRange, two windows.
Json EvalJson(const std::string& model, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"ppl",          "--model",  model,           "--text", ValText(),
                                "--text-range", kEvalRange, "--max-windows", "2",      "--json"};
  args.insert(args.end(), extra.begin(), extra.end());
  const SubprocessResult r = RunTool("cmoe-eval", args);
  EXPECT_TRUE(Succeeded(r));
  return r.exit_code == 0 ? StdoutJson(r) : Json();
}

// ---------------------------------------------------------------------------------------------
// The happy path

TEST(CmoeCarveTest, WritesACarvedCheckpointWithReportsAndProgress) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  const SubprocessResult r = Carve(out, {"--config", "S2A2E8", "--json"});
  ASSERT_EQ(r.exit_code, 0);
  const int64_t layers = DenseLayers();
  ASSERT_GE(layers, 1);

  // stdout: one JSON object.
  const Json j = StdoutJson(r);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j.value("out", ""), out);
  EXPECT_EQ(j.value("config", ""), "S2A2E8");
  EXPECT_EQ(j.value("layers", int64_t{0}), layers);
  EXPECT_EQ(j.value("calib_tokens", int64_t{0}), 128) << "2 sequences x 64 tokens";
  ASSERT_TRUE(j.contains("activation_ratio") && j["activation_ratio"].is_number()) << j;
  const double ratio = j["activation_ratio"].get<double>();
  EXPECT_GT(ratio, 0.0);
  EXPECT_LT(ratio, 1.0);
  EXPECT_NEAR(ratio, 0.5, 1e-9) << "S2A2E8 of 384 neurons: 2 shared + 2 routed of 8 equal experts";

  // The checkpoint directory, and nothing else beside it.
  EXPECT_EQ(Entries(scratch.path()), std::vector<std::string>{"carved"});
  for (const char* file :
       {"config.json", "model.safetensors", "carve_report.json", "carve_report.html"}) {
    EXPECT_TRUE(IsFile(out + "/" + file)) << file;
  }
  // The tokenizer files of the dense model, byte for byte.
  int tokenizer_files = 0;
  for (const char* file : {"tokenizer.json", "tokenizer.model", "tokenizer_config.json",
                           "special_tokens_map.json", "generation_config.json"}) {
    if (!IsFile(Tinystories() + "/" + file)) continue;
    ++tokenizer_files;
    ASSERT_TRUE(IsFile(out + "/" + file)) << file << " not copied";
    EXPECT_TRUE(ReadBytes(out + "/" + file) == ReadBytes(Tinystories() + "/" + file)) << file;
  }
  EXPECT_GE(tokenizer_files, 1);

  const Json config = ReadJsonFile(out + "/config.json");
  ASSERT_TRUE(config.contains("cmoe") && config["cmoe"].is_object()) << config.dump(2);
  const Json& cmoe = config["cmoe"];
  EXPECT_EQ(cmoe.value("name", ""), "S2A2E8");
  EXPECT_EQ(cmoe.value("num_experts", 0), 8);
  EXPECT_EQ(cmoe.value("num_shared_experts", 0), 2);
  EXPECT_EQ(cmoe.value("num_activated_experts", 0), 2);
  const Json dense = ReadJsonFile(Tinystories() + "/config.json");
  for (const char* field :
       {"hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"}) {
    EXPECT_EQ(config[field], dense[field]) << field;
  }
  EXPECT_GT(fs::file_size(out + "/model.safetensors"), 100000u);

  const Json report = ReadJsonFile(out + "/carve_report.json");
  ASSERT_TRUE(report.is_object());
  EXPECT_EQ(report.value("config_name", ""), "S2A2E8");
  EXPECT_EQ(report.value("num_layers", int64_t{0}), layers);
  EXPECT_EQ(report.value("calib_tokens", int64_t{0}), 128);
  const std::string html = ReadBytes(out + "/carve_report.html");
  EXPECT_THAT(html, HasSubstr("<html"));
  EXPECT_THAT(html, HasSubstr("S2A2E8"));

  // stderr: one "layer i/L: ... assignment cost C" line per layer, in order, C as in the report.
  std::vector<std::string> progress;
  std::istringstream lines(r.err);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("layer ", 0) == 0) progress.push_back(line);
  }
  ASSERT_EQ(static_cast<int64_t>(progress.size()), layers) << r.err;
  const std::regex pattern(R"(^layer (\d+)/(\d+): .*assignment cost (\d+)$)");
  for (int64_t i = 0; i < layers; ++i) {
    std::smatch m;
    ASSERT_TRUE(std::regex_match(progress[i], m, pattern)) << progress[i];
    EXPECT_EQ(std::stoll(m[1]), i + 1) << progress[i];
    EXPECT_EQ(std::stoll(m[2]), layers) << progress[i];
    if (report.contains("layers") && report["layers"].is_array() &&
        static_cast<int64_t>(report["layers"].size()) == layers) {
      EXPECT_EQ(std::stoll(m[3]), report["layers"][i].value("assignment_cost", int64_t{-1}))
          << progress[i];
    }
  }
}

TEST(CmoeCarveTest, TextOutputNamesTheCarveAndTheReport) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  const SubprocessResult r = Carve(out, {"--config", "S2A2E8"});
  EXPECT_THAT(r.out, StartsWith("carved "));
  EXPECT_THAT(r.out, HasSubstr("S2A2E8"));
  EXPECT_THAT(r.out, HasSubstr(out + "/carve_report.html"));
}

// The carve evaluates on text it did not calibrate on; with every routed expert active (K = N_r)
// the carved FFN is the dense FFN again, so the perplexity is the dense one.
TEST(CmoeCarveTest, CarvedCheckpointEvaluatesAndEqualsDenseWithAllExpertsActive) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);

  const Json carved = EvalJson(out);
  ASSERT_TRUE(carved.is_object());
  EXPECT_EQ(carved.value("cmoe", ""), "S2A2E8");
  EXPECT_EQ(carved.value("active_experts", 0), 2);
  EXPECT_EQ(carved.value("windows", 0), 2);
  ASSERT_TRUE(carved.contains("ppl") && carved["ppl"].is_number());
  const double ppl_carved = carved["ppl"].get<double>();
  EXPECT_TRUE(std::isfinite(ppl_carved) && ppl_carved > 1.0) << ppl_carved;

  const Json dense = EvalJson(Tinystories());
  ASSERT_TRUE(dense.is_object());
  EXPECT_FALSE(dense.contains("cmoe")) << dense;
  const double ppl_dense = dense.value("ppl", 0.0);
  ASSERT_GT(ppl_dense, 1.0);

  const Json all = EvalJson(out, {"--active-experts", "6"});
  ASSERT_TRUE(all.is_object());
  EXPECT_EQ(all.value("cmoe", ""), "S2A2E8");
  EXPECT_EQ(all.value("active_experts", 0), 6);
  EXPECT_NEAR(all.value("activation_ratio", 0.0), 1.0, 1e-9);
  EXPECT_NEAR(all.value("ppl", 0.0), ppl_dense, 1e-4 * ppl_dense)
      << "K = N_r must reproduce the dense model";
  EXPECT_EQ(all.value("tokens_scored", 0), dense.value("tokens_scored", -1));
  // Otherwise the comparison above would prove nothing: 2 of 6 routed experts is not dense.
  EXPECT_GT(std::abs(ppl_carved - ppl_dense), 1e-3 * ppl_dense);

  // --text-range is honoured: another range gives another perplexity.
  std::vector<std::string> other{
      "ppl",           "--model",       out, "--text", ValText(), "--text-range",
      "300000:400000", "--max-windows", "2", "--json"};
  const SubprocessResult r = RunTool("cmoe-eval", other);
  ASSERT_TRUE(Succeeded(r));
  EXPECT_NE(StdoutJson(r).value("ppl", 0.0), ppl_carved);
}

TEST(CmoeCarveTest, CarvedCheckpointGenerates) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);

  const SubprocessResult text =
      RunTool("cmoe-generate", {"--model", out, "--active-experts", "1", "--max-new-tokens", "8"});
  ASSERT_TRUE(Succeeded(text));
  EXPECT_THAT(text.out, StartsWith(kPrompt));
  EXPECT_GT(text.out.size(), std::string(kPrompt).size() + 1) << text.out;

  const SubprocessResult json = RunTool(
      "cmoe-generate",
      {"--model", out, "--active-experts", "1", "--max-new-tokens", "8", "--ignore-eos", "--json"});
  ASSERT_TRUE(Succeeded(json));
  const Json j = StdoutJson(json);
  ASSERT_TRUE(j.is_object());
  EXPECT_EQ(j["token_ids"].size(), 8u);

  ExpectToolError(
      RunTool("cmoe-generate", {"--model", out, "--active-experts", "7", "--max-new-tokens", "2"}),
      "cmoe-generate", {"7", "[1, 6]"});
  ExpectToolError(RunTool("cmoe-generate", {"--model", Tinystories(), "--active-experts", "1",
                                            "--max-new-tokens", "2"}),
                  "cmoe-generate", {"dense"});
}

// cmoe-bench decode --expert-parallel on a carved checkpoint: the model on one backend, over a
// world of one and over three CPU ranks, in one run. The ranks decode the same sequences as the
// single backend (5 sequences: 2, 2 and 1 per rank), so the experts their tokens touch are the
// same; only the group reports what parallelism costs per carved layer.
TEST(CmoeBenchExpertParallelTest, ComparesGroupsThatRouteLikeOneBackend) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);
  const SubprocessResult r =
      RunTool("cmoe-bench", {"decode", "--model", out, "--expert-parallel", "1,3", "--batch", "5",
                             "--tokens", "6", "--threads", "3", "--bandwidth-mib", "16", "--json"});
  ASSERT_TRUE(Succeeded(r));
  const Json j = StdoutJson(r);
  ASSERT_TRUE(j.is_object() && j.contains("models")) << r.out;
  EXPECT_EQ(j.value("batch", 0), 5);
  const Json& models = j["models"];
  ASSERT_EQ(models.size(), 3u) << j;
  EXPECT_EQ(models[0].value("ranks", 0), 1);
  EXPECT_FALSE(models[0].contains("expert_parallel"));
  EXPECT_EQ(models[1].value("ranks", 0), 1);
  EXPECT_EQ(models[2].value("ranks", 0), 3);
  EXPECT_THAT(models[2].value("model", ""), HasSubstr("expert-parallel x3"));
  for (size_t i = 1; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_TRUE(models[i].value("expert_parallel", false));
    ASSERT_TRUE(models[i].contains("step_delta_us_per_carved_layer"));
    EXPECT_GT(models[i].value("tokens_per_second", 0.0), 0.0);
    EXPECT_DOUBLE_EQ(models[i].value("experts_touched_per_layer", -1.0),
                     models[0].value("experts_touched_per_layer", -2.0));
    EXPECT_DOUBLE_EQ(models[i].value("ffn_activation_ratio", -1.0),
                     models[0].value("ffn_activation_ratio", -2.0));
  }
  // A world of one reads what one backend reads; a real group has no single figure for it.
  EXPECT_DOUBLE_EQ(models[1].value("weight_bytes_per_step", -1.0),
                   models[0].value("weight_bytes_per_step", -2.0));
  EXPECT_FALSE(models[2].contains("weight_bytes_per_step"));
  // The comparison above means something only when a step's tokens spread over more experts
  // than one token's k = 2 (5 sequences over 6 routed experts).
  EXPECT_GT(models[0].value("experts_touched_per_layer", 0.0), 2.0);
}

TEST(CmoeBenchExpertParallelTest, RejectsBadGroupSizesAndADenseModel) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);
  for (const char* bad : {"0", "65", "2,x"}) {
    SCOPED_TRACE(bad);
    ExpectToolError(RunTool("cmoe-bench",
                            {"decode", "--model", out, "--expert-parallel", bad, "--tokens", "2"}),
                    "cmoe-bench", {"--expert-parallel", bad});
  }
  ExpectToolError(RunTool("cmoe-bench", {"decode", "--model", Tinystories(), "--expert-parallel",
                                         "2", "--tokens", "2"}),
                  "cmoe-bench", {"dense"});
}

// ---------------------------------------------------------------------------------------------
// Config spellings and determinism

TEST(CmoeCarveTest, ExplicitSizesEqualTheConfigName) {
  ScratchDir scratch;
  const std::string a = scratch.Join("by_name"), b = scratch.Join("by_sizes"),
                    c = scratch.Join("both");
  ASSERT_EQ(Carve(a, {"--config", "S2A2E8"}).exit_code, 0);
  ASSERT_EQ(Carve(b, {"--experts", "8", "--shared", "2", "--active", "2"}).exit_code, 0);
  // Both forms at once are fine when they agree.
  ASSERT_EQ(Carve(c, {"--config", "S2A2E8", "--experts", "8", "--shared", "2"}).exit_code, 0);
  const std::string bytes = ReadBytes(a + "/model.safetensors");
  ASSERT_GT(bytes.size(), 100000u);
  EXPECT_TRUE(bytes == ReadBytes(b + "/model.safetensors"));
  EXPECT_TRUE(bytes == ReadBytes(c + "/model.safetensors"));
  EXPECT_EQ(ReadJsonFile(b + "/config.json")["cmoe"].value("name", ""), "S2A2E8");
}

TEST(CmoeCarveTest, SameSeedGivesIdenticalBytesWhateverTheThreadsAndAnotherSeedDoesNot) {
  ScratchDir scratch;
  const std::string a = scratch.Join("a"), b = scratch.Join("b"), c = scratch.Join("c");
  ASSERT_EQ(Carve(a, {"--config", "S2A2E8", "--seed", "0", "--threads", "1"}).exit_code, 0);
  ASSERT_EQ(Carve(b, {"--config", "S2A2E8", "--seed", "0", "--threads", "2"}).exit_code, 0);
  ASSERT_EQ(Carve(c, {"--config", "S2A2E8", "--seed", "1"}).exit_code, 0);
  const std::string bytes = ReadBytes(a + "/model.safetensors");
  ASSERT_GT(bytes.size(), 100000u);
  EXPECT_TRUE(bytes == ReadBytes(b + "/model.safetensors")) << "seed 0 twice differs";
  const std::string other = ReadBytes(c + "/model.safetensors");
  EXPECT_EQ(bytes.size(), other.size());
  EXPECT_FALSE(bytes == other) << "seeds 0 and 1 drew the same calibration windows?";
}

TEST(CmoeCarveTest, AcceptsALowerCaseConfig) {
  ScratchDir scratch;
  const std::string upper = scratch.Join("upper"), lower = scratch.Join("lower");
  ASSERT_EQ(Carve(upper, {"--config", "S2A2E8"}).exit_code, 0);
  const SubprocessResult r = Carve(lower, {"--config", "s2a2e8", "--json"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(StdoutJson(r).value("config", ""), "S2A2E8");
  EXPECT_EQ(ReadJsonFile(lower + "/config.json")["cmoe"].value("name", ""), "S2A2E8");
  EXPECT_TRUE(ReadBytes(upper + "/model.safetensors") == ReadBytes(lower + "/model.safetensors"));
}

// ---------------------------------------------------------------------------------------------
// Bad input: exit 1, the problem named, nothing created

TEST(CmoeCarveTest, RequiresModelCalibAndOut) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  ExpectCarveRefused(scratch, {"--calib", ValText(), "--out", out, "--config", "S2A2E8"},
                     {"--model", "required"});
  ExpectCarveRefused(scratch, {"--model", Tinystories(), "--out", out, "--config", "S2A2E8"},
                     {"--calib", "required"});
  ExpectCarveRefused(scratch,
                     {"--model", Tinystories(), "--calib", ValText(), "--config", "S2A2E8"},
                     {"--out", "required"});
}

TEST(CmoeCarveTest, RejectsMalformedConfigNames) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  for (const char* bad : {"S2A2", "SxAyEz", "S2A2E8X", "E8"}) {
    ExpectCarveRefused(scratch, CarveArgs(out, {"--config", bad}),
                       {"--config", std::string("'") + bad + "'"});
  }
}

TEST(CmoeCarveTest, RejectsImpossibleConfigs) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  // S + K > N.
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S4A5E8"}),
                     {"S4A5E8", "num_shared + num_activated"});
  // More experts than the 384 FFN neurons.
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S0A1E1000"}), {"S0A1E1000", "384"});
  // Every expert shared: nothing to route.
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S1A1E1"}), {"S1A1E1", "routed"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A0E8"}), {"S2A0E8"});
}

TEST(CmoeCarveTest, RejectsIncompleteOrConflictingSizes) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  ExpectCarveRefused(scratch, CarveArgs(out, {}), {"--config"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--experts", "8"}), {"--shared", "--active"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--experts", "8", "--shared", "2"}), {"--active"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--experts", "16"}),
                     {"S2A2E8", "--experts"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--active", "3"}),
                     {"S2A2E8", "--active"});
}

TEST(CmoeCarveTest, RejectsBadAlgorithmFlags) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  const auto with = [&](std::vector<std::string> extra) {
    extra.insert(extra.begin(), {"--config", "S2A2E8"});
    return CarveArgs(out, extra);
  };
  ExpectCarveRefused(scratch, with({"--score", "foo"}), {"--score", "'foo'"});
  ExpectCarveRefused(scratch, with({"--router", "foo"}), {"--router", "'foo'"});
  // These two name the setting with an underscore ("cluster_iters = 0"); either spelling is fine.
  {
    const SubprocessResult r = RunTool("cmoe-carve", with({"--cluster-iters", "0"}));
    ExpectToolError(r, "cmoe-carve", {});
    EXPECT_THAT(r.err, ContainsRegex("cluster[-_]iters"));
  }
  {
    const SubprocessResult r = RunTool("cmoe-carve", with({"--k-act", "0"}));
    ExpectToolError(r, "cmoe-carve", {});
    EXPECT_THAT(r.err, ContainsRegex("k[-_]act"));
  }
  ExpectCarveRefused(scratch, with({"--k-act", "385"}), {"385"});
  ExpectCarveRefused(scratch, with({"--balance-bias", "-1"}), {"--balance-bias"});
  ExpectCarveRefused(scratch, with({"--balance-bias", "2"}), {"--balance-bias"});
  ExpectCarveRefused(scratch, with({"--device", "tpu"}), {"'tpu'"});
  EXPECT_FALSE(fs::exists(out));
  ExpectNoStaging(scratch.path());
}

TEST(CmoeCarveTest, RejectsBadCalibrationFlags) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--calib-seqs", "0"}),
                     {"--calib-seqs"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--calib-len", "0"}),
                     {"--calib-len"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--calib-range", "10:5"}),
                     {"'10:5'", "empty"});
  ExpectCarveRefused(scratch, CarveArgs(out, {"--config", "S2A2E8", "--calib-range", "abc"}),
                     {"'abc'"});
  // A range past the end of the file names the file's size.
  const std::string size = std::to_string(fs::file_size(ValText()));
  ExpectCarveRefused(scratch,
                     CarveArgs(out, {"--config", "S2A2E8", "--calib-range", "900000:1000000"}),
                     {"900000", size});
}

TEST(CmoeCarveTest, NamesAMissingOrEmptyCalibFile) {
  ScratchDir scratch;
  const std::string out = scratch.Join("out");
  ExpectCarveRefused(scratch,
                     CarveArgsFrom(Tinystories(), scratch.Join("no_such_calib.txt"), kCalibRange,
                                   out, {"--config", "S2A2E8"}),
                     {"no_such_calib.txt"});
  const std::string empty = scratch.Join("empty_calib.txt");
  WriteFile(empty, "");
  // ":" is the whole (empty) file.
  ExpectCarveRefused(scratch, CarveArgsFrom(Tinystories(), empty, ":", out, {"--config", "S2A2E8"}),
                     {"empty_calib.txt", "empty"});
}

TEST(CmoeCarveTest, RejectsACalibRangeShorterThanOneWindow) {
  ScratchDir scratch;
  // 100 bytes are some 20 tokens; a window is 512 (the --calib-len given later wins).
  ExpectCarveRefused(scratch,
                     CarveArgsFrom(Tinystories(), ValText(), "0:100", scratch.Join("out"),
                                   {"--config", "S2A2E8", "--calib-len", "512"}),
                     {"tokens", "512"});
}

TEST(CmoeCarveTest, RefusesToCarveACarvedModel) {
  ScratchDir scratch;
  const std::string carved = scratch.Join("carved");
  ASSERT_EQ(Carve(carved, {"--config", "S2A2E8"}).exit_code, 0);
  ExpectCarveRefused(scratch, CarveArgs(scratch.Join("out"), {"--config", "S2A2E8"}, carved),
                     {"already carved"});
}

TEST(CmoeCarveTest, RefusesANonEmptyOutWithoutForce) {
  ScratchDir scratch;
  const std::string out = scratch.Join("busy");
  fs::create_directories(out);
  WriteFile(out + "/marker.txt", "mine");
  const SubprocessResult r = RunTool("cmoe-carve", CarveArgs(out, {"--config", "S2A2E8"}));
  ExpectToolError(r, "cmoe-carve", {out, "--force"});
  EXPECT_EQ(Entries(out), std::vector<std::string>{"marker.txt"});
  EXPECT_EQ(ReadBytes(out + "/marker.txt"), "mine");
  ExpectNoStaging(scratch.path());

  // An existing checkpoint is not replaced without --force either.
  const std::string carved = scratch.Join("carved");
  ASSERT_EQ(Carve(carved, {"--config", "S2A2E8"}).exit_code, 0);
  const std::string before = ReadBytes(carved + "/model.safetensors");
  ExpectToolError(RunTool("cmoe-carve", CarveArgs(carved, {"--config", "S2A2E8", "--seed", "1"})),
                  "cmoe-carve", {carved, "--force"});
  EXPECT_TRUE(ReadBytes(carved + "/model.safetensors") == before);
  ExpectNoStaging(scratch.path());

  // An existing empty directory is fine.
  const std::string empty = scratch.Join("empty");
  fs::create_directories(empty);
  ASSERT_EQ(Carve(empty, {"--config", "S2A2E8"}).exit_code, 0);
  EXPECT_TRUE(IsFile(empty + "/model.safetensors"));
}

TEST(CmoeCarveTest, ForceReplacesACarvedCheckpoint) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved"), reference = scratch.Join("reference");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);
  WriteFile(out + "/stale.txt", "from the first carve");
  ASSERT_EQ(Carve(reference, {"--config", "S1A1E4", "--seed", "3"}).exit_code, 0);

  ASSERT_EQ(Carve(out, {"--config", "S1A1E4", "--seed", "3", "--force"}).exit_code, 0);
  EXPECT_EQ(ReadJsonFile(out + "/config.json")["cmoe"].value("name", ""), "S1A1E4");
  EXPECT_TRUE(ReadBytes(out + "/model.safetensors") == ReadBytes(reference + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + "/stale.txt")) << "--force replaces the directory, not merges";
  EXPECT_EQ(Entries(scratch.path()), (std::vector<std::string>{"carved", "reference"}));
}

TEST(CmoeCarveTest, ForceDoesNotReplaceADirThatIsNotACheckpoint) {
  ScratchDir scratch;
  const std::string out = scratch.Join("home");
  fs::create_directories(out);
  WriteFile(out + "/notes.txt", "precious");
  const SubprocessResult r =
      RunTool("cmoe-carve", CarveArgs(out, {"--config", "S2A2E8", "--force"}));
  ExpectToolError(r, "cmoe-carve", {out, "config.json"});
  EXPECT_EQ(Entries(out), std::vector<std::string>{"notes.txt"});
  EXPECT_EQ(ReadBytes(out + "/notes.txt"), "precious");
  EXPECT_EQ(Entries(scratch.path()), std::vector<std::string>{"home"});

  // Nor a plain file.
  const std::string file = scratch.Join("file");
  WriteFile(file, "data");
  ExpectToolError(RunTool("cmoe-carve", CarveArgs(file, {"--config", "S2A2E8", "--force"})),
                  "cmoe-carve", {file});
  EXPECT_EQ(ReadBytes(file), "data");
  ExpectNoStaging(scratch.path());
}

// --out naming the input model, however spelled, is refused even with --force. A writable copy
// of the model makes sure the refusal, not file permissions, is what protects it.
TEST(CmoeCarveTest, RefusesToWriteOverTheModelDir) {
  ScratchDir scratch;
  const std::string dense = scratch.Join("dense");
  fs::copy(Tinystories(), dense, fs::copy_options::recursive);
  fs::permissions(dense, fs::perms::owner_all, fs::perm_options::add);
  const std::vector<std::string> before = Entries(dense);
  const std::string weights = ReadBytes(dense + "/model.safetensors");
  ASSERT_GT(weights.size(), 100000u);
  for (const std::string& out : {dense, dense + "/", scratch.path() + "/./dense"}) {
    for (const bool force : {false, true}) {
      std::vector<std::string> extra{"--config", "S2A2E8"};
      if (force) extra.push_back("--force");
      const SubprocessResult r = RunTool("cmoe-carve", CarveArgs(out, extra, dense));
      SCOPED_TRACE(out + (force ? " --force" : ""));
      ExpectToolError(r, "cmoe-carve", {"--out"});
      EXPECT_THAT(r.err, HasSubstr("model dir"));
    }
  }
  EXPECT_EQ(Entries(dense), before);
  EXPECT_TRUE(ReadBytes(dense + "/model.safetensors") == weights);
  EXPECT_EQ(Entries(scratch.path()), std::vector<std::string>{"dense"});
}

TEST(CmoeCarveTest, RejectsAStrayPositionalArgument) {
  ScratchDir scratch;
  std::vector<std::string> args = CarveArgs(scratch.Join("out"), {"--config", "S2A2E8"});
  args.push_back("stray");
  ExpectCarveRefused(scratch, args, {"'stray'"});
}

TEST(CmoeCarveTest, RejectsAnUnknownFlag) {
  ScratchDir scratch;
  const SubprocessResult r =
      RunTool("cmoe-carve", CarveArgs(scratch.Join("out"), {"--config", "S2A2E8", "--bogus", "1"}));
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_THAT(r.err, HasSubstr("bogus"));
  EXPECT_FALSE(fs::exists(scratch.Join("out")));
  ExpectNoStaging(scratch.path());
}

// ---------------------------------------------------------------------------------------------
// cmoe-eval: --active-experts and --text-range

TEST(CmoeEvalCarveFlagsTest, ActiveExpertsOnADenseModelIsAnError) {
  const SubprocessResult r =
      RunTool("cmoe-eval", {"ppl", "--model", Tinystories(), "--text", ValText(), "--text-range",
                            kEvalRange, "--max-windows", "1", "--active-experts", "2"});
  ExpectToolError(r, "cmoe-eval", {"dense"});
  EXPECT_THAT(r.err, ContainsRegex("num_activated_experts|active[-_]experts"));
  EXPECT_THAT(r.out, IsEmpty());
}

TEST(CmoeEvalCarveFlagsTest, ActiveExpertsOutsideTheRoutedRangeIsAnError) {
  ScratchDir scratch;
  const std::string out = scratch.Join("carved");
  ASSERT_EQ(Carve(out, {"--config", "S2A2E8"}).exit_code, 0);
  const auto eval = [&](const char* k) {
    return RunTool("cmoe-eval", {"ppl", "--model", out, "--text", ValText(), "--text-range",
                                 kEvalRange, "--max-windows", "1", "--active-experts", k});
  };
  const SubprocessResult seven = eval("7");
  ExpectToolError(seven, "cmoe-eval", {"7", "[1, 6]"});
  EXPECT_THAT(seven.out, IsEmpty());
  ExpectToolError(eval("-1"), "cmoe-eval", {"--active-experts"});
  // The edges of the range work.
  EXPECT_TRUE(Succeeded(eval("1")));
  EXPECT_TRUE(Succeeded(eval("6")));
}

TEST(CmoeEvalCarveFlagsTest, TextRangeMustFitTheFile) {
  const std::string size = std::to_string(fs::file_size(ValText()));
  const auto eval = [&](const char* range) {
    return RunTool("cmoe-eval", {"ppl", "--model", Tinystories(), "--text", ValText(),
                                 "--text-range", range, "--max-windows", "1"});
  };
  for (const char* range : {"900000:1000000", "0:900000"}) {
    SCOPED_TRACE(range);
    const SubprocessResult r = eval(range);
    ExpectToolError(r, "cmoe-eval", {"--text-range", range, size});
    EXPECT_THAT(r.out, IsEmpty());
  }
  ExpectToolError(eval("300000:200000"), "cmoe-eval", {"300000:200000"});
  ExpectToolError(eval("abc"), "cmoe-eval", {"'abc'"});
  // A range that fits but holds less than one window of the model's 512-token context.
  ExpectToolError(eval("0:100"), "cmoe-eval", {"window"});
}

}  // namespace
}  // namespace cmoe::testing
