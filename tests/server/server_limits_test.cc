// cmoe-serve under load and at its limits, end to end (a child process on a loopback port, as in
// server_test): 64 concurrent greedy streams equal the same requests run alone; a full waiting
// queue answers RESOURCE_EXHAUSTED; cancelled, expired and time-limited generations give their
// KV-cache blocks back (the gauges on /metrics return to 0).
//
// The limit tests need generations that outlive the test's waits by far, whatever the machine:
// the shared models decode a whole context in well under a second, so those tests serve a
// synthetic model (cmoe-synth: random weights, 16 layers of width 512, a 2048-token context) at
// about 5 ms per token, and end 2000-token generations (10 s alone) within a second or two. That
// they ended early, rather than ran out, is checked on the engine's token counter, not on the
// clock.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <latch>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_fixtures.h"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::server {
namespace {

using ::cmoe::testing::ParseSamples;
using ::cmoe::testing::Sample;
using ::cmoe::testing::Scrape;
using ::cmoe::testing::ServerProcess;
using ::cmoe::testing::Value;
using ::testing::HasSubstr;

using Samples = std::vector<Sample>;

constexpr auto kCallTimeout = std::chrono::seconds(60);

v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_new_tokens,
                                  bool ignore_eos = true) {
  v1::GenerateRequest r;
  r.set_text(prompt);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(ignore_eos);
  r.mutable_output()->set_return_token_ids(true);
  return r;
}

// One GenerateStream call, read message by message (server_test's RunStream reads a call to its
// end; these tests also stop half-way, cancel, and look at the single deltas). Cancels the call
// when dropped unfinished.
class Stream {
 public:
  Stream(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
         std::chrono::milliseconds timeout = kCallTimeout) {
    context_.set_deadline(std::chrono::system_clock::now() + timeout);
    reader_ = stub.GenerateStream(&context_, request);
  }
  ~Stream() {
    if (!finished_) {
      context_.TryCancel();
      Finish();
    }
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Reads until at least `n` tokens arrived; false when the stream ended first.
  bool ReadTokens(size_t n) {
    while (tokens_.size() < n) {
      if (!ReadMessage()) return false;
    }
    return true;
  }

  void Cancel() { context_.TryCancel(); }

  // Reads the rest of the stream; the call's status (once).
  grpc::Status Finish() {
    while (ReadMessage()) {
    }
    finished_ = true;
    return reader_->Finish();
  }

  const std::vector<std::string>& deltas() const { return deltas_; }
  std::string text() const {
    std::string all;
    for (const std::string& d : deltas_) all += d;
    return all;
  }
  const std::vector<int32_t>& tokens() const { return tokens_; }
  int finishes() const { return finishes_; }
  // The finish info came with the last message.
  bool finish_is_last() const { return finishes_ == 1 && finish_message_ == deltas_.size(); }
  const v1::FinishInfo& finish() const { return finish_; }

 private:
  bool ReadMessage() {
    v1::GenerateStreamResponse message;
    if (ended_ || !reader_->Read(&message)) {
      ended_ = true;
      return false;
    }
    deltas_.push_back(message.text());
    tokens_.insert(tokens_.end(), message.token_ids().begin(), message.token_ids().end());
    if (message.has_finish()) {
      ++finishes_;
      finish_ = message.finish();
      finish_message_ = deltas_.size();
    }
    return true;
  }

  grpc::ClientContext context_;
  std::unique_ptr<grpc::ClientReader<v1::GenerateStreamResponse>> reader_;  // after context_
  bool ended_ = false;
  bool finished_ = false;
  std::vector<std::string> deltas_;
  std::vector<int32_t> tokens_;
  int finishes_ = 0;
  size_t finish_message_ = 0;
  v1::FinishInfo finish_;
};

grpc::Status Generate(v1::Inference::Stub& stub, const v1::GenerateRequest& request,
                      v1::GenerateResponse* response,
                      std::chrono::milliseconds timeout = kCallTimeout) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  return stub.Generate(&context, request, response);
}

// --- /metrics ---

