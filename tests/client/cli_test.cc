// cmoe-cli end to end: cmoe-serve runs as a child process on a free port with the shared
// tinystories-656k model, and cmoe-cli runs against it as a subprocess.
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::testing {
namespace {

using ::testing::HasSubstr;

constexpr char kModel[] = "tinystories-656k";

class CliTest : public SharedServerTest {
 protected:
  static void SetUpTestSuite() { StartSharedServer(SharedModel(kModel)); }
  static void TearDownTestSuite() { StopSharedServer(); }
  void SetUp() override { RequireSharedServer(); }

  static std::string Target() { return "127.0.0.1:" + std::to_string(server_->port()); }

  // cmoe-cli --target <server> <args...>
  static SubprocessResult Cli(std::vector<std::string> args) {
    args.insert(args.begin(), {"--target", Target()});
    return RunTool("cmoe-cli", args);
  }
};

const std::vector<std::string> kGreedy = {
    "--prompt", "Once upon a time", "--max-new-tokens", "12", "--temperature", "0", "--ignore-eos"};

std::vector<std::string> With(std::vector<std::string> a, const std::vector<std::string>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST_F(CliTest, GenerateJsonAndStreamAgree) {
  const SubprocessResult g = Cli(With({"generate", "--json"}, kGreedy));
  ASSERT_TRUE(Succeeded(g));
  const Json j = StdoutJson(g);
  EXPECT_EQ(j["finish_reason"], "length");
  ASSERT_TRUE(j["token_ids"].is_array());
  EXPECT_EQ(j["token_ids"].size(), 12u);
  EXPECT_EQ(j["usage"]["generated_tokens"], 12);
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 1);
  EXPECT_TRUE(j["timings"].contains("total_ms"));
  const std::string text = j["text"].get<std::string>();
  EXPECT_FALSE(text.empty());

  // Plain generate prints the text and a newline.
  const SubprocessResult plain = Cli(With({"generate"}, kGreedy));
  ASSERT_TRUE(Succeeded(plain));
  EXPECT_EQ(plain.out, text + "\n");

  // The stream's deltas add up to the same text; a summary line goes to stderr.
  const SubprocessResult s = Cli(With({"stream"}, kGreedy));
  ASSERT_TRUE(Succeeded(s));
  EXPECT_EQ(s.out, text + "\n");
  EXPECT_THAT(s.err, HasSubstr("finish_reason=length"));
  EXPECT_THAT(s.err, HasSubstr("generated_tokens=12"));

  const SubprocessResult sj = Cli(With({"stream", "--json"}, kGreedy));
  ASSERT_TRUE(Succeeded(sj));
  const Json stream = StdoutJson(sj);
  EXPECT_EQ(stream["text"], text);
  EXPECT_EQ(stream["token_ids"], j["token_ids"]);
  EXPECT_EQ(stream["finish_reason"], "length");
  EXPECT_EQ(stream["usage"]["generated_tokens"], 12);
  EXPECT_TRUE(stream["timings"].contains("time_to_first_token_ms"));
}

TEST_F(CliTest, LogprobsJsonAndText) {
  for (const char* command : {"generate", "stream"}) {
    SCOPED_TRACE(command);
    const SubprocessResult g = Cli(With({command, "--json", "--logprobs", "3"}, kGreedy));
    ASSERT_TRUE(Succeeded(g));
    const Json j = StdoutJson(g);
    ASSERT_TRUE(j["logprobs"].is_array()) << j.dump();
    ASSERT_EQ(j["logprobs"].size(), 12u);
    ASSERT_EQ(j["token_ids"].size(), 12u);
    for (size_t i = 0; i < 12; ++i) {
      SCOPED_TRACE(i);
      const Json& lp = j["logprobs"][i];
      EXPECT_EQ(lp["token_id"], j["token_ids"][i]);
      EXPECT_FALSE(lp["piece"].get<std::string>().empty());
      EXPECT_LE(lp["logprob"].get<double>(), 0.0);
      ASSERT_EQ(lp["top_logprobs"].size(), 3u);
      EXPECT_EQ(lp["top_logprobs"][0]["token_id"], lp["token_id"]);  // greedy: the most likely
      EXPECT_EQ(lp["top_logprobs"][0]["logprob"], lp["logprob"]);
      EXPECT_GE(lp["top_logprobs"][1]["logprob"].get<double>(),
                lp["top_logprobs"][2]["logprob"].get<double>());
    }
    // Without the flag there is no logprobs key.
    const SubprocessResult plain = Cli(With({command, "--json"}, kGreedy));
    ASSERT_TRUE(Succeeded(plain));
    EXPECT_FALSE(StdoutJson(plain).contains("logprobs"));
    // Text mode: stdout is the text alone; one line per token on stderr.
    const SubprocessResult text = Cli(With({command, "--logprobs", "0"}, kGreedy));
    ASSERT_TRUE(Succeeded(text));
    EXPECT_EQ(text.out, j["text"].get<std::string>() + "\n");
    size_t lines = 0;
    for (size_t at = text.err.find("cmoe-cli: logprob "); at != std::string::npos;
         at = text.err.find("cmoe-cli: logprob ", at + 1)) {
      ++lines;
    }
    EXPECT_EQ(lines, 12u) << text.err;
  }
  ExpectToolError(Cli(With({"generate", "--logprobs", "-2"}, kGreedy)), "cmoe-cli", {"--logprobs"});
  ExpectToolError(Cli(With({"generate", "--logprobs", "21"}, kGreedy)), "cmoe-cli",
                  {"INVALID_ARGUMENT", "top_logprobs"});
}

TEST_F(CliTest, TokenizeAndInfo) {
  const SubprocessResult t = Cli({"tokenize", "--text", "Once upon a time", "--json"});
  ASSERT_TRUE(Succeeded(t));
  const Json tj = StdoutJson(t);
  ASSERT_TRUE(tj["token_ids"].is_array());
  EXPECT_GT(tj["token_ids"].size(), 1u);
  EXPECT_EQ(tj["pieces"].size(), tj["token_ids"].size());

  const SubprocessResult i = Cli({"info", "--json"});
  ASSERT_TRUE(Succeeded(i));
  const Json ij = StdoutJson(i);
  EXPECT_EQ(ij["model_name"], kModel);
  EXPECT_EQ(ij["vocab_size"], 2048);
  EXPECT_EQ(ij["hidden_size"], 128);
  EXPECT_EQ(ij["num_hidden_layers"], 2);
  EXPECT_EQ(ij["context_length"], 512);
  EXPECT_TRUE(ij["cmoe"].is_null());
  EXPECT_EQ(ij["max_top_logprobs"], 20);
  EXPECT_EQ(tj["token_ids"][0], ij["bos_token_id"]);

  const SubprocessResult plain = Cli({"info"});
  ASSERT_TRUE(Succeeded(plain));
  EXPECT_THAT(plain.out, HasSubstr("tinystories-656k"));
}

TEST_F(CliTest, Health) {
  const SubprocessResult h = Cli({"health"});
  ASSERT_TRUE(Succeeded(h));
  EXPECT_EQ(h.out, "SERVING\n");

  const SubprocessResult named = Cli({"health", "--service", "cmoe.v1.Inference"});
  ASSERT_TRUE(Succeeded(named));
  EXPECT_EQ(named.out, "SERVING\n");

  const int port = FreePort();
  ASSERT_GT(port, 0);
  const SubprocessResult dead = RunTool(
      "cmoe-cli", {"--target", "127.0.0.1:" + std::to_string(port), "health", "--timeout", "3"});
  ExpectToolError(dead, "cmoe-cli", {"UNAVAILABLE"});
  EXPECT_EQ(dead.out, "");

  const SubprocessResult dead_generate = RunTool(
      "cmoe-cli", {"--target", "127.0.0.1:" + std::to_string(port), "generate", "--timeout", "3"});
  ExpectToolError(dead_generate, "cmoe-cli", {"UNAVAILABLE"});
}

TEST_F(CliTest, BenchJson) {
  const SubprocessResult b =
      Cli({"bench", "--concurrency", "4", "--requests", "8", "--max-new-tokens", "8", "--json"});
  ASSERT_TRUE(Succeeded(b));
  const Json j = StdoutJson(b);
  EXPECT_EQ(j["requests"], 8);
  EXPECT_EQ(j["ok"], 8);
  EXPECT_TRUE(j["errors"].is_object());
  EXPECT_TRUE(j["errors"].empty()) << j["errors"].dump();
  EXPECT_TRUE(j["error_messages"].is_object() && j["error_messages"].empty())
      << j["error_messages"].dump();
  EXPECT_EQ(j["generated_tokens"], 64);
  EXPECT_GT(j["tokens_per_second"].get<double>(), 0.0);
  EXPECT_GT(j["requests_per_second"].get<double>(), 0.0);
  for (const char* key : {"ttft_ms", "itl_ms", "e2e_ms"}) {
    SCOPED_TRACE(key);
    const Json& s = j[key];
    ASSERT_TRUE(s.is_object()) << j.dump();
    const double p50 = s["p50"].get<double>();
    const double p90 = s["p90"].get<double>();
    const double p99 = s["p99"].get<double>();
    EXPECT_GE(p50, 0.0);
    EXPECT_LE(p50, p90);
    EXPECT_LE(p90, p99);
  }
  EXPECT_EQ(j["ttft_ms"]["count"], 8);
  EXPECT_EQ(j["itl_ms"]["count"], 8 * 7);
  EXPECT_LE(j["ttft_ms"]["p99"].get<double>(), j["e2e_ms"]["p99"].get<double>());

  // The text report.
  const SubprocessResult text = Cli(
      {"bench", "--concurrency", "2", "--requests", "2", "--max-new-tokens", "4", "--rate", "20"});
  ASSERT_TRUE(Succeeded(text));
  EXPECT_THAT(text.out, HasSubstr("requests 2 (ok 2, errors 0)"));
  EXPECT_THAT(text.out, HasSubstr("ttft_ms"));
}

TEST_F(CliTest, BadFlagsNameTheFlag) {
  ExpectToolError(Cli({"bench", "--concurrency", "0", "--requests", "8"}), "cmoe-cli",
                  {"--concurrency"});
  ExpectToolError(Cli({"bench", "--concurrency", "2"}), "cmoe-cli", {"--requests"});
  ExpectToolError(Cli({"tokenize"}), "cmoe-cli", {"--text"});
  ExpectToolError(Cli({"frobnicate"}), "cmoe-cli", {"frobnicate"});
  ExpectToolError(Cli({}), "cmoe-cli", {"subcommand"});
  ExpectToolError(Cli({"generate", "--max-new-tokens", "-3"}), "cmoe-cli", {"--max-new-tokens"});

  // Abseil rejects unknown flags and malformed values before the tool runs (exit 1).
  const SubprocessResult unknown = Cli({"generate", "--no-such-flag", "1"});
  EXPECT_EQ(unknown.exit_code, 1);
  EXPECT_THAT(unknown.err, HasSubstr("no-such-flag"));
  const SubprocessResult bad_value = Cli({"generate", "--top-k", "many"});
  EXPECT_EQ(bad_value.exit_code, 1);
  EXPECT_THAT(bad_value.err, HasSubstr("top_k"));

  // A server-side validation error comes back with its code.
  ExpectToolError(Cli({"generate", "--top-p", "2"}), "cmoe-cli", {"INVALID_ARGUMENT", "top_p"});
}

}  // namespace
}  // namespace cmoe::testing
