// cmoe-serve end to end: the binary runs as a child process on a free port with the shared
// tinystories-656k model (or a carve of it), and a generated stub talks to it; its Prometheus
// /metrics endpoint is scraped over a plain socket.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>

#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/metrics.h"
#include "tests/server/server_fixtures.h"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

extern char** environ;

namespace cmoe::server {
namespace {

using ::testing::HasSubstr;

constexpr char kModel[] = "tinystories-656k";

using cmoe::testing::HealthCheck;
using cmoe::testing::kServing;
using cmoe::testing::ParseSamples;
using cmoe::testing::Sample;
using cmoe::testing::Scrape;
using cmoe::testing::Value;
using cmoe::testing::WaitServing;

// cmoe-serve (tests/server/server_process.h) with the shared tinystories-656k model by default.
class ServerProcess : public cmoe::testing::ServerProcess {
 public:
  std::string Start(std::vector<std::string> extra = {},
                    const std::string& model = cmoe::testing::SharedModel(kModel)) {
    return cmoe::testing::ServerProcess::Start(std::move(extra), model);
  }
};

v1::GenerateRequest GreedyRequest(int max_new_tokens) {
  v1::GenerateRequest r;
  r.set_text("Once upon a time");
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  r.mutable_stopping()->set_ignore_eos(true);
  r.mutable_output()->set_return_token_ids(true);
  return r;
}

struct StreamResult {
  grpc::Status status;
  std::string text;
  std::vector<int32_t> tokens;
  std::vector<v1::TokenLogprob> logprobs;
  int messages = 0;
  int finishes = 0;
  // Messages whose logprobs are not one per token id (with return_token_ids and logprobs).
  int misaligned = 0;
  v1::FinishInfo finish;
};

StreamResult RunStream(v1::Inference::Stub& stub, const v1::GenerateRequest& request) {
  StreamResult out;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub.GenerateStream(&context, request);
  v1::GenerateStreamResponse message;
  while (reader->Read(&message)) {
    ++out.messages;
    out.text += message.text();
    out.tokens.insert(out.tokens.end(), message.token_ids().begin(), message.token_ids().end());
    out.logprobs.insert(out.logprobs.end(), message.logprobs().begin(), message.logprobs().end());
    if (request.output().logprobs() && message.logprobs_size() != message.token_ids_size()) {
      ++out.misaligned;
    }
    if (message.has_finish()) {
      ++out.finishes;
      out.finish = message.finish();
    }
  }
  out.status = reader->Finish();
  return out;
}

class ServerTest : public cmoe::testing::SharedServerTest {
 protected:
  static void SetUpTestSuite() { StartSharedServer(cmoe::testing::SharedModel(kModel)); }
  static void TearDownTestSuite() { StopSharedServer(); }
  void SetUp() override {
    if (RequireSharedServer()) stub_ = server_->Stub();
  }

  std::unique_ptr<v1::Inference::Stub> stub_;
};

TEST_F(ServerTest, HealthIsServing) {
  std::string response;
  ASSERT_TRUE(HealthCheck(server_->channel().get(), &response).ok());
  EXPECT_EQ(response, kServing);
}

TEST_F(ServerTest, GenerateGreedyMatchesStream) {
  const v1::GenerateRequest request = GreedyRequest(24);
  grpc::ClientContext context;
  v1::GenerateResponse response;
  const grpc::Status status = stub_->Generate(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.token_ids_size(), 24);
  EXPECT_EQ(response.finish().reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.finish().usage().generated_tokens(), 24);
  EXPECT_GT(response.finish().usage().prompt_tokens(), 1);
  EXPECT_FALSE(response.text().empty());

  const StreamResult stream = RunStream(*stub_, request);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.finishes, 1);
  EXPECT_EQ(stream.finish.reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(stream.tokens,
            std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()));
  EXPECT_EQ(stream.text, response.text());

