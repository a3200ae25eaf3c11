// NCCL results as absl::Status values naming the call and where it was made, the companion of
// kernels/cuda/cuda_status.h (built only when NCCL is found: CMOE_HAVE_NCCL).
//
//   CMOE_NCCL_RETURN_IF_ERROR(ncclSend(buf, n, ncclFloat, peer, comm, stream));
//   -> Unavailable "ncclSend(buf, n, ncclFloat, peer, comm, stream) failed at
//      kernels/cuda/nccl_communicator.cc:123: remote process exited or there was a network error
//      (ncclRemoteError; last NCCL error: ...)"
//
// The message carries ncclGetErrorString of the result and ncclGetLastError (NCCL's own detail,
// which may belong to an earlier failed call of this process; it says so when it is empty).
//
// Codes: ncclInvalidArgument -> InvalidArgument; ncclInvalidUsage -> FailedPrecondition (calls
// out of order, e.g. a group left open); ncclSystemError, ncclRemoteError -> Unavailable (the
// machine or a peer failed); everything else (CUDA errors inside NCCL, internal errors, an
// unexpected ncclInProgress from a blocking communicator) -> Internal.
#ifndef CMOE_KERNELS_CUDA_NCCL_STATUS_H_
#define CMOE_KERNELS_CUDA_NCCL_STATUS_H_

#include <nccl.h>

#include "absl/status/status.h"

namespace cmoe::kernels::cuda {

absl::Status NcclStatus(ncclResult_t result, const char* call, const char* file, int line);

}  // namespace cmoe::kernels::cuda

#define CMOE_NCCL_STATUS(expr) ::cmoe::kernels::cuda::NcclStatus((expr), #expr, __FILE__, __LINE__)

#define CMOE_NCCL_RETURN_IF_ERROR(expr)                        \
  do {                                                         \
    ::absl::Status cmoe_nccl_status_ = CMOE_NCCL_STATUS(expr); \
    if (!cmoe_nccl_status_.ok()) return cmoe_nccl_status_;     \
  } while (false)

#endif  // CMOE_KERNELS_CUDA_NCCL_STATUS_H_
