// The emulation of NCCL's communicators and point-to-point operations (tests/cuda_emu/include/
// nccl.h explains what is modelled). Everything here is guarded by the runtime's lock
// (cmoe::cuda_emu::Mutex()), so an NCCL unit of work runs as a deferred stream step of the
// runtime (runtime_internal.h EnqueueDeferred) under the same lock as kernels and copies.
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "tests/cuda_emu/runtime_internal.h"

namespace cmoe::cuda_emu::nccl {

// One ncclSend or ncclRecv, from its call until it is matched (or its communicator ends).
struct Op {
  bool send = false;
  void* buffer = nullptr;  // the send buffer (read at the match) or the receive buffer
  size_t count = 0;
  ncclDataType_t type = ncclFloat;
  int peer = 0;
  ncclComm* comm = nullptr;  // the issuing communicator
  bool done = false;
};

// The ranks of one communicator group and their posted, unmatched operations.
struct Group {
  int nranks = 0;
  std::vector<ncclComm*> ranks;  // by rank
  // (sender, receiver) -> posted operations in posting order, matched front to front.
  std::map<std::pair<int, int>, std::deque<std::shared_ptr<Op>>> sends, recvs;
};

}  // namespace cmoe::cuda_emu::nccl

// A communicator: one rank of a group, bound to a device. Never freed (a few bytes each), so that
// a use after ncclCommDestroy / ncclCommAbort is reported rather than undefined.
struct ncclComm {
  std::shared_ptr<cmoe::cuda_emu::nccl::Group> group;
  int rank = 0;
  int device = 0;
  bool ended = false;  // destroyed or aborted
  ncclResult_t async_error = ncclSuccess;
  int pending = 0;  // operations enqueued on a stream and not yet done
};

