// The CPU emulation of CUDA itself (tests/cuda_emu/cuda_emu.h): warp-level ops, barriers, shared
// memory, atomics, WMMA and cuBLAS compute what CUDA specifies, and every check it promises turns
// a bad kernel or call into an error instead of a pass.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
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

template <class T>
T* PinnedAlloc(size_t n) {
  T* p = nullptr;
  EXPECT_EQ(cudaHostAlloc(&p, n * sizeof(T), cudaHostAllocDefault), cudaSuccess);
  return p;
}

template <class T>
void Upload(T* device, const std::vector<T>& host) {
  EXPECT_EQ(cudaMemcpy(device, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
            cudaSuccess);
}

// A non-blocking stream, as the CUDA backend captures on.
cudaStream_t NonBlockingStream() {
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  return stream;
}

cudaStreamCaptureStatus CaptureStatus(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusInvalidated;
  EXPECT_EQ(cudaStreamIsCapturing(stream, &status), cudaSuccess);
  return status;
}

size_t NodeCount(cudaGraph_t graph) {
  size_t count = 0;
  EXPECT_EQ(cudaGraphGetNodes(graph, nullptr, &count), cudaSuccess);
  return count;
}

// Ends a capture that a forbidden call invalidated: no graph, and the stream captures no more.
void ExpectInvalidatedCapture(cudaStream_t stream) {
  EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusInvalidated);
  cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(&graph);  // not null: must be cleared
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(graph, nullptr);
  EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusNone);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
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

