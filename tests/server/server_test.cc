// cmoe-serve end to end: the binary runs as a child process on a free port with the shared
// tinystories-656k model, and a generated stub talks to it.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
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
#include "tests/test_util.h"

extern char** environ;

namespace cmoe::server {
namespace {

using ::testing::HasSubstr;

constexpr char kModel[] = "tinystories-656k";

// cmoe-serve as a child process: stdout through a pipe (for the "listening on" line), stderr
// inherited (the request log shows up in the test output).
class ServerProcess {
 public:
  ~ServerProcess() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
  }

  // Starts the server and waits for its port; empty string on success, else why not.
  std::string Start(std::vector<std::string> extra = {}) {
    int fds[2];
    if (::pipe(fds) != 0) return "pipe failed";
    std::vector<std::string> args = {std::string(CMOE_BIN_DIR) + "/cmoe-serve",
                                     "--model",
                                     cmoe::testing::SharedModel(kModel),
                                     "--port",
                                     "0",
                                     "--threads",
                                     "2"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&actions, fds[0]);
    const int rc = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(fds[1]);
    out_fd_ = fds[0];
    if (rc != 0) {
      pid_ = -1;
      return "cannot start " + args[0];
    }
    // Read "listening on HOST:PORT\n".
    std::string out;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (out.find('\n') == std::string::npos) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return "no 'listening on' line within 20 s";
      pollfd p{.fd = out_fd_, .events = POLLIN, .revents = 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[256];
      const ssize_t n = ::read(out_fd_, buf, sizeof(buf));
      if (n <= 0) return "the server exited before listening: " + out;
      out.append(buf, static_cast<size_t>(n));
    }
    const std::string prefix = "listening on ";
    if (out.rfind(prefix, 0) != 0) return "unexpected stdout: " + out;
    const std::string address = out.substr(prefix.size(), out.find('\n') - prefix.size());
    port_ = std::stoi(address.substr(address.rfind(':') + 1));
    if (port_ <= 0) return "bad port in: " + out;
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_),
                                   grpc::InsecureChannelCredentials());
    return "";
  }

  // SIGTERM, then the exit code (-1 on a signal or after `seconds`).
  int Terminate(double seconds = 20) {
    ::kill(pid_, SIGTERM);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int status = 0;
    while (std::chrono::steady_clock::now() < deadline) {
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return -1;
  }

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  std::unique_ptr<v1::Inference::Stub> Stub() const { return v1::Inference::NewStub(channel_); }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

// grpc.health.v1.Health/Check with an empty request (the whole server), as raw bytes: the
// response's field 1 is the status (SERVING = 1).
grpc::Status HealthCheck(grpc::Channel* channel, std::string* response) {
  grpc::Slice slice(std::string{});
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel,
      grpc::internal::RpcMethod("/grpc.health.v1.Health/Check",
                                grpc::internal::RpcMethod::NORMAL_RPC),
      &context, request_buffer, &response_buffer);
  if (status.ok()) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response_buffer.Dump(&slices).ok());
    response->clear();
    for (const grpc::Slice& s : slices) response->append(s.begin(), s.end());
  }
  return status;
}

const std::string kServing = std::string("\x08\x01", 2);

// Polls health until SERVING (the model loads after the server starts listening).
bool WaitServing(grpc::Channel* channel) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string response;
    if (HealthCheck(channel, &response).ok() && response == kServing) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

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
  int messages = 0;
  int finishes = 0;
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
    if (message.has_finish()) {
      ++out.finishes;
      out.finish = message.finish();
    }
  }
  out.status = reader->Finish();
  return out;
}

class ServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(cmoe::testing::SharedModel(kModel))) return;
    server_ = new ServerProcess();
    start_error_ = server_->Start();
    if (start_error_.empty() && !WaitServing(server_->channel().get())) {
      start_error_ = "health never turned SERVING";
    }
  }
  static void TearDownTestSuite() {
    if (server_ != nullptr) {
      EXPECT_EQ(server_->Terminate(), 0);
      delete server_;
      server_ = nullptr;
    }
  }
  void SetUp() override {
    if (server_ == nullptr) GTEST_SKIP() << "no shared model " << kModel;
    ASSERT_EQ(start_error_, "");
    stub_ = server_->Stub();
  }

  static ServerProcess* server_;
  static std::string start_error_;
  std::unique_ptr<v1::Inference::Stub> stub_;
};

ServerProcess* ServerTest::server_ = nullptr;
std::string ServerTest::start_error_;

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
    r.mutable_output()->set_logprobs(true);
    cases.push_back({"logprobs", r, "logprobs"});
  }
  {
    v1::GenerateRequest r = GreedyRequest(4);
    r.mutable_output()->set_top_logprobs(3);
    cases.push_back({"top_logprobs", r, "top_logprobs"});
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

}  // namespace
}  // namespace cmoe::server
