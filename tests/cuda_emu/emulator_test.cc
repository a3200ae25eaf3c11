// The CPU emulation of CUDA itself (tests/cuda_emu/cuda_emu.h): warp-level ops, barriers, shared
// memory, atomics, WMMA and cuBLAS compute what CUDA specifies, and every check it promises turns
// a bad kernel or call into an error instead of a pass.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "tests/cuda_emu/emulator_test_kernels.h"

namespace cmoe::cuda_emu::testing {
namespace {

template <class T>
T* DeviceAlloc(size_t n) {
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(T)), cudaSuccess);
  return static_cast<T*>(p);
}

template <class T>
std::vector<T> Download(const T* p, size_t n) {
  std::vector<T> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

// Faults are sticky, as on a GPU; each test starts and ends on a healthy device.
class CudaEmulator : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaDeviceReset(), cudaSuccess); }
  void TearDown() override { cudaDeviceReset(); }
};

TEST_F(CudaEmulator, WarpLevelOpsFollowCuda) {
  constexpr int kThreads = 64;
  int* out = DeviceAlloc<int>(kThreads * 8);
  ASSERT_EQ(LaunchWarpOps(kThreads, out), cudaSuccess);
  const std::vector<int> got = Download(out, kThreads * 8);
  for (int t = 0; t < kThreads; ++t) {
    const int lane = t % 32, base = t - lane;
    const int* o = got.data() + t * 8;
    EXPECT_EQ(o[0], t ^ 5) << t;
    EXPECT_EQ(o[1], lane >= 3 ? t - 3 : t) << t;
    EXPECT_EQ(o[2], lane + 3 < 32 ? t + 3 : t) << t;
    EXPECT_EQ(o[3], base + 7) << t;
    EXPECT_EQ(static_cast<unsigned>(o[4]), 0x49249249u) << t;  // lanes 0, 3, ..., 30
    EXPECT_EQ(static_cast<unsigned>(o[5]), 0xfu << (lane / 4 * 4)) << t;
    EXPECT_EQ(o[6], lane % 2 == 0 ? 240 : 256) << t;
    EXPECT_EQ(o[7], t ^ 1) << t;
  }
  EXPECT_EQ(cudaFree(out), cudaSuccess);
}

