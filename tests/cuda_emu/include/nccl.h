// Stand-in for NCCL's <nccl.h> in the CPU emulation (tests/cuda_emu/cuda_emu.h): the subset
// kernels/cuda/nccl_communicator.cc uses, with NCCL's names, numbers and signatures, implemented
// by tests/cuda_emu/nccl.cc. What it models:
//
// - Communicators: ncclCommInitAll (several emulated devices, one process) and ncclCommInitRank
//   (one rank per thread, binding the thread's current device; blocks until every rank of the id
//   has joined, as NCCL's bootstrap does); one communicator per (group, rank).
// - Point-to-point: ncclSend / ncclRecv, alone or inside ncclGroupStart / ncclGroupEnd. At the
//   outermost ncclGroupEnd each communicator's operations become one unit of work on the given
//   stream in stream order (tests/cuda_emu/runtime_internal.h EnqueueDeferred), as NCCL's fused
//   kernel: when the stream gets there its sends and receives are posted, and the unit completes
//   once every one is matched. Matching is per (sender, receiver) pair in FIFO order; a matched
//   pair copies the send buffer into the receive buffer then. Until then the stream is not ready
//   (cudaStreamQuery: cudaErrorNotReady) and its later work waits behind it: no host thread is
//   blocked except by calls that wait (cudaStreamSynchronize, a copy to pageable host memory).
// - Errors: argument errors are returned at once (ncclInvalidArgument, with ncclGetLastError's
//   text); a matched pair whose counts or types differ sets ncclInvalidUsage as both ranks'
//   asynchronous error (ncclCommGetAsyncError) and stays unmatched, as a hang would on a GPU;
//   an operation posted to, or waiting for, a rank that was aborted or destroyed sets
//   ncclRemoteError likewise. ncclCommAbort (from any thread) completes the rank's pending
//   operations without data (their units finish, the stream drains) and ends the communicator:
//   later calls with it return ncclInvalidArgument (NCCL frees it: a later use is undefined).
//
// Not modelled: collectives (ncclAllReduce etc.), non-blocking communicators (ncclInProgress is
// never returned), stream capture of NCCL work (refused), several processes.
#ifndef CMOE_TESTS_CUDA_EMU_INCLUDE_NCCL_H_
#define CMOE_TESTS_CUDA_EMU_INCLUDE_NCCL_H_

#include <cuda_runtime.h>

#include <cstddef>

#define NCCL_MAJOR 2
#define NCCL_MINOR 21
#define NCCL_PATCH 5
#define NCCL_SUFFIX "cmoe-emu"
#define NCCL_VERSION(X, Y, Z) \
  ((X) <= 2 && (Y) <= 8 ? (X)*1000 + (Y)*100 + (Z) : (X)*10000 + (Y)*100 + (Z))
#define NCCL_VERSION_CODE NCCL_VERSION(NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH)

#define NCCL_UNIQUE_ID_BYTES 128

struct ncclComm;
using ncclComm_t = ncclComm*;

struct ncclUniqueId {
  char internal[NCCL_UNIQUE_ID_BYTES];
};

// NCCL's numbers.
enum ncclResult_t {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclNumResults = 8,
};

enum ncclDataType_t {
  ncclInt8 = 0,
  ncclChar = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
  ncclInt = 2,
  ncclUint32 = 3,
  ncclInt64 = 4,
  ncclUint64 = 5,
  ncclFloat16 = 6,
  ncclHalf = 6,
  ncclFloat32 = 7,
  ncclFloat = 7,
  ncclFloat64 = 8,
  ncclDouble = 8,
  ncclBfloat16 = 9,
  ncclNumTypes = 10,
};

// NCCL_VERSION_CODE; ncclInvalidArgument for a null pointer.
ncclResult_t ncclGetVersion(int* version);
// NCCL's text for `result` ("unknown result code" for a value it does not know).
const char* ncclGetErrorString(ncclResult_t result);
// The text of the process's most recent NCCL error ("" before any); `comm` is unused (null
// allowed). The pointer stays valid for the life of the process.
const char* ncclGetLastError(ncclComm_t comm);

// A fresh id for ncclCommInitRank (never equal to an earlier one of this process).
ncclResult_t ncclGetUniqueId(ncclUniqueId* id);
// Rank `rank` of the group of `nranks` named by `id`, on the calling thread's current device.
// Blocks until all nranks ranks have joined; ncclInvalidArgument for a bad rank or count, or a
// count that differs from an earlier joiner's; ncclInvalidUsage for a rank that already joined or
// two ranks on one device (for every rank of the group).
ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank);
// comms[i]: rank i of a new group of ndev on devlist[i] (null devlist: devices 0..ndev-1).
// ncclInvalidArgument for ndev < 1 or a device that does not exist, ncclInvalidUsage for a device
// listed twice.
ncclResult_t ncclCommInitAll(ncclComm_t* comms, int ndev, const int* devlist);
// Ends `comm` after waiting for its pending operations (which may wait for peers forever, as on a
// GPU). ncclInvalidArgument for an unknown or ended communicator.
ncclResult_t ncclCommDestroy(ncclComm_t comm);
// Ends `comm` at once, from any thread: its pending operations complete without data. As
// ncclCommDestroy for an unknown or ended communicator.
ncclResult_t ncclCommAbort(ncclComm_t comm);
// *asyncError: the communicator's asynchronous error (ncclSuccess while healthy).
// ncclInvalidArgument for an unknown or ended communicator or a null pointer.
ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError);
ncclResult_t ncclCommCount(const ncclComm_t comm, int* count);
ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device);
ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank);

// Groups nest; the outermost ncclGroupEnd enqueues the operations (see the file comment) and
// returns the first error met inside the group, if any, discarding the group's operations then.
// ncclGroupEnd without ncclGroupStart: ncclInvalidUsage.
ncclResult_t ncclGroupStart();
ncclResult_t ncclGroupEnd();
// `count` elements of `datatype` to / from rank `peer` of `comm`, on `stream` (a stream of the
// communicator's device, or the legacy stream). The buffer must lie inside one cudaMalloc
// allocation of the communicator's device (unless count is 0); else ncclInvalidArgument.
ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream);

#endif  // CMOE_TESTS_CUDA_EMU_INCLUDE_NCCL_H_
