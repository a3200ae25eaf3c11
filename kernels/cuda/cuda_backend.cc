#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"

namespace cmoe::kernels::cuda {
namespace {

void FreeDevice(void* /*context*/, void* data) { cudaFree(data); }

}  // namespace

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    cudaGetLastError();  // not sticky: clear it so later calls start clean
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: cudaGetDeviceCount: ", cudaGetErrorString(error), " (",
                     cudaGetErrorName(error), ")"));
  }
  return count;
}

absl::StatusOr<std::string> CudaDeviceDescription(int device) {
  cudaDeviceProp prop{};
  CMOE_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  return absl::StrFormat("%s (sm_%d%d, %d SMs, %.1f GiB)", prop.name, prop.major, prop.minor,
                         prop.multiProcessorCount,
                         static_cast<double>(prop.totalGlobalMem) / (1 << 30));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options) {
  GroupedGemmPath grouped_gemm = options.grouped_gemm;
  if (grouped_gemm == GroupedGemmPath::kFromEnvironment) {
    const char* env = std::getenv("CMOE_CUDA_GROUPED_GEMM");
    const std::string value = env != nullptr ? env : "";
    if (value.empty() || value == "cublas") {
      grouped_gemm = GroupedGemmPath::kCublas;
    } else if (value == "tensor-core") {
      grouped_gemm = GroupedGemmPath::kTensorCore;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("CMOE_CUDA_GROUPED_GEMM=", value,
                                                     ": expected \"cublas\" or \"tensor-core\""));
    }
  }
  CMOE_ASSIGN_OR_RETURN(const int count, CudaDeviceCount());
  if (count == 0) return absl::UnavailableError("no CUDA device on this machine");
  if (options.device < 0 || options.device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", options.device,
                                                   " does not exist; this machine has ", count,
                                                   " (cuda:0 .. cuda:", count - 1, ")"));
  }
  CMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(options.device));
  CMOE_ASSIGN_OR_RETURN(std::string description, CudaDeviceDescription(options.device));
  int sm_count = 0;
  CMOE_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, options.device));
  cudaStream_t stream = nullptr;
  CMOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cublasHandle_t cublas = nullptr;
  if (absl::Status s = CMOE_CUBLAS_STATUS(cublasCreate(&cublas)); !s.ok()) {
    cudaStreamDestroy(stream);
    return s;
  }
  absl::Status s = CMOE_CUBLAS_STATUS(cublasSetStream(cublas, stream));
  if (s.ok()) s = CMOE_CUBLAS_STATUS(cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH));
  if (!s.ok()) {
    cublasDestroy(cublas);
    cudaStreamDestroy(stream);
    return s;
  }
  return std::make_unique<CudaBackend>(
      options.device, absl::StrCat("cuda:", options.device, " ", description), stream, cublas,
      CudaBackend::Tuning{
          .grouped_gemm = grouped_gemm,
          .attention_split_keys = options.attention_split_keys,
          .sm_count = std::max(sm_count, 1),
      });
}

CudaBackend::CudaBackend(int device, std::string name, cudaStream_t stream, cublasHandle_t cublas,
                         const Tuning& tuning)
    : device_(device),
      name_(std::move(name)),
      stream_(stream),
      cublas_(cublas),
      grouped_gemm_(tuning.grouped_gemm),
      attention_split_keys_(tuning.attention_split_keys),
      sm_count_(tuning.sm_count) {}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  for (Area& area : scratch_) cudaFree(area.device);
  for (void* w : weights_) cudaFree(w);
  cublasDestroy(cublas_);
  cudaStreamDestroy(stream_);
}

absl::Status CudaBackend::Ready() {
  if (!sticky_.ok()) return sticky_;
  int current = -1;
  if (cudaGetDevice(&current) == cudaSuccess && current == device_) return absl::OkStatus();
  return Check(CMOE_CUDA_STATUS(cudaSetDevice(device_)));
}

absl::Status CudaBackend::Check(absl::Status status) {
  if (status.ok()) return status;
  if (IsStickyStatus(status)) {
    if (sticky_.ok()) sticky_ = status;
  } else {
    // A failed runtime call (an allocation, a copy) is also left as the thread's last error;
    // it belongs to this call, not to the next kernel launch.
    cudaGetLastError();
  }
  return status;
}