TEST_F(CudaEmulator, EventsWithoutTimingCannotBeTimed) {
  cudaStream_t stream = NonBlockingStream();
  cudaEvent_t plain = nullptr, untimed = nullptr, bad = nullptr;
  ASSERT_EQ(cudaEventCreateWithFlags(&plain, cudaEventDefault), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  EXPECT_EQ(cudaEventCreateWithFlags(&bad, cudaEventInterprocess), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ASSERT_EQ(cudaEventRecord(plain, stream), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(untimed, stream), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(untimed), cudaSuccess);
  EXPECT_EQ(cudaEventSynchronize(untimed), cudaSuccess);
  float ms = -1.0f;
  EXPECT_EQ(cudaEventElapsedTime(&ms, plain, plain), cudaSuccess);
  EXPECT_EQ(ms, 0.0f);
  EXPECT_EQ(cudaEventElapsedTime(&ms, plain, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventDestroy(untimed), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(plain), cudaSuccess);
}

// --- stream capture and CUDA graphs -------------------------------------------------------------

// The CUDA backend's decode step in small: a pinned upload, a kernel, a memset and a cuBLAS GEMM
// captured on a non-blocking stream, instantiated, then launched twice with new pinned input.
TEST_F(CudaEmulator, CapturedWorkRunsOnlyAtGraphLaunchAndReadsPinnedMemoryThen) {
  constexpr int kM = 4, kK = 8, kN = 2;  // C (m, n) = alpha A (m, k) B (k, n), column-major
  constexpr int kElems = kM * kK;
  cudaStream_t stream = NonBlockingStream();
  float* h_in = PinnedAlloc<float>(kElems);
  float* d_in = DeviceAlloc<float>(kElems);
  float* d_a = DeviceAlloc<float>(kElems);
  float* d_b = DeviceAlloc<float>(kK * kN);
  float* d_c = DeviceAlloc<float>(kM * kN);
  int* d_flag = DeviceAlloc<int>(4);
  void* workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&workspace, 1 << 20), cudaSuccess);
  std::vector<float> b(kK * kN);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>(i % 5) - 2.0f;
  Upload(d_b, b);
  Upload(d_in, std::vector<float>(kElems, 0.0f));  // so that a kernel run too early shows in d_a
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, stream), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetWorkspace(handle, workspace, 1 << 20), CUBLAS_STATUS_SUCCESS);

  float alpha = 2.0f;
  const float beta = 0.0f;
  EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusNone);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusActive);
  ASSERT_EQ(cudaMemcpyAsync(d_in, h_in, kElems * sizeof(float), cudaMemcpyHostToDevice, stream),
            cudaSuccess);
  ASSERT_EQ(LaunchAddScalar(1, 64, d_in, d_a, 1.0f, kElems, stream), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(d_flag, 0, 4 * sizeof(int), stream), cudaSuccess);
  ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, kM, kN, kK, &alpha, d_a, CUDA_R_32F, kM,
                         d_b, CUDA_R_32F, kK, &beta, d_c, CUDA_R_32F, kM, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusNone);
  EXPECT_EQ(NodeCount(graph), 4u);
  cudaGraphNode_t nodes[6];
  size_t count = 6;
  ASSERT_EQ(cudaGraphGetNodes(graph, nodes, &count), cudaSuccess);
  EXPECT_EQ(count, 4u);
  EXPECT_NE(nodes[3], nullptr);
  EXPECT_EQ(nodes[4], nullptr);
  alpha = 100.0f;  // after the call: the node keeps 2

  // Nothing ran: d_in holds its zeros (not the pinned buffer's 0xff bytes), the rest the 0xff
  // bytes of fresh memory.
  for (float v : Download(d_in, kElems)) EXPECT_EQ(v, 0.0f);
  for (float v : Download(d_a, kElems)) EXPECT_TRUE(std::isnan(v));
  for (int v : Download(d_flag, 4)) EXPECT_EQ(v, -1);
  for (float v : Download(d_c, kM * kN)) EXPECT_TRUE(std::isnan(v));

  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  ASSERT_EQ(cudaGraphDestroy(graph), cudaSuccess);  // the exec has its own copy
  for (int round = 0; round < 2; ++round) {
    std::vector<float> in(kElems);
    for (int i = 0; i < kElems; ++i) in[i] = round == 0 ? 0.25f * i : 3.0f - 0.5f * i;
    std::memcpy(h_in, in.data(), sizeof(float) * kElems);  // read when the graph runs
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
    for (int v : Download(d_flag, 4)) EXPECT_EQ(v, 0);
    const std::vector<float> c = Download(d_c, kM * kN);
    for (int j = 0; j < kN; ++j) {
      for (int i = 0; i < kM; ++i) {
        double want = 0.0;
        for (int l = 0; l < kK; ++l) want += (in[i + l * kM] + 1.0) * b[l + j * kK];
        EXPECT_NEAR(c[static_cast<size_t>(i + j * kM)], 2.0 * want, 1e-4)
            << "round " << round << " at " << i << "," << j;
      }
    }
  }
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaErrorInvalidValue);  // destroyed already
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cudaFreeHost(h_in), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST_F(CudaEmulator, KernelNodeKeepsItsParametersByValue) {
  cudaStream_t stream = NonBlockingStream();
  float* out = DeviceAlloc<float>(8);
  auto coeffs = std::make_unique<Coeffs>();
  for (int i = 0; i < 8; ++i) coeffs->v[i] = static_cast<float>(i) + 0.5f;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchWriteCoeffs(*coeffs, out, stream), cudaSuccess);
  for (float& v : coeffs->v) v = -1.0f;  // after the launch: the node must not see it
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  coeffs.reset();
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  const std::vector<float> got = Download(out, 8);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], static_cast<float>(i) + 0.5f);
}

TEST_F(CudaEmulator, GraphExecUpdateTakesNewKernelArgumentsAndGrid) {
  constexpr int kN = 64;
  cudaStream_t stream = NonBlockingStream();
  std::vector<float> in(kN);
  for (int i = 0; i < kN; ++i) in[static_cast<size_t>(i)] = static_cast<float>(i);
  float* d_in = DeviceAlloc<float>(kN);
  float* d_out = DeviceAlloc<float>(kN);
  Upload(d_in, in);
  cudaGraph_t first = nullptr, second = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchAddScalar(1, 32, d_in, d_out, 1.0f, kN / 2, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &first), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, first), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  std::vector<float> got = Download(d_out, kN);
  for (int i = 0; i < kN; ++i) {
    if (i < kN / 2) {
      EXPECT_EQ(got[static_cast<size_t>(i)], i + 1.0f) << i;
    } else {
      EXPECT_TRUE(std::isnan(got[static_cast<size_t>(i)])) << i;  // one block of 32 threads
    }
  }
  // The same topology, another grid and other arguments.
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchAddScalar(2, 32, d_in, d_out, 2.0f, kN, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &second), cudaSuccess);
  cudaGraphExecUpdateResultInfo info{};
  info.result = cudaGraphExecUpdateError;
  ASSERT_EQ(cudaGraphExecUpdate(exec, second, &info), cudaSuccess);
  EXPECT_EQ(info.result, cudaGraphExecUpdateSuccess);
  EXPECT_EQ(cudaGraphDestroy(second), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  got = Download(d_out, kN);
  for (int i = 0; i < kN; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], i + 2.0f) << i;
  EXPECT_EQ(cudaGraphDestroy(first), cudaSuccess);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
}

