// The generated API code (proto/cmoe/v1/inference.proto): wire round trips, oneof and optional
// presence, the service's shape, and that gRPC's health checking and server reflection link and
// answer on an in-process server.
#include <fstream>
#include <memory>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/codegen/client_unary_call.h>
#include <grpcpp/impl/codegen/sync_stream.h>

#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/server_process.h"

namespace cmoe::v1 {
namespace {

using ::testing::HasSubstr;

template <typename M>
M RoundTrip(const M& message) {
  std::string wire;
  EXPECT_TRUE(message.SerializeToString(&wire));
  M parsed;
  EXPECT_TRUE(parsed.ParseFromString(wire));
  return parsed;
}

TEST(ProtoTest, GenerateRequestRoundTrip) {
  GenerateRequest request;
  request.set_text("Once upon a time");
  request.set_add_bos(false);
  request.mutable_sampling()->set_temperature(0.7f);
  request.mutable_sampling()->set_top_p(0.9f);
  request.mutable_sampling()->set_seed(42);
  request.mutable_stopping()->set_max_new_tokens(64);
  request.mutable_stopping()->set_min_new_tokens(2);
  request.mutable_stopping()->add_stop_strings("\n\n");
  request.mutable_stopping()->add_stop_token_ids(13);
  request.mutable_stopping()->set_ignore_eos(true);
  request.mutable_stopping()->set_time_limit_ms(5000);
  request.mutable_output()->set_return_token_ids(true);
  request.mutable_output()->set_logprobs(true);
  request.mutable_output()->set_top_logprobs(5);
  request.mutable_output()->set_echo_prompt(true);
  request.set_num_activated_experts(3);

  const GenerateRequest parsed = RoundTrip(request);
  EXPECT_EQ(parsed.prompt_case(), GenerateRequest::kText);
  EXPECT_EQ(parsed.text(), "Once upon a time");
  ASSERT_TRUE(parsed.has_add_bos());
  EXPECT_FALSE(parsed.add_bos());
  EXPECT_FLOAT_EQ(parsed.sampling().temperature(), 0.7f);
  EXPECT_FLOAT_EQ(parsed.sampling().top_p(), 0.9f);
  EXPECT_EQ(parsed.sampling().seed(), 42u);
  EXPECT_FALSE(parsed.sampling().has_top_k());
  EXPECT_FALSE(parsed.sampling().has_min_p());
  EXPECT_EQ(parsed.stopping().max_new_tokens(), 64);
  EXPECT_EQ(parsed.stopping().min_new_tokens(), 2);
  EXPECT_THAT(parsed.stopping().stop_strings(), ::testing::ElementsAre("\n\n"));
  EXPECT_THAT(parsed.stopping().stop_token_ids(), ::testing::ElementsAre(13));
  EXPECT_TRUE(parsed.stopping().ignore_eos());
  EXPECT_EQ(parsed.stopping().time_limit_ms(), 5000u);
  EXPECT_TRUE(parsed.output().return_token_ids());
  EXPECT_TRUE(parsed.output().logprobs());
  EXPECT_EQ(parsed.output().top_logprobs(), 5);
  EXPECT_TRUE(parsed.output().echo_prompt());
  EXPECT_EQ(parsed.num_activated_experts(), 3);
}

TEST(ProtoTest, PromptOneofHoldsOneKind) {
  GenerateRequest request;
  EXPECT_EQ(request.prompt_case(), GenerateRequest::PROMPT_NOT_SET);
  request.set_text("hello");
  request.mutable_token_ids()->add_ids(1);  // switches the oneof, clearing the text
  request.mutable_token_ids()->add_ids(15043);
  EXPECT_EQ(request.prompt_case(), GenerateRequest::kTokenIds);
  EXPECT_FALSE(request.has_text());
  EXPECT_EQ(request.text(), "");

  const GenerateRequest parsed = RoundTrip(request);
  EXPECT_EQ(parsed.prompt_case(), GenerateRequest::kTokenIds);
  EXPECT_THAT(parsed.token_ids().ids(), ::testing::ElementsAre(1, 15043));

  // An empty token list is still a set oneof: the server can tell "empty prompt" from "none".
  GenerateRequest empty_ids;
  empty_ids.mutable_token_ids();
  EXPECT_EQ(RoundTrip(empty_ids).prompt_case(), GenerateRequest::kTokenIds);
  GenerateRequest empty_text;
  empty_text.set_text("");
  EXPECT_EQ(RoundTrip(empty_text).prompt_case(), GenerateRequest::kText);
}

TEST(ProtoTest, OptionalZeroIsPresentOnTheWire) {
  GenerateRequest request;
  request.mutable_sampling()->set_temperature(0.0f);  // greedy, explicitly
  request.mutable_sampling()->set_presence_penalty(0.0f);
  request.mutable_sampling()->set_seed(0);
  request.set_add_bos(false);

  const GenerateRequest parsed = RoundTrip(request);
  ASSERT_TRUE(parsed.has_sampling());
  EXPECT_TRUE(parsed.sampling().has_temperature());
  EXPECT_EQ(parsed.sampling().temperature(), 0.0f);
  EXPECT_TRUE(parsed.sampling().has_presence_penalty());
  EXPECT_TRUE(parsed.sampling().has_seed());
  EXPECT_TRUE(parsed.has_add_bos());
  for (bool has :
       {parsed.sampling().has_top_k(), parsed.sampling().has_top_p(), parsed.sampling().has_min_p(),
        parsed.sampling().has_repetition_penalty(), parsed.sampling().has_frequency_penalty()}) {
    EXPECT_FALSE(has);
  }
  // Unset sub-messages and optionals stay unset.
  const GenerateRequest empty = RoundTrip(GenerateRequest());
  EXPECT_FALSE(empty.has_sampling());
  EXPECT_FALSE(empty.has_stopping());
  EXPECT_FALSE(empty.has_output());
  EXPECT_FALSE(empty.has_add_bos());
  EXPECT_EQ(GenerateRequest().ByteSizeLong(), 0u);
}

TEST(ProtoTest, FinalStreamMessageAndBytesPieces) {
  GenerateStreamResponse last;
  last.set_text("end");
  last.add_token_ids(2);
  TokenLogprob* lp = last.add_logprobs();
  lp->set_token_id(2);
  lp->set_piece(std::string("\xE2\x82", 2));  // half a UTF-8 character: fine in bytes
  lp->set_logprob(-0.25f);
  lp->add_top_logprobs()->set_token_id(7);
  FinishInfo* finish = last.mutable_finish();
  finish->set_reason(FINISH_REASON_STOP_TOKEN);
  finish->mutable_usage()->set_prompt_tokens(5);
  finish->mutable_usage()->set_generated_tokens(9);
  finish->mutable_timings()->set_queue_ms(1.5);
  finish->mutable_timings()->set_time_to_first_token_ms(12.0);
  finish->mutable_timings()->set_decode_ms(80.0);
  finish->set_seed(1234);

  const GenerateStreamResponse parsed = RoundTrip(last);
  ASSERT_TRUE(parsed.has_finish());
  EXPECT_EQ(parsed.finish().reason(), FINISH_REASON_STOP_TOKEN);
  EXPECT_EQ(parsed.finish().usage().generated_tokens(), 9);
  EXPECT_DOUBLE_EQ(parsed.finish().timings().time_to_first_token_ms(), 12.0);
  EXPECT_EQ(parsed.logprobs(0).piece(), std::string("\xE2\x82", 2));
  EXPECT_EQ(parsed.logprobs(0).top_logprobs(0).token_id(), 7);
  EXPECT_FALSE(GenerateStreamResponse().has_finish());

  TokenizeResponse tokens;
  tokens.add_token_ids(1);
  tokens.add_pieces(std::string("\xF0\x9F", 2));
  EXPECT_EQ(RoundTrip(tokens).pieces(0), std::string("\xF0\x9F", 2));
}

TEST(ProtoTest, GenerateResponseMatchesStreamFieldNumbers) {
  const auto* unary = GenerateResponse::descriptor();
  const auto* stream = GenerateStreamResponse::descriptor();
  ASSERT_EQ(unary->field_count(), stream->field_count());
  for (int i = 0; i < unary->field_count(); ++i) {
    const auto* u = unary->field(i);
    const auto* s = stream->FindFieldByNumber(u->number());
    ASSERT_NE(s, nullptr) << u->name();
    EXPECT_EQ(s->name(), u->name());
    EXPECT_EQ(s->type(), u->type());
  }
  // A stream message parses as a unary response and vice versa.
  GenerateStreamResponse chunk;
  chunk.set_text("abc");
  chunk.mutable_finish()->set_reason(FINISH_REASON_LENGTH);
  GenerateResponse as_unary;
  ASSERT_TRUE(as_unary.ParseFromString(chunk.SerializeAsString()));
  EXPECT_EQ(as_unary.text(), "abc");
  EXPECT_EQ(as_unary.finish().reason(), FINISH_REASON_LENGTH);
}

TEST(ProtoTest, FinishReasons) {
  const auto* reasons = FinishReason_descriptor();
  EXPECT_EQ(FINISH_REASON_UNSPECIFIED, 0);
  std::vector<std::string> names;
  for (int i = 0; i < reasons->value_count(); ++i) names.push_back(reasons->value(i)->name());
  EXPECT_THAT(names, ::testing::ElementsAre("FINISH_REASON_UNSPECIFIED", "FINISH_REASON_LENGTH",
                                            "FINISH_REASON_STOP_STRING", "FINISH_REASON_STOP_TOKEN",
                                            "FINISH_REASON_CONTEXT", "FINISH_REASON_TIME_LIMIT",
                                            "FINISH_REASON_CANCELLED"));
}

TEST(ProtoTest, ServiceDescriptor) {
  EXPECT_STREQ(Inference::service_full_name(), "cmoe.v1.Inference");
  const auto* service =
      google::protobuf::DescriptorPool::generated_pool()->FindServiceByName("cmoe.v1.Inference");
  ASSERT_NE(service, nullptr);
  EXPECT_EQ(service->file()->name(), "cmoe/v1/inference.proto");
  EXPECT_EQ(service->file()->package(), "cmoe.v1");
  ASSERT_EQ(service->method_count(), 4);

  struct Expected {
    const char* name;
    const char* input;
    const char* output;
    bool server_streaming;
  };
  const Expected expected[] = {
      {"Generate", "cmoe.v1.GenerateRequest", "cmoe.v1.GenerateResponse", false},
      {"GenerateStream", "cmoe.v1.GenerateRequest", "cmoe.v1.GenerateStreamResponse", true},
      {"Tokenize", "cmoe.v1.TokenizeRequest", "cmoe.v1.TokenizeResponse", false},
      {"GetModelInfo", "cmoe.v1.GetModelInfoRequest", "cmoe.v1.GetModelInfoResponse", false},
  };
  for (const Expected& e : expected) {
    SCOPED_TRACE(e.name);
    const auto* method = service->FindMethodByName(e.name);
    ASSERT_NE(method, nullptr);
    EXPECT_EQ(method->input_type()->full_name(), e.input);
    EXPECT_EQ(method->output_type()->full_name(), e.output);
    EXPECT_FALSE(method->client_streaming());
    EXPECT_EQ(method->server_streaming(), e.server_streaming);
  }
}

// "Every message, field and enum value documented": each declaration in the .proto has a
// comment on the line before it.
TEST(ProtoTest, EveryDeclarationIsDocumented) {
  const std::string path = std::string(CMOE_SOURCE_DIR) + "/proto/cmoe/v1/inference.proto";
  std::ifstream in(path);
  ASSERT_TRUE(in) << path;
  const std::regex declaration(
      R"(^\s*((message|enum|service|oneof)\s+\w+\s*\{|rpc\s+\w+|[\w.]+(\s+[\w.]+)*\s*=\s*\d+\s*;))");
  const std::regex comment(R"(^\s*//)");
  std::string line, previous;
  int lineno = 0, declarations = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (std::regex_search(line, declaration)) {
      ++declarations;
      EXPECT_TRUE(std::regex_search(previous, comment))
          << path << ":" << lineno << ": undocumented: " << line;
    }
    previous = line;
  }
  EXPECT_GT(declarations, 100);
}

// Sends raw protobuf bytes to a unary method (for services whose .proto Debian does not ship).
grpc::Status RawUnary(grpc::Channel* channel, const std::string& method, const std::string& request,
                      std::string* response) {
  grpc::Slice slice(request);
  grpc::ByteBuffer request_buffer(&slice, 1);
  grpc::ByteBuffer response_buffer;
  grpc::ClientContext context;
  grpc::Status status = grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel, grpc::internal::RpcMethod(method.c_str(), grpc::internal::RpcMethod::NORMAL_RPC),
      &context, request_buffer, &response_buffer);
  if (status.ok()) {
    std::vector<grpc::Slice> slices;
    EXPECT_TRUE(response_buffer.Dump(&slices).ok());
    response->clear();
    for (const grpc::Slice& s : slices) response->append(s.begin(), s.end());
  }
  return status;
}

