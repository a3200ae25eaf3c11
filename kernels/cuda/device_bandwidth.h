// How fast a GPU can move data through its own memory (HBM): the ceiling that a memory-bound
// decode step on that GPU is measured against, as kernels/cpu/memory_bandwidth.h is on the CPU.
//
//   CMOE_ASSIGN_OR_RETURN(const double gbps, MeasureDeviceBandwidth(0, int64_t{1} << 30));
//   // a decode step that reads W bytes of weights in t seconds reaches W / t / 1e9 / gbps.
//
// The figure is copy bandwidth: bytes read plus bytes written per second (the convention of
// bandwidth tests and of the device machines' METHOD.md). A step that only reads weights moves
// data one way, so a fraction of this figure is a conservative fraction of the read ceiling.
#ifndef CMOE_KERNELS_CUDA_DEVICE_BANDWIDTH_H_
#define CMOE_KERNELS_CUDA_DEVICE_BANDWIDTH_H_

#include <cstdint>

#include "absl/status/statusor.h"

namespace cmoe::kernels::cuda {

// Copies a `bytes`-byte device buffer into another on device `device` (cudaMemcpyAsync,
// device to device, on a stream of its own), timed with CUDA events: one untimed warm-up copy,
// then the median of several timed copies. Returns (2 * bytes) / seconds in GB/s (1e9 bytes
// per second). Make `bytes` far larger than the L2 cache (1 GiB is good); 2 * bytes of device
// memory are allocated and freed before returning, on every path, and the calling thread's
// current device is restored.
// InvalidArgument for bytes < 1 or a device outside [0, count); Unavailable without a usable
// device; ResourceExhausted when the buffers do not fit; any other CUDA error a Status naming
// the call.
absl::StatusOr<double> MeasureDeviceBandwidth(int device, int64_t bytes);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_DEVICE_BANDWIDTH_H_
