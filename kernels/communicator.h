// The collectives expert parallelism needs (docs/architecture.md "Scaling out"): W ranks, one per
// GPU of a node, each owning a block of the routed experts. A step sends every (token, k-slot) row
// to the rank that owns its expert and the expert outputs back, so two all-to-alls suffice:
//
// - AllToAllCounts: every rank sends `per_peer` int64 values to every rank (the row counts, or
//   the row counts per local expert of the receiver).
// - AllToAllRows: a variable all-to-all of float rows; the send buffer is grouped by destination
//   rank, the receive buffer by source rank, both in rank order.
//
// Implementations:
// - SingleProcessCommunicator (kernels/single_process_communicator.h): world size 1, host memory;
//   the all-to-alls are copies.
// - ThreadedCommunicator (kernels/threaded_communicator.h): W ranks as threads of one process,
//   host memory (expert parallelism over CPU backends).
// - NcclCommunicator (kernels/cuda/nccl_communicator.h, built when NCCL is found:
//   CMOE_HAVE_NCCL) implements this interface on device memory with ncclSend/ncclRecv pairs
//   inside ncclGroupStart/ncclGroupEnd, one rank per GPU. Every rank must then call the same
//   collectives in the same order.
//
// Usage (on every rank, the same sequence of calls):
//
//   std::vector<int64_t> send_counts(W), recv_counts(W);  // rows to / from each rank
//   CMOE_RETURN_IF_ERROR(comm.AllToAllCounts(send_counts, recv_counts, /*per_peer=*/1));
//   CMOE_RETURN_IF_ERROR(comm.AllToAllRows({.send = send, .send_counts = send_counts,
//                                           .recv = recv, .recv_counts = recv_counts,
//                                           .row_width = dim}));
//
// Errors: sizes are validated before anything is exchanged (InvalidArgument naming the operand).
// A rank that fails a collective leaves its peers waiting inside it; as with NCCL, an error from a
// collective is fatal for the whole group, and callers must tear the group down.
// Threading: a communicator is used by one thread at a time (the rank's step thread); Abort() is
// the exception.
#ifndef CMOE_KERNELS_COMMUNICATOR_H_
#define CMOE_KERNELS_COMMUNICATOR_H_

#include <cstdint>
#include <span>

#include "absl/status/status.h"

namespace cmoe::kernels {

struct AllToAllRowsArgs {
  // (sum(send_counts), row_width) f32 row-major, read: rows for rank 0, then rank 1, ...
  std::span<const float> send;
  std::span<const int64_t> send_counts;  // (W) rows this rank sends to each rank
  // (sum(recv_counts), row_width) f32 row-major, written: rows from rank 0, then rank 1, ...
  std::span<float> recv;
  // (W) rows this rank receives from each rank; must equal what each peer sends here (exchange
  // the counts first with AllToAllCounts).
  std::span<const int64_t> recv_counts;
  int64_t row_width = 0;  // floats per row, >= 1, the same on every rank
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int32_t rank() const = 0;        // in [0, world_size())
  virtual int32_t world_size() const = 0;  // >= 1

  // send: (W, per_peer) int64, read: send[r * per_peer + i] goes to rank r.
  // recv: (W, per_peer) int64, written: recv[r * per_peer + i] is what rank r sent to this rank.
  // per_peer >= 1 and the same on every rank. Host memory for every implementation (counts feed
  // host-side planning). InvalidArgument naming the operand for sizes other than W * per_peer.
  virtual absl::Status AllToAllCounts(std::span<const int64_t> send, std::span<int64_t> recv,
                                      int64_t per_peer) = 0;

  // The variable all-to-all of float rows described at AllToAllRowsArgs. Buffers are in the
  // implementation's memory (host for SingleProcessCommunicator, device for NCCL); the count spans
  // are host memory. InvalidArgument naming the operand for count spans not of size W, negative
  // counts, buffer sizes other than sum(counts) * row_width, or row_width < 1.
  virtual absl::Status AllToAllRows(const AllToAllRowsArgs& args) = 0;

  // Waits until every exchange this rank queued has completed, so that any reader (the host,
  // another stream) sees `recv`. Host implementations complete inside the call: no-op. Device
  // ones (NCCL) queue on a stream of their own: callers also make `send` complete before
  // AllToAllRows (e.g. Backend::Synchronize on its producer).
  virtual absl::Status Synchronize() { return absl::OkStatus(); }

  // Tears the group down after one of its ranks failed: this rank's collectives, the one another
  // thread may be waiting in and every later one, return an error (Aborted) instead of waiting
  // for peers that will never come. The only call that may come from any thread, also while
  // another is inside a collective; idempotent. The communicator is unusable afterwards.
  virtual void Abort() = 0;
};

// The argument checks every implementation shares (local checks only: nothing here can see what
// the peers pass). `op` names the caller in the message.
absl::Status ValidateAllToAllCounts(const char* op, int32_t world_size,
                                    std::span<const int64_t> send, std::span<const int64_t> recv,
                                    int64_t per_peer);
absl::Status ValidateAllToAllRows(const char* op, int32_t world_size, const AllToAllRowsArgs& args);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_COMMUNICATOR_H_
