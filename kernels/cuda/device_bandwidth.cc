#include "kernels/cuda/device_bandwidth.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_status.h"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kTimedCopies = 7;

// Everything the measurement allocates, released (and the caller's device restored) however
// the measurement ends.
class CopyResources {
 public:
  explicit CopyResources(int previous_device) : previous_device_(previous_device) {}
  CopyResources(const CopyResources&) = delete;
  CopyResources& operator=(const CopyResources&) = delete;
  ~CopyResources() {
    if (stream != nullptr) cudaStreamSynchronize(stream);
    if (start != nullptr) cudaEventDestroy(start);
    if (stop != nullptr) cudaEventDestroy(stop);
    if (src != nullptr) cudaFree(src);
    if (dst != nullptr) cudaFree(dst);
    if (stream != nullptr) cudaStreamDestroy(stream);
    // A failed allocation leaves its (non-sticky) error behind: clear it, so that the next
    // unrelated check does not report it.
    cudaGetLastError();
    if (previous_device_ >= 0) cudaSetDevice(previous_device_);
  }

  void* src = nullptr;
  void* dst = nullptr;
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;

 private:
  int previous_device_;
};

}  // namespace

absl::StatusOr<double> MeasureDeviceBandwidth(int device, int64_t bytes) {
  if (bytes < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("device bandwidth: the buffer must be >= 1 byte, not ", bytes));
  }
  CMOE_ASSIGN_OR_RETURN(const int count, CudaDeviceCount());
  if (count == 0) return absl::UnavailableError("no CUDA device on this machine");
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device,
                                                   " does not exist; this machine has ", count,
                                                   " (cuda:0 .. cuda:", count - 1, ")"));
  }
  int previous = -1;
  CMOE_CUDA_RETURN_IF_ERROR(cudaGetDevice(&previous));
  CopyResources r(previous);
  CMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  const auto n = static_cast<size_t>(bytes);
  CMOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&r.src, n));
  CMOE_CUDA_RETURN_IF_ERROR(cudaMalloc(&r.dst, n));
  CMOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&r.stream, cudaStreamNonBlocking));
  CMOE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&r.start));
  CMOE_CUDA_RETURN_IF_ERROR(cudaEventCreate(&r.stop));
  // Non-zero contents in both buffers (never time on zeros), written before the warm-up.
  CMOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(r.src, 0x5a, n, r.stream));
  CMOE_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(r.dst, 0xa5, n, r.stream));
  CMOE_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(r.dst, r.src, n, cudaMemcpyDeviceToDevice, r.stream));  // warm-up
  CMOE_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(r.stream));
  std::vector<double> seconds;
  for (int i = 0; i < kTimedCopies; ++i) {
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(r.start, r.stream));
    CMOE_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(r.dst, r.src, n, cudaMemcpyDeviceToDevice, r.stream));
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(r.stop, r.stream));
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(r.stop));
    float ms = 0.0f;
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventElapsedTime(&ms, r.start, r.stop));
    seconds.push_back(static_cast<double>(ms) * 1e-3);
  }
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  if (median <= 0.0) {
    return absl::InternalError(absl::StrCat("device bandwidth: a ", bytes,
                                            "-byte copy on cuda:", device, " timed at 0 s"));
  }
  return 2.0 * static_cast<double>(bytes) / median / 1e9;
}

}  // namespace cmoe::kernels::cuda