std::string LengthDelimited(int field, const std::string& value) {
  std::string out(1, static_cast<char>(field << 3 | 2));
  out += static_cast<char>(value.size());  // < 128 bytes in these tests
  return out + value;
}

// grpc::EnableDefaultHealthCheckService and the reflection plugin on a server with the (not yet
// implemented) Inference service, reached through an in-process channel.
TEST(ProtoTest, HealthAndReflectionOnAnInProcessServer) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  Inference::Service service;  // every method answers UNIMPLEMENTED
  grpc::ServerBuilder builder;
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  std::shared_ptr<grpc::Channel> channel = server->InProcessChannel(grpc::ChannelArguments());

  // The generated stub reaches the service.
  {
    auto stub = Inference::NewStub(channel);
    grpc::ClientContext context;
    GenerateRequest request;
    request.set_text("hi");
    GenerateResponse response;
    EXPECT_EQ(stub->Generate(&context, request, &response).error_code(),
              grpc::StatusCode::UNIMPLEMENTED);
  }

  // grpc.health.v1.Health/Check: HealthCheckResponse.status (field 1) SERVING = 1,
  // NOT_SERVING = 2.
  grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
  ASSERT_NE(health, nullptr);
  const std::string kCheck = "/grpc.health.v1.Health/Check";
  std::string response;
  ASSERT_TRUE(RawUnary(channel.get(), kCheck, "", &response).ok());
  EXPECT_EQ(response, std::string("\x08\x01", 2));
  health->SetServingStatus(false);  // what the server does while loading and draining
  ASSERT_TRUE(RawUnary(channel.get(), kCheck, "", &response).ok());
  EXPECT_EQ(response, std::string("\x08\x02", 2));
  health->SetServingStatus("cmoe.v1.Inference", true);
  health->SetServingStatus(true);
  ASSERT_TRUE(
      RawUnary(channel.get(), kCheck, LengthDelimited(1, "cmoe.v1.Inference"), &response).ok());
  EXPECT_EQ(response, std::string("\x08\x01", 2));

  // grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo (bidi streaming):
  // list_services (field 7), then file_containing_symbol (field 4).
  std::vector<std::string> replies;
  ASSERT_TRUE(cmoe::testing::ReflectionQuery(
                  channel.get(), {LengthDelimited(7, ""), LengthDelimited(4, "cmoe.v1.Inference")},
                  &replies)
                  .ok());
  EXPECT_THAT(replies[0], HasSubstr("cmoe.v1.Inference"));
  EXPECT_THAT(replies[0], HasSubstr("grpc.health.v1.Health"));
  EXPECT_THAT(replies[1], HasSubstr("cmoe/v1/inference.proto"));
  EXPECT_THAT(replies[1], HasSubstr("GenerateStreamResponse"));
  server->Shutdown();
}

}  // namespace
}  // namespace cmoe::v1
