#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
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

// A setting of kind E taken from the environment variable `name` when `value` is
// kFromEnvironment: `choices` pairs the accepted spellings with their settings, the first being
// the default when the variable is unset or empty.
template <class E>
absl::StatusOr<E> FromEnvironment(E value, const char* name,
                                  std::initializer_list<std::pair<const char*, E>> choices) {
  if (value != E::kFromEnvironment) return value;
  const char* env = std::getenv(name);
  const std::string text = env != nullptr ? env : "";
  if (text.empty()) return choices.begin()->second;
  std::string expected;
  for (const auto& [spelling, setting] : choices) {
    if (text == spelling) return setting;
    absl::StrAppend(&expected, expected.empty() ? "\"" : " or \"", spelling, "\"");
  }
  return absl::InvalidArgumentError(absl::StrCat(name, "=", text, ": expected ", expected));
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options) {
  CMOE_ASSIGN_OR_RETURN(const GroupedGemmPath grouped_gemm,
                        FromEnvironment(options.grouped_gemm, "CMOE_CUDA_GROUPED_GEMM",
                                        {{"cublas", GroupedGemmPath::kCublas},
                                         {"tensor-core", GroupedGemmPath::kTensorCore}}));
  CMOE_ASSIGN_OR_RETURN(const GraphMode graphs,
                        FromEnvironment(options.graphs, "CMOE_CUDA_GRAPHS",
                                        {{"on", GraphMode::kOn}, {"off", GraphMode::kOff}}));
  CMOE_ASSIGN_OR_RETURN(const PrefillAttention prefill_attention,
                        FromEnvironment(options.prefill_attention, "CMOE_CUDA_PREFILL_ATTENTION",
                                        {{"tensor-core", PrefillAttention::kTensorCores},
                                         {"cuda-core", PrefillAttention::kCudaCores}}));
  CMOE_ASSIGN_OR_RETURN(
      const FfnActivations ffn_activations,
      FromEnvironment(options.ffn_activations, "CMOE_CUDA_FFN_ACTIVATIONS",
                      {{"bf16", FfnActivations::kBf16}, {"f32", FfnActivations::kF32}}));
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
  int major = 0;
  CMOE_CUDA_RETURN_IF_ERROR(
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, options.device));
  CudaBackend::Handles handles;
  const auto release = [&handles] {
    if (handles.cublas != nullptr) cublasDestroy(handles.cublas);
    if (handles.cublas_workspace != nullptr) cudaFree(handles.cublas_workspace);
    if (handles.stream != nullptr) cudaStreamDestroy(handles.stream);
  };
  absl::Status s =
      CMOE_CUDA_STATUS(cudaStreamCreateWithFlags(&handles.stream, cudaStreamNonBlocking));
  if (s.ok()) s = CMOE_CUBLAS_STATUS(cublasCreate(&handles.cublas));
  if (s.ok()) s = CMOE_CUBLAS_STATUS(cublasSetStream(handles.cublas, handles.stream));
  if (s.ok()) s = CMOE_CUBLAS_STATUS(cublasSetMathMode(handles.cublas, CUBLAS_DEFAULT_MATH));
  // A workspace of our own, the size cuBLAS recommends (32 MiB on Hopper, 4 MiB before): cuBLAS
  // then never allocates one itself, which it would do inside a recorded graph (a memory node
  // per recording) and which would make every decode graph a new topology.
  const size_t workspace = major >= 9 ? size_t{32} << 20 : size_t{4} << 20;
  if (s.ok()) s = CMOE_CUDA_STATUS(cudaMalloc(&handles.cublas_workspace, workspace));
  if (s.ok()) {
    s = CMOE_CUBLAS_STATUS(cublasSetWorkspace(handles.cublas, handles.cublas_workspace, workspace));
  }
  if (!s.ok()) {
    release();
    cudaGetLastError();  // a failed allocation is not the next launch's error
    return s;
  }
  return std::make_unique<CudaBackend>(
      options.device, absl::StrCat("cuda:", options.device, " ", description), handles,
      CudaBackend::Tuning{
          .grouped_gemm = grouped_gemm,
          .attention_split_keys = options.attention_split_keys,
          .sm_count = std::max(sm_count, 1),
          .graphs = graphs == GraphMode::kOn,
          .prefill_attention = prefill_attention,
          .ffn_activations = ffn_activations,
      });
}

CudaBackend::CudaBackend(int device, std::string name, const Handles& handles, const Tuning& tuning)
    : device_(device),
      name_(std::move(name)),
      stream_(handles.stream),
      cublas_(handles.cublas),
      cublas_workspace_(handles.cublas_workspace),
      grouped_gemm_(tuning.grouped_gemm),
      attention_split_keys_(tuning.attention_split_keys),
      sm_count_(tuning.sm_count),
      graphs_(tuning.graphs),
      prefill_attention_(tuning.prefill_attention),
      ffn_activations_(tuning.ffn_activations) {}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  CancelGraph();
  cudaStreamSynchronize(stream_);
  for (auto& [nodes, exec] : execs_) cudaGraphExecDestroy(exec);
  for (Area& area : scratch_) cudaFree(area.device);
  for (void* area : retired_) cudaFree(area);
  for (void* w : weights_) cudaFree(w);
  cublasDestroy(cublas_);
  cudaFree(cublas_workspace_);
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
  return HostToDevice(dst, src, bytes);
}

absl::Status CudaBackend::HostToDevice(void* dst, const void* src, int64_t bytes) {
  if (recording_) {
    // A recorded copy reads its source when the graph runs: from pinned memory that stays
    // unchanged until then (a copy from pageable memory cannot be recorded at all).
    absl::StatusOr<const void*> staged = staging_.Stage(src, bytes);
    if (!staged.ok()) return Check(staged.status());
    src = *staged;
  }
  return Check(CMOE_CUDA_STATUS(
      cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_)));
}

absl::Status CudaBackend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (recording_) return NotInGraphError("CopyToHost");
  if (bytes > 0) {
    CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(
        cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream_))));
  }
  return Synchronize();
}

absl::StatusOr<WeightView> CudaBackend::UploadWeight(const WeightView& host) {
  CMOE_RETURN_IF_ERROR(Ready());
  if (recording_) return NotInGraphError("UploadWeight");
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
  if (recording_) return NotInGraphError("Synchronize");
  CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(cudaStreamSynchronize(stream_))));
  FreeRetired();
  return absl::OkStatus();
}

void CudaBackend::FreeRetired() {
  for (void* area : retired_) cudaFree(area);
  retired_.clear();
}

absl::StatusOr<void*> CudaBackend::ScratchSpace(Scratch which, int64_t bytes) {
  Area& area = scratch_[static_cast<int>(which)];
  if (area.bytes >= bytes) return area.device;
  // At least 1.5x: steps that grow a little at a time do not reallocate every time.
  const int64_t grown = std::max({bytes, area.bytes + area.bytes / 2, int64_t{4096}});
  // cudaMalloc, not cudaMallocAsync: a stream-ordered allocation while a graph is recorded would
  // become a memory node of the graph. Allowed while recording (relaxed capture mode).
  void* device = nullptr;
  CMOE_RETURN_IF_ERROR(Check(CMOE_CUDA_STATUS(cudaMalloc(&device, static_cast<size_t>(grown)))));
  // Work queued or recorded before may still read the old area: it is freed after the next
  // Synchronize.
  if (area.device != nullptr) retired_.push_back(area.device);
  area = {.device = device, .bytes = grown};  // the new area holds no upload yet
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
  CMOE_RETURN_IF_ERROR(HostToDevice(device, host, bytes));
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
