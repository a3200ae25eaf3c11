#include "kernels/cuda/pinned_staging.h"

#include <algorithm>
#include <cstring>

#include "common/status.h"
#include "kernels/cuda/cuda_status.h"

namespace cmoe::kernels::cuda {
namespace {

// Each staged operand starts on a 256-byte boundary, as device allocations do, so that copies
// keep the alignment of what they copy.
constexpr int64_t kAlignment = 256;
constexpr int64_t kMinBlockBytes = int64_t{64} << 10;

int64_t RoundUp(int64_t bytes) { return (bytes + kAlignment - 1) / kAlignment * kAlignment; }

}  // namespace

PinnedStaging::~PinnedStaging() {
  for (Arena& arena : arenas_) {
    if (arena.pending) cudaEventSynchronize(arena.done);
    Free(arena);
    if (arena.done != nullptr) cudaEventDestroy(arena.done);
  }
}

void PinnedStaging::Free(Arena& arena) {
  for (Block& block : arena.blocks) cudaFreeHost(block.data);
  arena.blocks.clear();
  arena.used = 0;
}

absl::Status PinnedStaging::BeginRound() {
  current_ ^= 1;
  Arena& arena = arenas_[current_];
  if (arena.pending) {
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(arena.done));
    arena.pending = false;
  }
  // The last round on this arena outgrew its first block: one block of the whole size now.
  if (arena.blocks.size() > 1) {
    int64_t total = 0;
    for (const Block& block : arena.blocks) total += block.bytes;
    Free(arena);
    void* data = nullptr;
    CMOE_CUDA_RETURN_IF_ERROR(
        cudaHostAlloc(&data, static_cast<size_t>(total), cudaHostAllocDefault));
    arena.blocks.push_back({.data = static_cast<char*>(data), .bytes = total});
  }
  arena.used = 0;
  arena.round_bytes = 0;
  return absl::OkStatus();
}

absl::StatusOr<const void*> PinnedStaging::Stage(const void* host, int64_t bytes) {
  Arena& arena = arenas_[current_];
  const int64_t need = RoundUp(std::max<int64_t>(bytes, 1));
  if (arena.blocks.empty() || arena.used + need > arena.blocks.back().bytes) {
    const int64_t grown = std::max({need, kMinBlockBytes, arena.round_bytes});
    void* data = nullptr;
    CMOE_CUDA_RETURN_IF_ERROR(
        cudaHostAlloc(&data, static_cast<size_t>(grown), cudaHostAllocDefault));
    arena.blocks.push_back({.data = static_cast<char*>(data), .bytes = grown});
    arena.used = 0;
  }
  char* out = arena.blocks.back().data + arena.used;
  if (bytes > 0) std::memcpy(out, host, static_cast<size_t>(bytes));
  arena.used += need;
  arena.round_bytes += need;
  return out;
}

absl::Status PinnedStaging::EndRound(cudaStream_t stream) {
  Arena& arena = arenas_[current_];
  if (arena.done == nullptr) {
    CMOE_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&arena.done, cudaEventDisableTiming));
  }
  CMOE_CUDA_RETURN_IF_ERROR(cudaEventRecord(arena.done, stream));
  arena.pending = true;
  return absl::OkStatus();
}

int64_t PinnedStaging::bytes_held() const {
  int64_t total = 0;
  for (const Arena& arena : arenas_) {
    for (const Block& block : arena.blocks) total += block.bytes;
  }
  return total;
}

}  // namespace cmoe::kernels::cuda
