// The Communicator of kernels/communicator.h over NCCL: one rank per GPU, the row all-to-all on
// device memory as ncclSend/ncclRecv pairs inside one ncclGroupStart/ncclGroupEnd, queued on the
// communicator's CUDA stream. Built only with NCCL (CMOE_HAVE_NCCL, kernels/CMakeLists.txt).
//
// One process, several GPUs (one thread per rank afterwards, or one thread in turn):
//
//   const int devices[] = {0, 1};
//   CMOE_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<NcclCommunicator>> comms,
//                         MakeNcclCommunicators(devices));
//   // thread r: comms[r]->AllToAllCounts(...); comms[r]->AllToAllRows(...);
//   //           comms[r]->Synchronize() before the host or another stream reads `recv`.
//
// One process per GPU: rank 0 makes the id (MakeNcclUniqueId), sends its bytes to the others
// out of band, and every rank calls MakeNcclCommunicator(id, rank, world_size, device) at about
// the same time (it blocks until all ranks have joined).
//
// Memory and streams:
// - AllToAllRows: `send` and `recv` are device memory of this communicator's GPU (cudaMalloc or
//   managed memory; host memory is InvalidArgument); the count spans are host memory. The call
//   only queues the exchange on stream(): `send` must be complete in stream() order (work queued
//   on stream() before the call, or a synchronised producer such as Backend::Synchronize()), and
//   `recv` is valid for work queued on stream() after the call, or for anyone after Synchronize().
// - AllToAllCounts: host spans, as the interface requires; staged through a small device buffer
//   and synchronous (returns once `recv` holds the values).
//
// Errors: arguments are validated (kernels/communicator.h ValidateAllToAll*, and the buffers'
// memory type) before NCCL sees them; such an InvalidArgument leaves the group usable (every rank
// must still make the same calls). A failed NCCL or CUDA call inside a collective is fatal for
// the whole group, as documented in kernels/communicator.h: the communicator remembers the error
// and returns it from every later call, and its destructor aborts (ncclCommAbort) instead of
// destroying; the peers must tear the group down too. Synchronize() polls ncclCommGetAsyncError,
// so a peer failure surfaces as an error instead of a hang where NCCL detects it.
//
// Threading: like every Communicator, used by one thread at a time (the rank's step thread); the
// communicators of MakeNcclCommunicators may be used by one thread each, concurrently.
// Destruction: destroy every rank's communicator (NCCL finalises the group's shared resources
// when its last local rank goes); the destructor waits for work queued on stream().
#ifndef CMOE_KERNELS_CUDA_NCCL_COMMUNICATOR_H_
#define CMOE_KERNELS_CUDA_NCCL_COMMUNICATOR_H_

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/communicator.h"

namespace cmoe::kernels::cuda {

class NcclCommunicator final : public Communicator {
 public:
  // Takes ownership of `comm`, and of `stream` when owns_stream. Use the factories below.
  NcclCommunicator(ncclComm_t comm, int32_t rank, int32_t world_size, int device,
                   cudaStream_t stream, bool owns_stream);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int32_t rank() const override { return rank_; }
  int32_t world_size() const override { return world_size_; }
  int device() const { return device_; }
  // The stream every collective is queued on.
  cudaStream_t stream() const { return stream_; }

  // Host spans; synchronous. See kernels/communicator.h.
  absl::Status AllToAllCounts(std::span<const int64_t> send, std::span<int64_t> recv,
                              int64_t per_peer) override;
  // Device buffers; queued on stream(), see the file comment. Peers with a zero count are
  // skipped on both sides (their counts agree by contract). recv_counts[s] must equal what rank
  // s sends here: NCCL cannot check it, and a mismatch hangs or corrupts the exchange.
  absl::Status AllToAllRows(const AllToAllRowsArgs& args) override;

  // Waits for everything queued on stream(), polling NCCL for asynchronous errors (a failed
  // peer) meanwhile; such an error aborts the communicator and is returned.
  absl::Status Synchronize() override;

  // Aborts the communicator (thread-safe, idempotent): at once (ncclCommAbort, so the kernels
  // queued on stream() that wait for peers exit) when no collective of this rank is running;
  // otherwise the rank's thread does it before its next step and while Synchronize() waits, and
  // its collective returns Aborted. A thread blocked inside an NCCL call itself (a first
  // connection to a peer that never comes) only notices when that call returns: connect every
  // pair before relying on Abort (one AllToAllCounts does; the serving engine runs one step at
  // start).
  void Abort() override;

  // OK, or the error that made the communicator unusable.
  absl::Status Health() const;

 private:
  // Remembers a non-OK status of a collective as the communicator's fatal error. mu_ held.
  absl::Status Fail(absl::Status status);
  // Synchronize() with mu_ held.
  absl::Status SynchronizeLocked();
  // ncclCommAbort once (comm_ becomes null): queued NCCL work on stream_ exits without peers.
  // mu_ held.
  void AbortComm();
  // Aborted (and the communicator aborted) once Abort() was called; OK otherwise. mu_ held.
  absl::Status CheckAbortRequested();
  // Device staging for AllToAllCounts: (2, values) int64, send then recv, grown on demand.
  absl::StatusOr<int64_t*> CountsStaging(int64_t values);
  // InvalidArgument unless `data` (non-null) is device or managed memory of this GPU.
  absl::Status CheckDeviceBuffer(const char* op, const char* operand, const void* data) const;
  // The grouped send/recv of per-peer (offset, count) slices; always closes the group.
  absl::Status GroupedExchange(const char* send, std::span<const int64_t> send_counts, char* recv,
                               std::span<const int64_t> recv_counts, int64_t elem_per_row,
                               ncclDataType_t type, size_t type_bytes);

  // Held by every collective, Synchronize and the destructor (one thread at a time), and tried by
  // Abort() from other threads. Guards everything below it.
  mutable std::mutex mu_;
  ncclComm_t comm_;  // null once aborted
  int32_t rank_;
  int32_t world_size_;
  int device_;
  cudaStream_t stream_;
  bool owns_stream_;
  absl::Status failed_;
  std::atomic<bool> abort_requested_{false};  // Abort(), from any thread
  int64_t* staging_ = nullptr;                // (2, staging_values_) int64 device: send, then recv
  int64_t staging_values_ = 0;
};

// One communicator per entry of `devices` (distinct CUDA ordinals, at least one), rank i on
// devices[i], all in this process (ncclCommInitAll). `streams`: empty (each communicator creates
// and owns a non-blocking stream on its device) or one stream per device, owned by the caller
// and outliving the communicators. InvalidArgument for an empty, repeated or out-of-range device
// list or a streams size mismatch; Unavailable without a usable GPU; NCCL failures as Status.
absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> MakeNcclCommunicators(
    std::span<const int> devices, std::span<const cudaStream_t> streams = {});

// A new group's id (ncclGetUniqueId), made once by one rank and passed to every rank's
// MakeNcclCommunicator. Opens a bootstrap socket on this host: NCCL reads NCCL_SOCKET_IFNAME etc.
absl::StatusOr<ncclUniqueId> MakeNcclUniqueId();

// This process's rank of a group of world_size ranks (ncclCommInitRank) on GPU `device`. Blocks
// until every rank has called it with the same id and world size. `stream`: null to create and
// own a non-blocking stream, else the caller's (outliving the communicator). InvalidArgument for
// rank outside [0, world_size) or a device that does not exist.
absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(
    const ncclUniqueId& id, int rank, int world_size, int device, cudaStream_t stream = nullptr);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_NCCL_COMMUNICATOR_H_