namespace cmoe::cuda_emu::nccl {
namespace {

// Every communicator ever made (guarded by Mutex()).
std::set<ncclComm*>& Comms() {
  static auto* comms = new std::set<ncclComm*>();
  return *comms;
}

// The texts ncclGetLastError returns, kept for the life of the process (distinct texts only), and
// the latest one. Written with Mutex() held; read without.
std::set<std::string>& Messages() {
  static auto* messages = new std::set<std::string>();
  return *messages;
}
std::atomic<const char*> g_last_error{""};

// Records `text` as the last NCCL error and returns `result`. Mutex() held.
ncclResult_t Error(ncclResult_t result, const std::string& text) {
  g_last_error = Messages().insert("cmoe-emu NCCL: " + text).first->c_str();
  return result;
}

// Sets `comm`'s asynchronous error unless it has one already (the first error wins, as in
// NCCL), with a message on stderr. Mutex() held.
void SetAsyncError(ncclComm* comm, ncclResult_t result, const std::string& text) {
  if (comm->ended || comm->async_error != ncclSuccess) return;
  comm->async_error = result;
  Error(result, text);
  std::fprintf(stderr, "cmoe-emu NCCL: rank %d: %s (%s)\n", comm->rank, text.c_str(),
               ncclGetErrorString(result));
}

// Bytes per element of `type`; 0 for a value NCCL does not know.
size_t TypeBytes(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    case ncclNumTypes:
      break;
  }
  return 0;
}

// Whether `comm` is a communicator of this process that has not ended. Mutex() held.
bool Alive(const ncclComm* comm) {
  return comm != nullptr && Comms().count(const_cast<ncclComm*>(comm)) != 0 && !comm->ended;
}

ncclResult_t InvalidComm(const char* call) {
  return Error(ncclInvalidArgument,
               std::string(call) + ": invalid communicator (null, unknown, destroyed or aborted)");
}

// `op` is done: matched, or dropped with its communicator. Mutex() held.
void Finish(Op& op) {
  if (op.done) return;
  op.done = true;
  --op.comm->pending;
}

std::pair<int, int> PairOf(const Op& op) {
  return op.send ? std::pair{op.comm->rank, op.peer} : std::pair{op.peer, op.comm->rank};
}

// Matches the posted operations of (sender, receiver) front to front, copying each send into its
// receive. A pair whose counts or types differ stays unmatched (as a hang on a GPU) and sets both
// ranks' asynchronous error. Mutex() held.
void Match(Group& group, const std::pair<int, int>& key) {
  std::deque<std::shared_ptr<Op>>& sends = group.sends[key];
  std::deque<std::shared_ptr<Op>>& recvs = group.recvs[key];
  while (!sends.empty() && !recvs.empty()) {
    Op& send = *sends.front();
    Op& recv = *recvs.front();
    if (send.count != recv.count || send.type != recv.type) {
      char text[256];
      std::snprintf(text, sizeof text,
                    "rank %d sends %zu elements of type %d to rank %d, which receives %zu of type "
                    "%d: the sizes of a matched send and receive must agree",
                    key.first, send.count, static_cast<int>(send.type), key.second, recv.count,
                    static_cast<int>(recv.type));
      SetAsyncError(send.comm, ncclInvalidUsage, text);
      SetAsyncError(recv.comm, ncclInvalidUsage, text);
      return;
    }
    const size_t bytes = send.count * TypeBytes(send.type);
    if (bytes > 0) {
      if (DeviceOfRange(send.buffer, bytes) < 0 || DeviceOfRange(recv.buffer, bytes) < 0) {
        char text[256];
        std::snprintf(text, sizeof text,
                      "NCCL send from rank %d to rank %d of %zu bytes: a buffer is no longer "
                      "allocated (freed before the operation ran?)",
                      key.first, key.second, bytes);
        FailDevice(cudaErrorIllegalAddress, text);
      } else {
        std::memmove(recv.buffer, send.buffer, bytes);
      }
    }
    Finish(send);
    Finish(recv);
    sends.pop_front();
    recvs.pop_front();
  }
}

// Posts `op` for matching; an operation with an ended peer can never match: ncclRemoteError.
// Mutex() held.
void Post(Group& group, const std::shared_ptr<Op>& op) {
  const ncclComm* peer = group.ranks[static_cast<size_t>(op->peer)];
  if (peer->ended) {
    SetAsyncError(
        op->comm, ncclRemoteError,
        "rank " + std::to_string(op->peer) + " has left the group (destroyed or aborted)");
  }
  (op->send ? group.sends : group.recvs)[PairOf(*op)].push_back(op);
}

// Ends `comm` (destroy or abort): its unmatched operations are dropped as done, the peers waiting
// for it get ncclRemoteError. Mutex() held.
void End(ncclComm* comm) {
  comm->ended = true;
  Group& group = *comm->group;
  for (auto* queues : {&group.sends, &group.recvs}) {
    for (auto& [key, ops] : *queues) {
      for (auto it = ops.begin(); it != ops.end();) {
        if ((*it)->comm == comm) {
          Finish(**it);
          it = ops.erase(it);
          continue;
        }
        if ((*it)->peer == comm->rank) {
          SetAsyncError((*it)->comm, ncclRemoteError,
                        "rank " + std::to_string(comm->rank) +
                            " left the group (destroyed or aborted) with an operation pending");
        }
        ++it;
      }
    }
  }
  Progress();
}

// The operations of one communicator from one ncclGroupEnd on one stream: one unit of stream work
// (NCCL's fused kernel). Its step posts them when the stream gets there and is done once every one
// is. Mutex() held.
bool RunUnit(const std::vector<std::shared_ptr<Op>>& ops, bool& posted) {
  if (!posted) {
    posted = true;
    ncclComm* comm = ops.front()->comm;
    if (comm->ended) {
      for (const auto& op : ops) Finish(*op);
    } else {
      for (const auto& op : ops) Post(*comm->group, op);
      for (const auto& op : ops) Match(*comm->group, PairOf(*op));
    }
  }
  return std::all_of(ops.begin(), ops.end(), [](const auto& op) { return op->done; });
}

// The calling thread's open group (ncclGroupStart): its operations with their streams, and the
// first error met inside it.
struct Queued {
  std::shared_ptr<Op> op;
  cudaStream_t stream;
};
thread_local int t_group_depth = 0;
thread_local std::vector<Queued> t_group_ops;
thread_local ncclResult_t t_group_error = ncclSuccess;

// The outermost ncclGroupEnd, Mutex() held: one unit per (communicator, stream), in the order of
// their first operation.
ncclResult_t EnqueueGroup() {
  std::vector<Queued> queued = std::move(t_group_ops);
  t_group_ops.clear();
  const ncclResult_t error = t_group_error;
  t_group_error = ncclSuccess;
  if (error != ncclSuccess) return error;  // the group is discarded
  std::vector<std::pair<std::pair<ncclComm*, cudaStream_t>, std::vector<std::shared_ptr<Op>>>>
      units;
  for (Queued& q : queued) {
    const std::pair<ncclComm*, cudaStream_t> key{q.op->comm, q.stream};
    auto it =
        std::find_if(units.begin(), units.end(), [&](const auto& u) { return u.first == key; });
    if (it == units.end()) it = units.insert(units.end(), {key, {}});
    it->second.push_back(std::move(q.op));
  }
  ncclResult_t result = ncclSuccess;
  for (auto& [key, ops] : units) {
    key.first->pending += static_cast<int>(ops.size());
    auto shared_ops = std::make_shared<std::vector<std::shared_ptr<Op>>>(std::move(ops));
    auto posted = std::make_shared<bool>(false);
    const cudaError_t e = EnqueueDeferred(
        key.second, "ncclGroupEnd", [shared_ops, posted] { return RunUnit(*shared_ops, *posted); });
    if (e != cudaSuccess) {
      for (const auto& op : *shared_ops) Finish(*op);
      result = Error(
          ncclUnhandledCudaError,
          std::string("ncclGroupEnd: enqueueing on the stream failed: ") + cudaGetErrorName(e));
    }
  }
  return result;
}

// ncclSend / ncclRecv: checks the arguments, then queues the operation in the open group (or in
// a group of its own).
ncclResult_t Queue(const char* call, bool send, void* buffer, size_t count, ncclDataType_t type,
                   int peer, ncclComm* comm, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(Mutex());
  ncclResult_t result = ncclSuccess;
  const size_t type_bytes = TypeBytes(type);
  int stream_device = -1;
  if (!Alive(comm)) {
    result = InvalidComm(call);
  } else if (type_bytes == 0) {
    result = Error(ncclInvalidArgument, std::string(call) + ": invalid data type " +
                                            std::to_string(static_cast<int>(type)));
  } else if (peer < 0 || peer >= comm->group->nranks) {
    result = Error(ncclInvalidArgument, std::string(call) + ": peer " + std::to_string(peer) +
                                            " outside the group of " +
                                            std::to_string(comm->group->nranks));
  } else if (!StreamDevice(stream, &stream_device)) {
    result = Error(ncclInvalidArgument, std::string(call) + ": unknown stream");
  } else if (stream_device != comm->device) {
    result =
        Error(ncclInvalidArgument, std::string(call) + ": the stream is on device " +
                                       std::to_string(stream_device) + ", the communicator's is " +
                                       std::to_string(comm->device));
  } else if (count > 0) {
    const int device = DeviceOfRange(buffer, count * type_bytes);
    if (device != comm->device) {
      result = Error(ncclInvalidArgument,
                     std::string(call) + ": the buffer of " + std::to_string(count * type_bytes) +
                         " bytes is " +
                         (device < 0 ? std::string("not inside one device allocation")
                                     : "on device " + std::to_string(device)) +
                         "; the communicator's device is " + std::to_string(comm->device));
    }
  }
  if (result != ncclSuccess) {
    if (t_group_depth > 0 && t_group_error == ncclSuccess) t_group_error = result;
    return result;
  }
  auto op = std::make_shared<Op>();
  op->send = send;
  op->buffer = buffer;
  op->count = count;
  op->type = type;
  op->peer = peer;
  op->comm = comm;
  t_group_ops.push_back({std::move(op), stream});
  return t_group_depth > 0 ? ncclSuccess : EnqueueGroup();
}

// A new communicator (registered) for `rank` of `group` on `device`. Mutex() held.
ncclComm* NewComm(const std::shared_ptr<Group>& group, int rank, int device) {
  auto* comm = new ncclComm();
  comm->group = group;
  comm->rank = rank;
  comm->device = device;
  group->ranks[static_cast<size_t>(rank)] = comm;
  Comms().insert(comm);
  return comm;
}

// A group of ranks joining through ncclCommInitRank with one id.
struct Joining {
  int nranks = 0;
  int joined = 0;
  std::vector<int> devices;      // by rank; -1 until the rank joins
  std::shared_ptr<Group> group;  // made by the last rank to join
  ncclResult_t result = ncclSuccess;
};

// Guarded by Mutex(); an entry lives until its group is complete.
std::map<std::string, std::shared_ptr<Joining>>& JoiningGroups() {
  static auto* groups = new std::map<std::string, std::shared_ptr<Joining>>();
  return *groups;
}

ncclResult_t DestroyOrAbort(ncclComm* comm, bool abort) {
  std::unique_lock<std::mutex> lock(Mutex());
  const char* call = abort ? "ncclCommAbort" : "ncclCommDestroy";
  if (!Alive(comm)) return InvalidComm(call);
  if (!abort) {
    Progress();
    Changed().wait(lock, [comm] { return comm->pending == 0 || comm->ended; });
    if (comm->ended) return InvalidComm(call);  // aborted meanwhile
  }
  End(comm);
  return ncclSuccess;
}

}  // namespace
}  // namespace cmoe::cuda_emu::nccl

