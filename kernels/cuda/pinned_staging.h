// Pinned host memory for the host-to-device copies of a step graph. A copy recorded into a CUDA
// graph reads its host source when the graph runs, not when it is recorded, and a copy from
// pageable memory cannot be recorded at all; so while CudaBackend records a step it first copies
// each host operand (ids, positions, block tables) here and records the copy from here.
//
// Memory is handed out in rounds, one per recorded step, from two alternating arenas: a round
// reuses the arena of the round before last once the work queued with that round (EndRound's
// event) has finished, so a graph still running never sees its inputs overwritten. Within a
// round every Stage gets fresh bytes. Internal to kernels/cuda.
#ifndef CMOE_KERNELS_CUDA_PINNED_STAGING_H_
#define CMOE_KERNELS_CUDA_PINNED_STAGING_H_

#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace cmoe::kernels::cuda {

class PinnedStaging {
 public:
  PinnedStaging() = default;
  PinnedStaging(const PinnedStaging&) = delete;
  PinnedStaging& operator=(const PinnedStaging&) = delete;
  // Waits for the last round's work, then frees everything. The caller's device is current.
  ~PinnedStaging();

  // Starts a round: switches arenas and waits until the work queued with the arena's previous
  // round has run (usually long done). Not while a stream captures: the wait would fail.
  absl::Status BeginRound();
  // A copy of host[0, bytes) in pinned memory that stays unchanged until two rounds later.
  // Grows the arena by a new block when it is full (cudaHostAlloc, which relaxed-mode capture
  // allows); the blocks merge into one at the arena's next round.
  absl::StatusOr<const void*> Stage(const void* host, int64_t bytes);
  // Marks the end of the round: its memory is free to reuse once the work queued on `stream` so
  // far has run.
  absl::Status EndRound(cudaStream_t stream);

  // Pinned bytes held (all arenas), for tests.
  int64_t bytes_held() const;

 private:
  struct Block {
    char* data = nullptr;
    int64_t bytes = 0;
  };
  struct Arena {
    std::vector<Block> blocks;
    int64_t used = 0;            // bytes handed out from blocks.back() this round
    int64_t round_bytes = 0;     // bytes handed out this round
    cudaEvent_t done = nullptr;  // recorded by EndRound
    bool pending = false;        // done was recorded and not yet waited for
  };

  static void Free(Arena& arena);

  std::array<Arena, 2> arenas_;
  int current_ = 0;
};

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_PINNED_STAGING_H_
