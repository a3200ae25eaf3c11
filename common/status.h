// Error propagation helpers for absl::Status / absl::StatusOr.
//
// Debian's Abseil 20220623 ships no status_macros, so we keep our own. Our code never throws;
// every fallible function returns absl::Status or absl::StatusOr<T>.
//
//   absl::StatusOr<int> ParseCount(std::string_view s);
//   absl::Status Load() {
//     CMOE_ASSIGN_OR_RETURN(int n, ParseCount("3"));
//     CMOE_RETURN_IF_ERROR(Check(n));
//     return absl::OkStatus();
//   }
#ifndef CMOE_COMMON_STATUS_H_
#define CMOE_COMMON_STATUS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CMOE_STATUS_CONCAT_INNER_(a, b) a##b
#define CMOE_STATUS_CONCAT_(a, b) CMOE_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define CMOE_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status cmoe_status_ = (expr);        \
    if (!cmoe_status_.ok()) return cmoe_status_; \
  } while (false)

// `lhs` = value of `rexpr` (an absl::StatusOr<T>), or returns its error.
#define CMOE_ASSIGN_OR_RETURN(lhs, rexpr) \
  CMOE_ASSIGN_OR_RETURN_IMPL_(CMOE_STATUS_CONCAT_(cmoe_statusor_, __LINE__), lhs, rexpr)

#define CMOE_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                                \
  if (!statusor.ok()) return statusor.status();           \
  lhs = std::move(statusor).value()

namespace cmoe {

// Returns `status` with `context + ": "` prepended to its message (same code).
inline absl::Status Annotate(const absl::Status& status, std::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), std::string(context) + ": " + std::string(status.message()));
}

}  // namespace cmoe

#endif  // CMOE_COMMON_STATUS_H_
