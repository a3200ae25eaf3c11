// Test-only: W ranks as W threads of one process, exchanging through a shared area guarded by a
// barrier, so multi-rank expert parallelism can be tested on a CPU.
//
//   std::vector<absl::Status> statuses = RunOnRanks(4, [&](kernels::Communicator& comm) {
//     return RunExpertParallelMoe(comm, placement, args[comm.rank()], expert_fn, nullptr);
//   });
//
// Every collective is two barrier phases: post (each rank publishes its buffers and whether its
// local checks passed), then read (each rank copies its part out of every peer's buffers) and
// leave. A rank whose local checks fail still takes part in both phases, so its peers see the
// failure (Aborted). A rank that returns from its function with an error, or returns while peers
// wait in a collective it will never join, aborts the group (as ncclCommAbort would): every
// waiting and later collective returns Aborted, so a broken test fails instead of hanging.
#ifndef CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_
#define CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "kernels/communicator.h"

namespace cmoe::testing {

// The area the ranks of one group share; one per group, outliving its communicators.
class ThreadedGroup {
 public:
  explicit ThreadedGroup(int32_t world_size) : world_size_(world_size), posts_(world_size) {}
  int32_t world_size() const { return world_size_; }

  // Waits until every rank still in the group has arrived. False once the group is aborted.
  bool ArriveAndWait();
  // Rank leaves the group for good (its function returned); `failed` aborts the group.
  void Depart(bool failed);

 private:
  friend class ThreadedCommunicator;
  struct Post {
    bool ok = false;
    int64_t width = 0;                // per_peer or row_width
    std::span<const int64_t> counts;  // AllToAllCounts: the values; rows: send_counts
    std::span<const float> rows;      // AllToAllRows: the send buffer
  };

  int32_t world_size_;
  std::vector<Post> posts_;  // (W), posts_[r] written by rank r only, between barriers
  std::mutex mu_;
  std::condition_variable cv_;
  int32_t arrived_ = 0;     // ranks waiting in the current barrier (guarded by mu_)
  int32_t departed_ = 0;    // ranks whose function returned (guarded by mu_)
  int64_t generation_ = 0;  // barriers completed (guarded by mu_)
  bool aborted_ = false;    // guarded by mu_
};

class ThreadedCommunicator final : public kernels::Communicator {
 public:
  ThreadedCommunicator(ThreadedGroup* group, int32_t rank) : group_(group), rank_(rank) {}

  int32_t rank() const override { return rank_; }
  int32_t world_size() const override { return group_->world_size(); }
  absl::Status AllToAllCounts(std::span<const int64_t> send, std::span<int64_t> recv,
                              int64_t per_peer) override;
  // Also InvalidArgument when recv_counts[s] differs from what rank s sends here.
  absl::Status AllToAllRows(const kernels::AllToAllRowsArgs& args) override;

 private:
  // Publishes `post`, waits for all ranks; OK when every rank's post is ok with the same width.
  absl::Status Publish(const ThreadedGroup::Post& post);
  // The second phase; Aborted if the group was aborted meanwhile.
  absl::Status Leave(absl::Status status);

  ThreadedGroup* group_;
  int32_t rank_;
};

// Runs fn(comm) on world_size threads, one ThreadedCommunicator each; returns their statuses by
// rank.
std::vector<absl::Status> RunOnRanks(int32_t world_size,
                                     const std::function<absl::Status(kernels::Communicator&)>& fn);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_
