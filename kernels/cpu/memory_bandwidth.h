// How fast the threads of a pool can read memory: the ceiling that a memory-bound decode step is
// measured against.
//
//   ThreadPool pool(2);
//   const double gbps = MeasureReadBandwidthGBps(pool, size_t{1} << 30, 5);
//   // a GEMV that streams W in t seconds reaches W.bytes() / t / 1e9 / gbps of the ceiling.
#ifndef CMOE_KERNELS_CPU_MEMORY_BANDWIDTH_H_
#define CMOE_KERNELS_CPU_MEMORY_BANDWIDTH_H_

#include <cstddef>

#include "common/thread_pool.h"

namespace cmoe::kernels::cpu {

// Allocates `bytes` (rounded up to whole 4 MiB chunks; make it several times the last-level
// cache) and times `repeats` passes (after one untimed warm-up pass) in which the threads of
// `pool` stream the buffer with the widest loads this CPU supports (the kernels the CPU backend
// picks under SimdLevel::kAuto), each claiming the next contiguous 4 MiB chunk when done with
// one, exactly as the GEMV claims its chunks of W.
// Returns the median over the passes of bytes read / wall time, in GB/s (1e9 bytes per second).
// Uses the pool for the whole call; the buffer is freed before returning.
double MeasureReadBandwidthGBps(ThreadPool& pool, size_t bytes, int repeats);

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_MEMORY_BANDWIDTH_H_
