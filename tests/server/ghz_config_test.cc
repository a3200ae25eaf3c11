// The ghz load profiles of deploy/ghz/ (deploy/ghz/README.md): each must name a method of
// cmoe.v1.Inference, rely on server reflection, and carry request data that protobuf's JSON
// parser (the mapping ghz uses) turns into a valid request that a live cmoe-serve accepts. When a
// `ghz` binary is on PATH the profiles also run for real.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/server/server_process.h"
#include "tests/test_util.h"
#include "tests/tools/subprocess.h"

namespace cmoe::server {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kModel[] = "tinystories-656k";

fs::path GhzDir() { return fs::path(CMOE_SOURCE_DIR) / "deploy" / "ghz"; }

std::vector<fs::path> Profiles() {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(GhzDir())) {
    if (entry.path().extension() == ".json") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

Json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
}

// "cmoe.v1.Inference.Generate" or "cmoe.v1.Inference/Generate" -> the method's descriptor.
const google::protobuf::MethodDescriptor* FindMethod(std::string call) {
  const size_t slash = call.find('/');
  if (slash != std::string::npos) call[slash] = '.';
  return google::protobuf::DescriptorPool::generated_pool()->FindMethodByName(call);
}

// The profile's "data" as a GenerateRequest, through protobuf's JSON parser (unknown fields are
// errors, as in ghz).
absl::Status ParseData(const Json& profile, v1::GenerateRequest* request) {
  const auto status =
      google::protobuf::util::JsonStringToMessage(profile["data"].dump(), request, {});
  if (!status.ok()) return absl::InvalidArgumentError(std::string(status.message()));
  return absl::OkStatus();
}

// An executable `ghz` on PATH, or "".
std::string FindGhz() {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return "";
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path candidate = fs::path(dir.empty() ? "." : dir) / "ghz";
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

TEST(GhzConfigTest, ProfilesForBothGenerateRpcsExist) {
  std::vector<std::string> calls;
  for (const fs::path& file : Profiles()) {
    const Json profile = ReadJson(file);
    ASSERT_TRUE(profile.is_object()) << file << " is not a JSON object";
    calls.push_back(profile.value("call", ""));
  }
  EXPECT_NE(std::find(calls.begin(), calls.end(), "cmoe.v1.Inference.Generate"), calls.end());
  EXPECT_NE(std::find(calls.begin(), calls.end(), "cmoe.v1.Inference.GenerateStream"), calls.end());
}

TEST(GhzConfigTest, EachProfileIsWellFormed) {
  for (const fs::path& file : Profiles()) {
    SCOPED_TRACE(file.string());
    const Json profile = ReadJson(file);
    ASSERT_TRUE(profile.is_object());
    // Reflection, not .proto files; plaintext like cmoe-serve.
    EXPECT_FALSE(profile.contains("proto"));
    EXPECT_FALSE(profile.contains("protoset"));
    EXPECT_EQ(profile.value("insecure", false), true);
    // The method exists, and is one of the generation RPCs the data is written for.
    const google::protobuf::MethodDescriptor* method = FindMethod(profile.value("call", ""));
    ASSERT_NE(method, nullptr) << "unknown call " << profile.value("call", "");
    EXPECT_EQ(method->service()->full_name(), "cmoe.v1.Inference");
    EXPECT_EQ(method->input_type()->full_name(), "cmoe.v1.GenerateRequest");
    // Bounded load: a request count and concurrency, and a per-call timeout.
    EXPECT_GT(profile.value("total", 0), 0);
    EXPECT_GT(profile.value("concurrency", 0), 0);
    EXPECT_LE(profile.value("concurrency", 0), profile.value("total", 0));
    EXPECT_FALSE(profile.value("timeout", "").empty());
    // The data is a valid GenerateRequest.
    v1::GenerateRequest request;
    ASSERT_TRUE(ParseData(profile, &request).ok()) << ParseData(profile, &request);
    EXPECT_FALSE(request.text().empty());
    EXPECT_GT(request.stopping().max_new_tokens(), 0);
  }
}

TEST(GhzConfigTest, ParserRejectsWhatGhzWouldReject) {
  // The check above is only worth something if the parser is strict.
  v1::GenerateRequest request;
  EXPECT_FALSE(ParseData(Json::parse(R"({"data": {"prompt": "x"}})"), &request).ok());
  EXPECT_FALSE(
      ParseData(Json::parse(R"({"data": {"stopping": {"max_new_tokens": "many"}}})"), &request)
          .ok());
  EXPECT_TRUE(ParseData(Json::parse(R"({"data": {"text": "x"}})"), &request).ok());
}

class GhzLiveTest : public cmoe::testing::SharedServerTest {
 protected:
  static void SetUpTestSuite() { StartSharedServer(cmoe::testing::SharedModel(kModel)); }
  static void TearDownTestSuite() { StopSharedServer(); }
  void SetUp() override { RequireSharedServer(); }
};

// ghz resolves the call through reflection: the live server must list the service and serve the
// descriptor of every profile's method.
TEST_F(GhzLiveTest, ReflectionDescribesEachProfilesMethod) {
  // ServerReflectionRequest: list_services = 7, file_containing_symbol = 4 (strings < 128 bytes).
  const auto field = [](int number, const std::string& value) {
    return std::string(1, static_cast<char>(number << 3 | 2)) +
           std::string(1, static_cast<char>(value.size())) + value;
  };
  std::vector<std::string> requests = {field(7, "")};
  std::vector<std::string> methods;
  for (const fs::path& file : Profiles()) {
    std::string call = ReadJson(file).value("call", "");
    std::replace(call.begin(), call.end(), '/', '.');
    requests.push_back(field(4, call));
    methods.push_back(call.substr(call.rfind('.') + 1));
  }
  std::vector<std::string> replies;
  const grpc::Status status =
      cmoe::testing::ReflectionQuery(server_->channel().get(), requests, &replies);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_NE(replies[0].find("cmoe.v1.Inference"), std::string::npos);
  for (size_t i = 0; i < methods.size(); ++i) {
    // The reply carries the serialized FileDescriptorProto of cmoe/v1/inference.proto, with the
    // method and its request type (an error reply would carry neither).
    EXPECT_NE(replies[i + 1].find("cmoe/v1/inference.proto"), std::string::npos) << methods[i];
    EXPECT_NE(replies[i + 1].find(methods[i]), std::string::npos) << methods[i];
    EXPECT_NE(replies[i + 1].find("GenerateRequest"), std::string::npos) << methods[i];
  }
}

TEST_F(GhzLiveTest, EachProfileRequestSucceeds) {
  auto stub = server_->Stub();
  for (const fs::path& file : Profiles()) {
    SCOPED_TRACE(file.string());
    const Json profile = ReadJson(file);
    v1::GenerateRequest request;
    ASSERT_TRUE(ParseData(profile, &request).ok());
    const int expected = request.stopping().ignore_eos() ? request.stopping().max_new_tokens() : 0;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    const std::string call = profile.value("call", "");
    if (call.ends_with("GenerateStream")) {
      auto reader = stub->GenerateStream(&context, request);
      v1::GenerateStreamResponse message;
      v1::FinishInfo finish;
      while (reader->Read(&message)) {
        if (message.has_finish()) finish = message.finish();
      }
      const grpc::Status status = reader->Finish();
      ASSERT_TRUE(status.ok()) << status.error_message();
      if (expected > 0) {
        EXPECT_EQ(finish.usage().generated_tokens(), expected);
      }
    } else {
      v1::GenerateResponse response;
      const grpc::Status status = stub->Generate(&context, request, &response);
      ASSERT_TRUE(status.ok()) << status.error_message();
      if (expected > 0) {
        EXPECT_EQ(response.finish().usage().generated_tokens(), expected);
      }
    }
  }
}

TEST_F(GhzLiveTest, GhzRunsEachProfileWhenInstalled) {
  const std::string ghz = FindGhz();
  if (ghz.empty()) GTEST_SKIP() << "ghz is not on PATH (not packaged for Debian)";
  const std::string host = "127.0.0.1:" + std::to_string(server_->port());
  for (const fs::path& file : Profiles()) {
    SCOPED_TRACE(file.string());
    const cmoe::testing::SubprocessResult r =
        cmoe::testing::RunSubprocess({.argv = {ghz, "--config", file.string(), "-n", "8", "-c", "2",
                                               "--connections", "1", "-O", "json", host},
                                      .timeout_seconds = 120});
    ASSERT_EQ(r.exit_code, 0) << r.Describe() << "\n" << r.err;
    const Json report = Json::parse(r.out, nullptr, false);
    ASSERT_TRUE(report.is_object()) << r.out;
    EXPECT_EQ(report.value("count", 0), 8);
    const Json codes = report.value("statusCodeDistribution", Json::object());
    EXPECT_EQ(codes.value("OK", 0), 8) << codes.dump();
  }
}

}  // namespace
}  // namespace cmoe::server
