#include "kernels/cuda/nccl_communicator.h"

#include <algorithm>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/nccl_status.h"

namespace cmoe::kernels::cuda {
namespace {

// InvalidArgument unless every ordinal exists on this machine and none repeats; Unavailable
// without a usable device.
absl::Status CheckDevices(std::span<const int> devices) {
  CMOE_ASSIGN_OR_RETURN(const int count, CudaDeviceCount());
  if (count == 0) return absl::UnavailableError("NCCL: no CUDA device on this machine");
  for (const int device : devices) {
    if (device < 0 || device >= count) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL: CUDA device ", device, " does not exist; this machine has ", count));
    }
    if (std::count(devices.begin(), devices.end(), device) > 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("NCCL: CUDA device ", device, " is listed twice (one rank per GPU)"));
    }
  }
  return absl::OkStatus();
}

// A non-blocking stream on `device` (made current).
absl::StatusOr<cudaStream_t> CreateStream(int device) {
  CMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  CMOE_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

void DestroyStreams(std::span<const int> devices, std::span<const cudaStream_t> streams) {
  for (size_t i = 0; i < streams.size(); ++i) {
    cudaSetDevice(devices[i]);
    cudaStreamDestroy(streams[i]);
  }
}

}  // namespace

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int32_t rank, int32_t world_size, int device,
                                   cudaStream_t stream, bool owns_stream)
    : comm_(comm),
      rank_(rank),
      world_size_(world_size),
      device_(device),
      stream_(stream),
      owns_stream_(owns_stream) {}

NcclCommunicator::~NcclCommunicator() {
  std::lock_guard<std::mutex> lock(mu_);
  cudaSetDevice(device_);
  // After a failure peers may never match the queued operations: abort so the stream drains.
  if (!failed_.ok() || abort_requested_) AbortComm();
  cudaStreamSynchronize(stream_);
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  cudaFree(staging_);
  if (owns_stream_) cudaStreamDestroy(stream_);
  cudaGetLastError();  // nothing to report from a destructor; leave the thread's error clean
}

void NcclCommunicator::AbortComm() {
  if (comm_ == nullptr) return;
  // Possibly on another rank's thread (Abort): leave that thread's current device as it was.
  int current = -1;
  const bool restore = cudaGetDevice(&current) == cudaSuccess && current != device_;
  cudaSetDevice(device_);
  ncclCommAbort(comm_);
  comm_ = nullptr;
  if (restore) cudaSetDevice(current);
}

void NcclCommunicator::Abort() {
  abort_requested_ = true;
  std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
  if (lock.owns_lock()) CheckAbortRequested().IgnoreError();  // else the running collective does
}

absl::Status NcclCommunicator::Health() const {
  std::lock_guard<std::mutex> lock(mu_);
  return failed_;
}

absl::Status NcclCommunicator::CheckAbortRequested() {
  if (!abort_requested_) return absl::OkStatus();
  Fail(absl::AbortedError(absl::StrCat("NCCL rank ", rank_, ": the group was aborted")))
      .IgnoreError();
  AbortComm();
  return failed_;
}

absl::Status NcclCommunicator::Fail(absl::Status status) {
  if (!status.ok() && failed_.ok()) {
    failed_ = Annotate(status, absl::StrCat("NCCL rank ", rank_, " of ", world_size_,
                                            " failed; the group must be torn down"));
  }
  return status;
}

absl::Status NcclCommunicator::CheckDeviceBuffer(const char* op, const char* operand,
                                                 const void* data) const {
  cudaPointerAttributes attr{};
  const cudaError_t error = cudaPointerGetAttributes(&attr, data);
  if (error != cudaSuccess) {
    cudaGetLastError();  // an argument error, not a device failure: do not leave it behind
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", operand, " is not CUDA memory (", cudaGetErrorName(error), ")"));
  }
  if (attr.type == cudaMemoryTypeManaged) return absl::OkStatus();
  if (attr.type != cudaMemoryTypeDevice) {
    return absl::InvalidArgumentError(absl::StrCat(
        op, ": ", operand, " is host memory; NCCL exchanges device memory of GPU ", device_));
  }
  if (attr.device != device_) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " is on GPU ", attr.device,
                                                   ", this rank's GPU is ", device_));
  }
  return absl::OkStatus();
}

