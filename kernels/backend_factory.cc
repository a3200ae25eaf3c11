#include "kernels/backend_factory.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"

namespace cmoe::kernels {

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  if (options.threads > kMaxThreads) {
    return absl::InvalidArgumentError(absl::StrCat("--threads ", options.threads,
                                                   " is more than the ", kMaxThreads,
                                                   " supported (0: all cores)"));
  }
  if (options.device == "cpu") {
    return cpu::MakeCpuBackend({.threads = options.threads});
  }
  if (options.device == "reference") return cpu::MakeReferenceBackend();
  if (options.device == "cuda" || absl::StartsWith(options.device, "cuda:")) {
    return absl::UnavailableError(absl::StrCat(
        "--device ", options.device, ": this build has no CUDA backend; use --device cpu"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", options.device, "' is not one of cpu, reference, cuda[:N]"));
}

}  // namespace cmoe::kernels