TEST_F(CudaEmulator, GraphExecUpdateRefusesAnotherTopologyAndKeepsTheExec) {
  constexpr int kN = 32;
  cudaStream_t stream = NonBlockingStream();
  std::vector<float> in(kN);
  for (int i = 0; i < kN; ++i) in[static_cast<size_t>(i)] = static_cast<float>(i);
  float* d_in = DeviceAlloc<float>(kN);
  float* d_out = DeviceAlloc<float>(kN);
  int* d_flag = DeviceAlloc<int>(1);
  Upload(d_in, in);
  cudaGraph_t kernel_only = nullptr, two_nodes = nullptr, memset_only = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchAddScalar(1, 32, d_in, d_out, 1.0f, kN, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &kernel_only), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchAddScalar(1, 32, d_in, d_out, 5.0f, kN, stream), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(d_flag, 0, sizeof(int), stream), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &two_nodes), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaMemsetAsync(d_flag, 0, sizeof(int), stream), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &memset_only), cudaSuccess);

  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, kernel_only), cudaSuccess);
  cudaGraphExecUpdateResultInfo info{};
  EXPECT_EQ(cudaGraphExecUpdate(exec, two_nodes, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorTopologyChanged);
  EXPECT_EQ(info.errorNode, nullptr);
  EXPECT_EQ(cudaGetLastError(), cudaErrorGraphExecUpdateFailure);  // left for the caller to clear
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);

  cudaGraphNode_t memset_node = nullptr;
  size_t count = 1;
  ASSERT_EQ(cudaGraphGetNodes(memset_only, &memset_node, &count), cudaSuccess);
  EXPECT_EQ(cudaGraphExecUpdate(exec, memset_only, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorNodeTypeChanged);
  EXPECT_EQ(info.errorNode, memset_node);
  EXPECT_EQ(cudaGetLastError(), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);

  // The exec still runs what it was instantiated from.
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  const std::vector<float> got = Download(d_out, kN);
  for (int i = 0; i < kN; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], i + 1.0f) << i;
  EXPECT_EQ(Download(d_flag, 1)[0], -1);
}