absl::Status NcclCommunicator::GroupedExchange(const char* send,
                                               std::span<const int64_t> send_counts, char* recv,
                                               std::span<const int64_t> recv_counts,
                                               int64_t elems_per_row, ncclDataType_t type,
                                               size_t type_bytes) {
  CMOE_NCCL_RETURN_IF_ERROR(ncclGroupStart());
  absl::Status status;
  size_t sent = 0;      // elements before peer's slice of send
  size_t received = 0;  // elements before peer's slice of recv
  for (int32_t peer = 0; peer < world_size_ && status.ok(); ++peer) {
    const auto send_elems = static_cast<size_t>(send_counts[peer] * elems_per_row);
    const auto recv_elems = static_cast<size_t>(recv_counts[peer] * elems_per_row);
    if (send_elems > 0) {
      status = CMOE_NCCL_STATUS(
          ncclSend(send + sent * type_bytes, send_elems, type, peer, comm_, stream_));
    }
    if (status.ok() && recv_elems > 0) {
      status = CMOE_NCCL_STATUS(
          ncclRecv(recv + received * type_bytes, recv_elems, type, peer, comm_, stream_));
    }
    sent += send_elems;
    received += recv_elems;
  }
  // Always close the group: an open one would swallow this thread's next NCCL calls.
  const absl::Status end = CMOE_NCCL_STATUS(ncclGroupEnd());
  return status.ok() ? end : status;
}

absl::Status NcclCommunicator::AllToAllRows(const AllToAllRowsArgs& args) {
  constexpr char kOp[] = "NcclCommunicator::AllToAllRows";
  std::lock_guard<std::mutex> lock(mu_);
  CMOE_RETURN_IF_ERROR(CheckAbortRequested());
  CMOE_RETURN_IF_ERROR(failed_);
  CMOE_RETURN_IF_ERROR(ValidateAllToAllRows(kOp, world_size_, args));
  CMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  if (!args.send.empty()) CMOE_RETURN_IF_ERROR(CheckDeviceBuffer(kOp, "send", args.send.data()));
  if (!args.recv.empty()) CMOE_RETURN_IF_ERROR(CheckDeviceBuffer(kOp, "recv", args.recv.data()));
  return Fail(GroupedExchange(reinterpret_cast<const char*>(args.send.data()), args.send_counts,
                              reinterpret_cast<char*>(args.recv.data()), args.recv_counts,
                              args.row_width, ncclFloat, sizeof(float)));
}

absl::StatusOr<int64_t*> NcclCommunicator::CountsStaging(int64_t values) {
  if (staging_values_ >= values) return staging_;
  // Rare (the first call, or a wider per_peer): a synchronous free is fine.
  CMOE_CUDA_RETURN_IF_ERROR(cudaFree(staging_));
  staging_ = nullptr;
  staging_values_ = 0;
  const int64_t grown = std::max<int64_t>(values, 256);
  CMOE_CUDA_RETURN_IF_ERROR(
      cudaMalloc(&staging_, static_cast<size_t>(2 * grown) * sizeof(int64_t)));
  staging_values_ = grown;
  return staging_;
}

absl::Status NcclCommunicator::AllToAllCounts(std::span<const int64_t> send,
                                              std::span<int64_t> recv, int64_t per_peer) {
  std::lock_guard<std::mutex> lock(mu_);
  CMOE_RETURN_IF_ERROR(CheckAbortRequested());
  CMOE_RETURN_IF_ERROR(failed_);
  CMOE_RETURN_IF_ERROR(ValidateAllToAllCounts("NcclCommunicator::AllToAllCounts", world_size_, send,
                                              recv, per_peer));
  // From here on the peers are (or will be) inside the collective: every error is fatal.
  CMOE_RETURN_IF_ERROR(Fail(CMOE_CUDA_STATUS(cudaSetDevice(device_))));
  const int64_t values = world_size_ * per_peer;
  const auto bytes = static_cast<size_t>(values) * sizeof(int64_t);
  absl::StatusOr<int64_t*> staging = CountsStaging(values);
  if (!staging.ok()) return Fail(staging.status());
  int64_t* device_send = *staging;
  int64_t* device_recv = *staging + values;
  // Copies with pageable host memory wait for the stream: only ever behind completed work, so
  // that a peer that never comes leaves this rank in the poll of SynchronizeLocked (abortable),
  // not blocked inside a copy with mu_ held.
  CMOE_RETURN_IF_ERROR(SynchronizeLocked());
  CMOE_RETURN_IF_ERROR(Fail(CMOE_CUDA_STATUS(
      cudaMemcpyAsync(device_send, send.data(), bytes, cudaMemcpyHostToDevice, stream_))));
  // Every peer gets one "row" of per_peer values.
  const std::vector<int64_t> ones(static_cast<size_t>(world_size_), 1);
  CMOE_RETURN_IF_ERROR(Fail(GroupedExchange(reinterpret_cast<const char*>(device_send), ones,
                                            reinterpret_cast<char*>(device_recv), ones, per_peer,
                                            ncclInt64, sizeof(int64_t))));
  CMOE_RETURN_IF_ERROR(SynchronizeLocked());
  CMOE_RETURN_IF_ERROR(Fail(CMOE_CUDA_STATUS(
      cudaMemcpyAsync(recv.data(), device_recv, bytes, cudaMemcpyDeviceToHost, stream_))));
  return SynchronizeLocked();
}

