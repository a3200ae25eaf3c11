// Launchers of the emulator's own test kernels (emulator_test_kernels.cu).
#ifndef CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_
#define CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>

namespace cmoe::cuda_emu::testing {

cudaError_t LaunchWarpOps(int threads, int* out);  // out: threads * 8 ints
cudaError_t LaunchBlockSum(int blocks, int threads, const int* in, int* out);
cudaError_t LaunchDynamicShared(int n, size_t bytes, bool opt_in, int* out);
cudaError_t LaunchDeadlock(int* out);  // out: 64 ints
cudaError_t LaunchExitedLane(int* out);
cudaError_t LaunchMisalignedLoad(const float* p, float* out);
cudaError_t LaunchAtomicCount(int blocks, int threads, int* counter, unsigned long long* wide);
cudaError_t LaunchWmma(const void* a, const void* b, float* c);  // a, b: 16x16 f16
cudaError_t LaunchBadBlock(int threads);
cudaError_t LaunchWriteIndex(int threads, int* out);  // out[i] = i for i < threads

}  // namespace cmoe::cuda_emu::testing

#endif  // CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_
