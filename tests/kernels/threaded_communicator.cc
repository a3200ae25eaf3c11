#include "tests/kernels/threaded_communicator.h"

#include <algorithm>
#include <mutex>
#include <numeric>
#include <thread>

#include "absl/strings/str_cat.h"

namespace cmoe::testing {

bool ThreadedGroup::ArriveAndWait() {
  std::unique_lock<std::mutex> lock(mu_);
  if (aborted_) return false;
  const int64_t generation = generation_;
  if (++arrived_ + departed_ == world_size_) {
    // A rank that departed will never arrive: the others would wait forever.
    aborted_ = departed_ > 0;
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return !aborted_;
  }
  cv_.wait(lock, [&] { return generation_ != generation || aborted_; });
  return !aborted_;
}

void ThreadedGroup::Depart(bool failed) {
  std::lock_guard<std::mutex> lock(mu_);
  ++departed_;
  if (failed || (arrived_ > 0 && arrived_ + departed_ == world_size_)) {
    aborted_ = true;
    cv_.notify_all();
  }
}

absl::Status ThreadedCommunicator::Publish(const ThreadedGroup::Post& post) {
  group_->posts_[rank_] = post;
  if (!group_->ArriveAndWait()) return absl::AbortedError("the group was aborted");
  for (int32_t r = 0; r < world_size(); ++r) {
    const ThreadedGroup::Post& peer = group_->posts_[r];
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
  const absl::Status local = kernels::ValidateAllToAllCounts("ThreadedCommunicator::AllToAllCounts",
                                                             world_size(), send, recv, per_peer);
  absl::Status status = Publish({.ok = local.ok(), .width = per_peer, .counts = send});
  if (status.ok()) {
    for (int32_t s = 0; s < world_size(); ++s) {
      const auto from = group_->posts_[s].counts.begin() + rank_ * per_peer;
      std::copy(from, from + per_peer, recv.begin() + s * per_peer);
    }
  }
  status = Leave(status);
  return local.ok() ? status : local;
}

absl::Status ThreadedCommunicator::AllToAllRows(const kernels::AllToAllRowsArgs& args) {
  const absl::Status local =
      kernels::ValidateAllToAllRows("ThreadedCommunicator::AllToAllRows", world_size(), args);
  absl::Status status = Publish(
      {.ok = local.ok(), .width = args.row_width, .counts = args.send_counts, .rows = args.send});
  int64_t recv_row = 0;
  for (int32_t s = 0; status.ok() && s < world_size(); ++s) {
    const ThreadedGroup::Post& peer = group_->posts_[s];
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
  status = Leave(status);
  return local.ok() ? status : local;
}

absl::Status ThreadedCommunicator::Leave(absl::Status status) {
  if (!group_->ArriveAndWait() && status.ok()) {
    return absl::AbortedError("the group was aborted");
  }
  return status;
}

std::vector<absl::Status> RunOnRanks(
    int32_t world_size, const std::function<absl::Status(kernels::Communicator&)>& fn) {
  ThreadedGroup group(world_size);
  std::vector<absl::Status> statuses(world_size);
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int32_t r = 0; r < world_size; ++r) {
    threads.emplace_back([&group, &statuses, &fn, r] {
      ThreadedCommunicator comm(&group, r);
      statuses[r] = fn(comm);
      group.Depart(!statuses[r].ok());
    });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

}  // namespace cmoe::testing
