// The dispatch plan on the device (kernels/moe_ops.h DispatchParams): a stable counting sort of
// the P = T * k slots by expert, with no host round trip.
//
// Launch: ONE block of W warps, W = min(ceil(P / 32), 32, what shared memory allows for E),
// dynamic shared memory (E + W * E) int32. Three phases:
//   1. counts: per-warp aggregated (__match_any_sync) shared-memory atomics over all slots;
//   2. offsets: warp 0 scans the counts (exclusive), writes counts and offsets, and keeps
//      base[e] = offsets[e] as each expert's next free slot;
//   3. placement, in chunks of 32 * W consecutive slots: a slot's rank inside its warp is the
//      number of lower lanes with the same expert (__match_any_sync); per-warp counts go to
//      warp_rank[w][e], one thread per expert turns them into running bases over the warps, and
//      slot s lands at warp_rank[w][e] + rank. Slots are placed in source order s = t * k + j, so
//      each expert's slots are ordered by token (stable), as the host's counting sort does.
// Cost: O(P / (32 W) * (W * E / (32 W) + W)) per thread: a few microseconds for P up to tens of
// thousands with E <= 256. Correct at any P < 2^31 (the chunks are serial, so time grows linearly
// in P; a multi-block variant would be the next step for very large prefill batches).
// Limits: 1 <= E <= kMaxExperts = 1024 (W = 32 up to E = 356, W = 10 at E = 1024, within 46 KiB of
// shared memory); beyond it the launcher returns cudaErrorInvalidValue (CudaBackend says so
// first). Ids are not diagnosed on the device: a slot whose id is outside [0, E) is dropped (no
// write goes out of bounds, but its outputs stay unwritten and offsets[E] < P); an expert chosen
// twice by one token still yields a valid permutation.
// Exact: the outputs are integers equal to the host's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/dispatch.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxWarps = 32;
constexpr int kMaxExperts = 1024;
constexpr int kSharedBudget = 46 * 1024;  // below the 48 KiB available without an opt-in
constexpr unsigned kFullMask = 0xffffffffu;

// The expert of slot s, or -1 past the end or for an id outside [0, n).
__device__ __forceinline__ int SlotExpert(const int32_t* selected, int64_t s, int64_t num_slots,
                                          int n) {
  if (s >= num_slots) return -1;
  const int e = selected[s];
  return e >= 0 && e < n ? e : -1;
}

// Phase 1: base[e] = number of slots of expert e.
__device__ void CountSlots(const DispatchParams& p, int64_t num_slots, int* base) {
  const int n = p.num_experts;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  for (int e = static_cast<int>(threadIdx.x); e < n; e += static_cast<int>(blockDim.x)) base[e] = 0;
  __syncthreads();
  // Warp-uniform trip count: every lane reaches __match_any_sync.
  for (int64_t chunk = 0; chunk < num_slots; chunk += blockDim.x) {
    const int e = SlotExpert(p.selected, chunk + threadIdx.x, num_slots, n);
    const unsigned peers = __match_any_sync(kFullMask, e);
    if (e >= 0 && (__ffs(peers) - 1) == lane) atomicAdd(&base[e], __popc(peers));
  }
  __syncthreads();
}

// Phase 2 (warp 0): counts and offsets out; base[e] <- offsets[e].
__device__ void ScanCounts(const DispatchParams& p, int* base) {
  const int n = p.num_experts;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int per_lane = (n + kWarpSize - 1) / kWarpSize;
  const int begin = min(lane * per_lane, n);
  const int end = min(begin + per_lane, n);
  int sum = 0;
  for (int e = begin; e < end; ++e) sum += base[e];
  int inclusive = sum;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int v = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += v;
  }
  int running = inclusive - sum;
  for (int e = begin; e < end; ++e) {
    const int count = base[e];
    p.counts[e] = count;
    p.offsets[e] = running;
    base[e] = running;
    running += count;
  }
  if (lane == kWarpSize - 1) p.offsets[n] = inclusive;
}

// Phase 3: one chunk of 32 * W consecutive slots starting at `chunk`.
__device__ void PlaceChunk(const DispatchParams& p, int64_t num_slots, int64_t chunk, int* base,
                           int* warp_rank) {
  const int n = p.num_experts;
  const int warps = static_cast<int>(blockDim.x) / kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  for (int i = static_cast<int>(threadIdx.x); i < warps * n; i += static_cast<int>(blockDim.x)) {
    warp_rank[i] = 0;
  }
  __syncthreads();
  const int64_t s = chunk + threadIdx.x;
  const int e = SlotExpert(p.selected, s, num_slots, n);
  const unsigned peers = __match_any_sync(kFullMask, e);
  const int rank = __popc(peers & ((1u << lane) - 1u));
  if (e >= 0 && rank == 0) warp_rank[warp * n + e] = __popc(peers);
  __syncthreads();
  // Per expert: warp counts -> the slot where each warp's first slot of that expert goes.
  for (int x = static_cast<int>(threadIdx.x); x < n; x += static_cast<int>(blockDim.x)) {
    int running = base[x];
    for (int w = 0; w < warps; ++w) {
      const int count = warp_rank[w * n + x];
      warp_rank[w * n + x] = running;
      running += count;
    }
    base[x] = running;
  }
  __syncthreads();
  if (e >= 0) {
    const int slot = warp_rank[warp * n + e] + rank;
    p.slot_token[slot] = static_cast<int32_t>(s / p.k);
    p.slot_source[slot] = static_cast<int32_t>(s);
    p.token_slot[s] = slot;
  }
  __syncthreads();  // the next chunk clears warp_rank
}

__global__ void BuildDispatchKernel(DispatchParams p, int64_t num_slots) {
  extern __shared__ int shared[];
  int* base = shared;                       // (E)
  int* warp_rank = shared + p.num_experts;  // (W, E)
  CountSlots(p, num_slots, base);
  if (threadIdx.x < kWarpSize) ScanCounts(p, base);
  __syncthreads();
  for (int64_t chunk = 0; chunk < num_slots; chunk += blockDim.x) {
    PlaceChunk(p, num_slots, chunk, base, warp_rank);
  }
}

}  // namespace

cudaError_t LaunchBuildDispatch(const DispatchParams& params, cudaStream_t stream) {
  const int n = params.num_experts;
  if (n < 1 || n > kMaxExperts || params.k < 1 || params.k > n || params.num_tokens < 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t num_slots = params.num_tokens * params.k;
  if (num_slots >= 0x7fffffff) return cudaErrorInvalidValue;
  const int64_t shared_limit = kSharedBudget / (static_cast<int64_t>(sizeof(int)) * n) - 1;
  const int64_t wanted = (num_slots + kWarpSize - 1) / kWarpSize;
  const int warps =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({wanted, kMaxWarps, shared_limit})));
  const size_t shared_bytes = sizeof(int) * static_cast<size_t>(n) * (1 + warps);
  BuildDispatchKernel<<<1, warps * kWarpSize, shared_bytes, stream>>>(params, num_slots);
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
