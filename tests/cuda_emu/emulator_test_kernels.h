// Launchers of the emulator's own test kernels (emulator_test_kernels.cu).
#ifndef CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_
#define CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>

namespace cmoe::cuda_emu::testing {

cudaError_t LaunchWarpOps(int threads, int* out);  // out: threads * 8 ints
cudaError_t LaunchBlockSum(int blocks, int threads, const int* in, int* out);
cudaError_t LaunchDynamicShared(int n, size_t bytes, bool opt_in, int* out);
cudaError_t LaunchDeadlock(int* out, cudaStream_t stream = nullptr);  // out: 64 ints
cudaError_t LaunchExitedLane(int* out);
cudaError_t LaunchMisalignedLoad(const float* p, float* out);
cudaError_t LaunchAtomicCount(int blocks, int threads, int* counter, unsigned long long* wide);
cudaError_t LaunchWmma(const void* a, const void* b, float* c);  // a, b: 16x16 f16
cudaError_t LaunchBadBlock(int threads, cudaStream_t stream = nullptr);
cudaError_t LaunchWriteIndex(int threads, int* out);  // out[i] = i for i < threads
// out[i] = in[i] + add for the first min(n, blocks * threads) i (one element per thread).
cudaError_t LaunchAddScalar(int blocks, int threads, const float* in, float* out, float add, int n,
                            cudaStream_t stream);
// A kernel parameter passed by value: out[i] = coeffs.v[i].
struct Coeffs {
  float v[8];
};
cudaError_t LaunchWriteCoeffs(const Coeffs& coeffs, float* out, cudaStream_t stream);

}  // namespace cmoe::cuda_emu::testing

#endif  // CMOE_TESTS_CUDA_EMU_EMULATOR_TEST_KERNELS_H_