namespace emu = cmoe::cuda_emu;
namespace nccl = cmoe::cuda_emu::nccl;

ncclResult_t ncclGetVersion(int* version) {
  if (version == nullptr) return ncclInvalidArgument;
  *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
      return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
      return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument:
      return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
      return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    case ncclNumResults:
      break;
  }
  return "unknown result code";
}

const char* ncclGetLastError(ncclComm_t) { return nccl::g_last_error.load(); }

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  static std::atomic<unsigned long long> next{0};
  std::memset(id->internal, 0, sizeof id->internal);
  std::snprintf(id->internal, sizeof id->internal, "cmoe-emu-nccl %ld %llu",
                static_cast<long>(getpid()), next.fetch_add(1) + 1);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (comm == nullptr) return ncclInvalidArgument;
  *comm = nullptr;
  std::unique_lock<std::mutex> lock(emu::Mutex());
  if (nranks < 1 || rank < 0 || rank >= nranks) {
    return nccl::Error(ncclInvalidArgument, "ncclCommInitRank: rank " + std::to_string(rank) +
                                                " of " + std::to_string(nranks));
  }
  const std::string key(id.internal, sizeof id.internal);
  std::shared_ptr<nccl::Joining>& entry = nccl::JoiningGroups()[key];
  if (entry == nullptr) {
    entry = std::make_shared<nccl::Joining>();
    entry->nranks = nranks;
    entry->devices.assign(static_cast<size_t>(nranks), -1);
  }
  const std::shared_ptr<nccl::Joining> joining = entry;
  if (joining->nranks != nranks) {
    return nccl::Error(ncclInvalidArgument, "ncclCommInitRank: " + std::to_string(nranks) +
                                                " ranks, another rank of the id said " +
                                                std::to_string(joining->nranks));
  }
  if (joining->devices[static_cast<size_t>(rank)] >= 0) {
    return nccl::Error(ncclInvalidUsage,
                       "ncclCommInitRank: rank " + std::to_string(rank) + " joined twice");
  }
  joining->devices[static_cast<size_t>(rank)] = emu::CurrentDevice();
  if (++joining->joined == nranks) {
    nccl::JoiningGroups().erase(key);
    std::vector<int> sorted = joining->devices;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      joining->result = nccl::Error(ncclInvalidUsage,
                                    "ncclCommInitRank: two ranks on one device (duplicate GPU)");
    } else {
      joining->group = std::make_shared<nccl::Group>();
      joining->group->nranks = nranks;
      joining->group->ranks.assign(static_cast<size_t>(nranks), nullptr);
      for (int r = 0; r < nranks; ++r) {
        nccl::NewComm(joining->group, r, joining->devices[static_cast<size_t>(r)]);
      }
    }
    emu::Changed().notify_all();
  }
  emu::Changed().wait(lock, [&joining] { return joining->joined == joining->nranks; });
  if (joining->result != ncclSuccess) return joining->result;
  *comm = joining->group->ranks[static_cast<size_t>(rank)];
  return ncclSuccess;
}