absl::Status NcclCommunicator::Synchronize() {
  std::lock_guard<std::mutex> lock(mu_);
  return SynchronizeLocked();
}

absl::Status NcclCommunicator::SynchronizeLocked() {
  CMOE_RETURN_IF_ERROR(failed_);
  CMOE_RETURN_IF_ERROR(Fail(CMOE_CUDA_STATUS(cudaSetDevice(device_))));
  while (true) {
    const cudaError_t query = cudaStreamQuery(stream_);
    if (query == cudaSuccess) {
      // Done; an operation may still have failed without blocking the stream.
      ncclResult_t async_error = ncclSuccess;
      CMOE_RETURN_IF_ERROR(Fail(CMOE_NCCL_STATUS(ncclCommGetAsyncError(comm_, &async_error))));
      if (async_error == ncclSuccess || async_error == ncclInProgress) return absl::OkStatus();
      absl::Status status = Fail(NcclStatus(
          async_error, "a queued NCCL operation (ncclCommGetAsyncError)", __FILE__, __LINE__));
      AbortComm();
      return status;
    }
    if (query != cudaErrorNotReady) {
      return Fail(CudaStatus(query, "cudaStreamQuery(stream_)", __FILE__, __LINE__));
    }
    cudaGetLastError();  // "not ready" is not an error: do not leave it for the next check
    CMOE_RETURN_IF_ERROR(CheckAbortRequested());  // the kernels waiting for peers exit
    ncclResult_t async_error = ncclSuccess;
    CMOE_RETURN_IF_ERROR(Fail(CMOE_NCCL_STATUS(ncclCommGetAsyncError(comm_, &async_error))));
    if (async_error != ncclSuccess && async_error != ncclInProgress) {
      absl::Status status = Fail(NcclStatus(
          async_error, "a queued NCCL operation (ncclCommGetAsyncError)", __FILE__, __LINE__));
      AbortComm();  // lets the stuck NCCL kernels on stream_ exit
      return status;
    }
    std::this_thread::yield();
  }
}

absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> MakeNcclCommunicators(
    std::span<const int> devices, std::span<const cudaStream_t> streams) {
  if (devices.empty()) return absl::InvalidArgumentError("MakeNcclCommunicators: no devices");
  if (!streams.empty() && streams.size() != devices.size()) {
    return absl::InvalidArgumentError(absl::StrCat("MakeNcclCommunicators: ", streams.size(),
                                                   " streams for ", devices.size(), " devices"));
  }
  CMOE_RETURN_IF_ERROR(CheckDevices(devices));
  std::vector<cudaStream_t> own;  // streams made here, one per device when none were given
  for (size_t i = 0; streams.empty() && i < devices.size(); ++i) {
    absl::StatusOr<cudaStream_t> stream = CreateStream(devices[i]);
    if (!stream.ok()) {
      DestroyStreams(devices, own);
      return stream.status();
    }
    own.push_back(*stream);
  }
  const auto n = static_cast<int>(devices.size());
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  if (absl::Status s = CMOE_NCCL_STATUS(ncclCommInitAll(comms.data(), n, devices.data()));
      !s.ok()) {
    DestroyStreams(devices, own);
    return s;
  }
  std::vector<std::unique_ptr<NcclCommunicator>> result;
  result.reserve(devices.size());
  for (int i = 0; i < n; ++i) {
    result.push_back(std::make_unique<NcclCommunicator>(
        comms[i], i, n, devices[i], streams.empty() ? own[i] : streams[i], streams.empty()));
  }
  return result;
}

absl::StatusOr<ncclUniqueId> MakeNcclUniqueId() {
  ncclUniqueId id;
  CMOE_NCCL_RETURN_IF_ERROR(ncclGetUniqueId(&id));
  return id;
}

absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(const ncclUniqueId& id,
                                                                       int rank, int world_size,
                                                                       int device,
                                                                       cudaStream_t stream) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("MakeNcclCommunicator: rank ", rank, " of world size ", world_size));
  }
  const int devices[] = {device};
  CMOE_RETURN_IF_ERROR(CheckDevices(devices));
  CMOE_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));  // ncclCommInitRank binds the current GPU
  const bool owns_stream = stream == nullptr;
  if (owns_stream) {
    CMOE_ASSIGN_OR_RETURN(stream, CreateStream(device));
  }
  ncclComm_t comm = nullptr;
  if (absl::Status s = CMOE_NCCL_STATUS(ncclCommInitRank(&comm, world_size, id, rank)); !s.ok()) {
    if (owns_stream) cudaStreamDestroy(stream);
    return s;
  }
  return std::make_unique<NcclCommunicator>(comm, rank, world_size, device, stream, owns_stream);
}

}  // namespace cmoe::kernels::cuda
