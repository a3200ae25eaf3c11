#include "tests/kernels/threaded_communicator.h"

#include <memory>
#include <thread>

#include "kernels/threaded_communicator.h"

namespace cmoe::testing {

std::vector<absl::Status> RunOnRanks(
    int32_t world_size, const std::function<absl::Status(kernels::Communicator&)>& fn) {
  std::vector<std::unique_ptr<kernels::ThreadedCommunicator>> comms =
      kernels::ThreadedCommunicator::MakeGroup(world_size);
  std::vector<absl::Status> statuses(world_size);
  std::vector<std::thread> threads;
  threads.reserve(world_size);
  for (int32_t r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      statuses[r] = fn(*comms[r]);
      comms[r]->Depart(!statuses[r].ok());
    });
  }
  for (std::thread& t : threads) t.join();
  return statuses;
}

}  // namespace cmoe::testing
