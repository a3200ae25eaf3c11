// The Communicator of a group of one (rank 0, world size 1): every all-to-all is a copy from the
// send buffer to the receive buffer, in host memory. This is what expert parallelism runs on with
// one CPU process or one GPU without NCCL, and the oracle the multi-rank paths are tested against.
//
//   SingleProcessCommunicator comm;  // rank 0 of 1
//   CMOE_RETURN_IF_ERROR(comm.AllToAllRows({.send = send, .send_counts = counts, .recv = recv,
//                                           .recv_counts = counts, .row_width = dim}));
//
// Used from one thread at a time like every Communicator; after Abort() every call is Aborted.
#ifndef CMOE_KERNELS_SINGLE_PROCESS_COMMUNICATOR_H_
#define CMOE_KERNELS_SINGLE_PROCESS_COMMUNICATOR_H_

#include <atomic>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "kernels/communicator.h"

namespace cmoe::kernels {

class SingleProcessCommunicator final : public Communicator {
 public:
  int32_t rank() const override { return 0; }
  int32_t world_size() const override { return 1; }

  // recv = send (per_peer values).
  absl::Status AllToAllCounts(std::span<const int64_t> send, std::span<int64_t> recv,
                              int64_t per_peer) override;
  // recv = send; InvalidArgument also when recv_counts[0] != send_counts[0].
  absl::Status AllToAllRows(const AllToAllRowsArgs& args) override;
  void Abort() override { aborted_ = true; }

 private:
  std::atomic<bool> aborted_{false};
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_SINGLE_PROCESS_COMMUNICATOR_H_