double Metric(const Samples& s, const std::string& name) { return Value(s, name).value_or(-1); }
double Running(const Samples& s) { return Metric(s, "cmoe_running_requests"); }
double Waiting(const Samples& s) { return Metric(s, "cmoe_waiting_requests"); }
double KvUsage(const Samples& s) { return Metric(s, "cmoe_kv_cache_usage_ratio"); }
bool Idle(const Samples& s) { return Running(s) == 0 && Waiting(s) == 0 && KvUsage(s) == 0; }

// Tokens the engine computed since the start (prefill and decode rows of every step).
double EngineTokens(const Samples& s) { return Metric(s, "cmoe_tokens_per_step_sum"); }

// Engine steps with more than `tokens` rows.
double StepsAbove(const Samples& samples, double tokens) {
  for (const Sample& s : samples) {
    if (s.name == "cmoe_tokens_per_step_bucket" && s.labels.contains("le") &&
        std::strtod(s.labels.at("le").c_str(), nullptr) == tokens) {
      return Metric(samples, "cmoe_tokens_per_step_count") - s.value;
    }
  }
  return -1;
}

// cmoe_requests_total of `rpc` with `code`, over all finish reasons.
double Requests(const Samples& samples, const std::string& rpc, const std::string& code) {
  double total = 0;
  for (const Sample& s : samples) {
    if (s.name == "cmoe_requests_total" && s.labels.contains("rpc") && s.labels.at("rpc") == rpc &&
        s.labels.contains("code") && s.labels.at("code") == code) {
      total += s.value;
    }
  }
  return total;
}

double Requests(const Samples& s, const std::string& rpc, const std::string& code,
                const std::string& finish_reason) {
  return Value(s, "cmoe_requests_total",
               {{"rpc", rpc}, {"code", code}, {"finish_reason", finish_reason}})
      .value_or(0);
}

std::string Gauges(const Samples& s) {
  std::ostringstream out;
  out << "running=" << Running(s) << " waiting=" << Waiting(s) << " kv_usage=" << KvUsage(s);
  return out.str();
}

// Scrapes /metrics until `done` holds (the engine gauges are refreshed every 100 ms), for up to
// 30 s; whether it held. `last` gets the last scrape.
bool PollMetrics(int port, const std::function<bool(const Samples&)>& done, Samples* last) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    *last = ParseSamples(Scrape(port));
    if (done(*last)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  return false;
}

// --- 64 concurrent streams on a carved model ---

// Prompt i of 64: 16 openings, each alone and with three continuations.
std::string Prompt(int i) {
  static const char* const kOpenings[] = {
      "Once upon a time",     "One day",      "Lily and Tom",  "The little dog",
      "There was a big tree", "Sam liked to", "The sun was",   "A girl named Sue",
      "In the park",          "Mom said",     "The cat",       "Ben had a red ball",
      "It was a rainy day",   "The bird",     "Tim wanted to", "At the beach"};
  static const char* const kEndings[] = {"", ",", " and", " very"};
  return std::string(kOpenings[i % 16]) + kEndings[(i / 16) % 4];
}

// Request i: 24 to 48 new tokens; EOS may end every third, a "." every fourth.
v1::GenerateRequest ConcurrentRequest(int i) {
  v1::GenerateRequest r = GreedyRequest(Prompt(i), 24 + (i * 7) % 25, /*ignore_eos=*/i % 3 != 2);
  if (i % 4 == 3) r.mutable_stopping()->add_stop_strings(".");
  return r;
}

class ConcurrentStreamsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cmoe::testing::HaveCarveInputs()) GTEST_SKIP() << "no tinystories-656k to carve";
    const std::string carved = scratch_.Join("carved");
    ASSERT_TRUE(cmoe::testing::Succeeded(cmoe::testing::CarveTinyStories("S2A2E8", carved)));
    ASSERT_EQ(server_.Start({"--max-running", "64"}, carved), "");
    ASSERT_TRUE(cmoe::testing::WaitServing(server_.channel().get()));
    stub_ = server_.Stub();
  }

  cmoe::testing::ScratchDir scratch_;
  ServerProcess server_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

