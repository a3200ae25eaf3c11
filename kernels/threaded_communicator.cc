#include "kernels/threaded_communicator.h"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <numeric>

#include "absl/strings/str_cat.h"

namespace cmoe::kernels {

struct ThreadedCommunicator::Post {
  bool ok = false;
  int64_t width = 0;                // per_peer or row_width
  std::span<const int64_t> counts;  // AllToAllCounts: the values; rows: send_counts
  std::span<const float> rows;      // AllToAllRows: the send buffer
};

// The area the ranks of one group share.
struct ThreadedCommunicator::Group {
  explicit Group(int32_t world_size) : world_size(world_size), posts(world_size) {}

  struct Arrival {
    bool completed;  // every rank still in the group arrived (the barrier was passed)
    bool aborted;    // the group is aborted
  };

  // Waits until every rank still in the group has arrived. `releasable`: an abort also ends the
  // wait, uncompleted (the posting phase); the leaving phase waits for completion even after an
  // abort, because every rank that passed the posting barrier still reads its peers' buffers and
  // comes here next: releasing one early would let it free a buffer a peer still reads.
  Arrival ArriveAndWait(bool releasable) {
    std::unique_lock<std::mutex> lock(mu);
    if (aborted && releasable) return {false, true};
    const int64_t generation = generations;
    if (++arrived + departed == world_size) {
      Complete();
      return {true, aborted};
    }
    cv.wait(lock, [&] { return generations != generation || (releasable && aborted); });
    return {generations != generation, aborted};
  }

  void Depart(bool failed) {
    std::lock_guard<std::mutex> lock(mu);
    ++departed;
    aborted = aborted || failed;
    // The ranks waiting in a barrier would wait forever for this one.
    if (arrived > 0 && arrived + departed == world_size) Complete();
    cv.notify_all();
  }

  // The current barrier is passed (mu held); with a departed rank the group is aborted.
  void Complete() {
    aborted = aborted || departed > 0;
    arrived = 0;
    ++generations;
    cv.notify_all();
  }

  void Abort() {
    std::lock_guard<std::mutex> lock(mu);
    aborted = true;
    cv.notify_all();
  }

  const int32_t world_size;
  std::vector<Post> posts;  // (W), posts[r] written by rank r only, between barriers
  std::mutex mu;
  std::condition_variable cv;
  int32_t arrived = 0;      // ranks waiting in the current barrier (guarded by mu)
  int32_t departed = 0;     // ranks that left for good (guarded by mu)
  int64_t generations = 0;  // barriers completed (guarded by mu)
  bool aborted = false;     // guarded by mu
};

std::vector<std::unique_ptr<ThreadedCommunicator>> ThreadedCommunicator::MakeGroup(
    int32_t world_size) {
  auto group = std::make_shared<Group>(std::max(world_size, 1));
  std::vector<std::unique_ptr<ThreadedCommunicator>> comms;
  for (int32_t r = 0; r < group->world_size; ++r) {
    comms.push_back(std::unique_ptr<ThreadedCommunicator>(new ThreadedCommunicator(group, r)));
  }
  return comms;
}

ThreadedCommunicator::ThreadedCommunicator(std::shared_ptr<Group> group, int32_t rank)
    : group_(std::move(group)), rank_(rank) {}

ThreadedCommunicator::~ThreadedCommunicator() { Depart(false); }

int32_t ThreadedCommunicator::world_size() const { return group_->world_size; }

void ThreadedCommunicator::Abort() { group_->Abort(); }

void ThreadedCommunicator::Depart(bool failed) {
  if (departed_) {
    if (failed) group_->Abort();
    return;
  }
  departed_ = true;
  group_->Depart(failed);
}

absl::Status ThreadedCommunicator::Publish(const Post& post, bool& posted) {
  posted = false;
  if (departed_) return absl::FailedPreconditionError("this rank has left the group");
  group_->posts[rank_] = post;
  const Group::Arrival arrival = group_->ArriveAndWait(/*releasable=*/true);
  posted = arrival.completed;
  if (arrival.aborted) return absl::AbortedError("the group was aborted");
  for (int32_t r = 0; r < world_size(); ++r) {
    const Post& peer = group_->posts[r];
    if (!peer.ok) return absl::AbortedError(absl::StrCat("rank ", r, " failed its checks"));
    if (peer.width != post.width) {
      return absl::InvalidArgumentError(
          absl::StrCat("rank ", r, " uses width ", peer.width, ", rank ", rank_, " ", post.width));
    }
  }
  return absl::OkStatus();
}

absl::Status ThreadedCommunicator::AllToAllCounts(std::span<const int64_t> send,
                                                  std::span<int64_t> recv, int64_t per_peer) {
  const absl::Status local = ValidateAllToAllCounts("ThreadedCommunicator::AllToAllCounts",
                                                    world_size(), send, recv, per_peer);
  bool posted = false;
  absl::Status status = Publish({.ok = local.ok(), .width = per_peer, .counts = send}, posted);
  if (status.ok()) {
    for (int32_t s = 0; s < world_size(); ++s) {
      const auto from = group_->posts[s].counts.begin() + rank_ * per_peer;
      std::copy(from, from + per_peer, recv.begin() + s * per_peer);
    }
  }
  status = Leave(status, posted);
  return local.ok() ? status : local;
}

absl::Status ThreadedCommunicator::AllToAllRows(const AllToAllRowsArgs& args) {
  const absl::Status local =
      ValidateAllToAllRows("ThreadedCommunicator::AllToAllRows", world_size(), args);
  bool posted = false;
  absl::Status status = Publish(
      {.ok = local.ok(), .width = args.row_width, .counts = args.send_counts, .rows = args.send},
      posted);
  int64_t recv_row = 0;
  for (int32_t s = 0; status.ok() && s < world_size(); ++s) {
    const Post& peer = group_->posts[s];
    if (peer.counts[rank_] != args.recv_counts[s]) {
      status = absl::InvalidArgumentError(absl::StrCat("rank ", s, " sends ", peer.counts[rank_],
                                                       " rows to rank ", rank_, ", which expects ",
                                                       args.recv_counts[s]));
      break;
    }
    const int64_t first =
        std::accumulate(peer.counts.begin(), peer.counts.begin() + rank_, int64_t{0});
    const auto from = peer.rows.begin() + first * args.row_width;
    std::copy(from, from + args.recv_counts[s] * args.row_width,
              args.recv.begin() + recv_row * args.row_width);
    recv_row += args.recv_counts[s];
  }
  status = Leave(status, posted);
  return local.ok() ? status : local;
}

absl::Status ThreadedCommunicator::Leave(absl::Status status, bool posted) {
  // Only the ranks that passed the posting barrier read each other's buffers; all of them come
  // here, so this barrier completes even if the group was aborted meanwhile.
  if (!posted) return status;
  if (group_->ArriveAndWait(/*releasable=*/false).aborted && status.ok()) {
    return absl::AbortedError("the group was aborted");
  }
  return status;
}

}  // namespace cmoe::kernels
