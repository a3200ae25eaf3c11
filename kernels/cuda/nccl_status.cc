#include "kernels/cuda/nccl_status.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace cmoe::kernels::cuda {
namespace {

absl::StatusCode CodeOf(ncclResult_t result) {
  switch (result) {
    case ncclInvalidArgument:
      return absl::StatusCode::kInvalidArgument;
    case ncclInvalidUsage:
      return absl::StatusCode::kFailedPrecondition;
    case ncclSystemError:
    case ncclRemoteError:
      return absl::StatusCode::kUnavailable;
    default:
      return absl::StatusCode::kInternal;
  }
}

const char* ResultName(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "ncclSuccess";
    case ncclUnhandledCudaError:
      return "ncclUnhandledCudaError";
    case ncclSystemError:
      return "ncclSystemError";
    case ncclInternalError:
      return "ncclInternalError";
    case ncclInvalidArgument:
      return "ncclInvalidArgument";
    case ncclInvalidUsage:
      return "ncclInvalidUsage";
    case ncclRemoteError:
      return "ncclRemoteError";
    case ncclInProgress:
      return "ncclInProgress";
    default:
      return "ncclResult_t(unknown)";
  }
}

}  // namespace

absl::Status NcclStatus(ncclResult_t result, const char* call, const char* file, int line) {
  if (result == ncclSuccess) return absl::OkStatus();
  // The comm argument is unused by NCCL (the last error is per process); null is documented.
  const char* last = ncclGetLastError(nullptr);
  const std::string detail =
      last != nullptr && last[0] != '\0' ? std::string(last) : "none recorded";
  return absl::Status(CodeOf(result), absl::StrCat(call, " failed at ", file, ":", line, ": ",
                                                   ncclGetErrorString(result), " (",
                                                   ResultName(result), "; last NCCL error: ",
                                                   detail, "; run with NCCL_DEBUG=WARN for more)"));
}

}  // namespace cmoe::kernels::cuda