TEST_F(CudaEmulator, PageableCopyInvalidatesTheCapture) {
  cudaStream_t stream = NonBlockingStream();
  float* d = DeviceAlloc<float>(16);
  std::vector<float> pageable(16, 1.0f);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(d, pageable.data(), 64, cudaMemcpyHostToDevice, stream),
            cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  // The capture is over in all but name: more work on the stream fails and is not run.
  EXPECT_EQ(cudaMemsetAsync(d, 0, 64, stream), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
  ExpectInvalidatedCapture(stream);
  for (float v : Download(d, 16)) EXPECT_TRUE(std::isnan(v));
  // Outside a capture pageable memory is fine, and so is a device-to-host copy into it.
  EXPECT_EQ(cudaMemcpyAsync(d, pageable.data(), 64, cudaMemcpyHostToDevice, stream), cudaSuccess);
  // A device-to-host copy during capture needs a pinned destination too.
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(pageable.data(), d, 64, cudaMemcpyDeviceToHost, stream),
            cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  // A pinned buffer must hold the whole copy.
  float* pinned = PinnedAlloc<float>(8);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(d, pinned, 64, cudaMemcpyHostToDevice, stream),
            cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

TEST_F(CudaEmulator, SynchronizingDuringCaptureIsAnError) {
  cudaStream_t stream = NonBlockingStream();
  float* d = DeviceAlloc<float>(4);
  std::vector<float> host(4, 0.0f);
  const auto expect_forbidden = [&](const char* what, auto call) {
    SCOPED_TRACE(what);
    ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
    EXPECT_EQ(call(), cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    ExpectInvalidatedCapture(stream);
  };
  expect_forbidden("cudaStreamSynchronize", [&] { return cudaStreamSynchronize(stream); });
  expect_forbidden("cudaStreamQuery", [&] { return cudaStreamQuery(stream); });
  expect_forbidden("cudaDeviceSynchronize", [] { return cudaDeviceSynchronize(); });
  expect_forbidden("cudaMemcpy",
                   [&] { return cudaMemcpy(host.data(), d, 16, cudaMemcpyDeviceToHost); });
  expect_forbidden("cudaMemset", [&] { return cudaMemset(d, 0, 16); });
  // Another stream, not capturing, may still be synchronized.
  cudaStream_t other = NonBlockingStream();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(other), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_NE(graph, nullptr);
  EXPECT_EQ(NodeCount(graph), 0u);
}

TEST_F(CudaEmulator, AllocationDuringCaptureDependsOnTheCaptureMode) {
  cudaStream_t stream = NonBlockingStream();
  void* p = nullptr;
  for (const cudaStreamCaptureMode mode :
       {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal}) {
    SCOPED_TRACE(mode);
    ASSERT_EQ(cudaStreamBeginCapture(stream, mode), cudaSuccess);
    EXPECT_EQ(cudaMalloc(&p, 256), cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(p, nullptr);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    ExpectInvalidatedCapture(stream);
    ASSERT_EQ(cudaStreamBeginCapture(stream, mode), cudaSuccess);
    EXPECT_EQ(cudaHostAlloc(&p, 256, cudaHostAllocDefault), cudaErrorStreamCaptureUnsupported);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
    ExpectInvalidatedCapture(stream);
  }
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&p, 256), cudaSuccess);
  EXPECT_NE(p, nullptr);
  void* pinned = nullptr;
  EXPECT_EQ(cudaMallocHost(&pinned, 256), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_NE(graph, nullptr);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

// Another thread's capture: a Global one forbids this thread's cudaMalloc, a ThreadLocal one does
// not; and a Global capture can only be ended by the thread that began it.
TEST_F(CudaEmulator, GlobalCaptureOnAnotherThreadForbidsAllocationHere) {
  cudaStream_t stream = NonBlockingStream();
  for (const cudaStreamCaptureMode mode :
       {cudaStreamCaptureModeGlobal, cudaStreamCaptureModeThreadLocal}) {
    SCOPED_TRACE(mode);
    std::promise<void> begun, allocated;
    cudaError_t end = cudaSuccess;
    std::thread worker([&] {
      EXPECT_EQ(cudaStreamBeginCapture(stream, mode), cudaSuccess);
      begun.set_value();
      allocated.get_future().wait();
      cudaGraph_t graph = nullptr;
      end = cudaStreamEndCapture(stream, &graph);
      if (graph != nullptr) cudaGraphDestroy(graph);
    });
    begun.get_future().wait();
    void* p = nullptr;
    cudaGraph_t graph = nullptr;
    EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaErrorStreamCaptureWrongThread);
    EXPECT_EQ(CaptureStatus(stream), cudaStreamCaptureStatusActive);  // still capturing
    const cudaError_t malloc_result = cudaMalloc(&p, 64);
    allocated.set_value();
    worker.join();
    if (mode == cudaStreamCaptureModeGlobal) {
      EXPECT_EQ(malloc_result, cudaErrorStreamCaptureUnsupported);
      EXPECT_EQ(end, cudaErrorStreamCaptureInvalidated);
    } else {
      EXPECT_EQ(malloc_result, cudaSuccess);
      EXPECT_EQ(end, cudaSuccess);
      EXPECT_EQ(cudaFree(p), cudaSuccess);
    }
    cudaGetLastError();
  }
}

TEST_F(CudaEmulator, FreeingDuringCaptureIsAnError) {
  cudaStream_t stream = NonBlockingStream();
  float* d = DeviceAlloc<float>(4);
  float* pinned = PinnedAlloc<float>(4);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  // Neither was freed.
  EXPECT_EQ(cudaMemcpy(d, pinned, 16, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
}

TEST_F(CudaEmulator, StreamOrderedAllocationDuringCaptureIsRefused) {
  cudaStream_t stream = NonBlockingStream();
  void* p = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cudaMallocAsync(&p, 64, stream), cudaErrorStreamCaptureUnsupported);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("graph memory nodes"), std::string::npos);
  EXPECT_EQ(p, nullptr);
  ExpectInvalidatedCapture(stream);
  ASSERT_EQ(cudaMallocAsync(&p, 64, stream), cudaSuccess);  // not capturing
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(p, stream), cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  EXPECT_EQ(cudaFreeAsync(p, stream), cudaSuccess);
}

TEST_F(CudaEmulator, CaptureNeedsACreatedStreamNotAlreadyCapturing) {
  EXPECT_EQ(cudaStreamBeginCapture(nullptr, cudaStreamCaptureModeRelaxed),
            cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureUnsupported);
  cudaStream_t stream = NonBlockingStream();
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaErrorIllegalState);  // not capturing
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalState);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaErrorIllegalState);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalState);
  ExpectInvalidatedCapture(stream);
  EXPECT_EQ(cudaStreamBeginCapture(stream, static_cast<cudaStreamCaptureMode>(3)),
            cudaErrorInvalidValue);
}