  // Echo of the prompt.
  v1::GenerateRequest echo = request;
  echo.mutable_output()->set_echo_prompt(true);
  grpc::ClientContext echo_context;
  v1::GenerateResponse echo_response;
  ASSERT_TRUE(stub_->Generate(&echo_context, echo, &echo_response).ok());
  EXPECT_EQ(echo_response.prompt().text(), "Once upon a time");
  EXPECT_EQ(echo_response.prompt().token_ids_size(),
            echo_response.finish().usage().prompt_tokens());
  EXPECT_EQ(echo_response.text(), response.text());
}

TEST_F(ServerTest, SixteenConcurrentStreamsComplete) {
  std::vector<std::thread> threads;
  std::vector<StreamResult> results(16);
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] {
      auto stub = server_->Stub();
      v1::GenerateRequest request = GreedyRequest(16 + i);
      request.mutable_sampling()->set_temperature(0.8f);
      request.mutable_sampling()->set_seed(i);
      results[i] = RunStream(*stub, request);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < 16; ++i) {
    EXPECT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].finishes, 1) << i;
    EXPECT_EQ(results[i].tokens.size(), static_cast<size_t>(16 + i)) << i;
    EXPECT_EQ(results[i].finish.seed(), static_cast<uint64_t>(i));
  }
}

TEST_F(ServerTest, TokenizeAndModelInfo) {
  grpc::ClientContext info_context;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(stub_->GetModelInfo(&info_context, {}, &info).ok());
  EXPECT_EQ(info.model_name(), kModel);
  EXPECT_EQ(info.architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.vocab_size(), 2048);
  EXPECT_EQ(info.context_length(), 512);
  EXPECT_EQ(info.hidden_size(), 128);
  EXPECT_EQ(info.num_hidden_layers(), 2);
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_FALSE(info.has_cmoe());
  EXPECT_TRUE(info.default_sampling().has_temperature());
  EXPECT_GT(info.default_max_new_tokens(), 0);
  EXPECT_EQ(info.max_top_logprobs(), 20);

  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text("Once upon a time");
  v1::TokenizeResponse response;
  ASSERT_TRUE(stub_->Tokenize(&context, request, &response).ok());
  ASSERT_GT(response.token_ids_size(), 1);
  EXPECT_EQ(response.token_ids(0), info.bos_token_id());
  EXPECT_EQ(response.pieces_size(), response.token_ids_size());
  std::string joined;
  for (int i = 1; i < response.pieces_size(); ++i) joined += response.pieces(i);
  EXPECT_THAT(joined, HasSubstr("Once upon a time"));

  // The prompt of Generate is tokenized the same way.
  grpc::ClientContext generate_context;
  v1::GenerateResponse generated;
  v1::GenerateRequest g = GreedyRequest(2);
  ASSERT_TRUE(stub_->Generate(&generate_context, g, &generated).ok());
  EXPECT_EQ(generated.finish().usage().prompt_tokens(), response.token_ids_size());
}

