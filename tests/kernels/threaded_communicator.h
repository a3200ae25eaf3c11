// Test-only: runs a function on W ranks as threads, each with its kernels::ThreadedCommunicator.
//
//   std::vector<absl::Status> statuses = RunOnRanks(4, [&](kernels::Communicator& comm) {
//     return RunExpertParallelMoe(comm, placement, args[comm.rank()], expert_fn, nullptr);
//   });
//
// A rank whose function returns an error aborts the group, and one that returns while its peers
// wait in a collective it will never join does too, so a broken test fails instead of hanging.
#ifndef CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_
#define CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "kernels/communicator.h"

namespace cmoe::testing {

// Runs fn(comm) on world_size threads; returns their statuses by rank.
std::vector<absl::Status> RunOnRanks(int32_t world_size,
                                     const std::function<absl::Status(kernels::Communicator&)>& fn);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_KERNELS_THREADED_COMMUNICATOR_H_
