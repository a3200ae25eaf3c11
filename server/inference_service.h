// The cmoe.v1.Inference gRPC service (proto/cmoe/v1/inference.proto) on top of the serving
// engine: proto <-> engine conversion and the RPC handlers, on gRPC's callback API.
//
//   InferenceService service({.model_name = "tinystories"});
//   builder.RegisterService(&service);
//   ... server started; the model loads ...
//   service.SetEngine(engine.get());   // before: every RPC is UNAVAILABLE ("loading")
//
// Generate and GenerateStream submit an engine::GenerationRequest whose RequestSink is the RPC's
// reactor; the reactor lives until both the engine's OnFinish and gRPC's OnDone have happened.
// A cancelled call (client cancel or gRPC deadline) cancels the engine request, which frees its
// KV blocks at the next step.
//
// With a ServerMetrics (optional, not owned), every RPC reports OnRequestStart / OnRequestDone
// (rpc, gRPC code, finish reason, duration, prompt and generated tokens), and the generation
// RPCs also OnQueue (the engine's queue time), OnFirstToken (arrival to first token) and OnToken
// (the gaps between a stream's consecutive tokens, measured here).
#ifndef CMOE_SERVER_INFERENCE_SERVICE_H_
#define CMOE_SERVER_INFERENCE_SERVICE_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cmoe/v1/inference.grpc.pb.h"
#include "cmoe/v1/inference.pb.h"
#include "engine/engine.h"
#include "server/serial_executor.h"

namespace cmoe::server {

class ServerMetrics;

// absl::Status -> grpc::Status (the codes coincide); the message is kept.
grpc::Status ToGrpcStatus(const absl::Status& status);

struct ServiceOptions {
  std::string model_name;      // GetModelInfoResponse.model_name
  std::string device = "cpu";  // GetModelInfoResponse.device
  int32_t default_max_new_tokens = 128;
};

// A GenerateRequest converted for the engine, plus what the reply needs.
struct PreparedRequest {
  engine::GenerationRequest request;
  uint64_t seed = 0;                 // the request's, or the one drawn for it
  bool client_deadline_set = false;  // the engine deadline is the call's gRPC deadline
  std::string echo_text;             // OutputOptions.echo_prompt
};

// Validates what the engine does not (prompt oneof, add_bos with token ids, empty text,
// max_new_tokens beyond the context) and converts. InvalidArgument naming the field.
// `client_deadline` is the call's gRPC deadline (system_clock::time_point::max() when none).
absl::StatusOr<PreparedRequest> PrepareRequest(
    const v1::GenerateRequest& request, const engine::Engine& engine,
    int32_t default_max_new_tokens, std::chrono::steady_clock::time_point received,
    std::chrono::system_clock::time_point client_deadline);

class InferenceService final : public v1::Inference::CallbackService {
 public:
  // `metrics` (nullable, not owned) must outlive the service.
  explicit InferenceService(ServiceOptions options, ServerMetrics* metrics = nullptr);

  // Makes the service answer with `engine` (not owned; must outlive the server's RPCs).
  void SetEngine(engine::Engine* engine) { engine_.store(engine, std::memory_order_release); }

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateStreamResponse>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::GetModelInfoResponse* response) override;

 private:
  engine::Engine* engine() const { return engine_.load(std::memory_order_acquire); }

  const ServiceOptions options_;
  ServerMetrics* const metrics_;
  // Starts the gRPC writes of GenerateStream calls off the engine's step thread.
  SerialExecutor writer_{"cmoe-writer"};
  std::atomic<engine::Engine*> engine_{nullptr};
};

}  // namespace cmoe::server

#endif  // CMOE_SERVER_INFERENCE_SERVICE_H_
