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