TEST_F(ServerTest, InvalidRequestsNameTheField) {
  struct Case {
    const char* name;
    v1::GenerateRequest request;
    const char* field;
  };
  std::vector<Case> cases;
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.set_text("");
    cases.push_back({"empty prompt", r, "prompt"});
  }
  {
    // An empty token-id list (the oneof set, no ids): once crashed the server.
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_token_ids();
    cases.push_back({"empty token_ids", r, "prompt.token_ids"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_sampling()->set_top_p(2.0f);
    cases.push_back({"top_p 2", r, "top_p"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_token_ids()->add_ids(1);
    r.mutable_token_ids()->add_ids(99999);
    cases.push_back({"unknown token id", r, "prompt"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(100000);
    cases.push_back({"max_new_tokens beyond the context", r, "max_new_tokens"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_output()->set_top_logprobs(3);
    cases.push_back({"top_logprobs without logprobs", r, "top_logprobs"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_output()->set_logprobs(true);
    r.mutable_output()->set_top_logprobs(21);
    cases.push_back({"top_logprobs beyond max_top_logprobs", r, "top_logprobs"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_output()->set_logprobs(true);
    r.mutable_output()->set_top_logprobs(-1);
    cases.push_back({"top_logprobs negative", r, "top_logprobs"});
  }
  {
    v1::GenerateRequest r;
    cases.push_back({"no prompt", r, "prompt"});
  }
  for (const Case& c : cases) {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    const grpc::Status status = stub_->Generate(&context, c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(status.error_message(), HasSubstr(c.field)) << c.name;
    const StreamResult stream = RunStream(*stub_, c.request);
    EXPECT_EQ(stream.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_THAT(stream.status.error_message(), HasSubstr(c.field)) << c.name;
    EXPECT_EQ(stream.messages, 0) << c.name;
  }
}

// Checks one token's log-probabilities: pieces, ranges, order, and (greedy) the token first.
void ExpectGreedyLogprob(const v1::TokenLogprob& lp, int32_t token, int top) {
  EXPECT_EQ(lp.token_id(), token);
  EXPECT_FALSE(lp.piece().empty());
  EXPECT_LE(lp.logprob(), 0.0f);
  ASSERT_EQ(lp.top_logprobs_size(), top);
  EXPECT_EQ(lp.top_logprobs(0).token_id(), token);
  EXPECT_EQ(lp.top_logprobs(0).logprob(), lp.logprob());
  for (int k = 0; k < top; ++k) {
    EXPECT_FALSE(lp.top_logprobs(k).piece().empty()) << "rank " << k;
    EXPECT_LE(lp.top_logprobs(k).logprob(), 0.0f) << "rank " << k;
    if (k > 0) {
      EXPECT_LE(lp.top_logprobs(k).logprob(), lp.top_logprobs(k - 1).logprob()) << "rank " << k;
      EXPECT_NE(lp.top_logprobs(k).token_id(), lp.top_logprobs(k - 1).token_id()) << "rank " << k;
    }
  }
}

TEST_F(ServerTest, LogprobsInGenerateAndStream) {
  v1::GenerateRequest request = GreedyRequest(16);
  request.mutable_output()->set_logprobs(true);
  request.mutable_output()->set_top_logprobs(5);
  grpc::ClientContext context;
  v1::GenerateResponse response;
  const grpc::Status status = stub_->Generate(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.token_ids_size(), 16);
  ASSERT_EQ(response.logprobs_size(), 16);
  std::string pieces;
  for (int i = 0; i < 16; ++i) {
    SCOPED_TRACE(i);
    ExpectGreedyLogprob(response.logprobs(i), response.token_ids(i), 5);
    pieces += response.logprobs(i).piece();
  }
  // A piece is the token's bytes in context: they add up to the text (no EOS in 16 tokens).
  EXPECT_EQ(pieces, response.text());

  const StreamResult stream = RunStream(*stub_, request);
  ASSERT_TRUE(stream.status.ok()) << stream.status.error_message();
  EXPECT_EQ(stream.misaligned, 0);
  ASSERT_EQ(stream.tokens.size(), 16u);
  ASSERT_EQ(stream.logprobs.size(), 16u);
  for (size_t i = 0; i < 16; ++i) {
    SCOPED_TRACE(i);
    ExpectGreedyLogprob(stream.logprobs[i], stream.tokens[i], 5);
    EXPECT_EQ(stream.logprobs[i].piece(), response.logprobs(static_cast<int>(i)).piece());
    EXPECT_NEAR(stream.logprobs[i].logprob(), response.logprobs(static_cast<int>(i)).logprob(),
                1e-5);
  }

  // Without return_token_ids the stream still sends every token's logprob; without logprobs none.
  v1::GenerateRequest bare = request;
  bare.mutable_output()->set_return_token_ids(false);
  bare.mutable_output()->set_top_logprobs(0);
  const StreamResult bare_stream = RunStream(*stub_, bare);
  ASSERT_TRUE(bare_stream.status.ok()) << bare_stream.status.error_message();
  ASSERT_EQ(bare_stream.logprobs.size(), 16u);
  for (size_t i = 0; i < 16; ++i) {
    EXPECT_EQ(bare_stream.logprobs[i].token_id(), stream.tokens[i]);
    EXPECT_EQ(bare_stream.logprobs[i].top_logprobs_size(), 0);
  }
  grpc::ClientContext plain_context;
  v1::GenerateResponse plain;
  ASSERT_TRUE(stub_->Generate(&plain_context, GreedyRequest(16), &plain).ok());
  EXPECT_EQ(plain.logprobs_size(), 0);
  EXPECT_EQ(plain.text(), response.text());
}

TEST_F(ServerTest, ClientDeadlineIsDeadlineExceeded) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1));
  v1::GenerateResponse response;
  const grpc::Status status = stub_->Generate(&context, GreedyRequest(400), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << status.error_message();

  // A time limit is not an error.
  v1::GenerateRequest limited = GreedyRequest(500);
  limited.mutable_stopping()->set_time_limit_ms(1);
  grpc::ClientContext limited_context;
  v1::GenerateResponse limited_response;
  ASSERT_TRUE(stub_->Generate(&limited_context, limited, &limited_response).ok());
  EXPECT_THAT(limited_response.finish().reason(),
              ::testing::AnyOf(v1::FINISH_REASON_TIME_LIMIT, v1::FINISH_REASON_LENGTH));
}

TEST_F(ServerTest, CancelledStreamLeavesTheServerServing) {
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext context;
    auto reader = stub_->GenerateStream(&context, GreedyRequest(500));
    v1::GenerateStreamResponse message;
    ASSERT_TRUE(reader->Read(&message));
    context.TryCancel();
    while (reader->Read(&message)) {
    }
    const grpc::Status status = reader->Finish();
    // The stream may have finished before the cancel arrived on a fast machine.
    EXPECT_THAT(status.error_code(),
                ::testing::AnyOf(grpc::StatusCode::CANCELLED, grpc::StatusCode::OK));
  }
  grpc::ClientContext context;
  v1::GenerateResponse response;
  ASSERT_TRUE(stub_->Generate(&context, GreedyRequest(8), &response).ok());
  EXPECT_EQ(response.token_ids_size(), 8);
}

// A server of its own: SIGTERM while a stream is in flight lets the stream finish, and the
// process exits 0.
TEST(ServerShutdownTest, SigtermDrainsInFlightStream) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({"--drain-timeout", "20"}), "");
  ASSERT_TRUE(WaitServing(server.channel().get()));
  auto stub = server.Stub();
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  auto reader = stub->GenerateStream(&context, GreedyRequest(500));
  v1::GenerateStreamResponse message;
  ASSERT_TRUE(reader->Read(&message));
  std::thread terminate([&] { EXPECT_EQ(server.Terminate(), 0); });
  int finishes = message.has_finish() ? 1 : 0;
  int64_t tokens = message.token_ids_size();
  while (reader->Read(&message)) {
    finishes += message.has_finish() ? 1 : 0;
    tokens += message.token_ids_size();
  }
  const grpc::Status status = reader->Finish();
  terminate.join();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(finishes, 1);
  EXPECT_EQ(tokens, 500);
}

// --- metrics ---

// A server of its own on a carve of the shared model (S2A2E8): Generate and GenerateStream traffic
// shows up on /metrics.
// A SentencePiece model (tokenizer.model, converted from llama2.c) is served like any other: the
// tokenizer is our own, so nothing in the process but gRPC's libprotobuf parses protobuf.
TEST(ServerSentencePieceTest, ConvertedStories260kServesAStory) {
  const std::string bin = cmoe::testing::SharedModel("stories260K/stories260K.bin");
  if (!std::filesystem::exists(bin)) GTEST_SKIP() << "no shared model stories260K";
  cmoe::testing::ScratchDir scratch;
  const std::string dir = scratch.Join("stories260K");
  ASSERT_TRUE(cmoe::testing::Succeeded(cmoe::testing::RunTool(
      "cmoe-convert", {"llama2c", "--model", bin, "--tokenizer",
                       cmoe::testing::SharedModel("stories260K/tok512.model"), "--out", dir})));
  ServerProcess server;
  ASSERT_EQ(server.Start({}, dir), "");
  ASSERT_TRUE(WaitServing(server.channel().get()));
  auto stub = server.Stub();
  grpc::ClientContext context;
  v1::GenerateResponse response;
  const grpc::Status status = stub->Generate(&context, GreedyRequest(24), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.token_ids_size(), 24);
  // The greedy continuation of "Once upon a time" by stories260K (README) starts ", there was".
  EXPECT_EQ(response.text().rfind(", there was a little girl", 0), 0u) << response.text();
  const StreamResult streamed = RunStream(*stub, GreedyRequest(24));
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  EXPECT_EQ(streamed.text, response.text());
}

TEST(ServerMetricsTest, CarvedModelTrafficIsCounted) {
  if (!cmoe::testing::HaveCarveInputs()) {
    GTEST_SKIP() << "no shared model " << kModel << " or tinystories_val.txt";
  }
  cmoe::testing::ScratchDir scratch;
  const std::string carved = scratch.Join("carved");
  ASSERT_TRUE(cmoe::testing::Succeeded(cmoe::testing::CarveTinyStories("S2A2E8", carved)));

  ServerProcess server;
  ASSERT_EQ(server.Start({}, carved), "");
  ASSERT_GT(server.metrics_port(), 0);
  // The endpoint answers while the model loads.
  EXPECT_NE(Scrape(server.metrics_port()), "");
  ASSERT_TRUE(WaitServing(server.channel().get()));
  auto stub = server.Stub();

  // Traffic: 2 Generate calls, 4 concurrent streams, one Tokenize and one GetModelInfo; every
  // generation ends by length.
  int64_t generated = 0;
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    ASSERT_TRUE(stub->Generate(&context, GreedyRequest(8 + i), &response).ok());
    generated += response.token_ids_size();
  }
  constexpr int kStreams = 4;
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] { results[i] = RunStream(*server.Stub(), GreedyRequest(10 + i)); });
  }
  for (std::thread& t : threads) t.join();
  for (const StreamResult& r : results) {
    ASSERT_TRUE(r.status.ok()) << r.status.error_message();
    ASSERT_EQ(r.finish.reason(), v1::FINISH_REASON_LENGTH);
    generated += static_cast<int64_t>(r.tokens.size());
  }
  {
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text("Once upon a time");
    v1::TokenizeResponse response;
    ASSERT_TRUE(stub->Tokenize(&context, request, &response).ok());
    grpc::ClientContext info_context;
    v1::GetModelInfoResponse info;
    ASSERT_TRUE(stub->GetModelInfo(&info_context, {}, &info).ok());
    ASSERT_TRUE(info.has_cmoe());
  }

  // The engine gauges are polled every 100 ms: wait for them all to read idle again (one poll
  // may land between the last finish and the step that empties the batch).
  std::string text;
  std::vector<Sample> samples;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  do {
    text = Scrape(server.metrics_port());
    samples = ParseSamples(text);
    if (Value(samples, "cmoe_kv_cache_usage_ratio") == 0.0 &&
        Value(samples, "cmoe_running_requests") == 0.0 &&
        Value(samples, "cmoe_waiting_requests") == 0.0) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  ASSERT_NE(text, "");

  for (const std::string& name : ServerMetrics::MetricNames()) {
    EXPECT_NE(text.find("# TYPE " + name + " "), std::string::npos) << name << " missing";
  }
  EXPECT_EQ(Value(samples, "cmoe_serving"), 1);  // the health service says SERVING
  EXPECT_EQ(Value(samples, "cmoe_requests_total",
                  {{"rpc", "GenerateStream"}, {"code", "OK"}, {"finish_reason", "length"}}),
            kStreams);
  EXPECT_EQ(Value(samples, "cmoe_requests_total",
                  {{"rpc", "Generate"}, {"code", "OK"}, {"finish_reason", "length"}}),
            2);
  EXPECT_EQ(Value(samples, "cmoe_requests_total",
                  {{"rpc", "Tokenize"}, {"code", "OK"}, {"finish_reason", "none"}}),
            1);
  EXPECT_EQ(Value(samples, "cmoe_requests_total",
                  {{"rpc", "GetModelInfo"}, {"code", "OK"}, {"finish_reason", "none"}}),
            1);
  EXPECT_EQ(Value(samples, "cmoe_generated_tokens_total"), static_cast<double>(generated));
  EXPECT_GT(Value(samples, "cmoe_prompt_tokens_total").value_or(0), 0);
  const double computed = Value(samples, "cmoe_ffn_neurons_computed_total").value_or(-1);
  const double dense = Value(samples, "cmoe_ffn_neurons_dense_total").value_or(-1);
  EXPECT_GT(computed, 0);
  EXPECT_LT(computed, dense);
  const double ratio = Value(samples, "cmoe_ffn_activation_ratio").value_or(-1);
  EXPECT_GT(ratio, 0);
  EXPECT_LT(ratio, 1);
  EXPECT_EQ(Value(samples, "cmoe_kv_cache_usage_ratio"), 0.0);
  EXPECT_EQ(Value(samples, "cmoe_running_requests"), 0.0);
  EXPECT_EQ(Value(samples, "cmoe_waiting_requests"), 0.0);
  EXPECT_EQ(Value(samples, "cmoe_in_flight_requests", {{"rpc", "GenerateStream"}}), 0.0);
  EXPECT_GT(Value(samples, "cmoe_tokens_per_step_count").value_or(0), 0);
  EXPECT_EQ(Value(samples, "cmoe_time_to_first_token_seconds_count"), 2.0 + kStreams);
  EXPECT_EQ(Value(samples, "cmoe_queue_time_seconds_count"), 2.0 + kStreams);
  EXPECT_EQ(Value(samples, "cmoe_inter_token_latency_seconds_count"),
            static_cast<double>(generated - 2 - kStreams));
  EXPECT_GT(Value(samples, "cmoe_expert_tokens_total").value_or(0), 0);

  EXPECT_EQ(server.Terminate(), 0);
}

// --expert-parallel 2 on the CPU: the carved model's routed experts on two ranks, each with its
// own batch and KV cache. Four concurrent greedy streams give the texts one rank gives, both
// ranks run tokens (cmoe_rank_tokens_total), and GetModelInfo names the ranks' devices.
TEST(ServerExpertParallelTest, TwoRanksServeTheSameTextsAsOne) {
  if (!cmoe::testing::HaveCarveInputs()) {
    GTEST_SKIP() << "no shared model " << kModel << " or tinystories_val.txt";
  }
  cmoe::testing::ScratchDir scratch;
  const std::string carved = scratch.Join("carved");
  ASSERT_TRUE(cmoe::testing::Succeeded(cmoe::testing::CarveTinyStories("S2A2E8", carved)));
  constexpr int kStreams = 4;
  const auto run_streams = [](ServerProcess& server) {
    std::vector<StreamResult> results(kStreams);
    std::vector<std::thread> threads;
    for (int i = 0; i < kStreams; ++i) {
      threads.emplace_back(
          [&, i] { results[i] = RunStream(*server.Stub(), GreedyRequest(12 + 2 * i)); });
    }
    for (std::thread& t : threads) t.join();
    return results;
  };
  std::vector<StreamResult> want;
  {
    ServerProcess one;
    ASSERT_EQ(one.Start({"--threads", "1"}, carved), "");
    ASSERT_TRUE(WaitServing(one.channel().get()));
    want = run_streams(one);
    EXPECT_EQ(one.Terminate(), 0);
  }
  ServerProcess two;
  ASSERT_EQ(two.Start({"--expert-parallel", "2", "--threads", "2"}, carved), "");
  ASSERT_TRUE(WaitServing(two.channel().get()));
  const std::vector<StreamResult> got = run_streams(two);
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(want[i].status.ok()) << want[i].status.error_message();
    ASSERT_TRUE(got[i].status.ok()) << got[i].status.error_message();
    EXPECT_EQ(got[i].tokens, want[i].tokens) << "stream " << i;
    EXPECT_EQ(got[i].text, want[i].text) << "stream " << i;
  }
  grpc::ClientContext info_context;
  v1::GetModelInfoResponse info;
  ASSERT_TRUE(two.Stub()->GetModelInfo(&info_context, {}, &info).ok());
  EXPECT_EQ(info.device(), "cpu x2");
  const std::vector<Sample> samples = ParseSamples(Scrape(two.metrics_port()));
  EXPECT_GT(Value(samples, "cmoe_rank_tokens_total", {{"rank", "0"}}).value_or(0), 0);
  EXPECT_GT(Value(samples, "cmoe_rank_tokens_total", {{"rank", "1"}}).value_or(0), 0);
  EXPECT_EQ(two.Terminate(), 0);
}

// A metrics port that is taken is a startup error.
TEST(ServerMetricsTest, MetricsPortInUseFailsTheStart) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 1), 0);
  socklen_t len = sizeof(addr);
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len), 0);
  const std::string port = std::to_string(ntohs(addr.sin_port));
  const cmoe::testing::SubprocessResult r = cmoe::testing::RunTool(
      "cmoe-serve",
      {"--model", cmoe::testing::SharedModel(kModel), "--port", "0", "--metrics-port", port});
  ::close(fd);
  cmoe::testing::ExpectToolError(r, "cmoe-serve", {port});
  EXPECT_EQ(r.out, "");
}

