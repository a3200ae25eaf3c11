// What tests/cuda_emu/cublas.cc and tests/cuda_emu/nccl.cc need from the emulated runtime
// (tests/cuda_emu/runtime.cc).
#ifndef CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
#define CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <string>

#include "tests/cuda_emu/cuda_emu.h"

namespace cmoe::cuda_emu {

// The lock that orders everything on the emulated device (launches, copies, cuBLAS calls).
std::mutex& Mutex();
// Whether [p, p + bytes) lies inside one cudaMalloc allocation. Call with Mutex() held.
bool IsDeviceRange(const void* p, size_t bytes);
// The sticky error of the device (cudaSuccess while it is healthy). Call with Mutex() held.
cudaError_t StickyError();

// A library call (cuBLAS) about to enqueue work on `stream`, with Mutex() held: cudaSuccess and
// *capturing (record it with RecordLibraryCall instead of running it), or the error the enqueue
// meets (unknown stream, sticky error, invalidated capture, the legacy stream while a blocking
// stream captures), already the thread's last error. `what` names the call for messages.
cudaError_t EnqueueLibraryCall(cudaStream_t stream, const char* what, bool* capturing);
// The call's own checks failed after EnqueueLibraryCall: a capture on `stream` is invalidated
// (with a message naming `what`). Returns `error`. Call with Mutex() held.
cudaError_t FailLibraryCall(cudaStream_t stream, cudaError_t error, const char* what);
// Records the call into the capture on `stream` as a kernel node (Mutex() held). cudaGraphLaunch
// calls `run` with Mutex() held; it returns "" or what went wrong (say, an operand freed since
// the capture), which fails the launch with a sticky cudaErrorIllegalAddress.
void RecordLibraryCall(cudaStream_t stream, std::function<std::string()> run);

// The device of the cudaMalloc allocation holding all of [p, p + bytes) (the device current on
// the allocating thread), or -1 when no allocation does. Call with Mutex() held.
int DeviceOfRange(const void* p, size_t bytes);
// The calling thread's current device (cudaSetDevice).
int CurrentDevice();
// The device `stream` was created on (the legacy stream: the calling thread's current device);
// false for an unknown stream. Call with Mutex() held.
bool StreamDevice(cudaStream_t stream, int* device);

// Deferred stream work, for operations that complete only when something else happens (an NCCL
// receive waits for its peer's send). With Mutex() held: appends `step` to `stream` in stream
// order and makes progress (see Progress), or returns the error the enqueue meets (as
// EnqueueLibraryCall; a capturing stream is refused: not emulated, capture invalidated). `what`
// names the call for messages. Once `step` is the stream's first pending work, every Progress()
// calls it (Mutex() held, on whichever thread makes progress) until it returns true (done); the
// stream's later kernels, copies and memsets wait behind it (queued, run in order when it is
// done; a copy to pageable host memory and synchronous calls block the caller meanwhile), and
// cudaStreamQuery returns cudaErrorNotReady. A step must not enqueue CUDA work itself.
cudaError_t EnqueueDeferred(cudaStream_t stream, const char* what, std::function<bool()> step);
// Runs every stream's deferred work as far as it can go and wakes the threads waiting on
// Changed() when a step completed. Call with Mutex() held after anything a step waits for
// happened.
void Progress();
// Notified (by Progress) whenever deferred work completes a step; wait on it with Mutex().
std::condition_variable& Changed();
// Fails the device: sticky `error` (unless one is already set) with `what` on stderr, as a
// faulting kernel does. Call with Mutex() held.
void FailDevice(cudaError_t error, const char* what);

}  // namespace cmoe::cuda_emu

#endif  // CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
