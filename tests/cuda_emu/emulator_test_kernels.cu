// Kernels for tests/cuda_emu/emulator_test.cc: each exercises one thing the emulation promises
// (cuda_emu.h). Valid CUDA; built only through the emulation's translation.
#include <cuda_runtime.h>
#include <mma.h>

#include "tests/cuda_emu/emulator_test_kernels.h"

namespace cmoe::cuda_emu::testing {
namespace {

constexpr unsigned kFull = 0xffffffffu;

// out[t * 8 + i]: the results of 8 warp-level ops for thread t.
__global__ void WarpOpsKernel(int* out) {
  const int t = static_cast<int>(threadIdx.x);
  const int lane = t % 32;
  int* o = out + t * 8;
  o[0] = __shfl_xor_sync(kFull, t, 5);
  o[1] = __shfl_up_sync(kFull, t, 3);
  o[2] = __shfl_down_sync(kFull, t, 3);
  o[3] = __shfl_sync(kFull, t, 7);
  o[4] = static_cast<int>(__ballot_sync(kFull, lane % 3 == 0));
  o[5] = static_cast<int>(__match_any_sync(kFull, lane / 4));
  const unsigned group = __match_any_sync(kFull, lane % 2);
  o[6] = static_cast<int>(__reduce_add_sync(group, static_cast<unsigned>(lane)));
  o[7] = __shfl_xor_sync(kFull, t, 1, 8);
}

// A block-wide sum through shared memory: wrong without the barriers.
__global__ void BlockSumKernel(const int* in, int* out) {
  __shared__ int partial[1024];
  const int t = static_cast<int>(threadIdx.x);
  partial[t] = in[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (int stride = static_cast<int>(blockDim.x) / 2; stride > 0; stride /= 2) {
    if (t < stride) partial[t] += partial[t + stride];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

__global__ void DynamicSharedKernel(int n, int* out) {
  extern __shared__ int dynamic[];
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) {
    dynamic[i] = i;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (int i = 0; i < n; ++i) sum += dynamic[i];
    *out = sum;
  }
}

// Lane 0 waits in a shuffle for lanes that wait at a barrier for lane 0.
__global__ void DeadlockKernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x == 0) {
    v = __shfl_xor_sync(kFull, v, 1);
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

__global__ void EmptyKernel() {}

__global__ void AddScalarKernel(const float* in, float* out, float add, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i] + add;
}

__global__ void WriteCoeffsKernel(Coeffs coeffs, float* out) {
  out[threadIdx.x] = coeffs.v[threadIdx.x];
}

// Thread i writes out[i]: one past the end when launched with n + 1 threads.
__global__ void WriteIndexKernel(int* out) { out[threadIdx.x] = static_cast<int>(threadIdx.x); }

// Lanes 16..31 exit, then the rest shuffle with a full mask.
__global__ void ExitedLaneKernel(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(kFull, static_cast<int>(threadIdx.x), 1);
}

__global__ void MisalignedLoadKernel(const float* p, float* out) {
  const float4 v = __ldg(reinterpret_cast<const float4*>(p + 1));
  *out = v.x;
}

__global__ void AtomicCountKernel(int* counter, unsigned long long* wide) {
  atomicAdd(counter, 1);
  atomicAdd(wide, 1ull << 33);
}

// One 16x16x16 product per warp: c = a * b (a row-major, b column-major), stored row-major.
__global__ void WmmaKernel(const __half* a, const __half* b, float* c) {
  namespace wmma = nvcuda::wmma;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

}  // namespace

cudaError_t LaunchWarpOps(int threads, int* out) {
  WarpOpsKernel<<<1, threads>>>(out);
  return cudaGetLastError();
}
cudaError_t LaunchBlockSum(int blocks, int threads, const int* in, int* out) {
  BlockSumKernel<<<blocks, threads>>>(in, out);
  return cudaGetLastError();
}
cudaError_t LaunchDynamicShared(int n, size_t bytes, bool opt_in, int* out) {
  if (opt_in) {
    const cudaError_t e = cudaFuncSetAttribute(
        DynamicSharedKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
    if (e != cudaSuccess) return e;
  }
  DynamicSharedKernel<<<1, 128, bytes>>>(n, out);
  return cudaGetLastError();
}
cudaError_t LaunchDeadlock(int* out, cudaStream_t stream) {
  DeadlockKernel<<<1, 64, 0, stream>>>(out);
  return cudaGetLastError();
}
cudaError_t LaunchExitedLane(int* out) {
  ExitedLaneKernel<<<1, 32>>>(out);
  return cudaGetLastError();
}
cudaError_t LaunchMisalignedLoad(const float* p, float* out) {
  MisalignedLoadKernel<<<1, 1>>>(p, out);
  return cudaGetLastError();
}
cudaError_t LaunchAtomicCount(int blocks, int threads, int* counter, unsigned long long* wide) {
  AtomicCountKernel<<<blocks, threads>>>(counter, wide);
  return cudaGetLastError();
}
cudaError_t LaunchWmma(const void* a, const void* b, float* c) {
  WmmaKernel<<<1, 32>>>(static_cast<const __half*>(a), static_cast<const __half*>(b), c);
  return cudaGetLastError();
}
cudaError_t LaunchWriteIndex(int threads, int* out) {
  WriteIndexKernel<<<1, threads>>>(out);
  return cudaGetLastError();
}
cudaError_t LaunchBadBlock(int threads, cudaStream_t stream) {
  EmptyKernel<<<1, threads, 0, stream>>>();
  return cudaGetLastError();
}
cudaError_t LaunchAddScalar(int blocks, int threads, const float* in, float* out, float add, int n,
                            cudaStream_t stream) {
  AddScalarKernel<<<blocks, threads, 0, stream>>>(in, out, add, n);
  return cudaGetLastError();
}
cudaError_t LaunchWriteCoeffs(const Coeffs& coeffs, float* out, cudaStream_t stream) {
  WriteCoeffsKernel<<<1, 8, 0, stream>>>(coeffs, out);
  return cudaGetLastError();
}

}  // namespace cmoe::cuda_emu::testing
