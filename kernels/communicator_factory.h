// The communicators of one process's expert-parallel ranks, one rank per backend device
// (docs/architecture.md "Scaling out"): rank r drives devices[r] from a thread of its own.
//
//   CMOE_ASSIGN_OR_RETURN(std::vector<std::unique_ptr<Communicator>> comms,
//                         CreateCommunicators({"cuda:0", "cuda:1"}));
#ifndef CMOE_KERNELS_COMMUNICATOR_FACTORY_H_
#define CMOE_KERNELS_COMMUNICATOR_FACTORY_H_

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/communicator.h"

namespace cmoe::kernels {

// Host devices ("cpu", "reference"): a ThreadedCommunicator group (host memory). CUDA devices
// ("cuda[:N]", distinct ordinals): NCCL communicators made together (ncclCommInitAll) by the
// CUDA plugin. InvalidArgument for no devices, a mix of host and CUDA devices, a repeated GPU or
// a malformed name; Unavailable for CUDA devices in a build without NCCL or on a machine without
// them (the message names the reason).
absl::StatusOr<std::vector<std::unique_ptr<Communicator>>> CreateCommunicators(
    std::span<const std::string> devices);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_COMMUNICATOR_FACTORY_H_