absl::StatusOr<Buffer> CudaBackend::Allocate(int64_t bytes) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: ", bytes, " bytes"));
  if (bytes == 0) return Buffer();
  void* data = nullptr;
  CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(cudaMalloc(&data, static_cast<size_t>(bytes)))));
  return Buffer(data, bytes, &FreeDevice, nullptr);
}

absl::Status CudaBackend::CopyToBackend(void* dst, const void* src, int64_t bytes) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (bytes <= 0) return absl::OkStatus();
  return Check(CMOE_CUDA_STATUS(
      cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_)));
}

absl::Status CudaBackend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (bytes > 0) {
    CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream_))));
  }
  return Synchronize();
}

absl::StatusOr<WeightView> CudaBackend::UploadWeight(const WeightView& host) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (!IsFloatDType(host.dtype) || host.rows < 0 || host.cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("UploadWeight: (", host.rows, ", ", host.cols,
                                                   ") ", std::string(DTypeName(host.dtype)),
                                                   " is not a float matrix"));
  }
  WeightView device = host;
  if (host.bytes() == 0) return device;
  void* data = nullptr;
  CMOE_RETURN_IF_ERROR(
      Check(CMOE_CUDA_STATUS(cudaMalloc(&data, static_cast<size_t>(host.bytes())))));
  weights_.push_back(data);
  // On the backend's stream, then waited for: `host` may be a memory-mapped file the caller
  // unmaps next, and a cudaMemcpy on the legacy default stream would not be ordered before the
  // ops on stream_ (non-blocking) that read the weight.
  CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(cudaMemcpyAsync(
      data, host.data, static_cast<size_t>(host.bytes()), cudaMemcpyHostToDevice, stream_))));
  CMOE_RETURN_IF_ERROR(Synchronize());
  device.data = data;
  return device;
}

absl::Status CudaBackend::Synchronize() {
  CMOE_RETURN_IF_ERROR(Ready());
  return Check(CMOE_CUDA_STATUS(cudaStreamSynchronize(stream_)));
}

absl::StatusOr<void*> CudaBackend::ScratchSpace(Scratch which, int64_t bytes) {
  Area& area = scratch_[static_cast<int>(which)];
  if (area.bytes >= bytes) return area.device;
  area.uploaded.clear();  // the new area holds no upload yet
  // At least 1.5x: steps that grow a little at a time do not reallocate every time.
  const int64_t grown = std::max({bytes, area.bytes + area.bytes / 2, int64_t{4096}});
  // Stream-ordered: work already queued on the old area finishes before it is freed.
  if (area.device != nullptr) {
    CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(cudaFreeAsync(area.device, stream_))));
    area = {};
  }
  CMOE_RETURN_IF_ERROR(
      Check(CMOE_CUDA_STATUS(cudaMallocAsync(&area.device, static_cast<size_t>(grown), stream_))));
  area.bytes = grown;
  return area.device;
}

absl::StatusOr<void*> CudaBackend::UploadBytes(const void* host, int64_t bytes, Scratch which) {
  if (bytes <= 0) return nullptr;
  Area& area = scratch_[static_cast<int>(which)];
  if (area.device != nullptr && static_cast<int64_t>(area.uploaded.size()) == bytes &&
      std::memcmp(area.uploaded.data(), host, static_cast<size_t>(bytes)) == 0) {
    return area.device;
  }
  area.uploaded.clear();  // stays empty if the copy below fails
  CMOE_ASSIGN_OR_RETURN(void* device, ScratchSpace(which, bytes));
  CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(
      cudaMemcpyAsync(device, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_))));
  const auto* begin = static_cast<const char*>(host);
  area.uploaded.assign(begin, begin + bytes);
  return device;
}

absl::StatusOr<const int32_t*> CudaBackend::UploadInts(std::span<const int32_t> host,
                                                       Scratch which) {
  CMOE_ASSIGN_OR_RETURN(void* device,
                        UploadBytes(host.data(), static_cast<int64_t>(host.size_bytes()), which));
  return static_cast<const int32_t*>(device);
}

}  // namespace cmoe::kernels::cuda