// Greedy output does not depend on the batch: each of 64 streams running together (with stop
// strings, EOS and length finishes, prompts prefilled while others decode) equals its request run
// alone, message deltas included.
TEST_F(ConcurrentStreamsTest, SixtyFourStreamsEqualTheirRequestsRunAlone) {
  constexpr int kStreams = 64;
  std::vector<v1::GenerateResponse> alone(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    const grpc::Status status = Generate(*stub_, ConcurrentRequest(i), &alone[i]);
    ASSERT_TRUE(status.ok()) << i << ": " << status.error_message();
  }
  const Samples before = ParseSamples(Scrape(server_.metrics_port()));

  std::vector<std::unique_ptr<Stream>> streams(kStreams);
  std::vector<grpc::Status> statuses(kStreams);
  std::latch start(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      streams[i] = std::make_unique<Stream>(*stub_, ConcurrentRequest(i));
      statuses[i] = streams[i]->Finish();
    });
  }
  for (std::thread& t : threads) t.join();

  int stop_strings = 0;
  for (int i = 0; i < kStreams; ++i) {
    SCOPED_TRACE("stream " + std::to_string(i) + ": " + Prompt(i));
    const v1::GenerateRequest request = ConcurrentRequest(i);
    const Stream& s = *streams[i];
    ASSERT_TRUE(statuses[i].ok()) << statuses[i].error_message();
    EXPECT_TRUE(s.finish_is_last()) << s.finishes() << " finish messages";
    EXPECT_EQ(s.finish().reason(), alone[i].finish().reason());
    EXPECT_EQ(s.tokens(),
              std::vector<int32_t>(alone[i].token_ids().begin(), alone[i].token_ids().end()));
    EXPECT_EQ(s.text(), alone[i].text());
    EXPECT_EQ(s.finish().usage().generated_tokens(), static_cast<int64_t>(s.tokens().size()));
    EXPECT_EQ(s.finish().usage().prompt_tokens(), alone[i].finish().usage().prompt_tokens());
    if (request.stopping().ignore_eos() && request.stopping().stop_strings().empty()) {
      EXPECT_EQ(s.finish().reason(), v1::FINISH_REASON_LENGTH);
      EXPECT_EQ(s.tokens().size(), static_cast<size_t>(request.stopping().max_new_tokens()));
    }
    stop_strings += s.finish().reason() == v1::FINISH_REASON_STOP_STRING;
  }
  EXPECT_GT(stop_strings, 0) << "no stream ended on its stop string";

  // The streams did share steps: the requests alone never had more than 16 rows in one.
  const Samples after = ParseSamples(Scrape(server_.metrics_port()));
  EXPECT_EQ(StepsAbove(before, 16), 0);
  EXPECT_GT(StepsAbove(after, 16), 0);
}

// --- limits, on a slow synthetic model ---

constexpr char kSlowShape[] =
    "custom(hidden=512,ffn=1536,layers=16,heads=8,kv_heads=2,vocab=1024,ctx=2048)";
constexpr int kLong = 2000;  // new tokens of a generation that the test ends early
constexpr char kPrompt[] = "Once upon a time";

class ServerLimitsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(cmoe::testing::Succeeded(cmoe::testing::RunTool(
        "cmoe-synth", {"--shape", kSlowShape, "--dtype", "bf16", "--seed", "1", "--out", model_})));
  }
  void TearDown() override {
    if (started_) {
      EXPECT_EQ(server_.Terminate(), 0);
    }
  }

  // cmoe-serve on the slow model with `extra` flags, SERVING.
  void Start(std::vector<std::string> extra) {
    extra.insert(extra.end(), {"--kv-cache-tokens", "16384", "--drain-timeout", "2"});
    ASSERT_EQ(server_.Start(extra, model_), "");
    started_ = true;
    ASSERT_GT(server_.metrics_port(), 0);
    ASSERT_TRUE(cmoe::testing::WaitServing(server_.channel().get()));
    stub_ = server_.Stub();
  }

  // Polls /metrics until no request runs or waits and the KV cache is empty; the last scrape.
  Samples WaitIdle() {
    Samples samples;
    EXPECT_TRUE(PollMetrics(server_.metrics_port(), Idle, &samples)) << Gauges(samples);
    return samples;
  }

  cmoe::testing::ScratchDir scratch_;
  const std::string model_ = scratch_.Join("slow");
  ServerProcess server_;
  bool started_ = false;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

