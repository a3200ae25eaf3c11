#include "tests/server/server_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include <grpcpp/impl/codegen/client_unary_call.h>

#include "gtest/gtest.h"

extern char** environ;

namespace cmoe::testing {

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
}

std::string ServerProcess::Start(std::vector<std::string> extra, const std::string& model) {
  int fds[2];
  if (::pipe(fds) != 0) return "pipe failed";
  std::vector<std::string> args = {std::string(CMOE_BIN_DIR) + "/cmoe-serve",
                                   "--model",
                                   model,
                                   "--port",
                                   "0",
                                   "--threads",
                                   "2",
                                   "--metrics-port",
                                   "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  bool metrics = true;  // the last --metrics-port wins
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--metrics-port") metrics = args[i + 1] != "-1";
  }
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
  // Read "listening on HOST:PORT\n" (and "metrics on HOST:PORT\n").
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  const auto lines = [&] { return std::count(out.begin(), out.end(), '\n'); };
  while (lines() < (metrics ? 2 : 1)) {
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
  if (metrics) {
    const std::string metrics_prefix = "metrics on ";
    const size_t line = out.find('\n') + 1;
    if (out.compare(line, metrics_prefix.size(), metrics_prefix) != 0) {
      return "no 'metrics on' line in: " + out;
    }
    const size_t end = out.find('\n', line);
    const std::string metrics_address = out.substr(line, end - line);
    metrics_port_ = std::stoi(metrics_address.substr(metrics_address.rfind(':') + 1));
    if (metrics_port_ <= 0) return "bad metrics port in: " + out;
  }
  channel_ =
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
  return "";
}

int ServerProcess::Terminate(double seconds) {
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

grpc::Status ReflectionQuery(grpc::Channel* channel, const std::vector<std::string>& requests,
                             std::vector<std::string>* responses) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          channel,
          grpc::internal::RpcMethod(
              "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              grpc::internal::RpcMethod::BIDI_STREAMING),
          &context));
  responses->clear();
  for (const std::string& request : requests) {
    grpc::Slice slice(request);
    grpc::ByteBuffer request_buffer(&slice, 1);
    grpc::ByteBuffer reply;
    if (!stream->Write(request_buffer) || !stream->Read(&reply)) break;
    std::vector<grpc::Slice> slices;
    if (!reply.Dump(&slices).ok()) break;
    std::string& out = responses->emplace_back();
    for (const grpc::Slice& s : slices) out.append(s.begin(), s.end());
  }
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  if (status.ok() && responses->size() != requests.size()) {
    status = grpc::Status(grpc::StatusCode::INTERNAL, "the reflection stream ended early");
  }
  return status;
}

ServerProcess* SharedServerTest::server_ = nullptr;
std::string SharedServerTest::model_;
std::string SharedServerTest::start_error_;

void SharedServerTest::StartSharedServer(const std::string& model, std::vector<std::string> extra) {
  model_ = model;
  start_error_.clear();
  if (!std::filesystem::exists(model)) return;
  server_ = new ServerProcess();
  start_error_ = server_->Start(std::move(extra), model);
  if (start_error_.empty() && !WaitServing(server_->channel().get())) {
    start_error_ = "health never turned SERVING";
  }
}

void SharedServerTest::StopSharedServer() {
  if (server_ == nullptr) return;
  EXPECT_EQ(server_->Terminate(), 0);
  delete server_;
  server_ = nullptr;
}

bool SharedServerTest::RequireSharedServer() {
  if (server_ == nullptr) {
    [] { GTEST_SKIP() << "no model " << model_; }();  // GTEST_SKIP returns void
    return false;
  }
  EXPECT_EQ(start_error_, "");
  return start_error_.empty();
}

bool WaitServing(grpc::Channel* channel) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (std::chrono::steady_clock::now() < deadline) {
    std::string response;
    if (HealthCheck(channel, &response).ok() && response == kServing) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

}  // namespace cmoe::testing