TEST_F(CudaEmulator, BarriersOrderSharedMemory) {
  constexpr int kBlocks = 3, kThreads = 1024;
  std::vector<int> in(kBlocks * kThreads);
  std::mt19937 rng(1);
  for (int& v : in) v = static_cast<int>(rng() % 1000);
  int* d_in = DeviceAlloc<int>(in.size());
  int* d_out = DeviceAlloc<int>(kBlocks);
  ASSERT_EQ(cudaMemcpy(d_in, in.data(), in.size() * sizeof(int), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(LaunchBlockSum(kBlocks, kThreads, d_in, d_out), cudaSuccess);
  const std::vector<int> got = Download(d_out, kBlocks);
  for (int b = 0; b < kBlocks; ++b) {
    int want = 0;
    for (int t = 0; t < kThreads; ++t) want += in[static_cast<size_t>(b * kThreads + t)];
    EXPECT_EQ(got[static_cast<size_t>(b)], want) << "block " << b;
  }
}

TEST_F(CudaEmulator, DynamicSharedMemoryNeedsTheOptInPast48KiB) {
  int* out = DeviceAlloc<int>(1);
  constexpr int kSmall = 1000, kLarge = 20000;  // 4 KB and 80 KB
  ASSERT_EQ(LaunchDynamicShared(kSmall, kSmall * sizeof(int), false, out), cudaSuccess);
  EXPECT_EQ(Download(out, 1)[0], kSmall * (kSmall - 1) / 2);
  EXPECT_EQ(LaunchDynamicShared(kLarge, kLarge * sizeof(int), false, out), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // not sticky
  ASSERT_EQ(LaunchDynamicShared(kLarge, kLarge * sizeof(int), true, out), cudaSuccess);
  EXPECT_EQ(Download(out, 1)[0], kLarge * (kLarge - 1) / 2);
  EXPECT_EQ(LaunchDynamicShared(kSmall, 240 << 10, true, out), cudaErrorInvalidValue);  // > 227K
}

TEST_F(CudaEmulator, BadBlockSizeIsAnInvalidConfigurationAndNotSticky) {
  EXPECT_EQ(LaunchBadBlock(1025), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  int* out = DeviceAlloc<int>(64 * 8);
  EXPECT_EQ(LaunchWarpOps(64, out), cudaSuccess);
}

TEST_F(CudaEmulator, DeadlockFailsTheLaunchAndIsSticky) {
  int* out = DeviceAlloc<int>(64);
  EXPECT_EQ(LaunchDeadlock(out), cudaErrorLaunchFailure);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);  // sticky: not cleared by reading
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
}

TEST_F(CudaEmulator, ShuffleWithAnExitedLaneInTheMaskFails) {
  int* out = DeviceAlloc<int>(32);
  EXPECT_EQ(LaunchExitedLane(out), cudaErrorLaunchFailure);
}

TEST_F(CudaEmulator, MisalignedVectorLoadFails) {
  float* p = DeviceAlloc<float>(16);
  float* out = DeviceAlloc<float>(1);
  EXPECT_EQ(LaunchMisalignedLoad(p, out), cudaErrorLaunchFailure);
}

TEST_F(CudaEmulator, AtomicsCountEveryThread) {
  int* counter = DeviceAlloc<int>(1);
  auto* wide = DeviceAlloc<unsigned long long>(1);
  ASSERT_EQ(cudaMemset(counter, 0, sizeof(int)), cudaSuccess);
  ASSERT_EQ(cudaMemset(wide, 0, sizeof(unsigned long long)), cudaSuccess);
  ASSERT_EQ(LaunchAtomicCount(4, 256, counter, wide), cudaSuccess);
  EXPECT_EQ(Download(counter, 1)[0], 1024);
  EXPECT_EQ(Download(wide, 1)[0], 1024ull << 33);
}

TEST_F(CudaEmulator, WmmaMultipliesTiles) {
  std::mt19937 rng(2);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<__half> a(256), b(256);
  for (auto& v : a) v = __float2half_rn(dist(rng));
  for (auto& v : b) v = __float2half_rn(dist(rng));
  auto* d_a = DeviceAlloc<__half>(256);
  auto* d_b = DeviceAlloc<__half>(256);
  float* d_c = DeviceAlloc<float>(256);
  ASSERT_EQ(cudaMemcpy(d_a, a.data(), 512, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_b, b.data(), 512, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(LaunchWmma(d_a, d_b, d_c), cudaSuccess);
  const std::vector<float> c = Download(d_c, 256);
  for (int m = 0; m < 16; ++m) {
    for (int n = 0; n < 16; ++n) {
      double want = 0.0;  // a row-major (m, k); b column-major: element (k, n) at n * 16 + k
      for (int k = 0; k < 16; ++k) {
        want += static_cast<double>(__half2float(a[static_cast<size_t>(m * 16 + k)])) *
                __half2float(b[static_cast<size_t>(n * 16 + k)]);
      }
      EXPECT_NEAR(c[static_cast<size_t>(m * 16 + n)], want, 1e-5) << m << "," << n;
    }
  }
}

TEST_F(CudaEmulator, FreshMemoryIsNanAndCopiesStayInsideAllocations) {
  float* p = DeviceAlloc<float>(8);
  for (float v : Download(p, 8)) EXPECT_TRUE(std::isnan(v));
  std::vector<float> host(16, 1.0f);
  EXPECT_EQ(cudaMemcpy(p, host.data(), 16 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);  // past the end of an 8-float allocation
  EXPECT_EQ(cudaMemcpy(p, host.data(), 8 * sizeof(float), cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemset(p + 4, 0, 8 * sizeof(float)), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidValue);  // not device memory
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);  // argument errors are not sticky
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST_F(CudaEmulator, CublasGemmExIsColumnMajorGemm) {
  constexpr int m = 3, n = 5, k = 7, lda = 9, ldb = 8, ldc = 4;  // C = A^T B, A (k, m)
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> a(lda * m), b(ldb * n), c(ldc * n, std::nanf(""));
  for (float& v : a) v = dist(rng);
  for (float& v : b) v = dist(rng);
  float* d_a = DeviceAlloc<float>(a.size());
  float* d_b = DeviceAlloc<float>(b.size());
  float* d_c = DeviceAlloc<float>(c.size());
  ASSERT_EQ(cudaMemcpy(d_a, a.data(), a.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_b, b.data(), b.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_c, c.data(), c.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const float alpha = 2.0f, beta = 0.0f;  // beta 0: C's NaNs are not read
  ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, d_a, CUDA_R_32F, lda,
                         d_b, CUDA_R_32F, ldb, &beta, d_c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<float> got = Download(d_c, c.size());
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double want = 0.0;
      for (int l = 0; l < k; ++l) want += static_cast<double>(a[l + i * lda]) * b[l + j * ldb];
      EXPECT_NEAR(got[static_cast<size_t>(i + j * ldc)], 2.0 * want, 1e-5) << i << "," << j;
    }
    EXPECT_TRUE(std::isnan(got[static_cast<size_t>(m + j * ldc)]));  // rows past m untouched
  }
  EXPECT_EQ(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, m, n, k, &alpha, d_a, CUDA_R_32F, k - 1,
                         d_b, CUDA_R_32F, ldb, &beta, d_c, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_INVALID_VALUE);  // lda < k for a transposed A
  EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

// Device memory is exactly as long as asked, so AddressSanitizer (the asan preset) catches a
// kernel writing one element past an allocation, as compute-sanitizer's memcheck would.
#if defined(__SANITIZE_ADDRESS__)
TEST_F(CudaEmulator, OutOfBoundsWriteIsCaughtUnderAddressSanitizer) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        int* out = DeviceAlloc<int>(48);
        LaunchWriteIndex(49, out);
      },
      "heap-buffer-overflow");
}
#endif

}  // namespace
}  // namespace cmoe::cuda_emu::testing