// A gRPC port another cmoe-serve listens on is a startup error too: gRPC's default SO_REUSEPORT
// would have let both bind it and split the connections between them.
TEST(ServerFlagsTest, PortOfAnotherServerFailsTheStart) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  ServerProcess first;
  ASSERT_EQ(first.Start({"--threads", "1"}, cmoe::testing::SharedModel(kModel)), "");
  const std::string port = std::to_string(first.port());
  const cmoe::testing::SubprocessResult r =
      cmoe::testing::RunTool("cmoe-serve", {"--model", cmoe::testing::SharedModel(kModel), "--port",
                                            port, "--metrics-port", "0", "--threads", "1"});
  cmoe::testing::ExpectToolError(r, "cmoe-serve", {"cannot listen on", port, "in use"});
  EXPECT_EQ(r.out, "");
  // The first server still has its port and serves.
  ASSERT_TRUE(WaitServing(first.channel().get()));
  EXPECT_EQ(first.Terminate(), 0);
}

// Bad flags end the start with one error line naming the flag, before anything listens.
TEST(ServerFlagsTest, BadFlagsAreErrors) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  const std::string model = cmoe::testing::SharedModel(kModel);
  const std::vector<std::pair<std::vector<std::string>, std::string>> cases = {
      {{"--port", "70000"}, "--port"},
      {{"--max-running", "0"}, "--max-running"},
      {{"--max-waiting", "-1"}, "--max-waiting"},
      {{"--drain-timeout", "-1"}, "--drain-timeout"},
      {{"--metrics-port", "-2"}, "--metrics-port"},
      {{"--kv-cache-tokens", "-5"}, "--kv-cache-tokens"},
      {{"--kv-cache-bytes", "12XB"}, "--kv-cache-bytes"},
      {{"--kv-cache-bytes", "0"}, "--kv-cache-bytes"},
      {{"--kv-cache-bytes", "99999999999999999999"}, "--kv-cache-bytes"},
      {{"--kv-cache-bytes", "100"}, "less than one KV-cache block"},
      {{"--kv-cache-bytes", "1000000G"}, "2^31 - 1 slots"},
      {{"--kv-cache-bytes", "1M", "--kv-cache-tokens", "64"}, "exclusive"},
      {{"--kv-cache-dtype", "fp8"}, "f32 or bf16"},
      {{"--expert-parallel", "0"}, "--expert-parallel 0 outside [1, 64]"},
      {{"--expert-parallel", "2"}, "is a dense model"},
  };
  for (const auto& [flags, mention] : cases) {
    std::vector<std::string> args = {"--model", model, "--port", "0", "--metrics-port", "0"};
    args.insert(args.end(), flags.begin(), flags.end());
    const cmoe::testing::SubprocessResult r = cmoe::testing::RunTool("cmoe-serve", args);
    SCOPED_TRACE(cmoe::testing::CommandLine(args));
    cmoe::testing::ExpectToolError(r, "cmoe-serve", {mention});
    EXPECT_EQ(r.out, "");  // nothing listened
  }
  const cmoe::testing::SubprocessResult missing =
      cmoe::testing::RunTool("cmoe-serve", {"--model", "/nonexistent/model", "--port", "0"});
  cmoe::testing::ExpectToolError(missing, "cmoe-serve", {"/nonexistent/model"});
}

