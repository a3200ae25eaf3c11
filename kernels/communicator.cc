#include "kernels/communicator.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::kernels {
namespace {

absl::Status CheckSize(const char* op, const char* operand, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) == want) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", operand, " has ", got, " elements, expected ", want));
}

// Checks `counts` (W) are >= 0; returns their sum.
absl::StatusOr<int64_t> SumCounts(const char* op, const char* operand, int32_t world_size,
                                  std::span<const int64_t> counts) {
  CMOE_RETURN_IF_ERROR(CheckSize(op, operand, counts.size(), world_size));
  int64_t sum = 0;
  for (int32_t r = 0; r < world_size; ++r) {
    if (counts[r] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": ", operand, "[", r, "] = ", counts[r], " is negative"));
    }
    sum += counts[r];
  }
  return sum;
}

}  // namespace

absl::Status ValidateAllToAllCounts(const char* op, int32_t world_size,
                                    std::span<const int64_t> send, std::span<const int64_t> recv,
                                    int64_t per_peer) {
  if (per_peer < 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": per_peer ", per_peer, " < 1"));
  }
  CMOE_RETURN_IF_ERROR(CheckSize(op, "send", send.size(), world_size * per_peer));
  return CheckSize(op, "recv", recv.size(), world_size * per_peer);
}

absl::Status ValidateAllToAllRows(const char* op, int32_t world_size,
                                  const AllToAllRowsArgs& args) {
  if (args.row_width < 1) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": row_width ", args.row_width, " < 1"));
  }
  CMOE_ASSIGN_OR_RETURN(const int64_t sent,
                        SumCounts(op, "send_counts", world_size, args.send_counts));
  CMOE_ASSIGN_OR_RETURN(const int64_t received,
                        SumCounts(op, "recv_counts", world_size, args.recv_counts));
  CMOE_RETURN_IF_ERROR(CheckSize(op, "send", args.send.size(), sent * args.row_width));
  return CheckSize(op, "recv", args.recv.size(), received * args.row_width);
}

}  // namespace cmoe::kernels
