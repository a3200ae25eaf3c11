#include "kernels/communicator_factory.h"

#include <algorithm>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/backend_factory.h"
#include "kernels/cuda_plugin_loader.h"
#include "kernels/threaded_communicator.h"

namespace cmoe::kernels {

namespace {

bool IsCuda(const std::string& device) {
  return device == "cuda" || absl::StartsWith(device, "cuda:");
}

}  // namespace

absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateCommunicators(
    std::span<const std::string> devices) {
  if (devices.empty()) return absl::InvalidArgumentError("CreateCommunicators: no devices");
  const auto cuda = static_cast<size_t>(std::count_if(devices.begin(), devices.end(), IsCuda));
  if (cuda == 0) {
    for (const std::string& d : devices) {
      if (d != "cpu" && d != "reference") {
        return absl::InvalidArgumentError(
            absl::StrCat("device '", d, "' is not one of cpu, reference, cuda[:N]"));
      }
    }
    std::vector<std::unique_ptr<Communicator>> comms;
    for (auto& comm : ThreadedCommunicator::MakeGroup(static_cast<int32_t>(devices.size()))) {
      comms.push_back(std::move(comm));
    }
    return comms;
  }
  if (cuda != devices.size()) {
    return absl::InvalidArgumentError(absl::StrCat("expert-parallel ranks on ",
                                                   absl::StrJoin(devices, ", "),
                                                   ": all of them CUDA devices, or none"));
  }
  std::vector<int> ordinals;
  for (const std::string& d : devices) {
    absl::StatusOr<int> ordinal = ParseCudaDevice(d);
    if (!ordinal.ok()) return ordinal.status();
    if (std::find(ordinals.begin(), ordinals.end(), *ordinal) != ordinals.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert-parallel ranks on ", absl::StrJoin(devices, ", "), ": GPU ",
                       *ordinal, " appears twice (NCCL needs one GPU per rank)"));
    }
    ordinals.push_back(*ordinal);
  }
  using MakeFn =
      void (*)(const int*, int, absl::StatusOr<std::vector<std::unique_ptr<Communicator>>>*);
  absl::StatusOr<void*> make = CudaPluginSymbol("CmoeMakeNcclCommunicators");
  if (!make.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "expert parallelism over ", absl::StrJoin(devices, ", "), " needs NCCL: ",
        make.status().message(), " (a build without NCCL has no multi-GPU communicator)"));
  }
  absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> comms;
  const auto make_comms = reinterpret_cast<MakeFn>(*make);
  make_comms(ordinals.data(), static_cast<int>(ordinals.size()), &comms);
  if (!comms.ok()) {
    return absl::Status(comms.status().code(),
                        absl::StrCat("NCCL communicators for ", absl::StrJoin(devices, ", "), ": ",
                                     comms.status().message()));
  }
  return comms;
}

}  // namespace cmoe::kernels