// One request runs, one waits: the next is turned away with RESOURCE_EXHAUSTED (unary and
// stream), and once the two are cancelled the server takes requests again.
TEST_F(ServerLimitsTest, FullQueueIsResourceExhausted) {
  ASSERT_NO_FATAL_FAILURE(Start({"--max-running", "1", "--max-waiting", "1"}));
  Stream running(*stub_, GreedyRequest(kPrompt, kLong));
  ASSERT_TRUE(running.ReadTokens(1));
  Stream waiting(*stub_, GreedyRequest(kPrompt, kLong));
  Samples samples;
  ASSERT_TRUE(PollMetrics(
      server_.metrics_port(), [](const Samples& s) { return Running(s) == 1 && Waiting(s) == 1; },
      &samples))
      << Gauges(samples);

  v1::GenerateResponse response;
  const grpc::Status rejected = Generate(*stub_, GreedyRequest(kPrompt, 4), &response);
  EXPECT_EQ(rejected.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << rejected.error_message();
  EXPECT_THAT(rejected.error_message(), HasSubstr("queue is full"));
  Stream rejected_stream(*stub_, GreedyRequest(kPrompt, 4));
  const grpc::Status rejected_stream_status = rejected_stream.Finish();
  EXPECT_EQ(rejected_stream_status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED)
      << rejected_stream_status.error_message();
  EXPECT_THAT(rejected_stream_status.error_message(), HasSubstr("queue is full"));
  EXPECT_TRUE(rejected_stream.deltas().empty());

  // The waiting one first, so that it is never admitted.
  waiting.Cancel();
  EXPECT_EQ(waiting.Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(waiting.tokens().empty());
  running.Cancel();
  EXPECT_EQ(running.Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_EQ(running.finishes(), 0) << "the running generation ended before it was cancelled";

  samples = WaitIdle();
  EXPECT_LT(EngineTokens(samples), kLong) << "the held requests ran on after their cancel";
  EXPECT_EQ(Requests(samples, "Generate", "RESOURCE_EXHAUSTED", "none"), 1);
  EXPECT_EQ(Requests(samples, "GenerateStream", "RESOURCE_EXHAUSTED", "none"), 1);
  const grpc::Status accepted = Generate(*stub_, GreedyRequest(kPrompt, 4), &response);
  ASSERT_TRUE(accepted.ok()) << accepted.error_message();
  EXPECT_EQ(response.token_ids_size(), 4);
  EXPECT_EQ(response.finish().reason(), v1::FINISH_REASON_LENGTH);
}

// Streams cancelled by the client (ClientContext::TryCancel) after a few tokens leave the batch
// and give their KV-cache blocks back at once.
TEST_F(ServerLimitsTest, CancelledStreamsFreeTheirBlocks) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  constexpr int kStreams = 4;
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<Stream>(*stub_, GreedyRequest(kPrompt, kLong)));
  }
  for (auto& s : streams) ASSERT_TRUE(s->ReadTokens(3));
  Samples samples;
  ASSERT_TRUE(PollMetrics(
      server_.metrics_port(),
      [](const Samples& s) { return Running(s) == kStreams && KvUsage(s) > 0; }, &samples))
      << Gauges(samples);

  for (auto& s : streams) s->Cancel();
  for (auto& s : streams) {
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::CANCELLED);
    EXPECT_EQ(s->finishes(), 0);
    EXPECT_LT(s->tokens().size(), static_cast<size_t>(kLong));
  }
  samples = WaitIdle();
  // Idle because they were cancelled, not because they ran out.
  EXPECT_LT(EngineTokens(samples), kStreams * kLong / 2);
  EXPECT_EQ(Requests(samples, "GenerateStream", "CANCELLED", "cancelled"), kStreams);
}