ncclResult_t ncclCommInitAll(ncclComm_t* comms, int ndev, const int* devlist) {
  if (comms == nullptr || ndev < 1) {
    std::lock_guard<std::mutex> lock(emu::Mutex());
    return nccl::Error(ncclInvalidArgument,
                       "ncclCommInitAll: " + std::to_string(ndev) + " devices (or null comms)");
  }
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) count = 0;
  cudaGetLastError();
  std::lock_guard<std::mutex> lock(emu::Mutex());
  std::vector<int> devices(static_cast<size_t>(ndev));
  for (int i = 0; i < ndev; ++i) {
    devices[static_cast<size_t>(i)] = devlist != nullptr ? devlist[i] : i;
    if (devices[static_cast<size_t>(i)] < 0 || devices[static_cast<size_t>(i)] >= count) {
      return nccl::Error(ncclInvalidArgument, "ncclCommInitAll: device " +
                                                  std::to_string(devices[static_cast<size_t>(i)]) +
                                                  " does not exist");
    }
  }
  std::vector<int> sorted = devices;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
    return nccl::Error(ncclInvalidUsage, "ncclCommInitAll: a device is listed twice");
  }
  auto group = std::make_shared<nccl::Group>();
  group->nranks = ndev;
  group->ranks.assign(static_cast<size_t>(ndev), nullptr);
  for (int i = 0; i < ndev; ++i)
    comms[i] = nccl::NewComm(group, i, devices[static_cast<size_t>(i)]);
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) { return nccl::DestroyOrAbort(comm, false); }