TEST_F(CudaEmulator, LegacyStreamWorkWhileABlockingStreamCapturesIsAnError) {
  cudaStream_t blocking = nullptr;
  ASSERT_EQ(cudaStreamCreate(&blocking), cudaSuccess);
  float* d = DeviceAlloc<float>(4);
  ASSERT_EQ(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 16, nullptr), cudaErrorStreamCaptureImplicit);
  EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureImplicit);
  ExpectInvalidatedCapture(blocking);
  ASSERT_EQ(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(LaunchAddScalar(1, 4, d, d, 1.0f, 4, nullptr), cudaErrorStreamCaptureImplicit);
  ExpectInvalidatedCapture(blocking);
  for (float v : Download(d, 4)) EXPECT_TRUE(std::isnan(v));  // neither ran
  // A non-blocking stream's capture leaves the legacy stream alone.
  cudaStream_t stream = NonBlockingStream();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 16, nullptr), cudaSuccess);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  EXPECT_EQ(Download(d, 4)[0], 0.0f);
}

TEST_F(CudaEmulator, FailedLaunchDuringCaptureInvalidatesIt) {
  cudaStream_t stream = NonBlockingStream();
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(LaunchBadBlock(1025, stream), cudaErrorInvalidConfiguration);  // still at the launch
  ExpectInvalidatedCapture(stream);
  float* d = DeviceAlloc<float>(4);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(d, 0, 32, stream), cudaErrorInvalidValue);  // past the allocation
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  ExpectInvalidatedCapture(stream);
}

TEST_F(CudaEmulator, GraphLaunchIntoACapturingStreamIsRefused) {
  cudaStream_t stream = NonBlockingStream();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaErrorStreamCaptureUnsupported);
  ExpectInvalidatedCapture(stream);
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
}

// Sticky errors below: the fixture's cudaDeviceReset gives the next test a healthy device.
TEST_F(CudaEmulator, ReplayOfACopyIntoFreedMemoryFailsAndIsSticky) {
  cudaStream_t stream = NonBlockingStream();
  float* pinned = PinnedAlloc<float>(16);
  float* d = DeviceAlloc<float>(16);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d, pinned, 64, cudaMemcpyHostToDevice, stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);  // fine while d lives
  ASSERT_EQ(cudaFree(d), cudaSuccess);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaErrorIllegalAddress);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("no longer allocated"),
            std::string::npos);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 16), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);  // sticky
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
}

TEST_F(CudaEmulator, ReplayOfAGemmWhoseWorkspaceWasFreedFails) {
  cudaStream_t stream = NonBlockingStream();
  float* d_a = DeviceAlloc<float>(4);
  float* d_c = DeviceAlloc<float>(4);
  ASSERT_EQ(cudaMemset(d_a, 0, 16), cudaSuccess);
  void* workspace = nullptr;
  ASSERT_EQ(cudaMalloc(&workspace, 4096), cudaSuccess);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, stream), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetWorkspace(handle, workspace, 4096), CUBLAS_STATUS_SUCCESS);
  const float alpha = 1.0f, beta = 0.0f;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, d_a, CUDA_R_32F, 2, d_a,
                         CUDA_R_32F, 2, &beta, d_c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  EXPECT_EQ(Download(d_c, 4)[0], 0.0f);
  ASSERT_EQ(cudaFree(workspace), cudaSuccess);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaErrorIllegalAddress);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("workspace"), std::string::npos);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(cudaGetLastError(), cudaErrorIllegalAddress);
  EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

