#include "kernels/backend_factory.h"

#include <charconv>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"
#include "kernels/cuda_plugin_loader.h"

namespace cmoe::kernels {

absl::StatusOr<int> ParseCudaDevice(const std::string& device) {
  if (device == "cuda") return 0;
  const std::string digits = device.substr(5);  // after "cuda:"
  int ordinal = -1;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), ordinal);
  if (digits.empty() || error != std::errc() || end != digits.data() + digits.size() ||
      ordinal < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--device '", device, "': expected cuda or cuda:N with N a device ordinal (0, 1, ...)"));
  }
  return ordinal;
}

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
    auto ordinal = ParseCudaDevice(options.device);
    if (!ordinal.ok()) return ordinal.status();
#if defined(CMOE_HAVE_CUDA)
    using MakeCudaFn = void (*)(int, absl::StatusOr<std::unique_ptr<Backend>>*);
    absl::StatusOr<void*> make = CudaPluginSymbol("CmoeMakeCudaBackend");
    if (!make.ok()) {
      return absl::UnavailableError(
          absl::StrCat("--device ", options.device, ": ", make.status().message()));
    }
    absl::StatusOr<std::unique_ptr<Backend>> backend;
    const auto make_backend = reinterpret_cast<MakeCudaFn>(*make);
    make_backend(*ordinal, &backend);
    if (!backend.ok()) {
      return absl::Status(backend.status().code(), absl::StrCat("--device ", options.device, ": ",
                                                                backend.status().message()));
    }
    return backend;
#else
    return absl::UnavailableError(absl::StrCat(
        "--device ", options.device,
        ": this build has no CUDA backend (configure with -DCMOE_CUDA=ON); use --device cpu"));
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device '", options.device, "' is not one of cpu, reference, cuda[:N]"));
}

}  // namespace cmoe::kernels
