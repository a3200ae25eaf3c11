// W ranks as W threads of one process, exchanging through a shared area guarded by a barrier:
// expert parallelism on CPU backends (cmoe-serve --device cpu --expert-parallel W), and the
// host-memory oracle the NCCL communicator is tested against.
//
//   std::vector<std::unique_ptr<ThreadedCommunicator>> comms = ThreadedCommunicator::MakeGroup(4);
//   // thread r: comms[r]->AllToAllCounts(...); comms[r]->AllToAllRows(...);
//
// Every collective is two barrier phases: post (each rank publishes its buffers and whether its
// local checks passed), then read (each rank copies its part out of every peer's buffers) and
// leave. A rank whose local checks fail still takes part in both phases, so its peers see the
// failure (Aborted). Abort() from any thread, Depart(true), or a rank leaving (Depart or its
// destructor) while its peers wait in a collective it will never join, aborts the group, as
// ncclCommAbort would: every waiting and later collective of every rank returns Aborted, so a
// failed group is torn down instead of hanging.
#ifndef CMOE_KERNELS_THREADED_COMMUNICATOR_H_
#define CMOE_KERNELS_THREADED_COMMUNICATOR_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/communicator.h"

namespace cmoe::kernels {

class ThreadedCommunicator final : public Communicator {
 public:
  // The world_size (>= 1) communicators of a new group; element r is rank r. Each is used by one
  // thread at a time; the group's shared area lives as long as any of them.
  static std::vector<std::unique_ptr<ThreadedCommunicator>> MakeGroup(int32_t world_size);
  ~ThreadedCommunicator() override;  // Depart(false) unless done
  ThreadedCommunicator(const ThreadedCommunicator&) = delete;
  ThreadedCommunicator& operator=(const ThreadedCommunicator&) = delete;

  int32_t rank() const override { return rank_; }
  int32_t world_size() const override;
  absl::Status AllToAllCounts(std::span<const int64_t> send, std::span<int64_t> recv,
                              int64_t per_peer) override;
  // Also InvalidArgument when recv_counts[s] differs from what rank s sends here.
  absl::Status AllToAllRows(const AllToAllRowsArgs& args) override;
  // Aborts the whole group (thread-safe, idempotent).
  void Abort() override;

  // This rank leaves the group for good (it will make no more collectives); `failed` aborts the
  // group. Idempotent.
  void Depart(bool failed);

 private:
  struct Group;
  struct Post;
  ThreadedCommunicator(std::shared_ptr<Group> group, int32_t rank);

  // Publishes `post`, waits for all ranks; OK when every rank's post is ok with the same width.
  // `posted`: the posting barrier completed (every rank published), so the second one must be
  // joined even after an abort.
  absl::Status Publish(const Post& post, bool& posted);
  // The second phase (after reading the peers' buffers); Aborted if the group was aborted
  // meanwhile.
  absl::Status Leave(absl::Status status, bool posted);

  std::shared_ptr<Group> group_;
  int32_t rank_;
  bool departed_ = false;
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_THREADED_COMMUNICATOR_H_
