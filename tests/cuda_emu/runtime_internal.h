// What tests/cuda_emu/cublas.cc needs from the emulated runtime (tests/cuda_emu/runtime.cc).
#ifndef CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
#define CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_

#include <cstddef>
#include <mutex>

#include "tests/cuda_emu/cuda_emu.h"

namespace cmoe::cuda_emu {

// The lock that orders everything on the emulated device (launches, copies, cuBLAS calls).
std::mutex& Mutex();
// Whether [p, p + bytes) lies inside one cudaMalloc allocation. Call with Mutex() held.
bool IsDeviceRange(const void* p, size_t bytes);
// The sticky error of the device (cudaSuccess while it is healthy). Call with Mutex() held.
cudaError_t StickyError();

}  // namespace cmoe::cuda_emu

#endif  // CMOE_TESTS_CUDA_EMU_RUNTIME_INTERNAL_H_