ncclResult_t ncclCommAbort(ncclComm_t comm) { return nccl::DestroyOrAbort(comm, true); }

ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  std::lock_guard<std::mutex> lock(emu::Mutex());
  if (asyncError == nullptr) {
    return nccl::Error(ncclInvalidArgument, "ncclCommGetAsyncError: null asyncError");
  }
  if (!nccl::Alive(comm)) return nccl::InvalidComm("ncclCommGetAsyncError");
  emu::Progress();
  *asyncError = comm->async_error;
  return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  std::lock_guard<std::mutex> lock(emu::Mutex());
  if (count == nullptr || !nccl::Alive(comm)) return nccl::InvalidComm("ncclCommCount");
  *count = comm->group->nranks;
  return ncclSuccess;
}

ncclResult_t ncclCommCuDevice(const ncclComm_t comm, int* device) {
  std::lock_guard<std::mutex> lock(emu::Mutex());
  if (device == nullptr || !nccl::Alive(comm)) return nccl::InvalidComm("ncclCommCuDevice");
  *device = comm->device;
  return ncclSuccess;
}

ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  std::lock_guard<std::mutex> lock(emu::Mutex());
  if (rank == nullptr || !nccl::Alive(comm)) return nccl::InvalidComm("ncclCommUserRank");
  *rank = comm->rank;
  return ncclSuccess;
}

ncclResult_t ncclGroupStart() {
  ++nccl::t_group_depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() {
  std::lock_guard<std::mutex> lock(emu::Mutex());
  if (nccl::t_group_depth == 0) {
    return nccl::Error(ncclInvalidUsage, "ncclGroupEnd without ncclGroupStart");
  }
  if (--nccl::t_group_depth > 0) return ncclSuccess;
  return nccl::EnqueueGroup();
}

ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return nccl::Queue("ncclSend", true, const_cast<void*>(sendbuff), count, datatype, peer, comm,
                     stream);
}

ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer,
                      ncclComm_t comm, cudaStream_t stream) {
  return nccl::Queue("ncclRecv", false, recvbuff, count, datatype, peer, comm, stream);
}
