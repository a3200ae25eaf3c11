// What tests/cuda_emu/cublas.cc needs from the emulated runtime (tests/cuda_emu/runtime.cc).
#ifndef CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
#define CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_

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

}  // namespace cmoe::cuda_emu

#endif  // CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