// Calls whose gRPC deadline passes mid-generation end with DEADLINE_EXCEEDED, and their blocks
// return to the pool.
TEST_F(ServerLimitsTest, ExpiredDeadlinesFreeTheirBlocks) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  constexpr int kStreams = 3;
  constexpr auto kDeadline = std::chrono::milliseconds(300);
  std::vector<std::unique_ptr<Stream>> streams;
  for (int i = 0; i < kStreams; ++i) {
    streams.push_back(std::make_unique<Stream>(*stub_, GreedyRequest(kPrompt, kLong), kDeadline));
  }
  v1::GenerateResponse response;
  const grpc::Status unary = Generate(*stub_, GreedyRequest(kPrompt, kLong), &response, kDeadline);
  EXPECT_EQ(unary.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << unary.error_message();
  for (auto& s : streams) {
    const grpc::Status status = s->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();
    EXPECT_EQ(s->finishes(), 0);
  }

  const Samples samples = WaitIdle();
  EXPECT_GT(EngineTokens(samples), 0) << "the requests never reached the engine";
  EXPECT_LT(EngineTokens(samples), (kStreams + 1) * kLong / 2);
  // Counted as failed calls: DEADLINE_EXCEEDED when the engine's copy of the deadline ends the
  // call, CANCELLED when gRPC's cancellation at the deadline (or the client's) arrives first.
  for (const char* rpc : {"Generate", "GenerateStream"}) {
    EXPECT_EQ(Requests(samples, rpc, "DEADLINE_EXCEEDED") + Requests(samples, rpc, "CANCELLED"),
              rpc == std::string("Generate") ? 1 : kStreams)
        << rpc;
  }
}

// stopping.time_limit_ms is the server's own limit: the call ends with OK,
// FINISH_REASON_TIME_LIMIT and the text so far, and the blocks return to the pool.
TEST_F(ServerLimitsTest, TimeLimitEndsWithPartialText) {
  ASSERT_NO_FATAL_FAILURE(Start({}));
  v1::GenerateRequest shorter = GreedyRequest(kPrompt, kLong);
  shorter.mutable_stopping()->set_time_limit_ms(1000);
  v1::GenerateRequest longer = shorter;
  longer.mutable_stopping()->set_time_limit_ms(1500);
  Stream first(*stub_, shorter);
  Stream second(*stub_, longer);
  v1::GenerateResponse response;
  const grpc::Status unary = Generate(*stub_, shorter, &response);
  ASSERT_TRUE(unary.ok()) << unary.error_message();
  EXPECT_EQ(response.finish().reason(), v1::FINISH_REASON_TIME_LIMIT);
  EXPECT_GT(response.token_ids_size(), 0);
  EXPECT_LT(response.token_ids_size(), kLong);
  EXPECT_FALSE(response.text().empty());

  for (Stream* s : {&first, &second}) {
    const grpc::Status status = s->Finish();
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_TRUE(s->finish_is_last());
    EXPECT_EQ(s->finish().reason(), v1::FINISH_REASON_TIME_LIMIT);
    EXPECT_GT(s->tokens().size(), 0u);
    EXPECT_LT(s->tokens().size(), static_cast<size_t>(kLong));
    EXPECT_EQ(s->finish().usage().generated_tokens(), static_cast<int64_t>(s->tokens().size()));
    EXPECT_FALSE(s->text().empty());
  }
  // Greedy: the earlier stop holds a prefix of the later one.
  const size_t common = std::min(first.tokens().size(), second.tokens().size());
  EXPECT_TRUE(
      std::equal(first.tokens().begin(), first.tokens().begin() + common, second.tokens().begin()));

  const Samples samples = WaitIdle();
  EXPECT_EQ(Requests(samples, "GenerateStream", "OK", "time_limit"), 2);
  EXPECT_EQ(Requests(samples, "Generate", "OK", "time_limit"), 1);
}

}  // namespace
}  // namespace cmoe::server
