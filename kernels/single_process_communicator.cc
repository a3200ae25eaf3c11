#include "kernels/single_process_communicator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::kernels {

absl::Status SingleProcessCommunicator::AllToAllCounts(std::span<const int64_t> send,
                                                       std::span<int64_t> recv, int64_t per_peer) {
  if (aborted_) return absl::AbortedError("SingleProcessCommunicator::AllToAllCounts: aborted");
  CMOE_RETURN_IF_ERROR(ValidateAllToAllCounts("SingleProcessCommunicator::AllToAllCounts",
                                              world_size(), send, recv, per_peer));
  std::copy(send.begin(), send.end(), recv.begin());
  return absl::OkStatus();
}

absl::Status SingleProcessCommunicator::AllToAllRows(const AllToAllRowsArgs& args) {
  constexpr char kOp[] = "SingleProcessCommunicator::AllToAllRows";
  if (aborted_) return absl::AbortedError(absl::StrCat(kOp, ": aborted"));
  CMOE_RETURN_IF_ERROR(ValidateAllToAllRows(kOp, world_size(), args));
  if (args.recv_counts[0] != args.send_counts[0]) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": recv_counts[0] = ", args.recv_counts[0],
                                                   " but send_counts[0] = ", args.send_counts[0]));
  }
  std::copy(args.send.begin(), args.send.end(), args.recv.begin());
  return absl::OkStatus();
}

}  // namespace cmoe::kernels
