// Creates the backend a tool or the server asked for with --device.
//
//   CMOE_ASSIGN_OR_RETURN(auto backend, CreateBackend({.device = "cpu", .threads = 2}));
#ifndef CMOE_KERNELS_BACKEND_FACTORY_H_
#define CMOE_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace cmoe::kernels {

// More threads than this is a typo, not a machine (each thread is a real OS thread).
inline constexpr int kMaxThreads = 1024;

struct BackendOptions {
  // "cpu" (threads + SIMD), "reference" (plain loops, for checking), or "cuda[:N]".
  std::string device = "cpu";
  // CPU worker threads including the caller; <= 0 means all cores; above kMaxThreads is
  // InvalidArgument.
  int threads = 0;
};

// InvalidArgument for an unknown device or a malformed ordinal; Unavailable for "cuda" in a build
// without CUDA or on a machine without a usable GPU (the message names the reason).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

// "cuda" -> 0, "cuda:N" -> N; InvalidArgument otherwise. `device` starts with "cuda".
absl::StatusOr<int> ParseCudaDevice(const std::string& device);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_BACKEND_FACTORY_H_