// Without a workspace of its own a captured GEMM uses the handle's: the graph dies with it.
TEST_F(CudaEmulator, ReplayOfAGemmWhoseHandleWasDestroyedFails) {
  cudaStream_t stream = NonBlockingStream();
  float* d_a = DeviceAlloc<float>(4);
  float* d_c = DeviceAlloc<float>(4);
  ASSERT_EQ(cudaMemset(d_a, 0, 16), cudaSuccess);
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, stream), CUBLAS_STATUS_SUCCESS);
  const float alpha = 1.0f, beta = 0.0f;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ::testing::internal::CaptureStderr();
  ASSERT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, 2, 2, 2, &alpha, d_a, CUDA_R_32F, 2, d_a,
                         CUDA_R_32F, 2, &beta, d_c, CUDA_R_32F, 2, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(::testing::internal::GetCapturedStderr(), "");  // allowed, and quietly
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaErrorIllegalAddress);
  EXPECT_NE(::testing::internal::GetCapturedStderr().find("handle"), std::string::npos);
}

TEST_F(CudaEmulator, KernelFaultAtReplayNamesTheLaunchSite) {
  cudaStream_t stream = NonBlockingStream();
  int* out = DeviceAlloc<int>(64);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(LaunchDeadlock(out, stream), cudaSuccess);  // recorded, not run
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ::testing::internal::CaptureStderr();
  EXPECT_EQ(cudaGraphLaunch(exec, stream), cudaErrorLaunchFailure);
  const std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(err.find("emulator_test_kernels.cu"), std::string::npos) << err;  // the launch site
  EXPECT_NE(err.find("replayed by cudaGraphLaunch"), std::string::npos) << err;
  EXPECT_NE(err.find("deadlock"), std::string::npos) << err;
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
  EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
}

TEST_F(CudaEmulator, PinnedMemoryIsHostMemory) {
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(&pinned, 64 * sizeof(float)), cudaSuccess);
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(std::isnan(pinned[i]));  // fresh: 0xff bytes
  cudaPointerAttributes attr;
  ASSERT_EQ(cudaPointerGetAttributes(&attr, pinned + 3), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeHost);
  float* d = DeviceAlloc<float>(64);
  ASSERT_EQ(cudaPointerGetAttributes(&attr, d), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(cudaFree(pinned), cudaErrorInvalidValue);  // not device memory
  EXPECT_EQ(cudaFreeHost(d), cudaErrorInvalidValue);   // not pinned memory
  EXPECT_EQ(cudaFreeHost(pinned + 1), cudaErrorInvalidValue);
  void* p = nullptr;
  EXPECT_EQ(cudaHostAlloc(&p, 64, 0x40), cudaErrorInvalidValue);  // no such flag
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaHostAlloc(&p, 64, cudaHostAllocPortable | cudaHostAllocMapped), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(p), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(nullptr), cudaSuccess);
}

TEST_F(CudaEmulator, CublasWorkspaceMustBeAlignedDeviceMemory) {
  cublasHandle_t handle = nullptr;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  char* d = DeviceAlloc<char>(4096);
  std::vector<char> host(4096);
  EXPECT_EQ(cublasSetWorkspace(handle, d, 4096), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSetWorkspace(handle, d, 8192), CUBLAS_STATUS_INVALID_VALUE);       // too long
  EXPECT_EQ(cublasSetWorkspace(handle, d + 16, 1024), CUBLAS_STATUS_INVALID_VALUE);  // misaligned
  EXPECT_EQ(cublasSetWorkspace(handle, host.data(), 1024), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSetWorkspace(handle, nullptr, 1024), CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSetWorkspace(handle, nullptr, 0), CUBLAS_STATUS_SUCCESS);
  EXPECT_EQ(cublasSetWorkspace(nullptr, d, 4096), CUBLAS_STATUS_NOT_INITIALIZED);
  EXPECT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

TEST_F(CudaEmulator, DeviceResetEndsCapturesAndDestroysGraphs) {
  cudaStream_t stream = NonBlockingStream();
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeRelaxed), cudaSuccess);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph), cudaSuccess);
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  ASSERT_EQ(cudaDeviceReset(), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, 64), cudaSuccess);  // no Global capture any more
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(cudaGraphLaunch(exec, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
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