// --kv-cache-bytes sizes the cache: tinystories-656k keeps 2 layers x 4 KV heads x 16 dims of f32
// K and V, 1 KiB per position, so 64 KiB hold 64 positions: a request that needs more can never
// fit (INVALID_ARGUMENT), one that needs fewer runs.
TEST(ServerFlagsTest, KvCacheBytesSizeTheCache) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({"--kv-cache-bytes", "64KiB"}), "");
  ASSERT_TRUE(WaitServing(server.channel().get()));
  auto stub = server.Stub();
  {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    const grpc::Status status = stub->Generate(&context, GreedyRequest(100), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("KV cache"));
  }
  {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    const grpc::Status status = stub->Generate(&context, GreedyRequest(40), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.finish().usage().generated_tokens(), 40);
  }
  EXPECT_EQ(server.Terminate(), 0);
}

// --kv-cache-dtype bf16 halves the bytes per position: the same 64 KiB hold 128 positions, so the
// request that could never fit an f32 cache of that size runs, and one past 128 still cannot.
TEST(ServerFlagsTest, Bf16KvCacheHoldsTwiceThePositions) {
  if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) {
    GTEST_SKIP() << "no shared model " << kModel;
  }
  ServerProcess server;
  ASSERT_EQ(server.Start({"--kv-cache-bytes", "64KiB", "--kv-cache-dtype", "bf16"}), "");
  ASSERT_TRUE(WaitServing(server.channel().get()));
  auto stub = server.Stub();
  {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    const grpc::Status status = stub->Generate(&context, GreedyRequest(100), &response);
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(response.finish().usage().generated_tokens(), 100);
  }
  {
    grpc::ClientContext context;
    v1::GenerateResponse response;
    const grpc::Status status = stub->Generate(&context, GreedyRequest(130), &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr("KV cache"));
  }
  EXPECT_EQ(server.Terminate(), 0);
}

}  // namespace
}  // namespace cmoe::server
