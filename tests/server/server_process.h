// cmoe-serve as a child process for end-to-end tests (server_test, cli_test): started on a free
// port with a model, its "listening on HOST:PORT" (and "metrics on HOST:PORT") stdout lines read
// back, and a channel to it; plus raw grpc.health.v1.Health/Check calls (Debian ships no
// health.proto).
#ifndef CMOE_TESTS_SERVER_SERVER_PROCESS_H_
#define CMOE_TESTS_SERVER_SERVER_PROCESS_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "gtest/gtest.h"

#include "cmoe/v1/inference.grpc.pb.h"

namespace cmoe::testing {

// cmoe-serve as a child process: stdout through a pipe (for the "listening on" and "metrics on"
// lines), stderr inherited (the request log shows up in the test output). Metrics are served on a
// free port unless `extra` says otherwise. The binary is CMOE_BIN_DIR/cmoe-serve.
class ServerProcess {
 public:
  ServerProcess() = default;
  ServerProcess(const ServerProcess&) = delete;
  ServerProcess& operator=(const ServerProcess&) = delete;
  ~ServerProcess();

  // Starts the server and waits for its port; empty string on success, else why not.
  std::string Start(std::vector<std::string> extra, const std::string& model);

  // SIGTERM, then the exit code (-1 on a signal or after `seconds`).
  int Terminate(double seconds = 20);

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  std::unique_ptr<cmoe::v1::Inference::Stub> Stub() const {
    return cmoe::v1::Inference::NewStub(channel_);
  }

 private:
  pid_t pid_ = -1;
  int out_fd_ = -1;
  int port_ = 0;
  int metrics_port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

// A test suite whose tests share one cmoe-serve, started once for the suite:
//
//   class MyTest : public SharedServerTest {
//    protected:
//     static void SetUpTestSuite() { StartSharedServer(SharedModel("tinystories-656k")); }
//     static void TearDownTestSuite() { StopSharedServer(); }
//     void SetUp() override { if (!RequireSharedServer()) return; ... }
//   };
class SharedServerTest : public ::testing::Test {
 protected:
  // Starts the server with `model` and waits until it is SERVING; does nothing when the model
  // directory does not exist (the suite's tests then skip).
  static void StartSharedServer(const std::string& model, std::vector<std::string> extra = {});
  // SIGTERM; the server must exit 0.
  static void StopSharedServer();
  // From SetUp: false (the test skipped or failed) unless the server is up.
  bool RequireSharedServer();

  static ServerProcess* server_;

 private:
  static std::string model_;
  static std::string start_error_;
};

// grpc.health.v1.Health/Check with an empty request (the whole server), as raw bytes: the
// response's field 1 is the status (SERVING = 1).
grpc::Status HealthCheck(grpc::Channel* channel, std::string* response);

// The serialized HealthCheckResponse{status: SERVING}.
inline const std::string kServing = std::string("\x08\x01", 2);

// grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo: sends each serialized
// ServerReflectionRequest in `requests` on one stream and collects the serialized responses
// (Debian ships no reflection.proto for clients). E.g. list_services is field 7, and
// file_containing_symbol field 4, of the request.
grpc::Status ReflectionQuery(grpc::Channel* channel, const std::vector<std::string>& requests,
                             std::vector<std::string>* responses);

// Polls health until SERVING (the model loads after the server starts listening).
bool WaitServing(grpc::Channel* channel);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_SERVER_SERVER_PROCESS_H_
