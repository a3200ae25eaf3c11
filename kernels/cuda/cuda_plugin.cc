// The entry point of the CUDA backend plugin (libcmoe_kernels_cuda.so) that
// kernels/backend_factory.cc loads with dlopen when a tool asks for --device cuda[:N]. Both sides
// are built together by one compiler, so C++ types cross the C-linkage boundary as they are.
#include <memory>

#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

extern "C" __attribute__((visibility("default"))) void CmoeMakeCudaBackend(
    int device, absl::StatusOr<std::unique_ptr<cmoe::kernels::Backend>>* out) {
  *out = cmoe::kernels::cuda::MakeCudaBackend({.device = device});
}

#if defined(CMOE_HAVE_NCCL)
#include <span>
#include <vector>

#include "kernels/communicator.h"
#include "kernels/cuda/nccl_communicator.h"

// One NCCL communicator per device (kernels/communicator_factory.cc).
extern "C" __attribute__((visibility("default"))) void CmoeMakeNcclCommunicators(
    const int* devices, int count,
    absl::StatusOr<std::vector<std::unique_ptr<cmoe::kernels::Communicator>>>* out) {
  auto comms = cmoe::kernels::cuda::MakeNcclCommunicators(
      std::span<const int>(devices, static_cast<size_t>(count)));
  if (!comms.ok()) {
    *out = comms.status();
    return;
  }
  std::vector<std::unique_ptr<cmoe::kernels::Communicator>> result;
  for (auto& comm : *comms) result.push_back(std::move(comm));
  *out = std::move(result);
}
#endif
