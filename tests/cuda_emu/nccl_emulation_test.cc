// The NCCL emulation itself (tests/cuda_emu/include/nccl.h): sends and receives match across
// threads and devices in FIFO order per pair, wait in stream order for their peer (the stream is
// not ready meanwhile, and its later work waits behind them), ncclCommAbort from another thread
// ends a receive that no send will ever match, mismatched sizes are an asynchronous error, and
// ncclCommInitRank joins ranks from several threads. Runs on three emulated devices
// (CMOE_CUDA_EMU_DEVICES, set below unless the environment sets it).
#include <cuda_runtime.h>
#include <nccl.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe::cuda_emu::testing {
namespace {

// Before the first CUDA call reads it (the emulation reads it once).
const bool kDevicesSet = [] { return setenv("CMOE_CUDA_EMU_DEVICES", "3", 0) == 0; }();

constexpr int kDevices = 3;

#define CMOE_NEED_DEVICES(n)                                                                \
  do {                                                                                      \
    int count = 0;                                                                          \
    ASSERT_TRUE(kDevicesSet);                                                               \
    ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);                                     \
    if (count < (n)) GTEST_SKIP() << "needs " << (n) << " emulated devices, has " << count; \
  } while (false)

// `values` uploaded to fresh device memory of `device` (made current).
float* Upload(int device, const std::vector<float>& values) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, values.size() * sizeof(float)), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(p, values.data(), values.size() * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  return static_cast<float*>(p);
}

// n floats of fresh device memory of `device` (made current): 0xff bytes, NaN.
float* Fresh(int device, size_t n) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  void* p = nullptr;
  EXPECT_EQ(cudaMalloc(&p, n * sizeof(float)), cudaSuccess);
  return static_cast<float*>(p);
}

std::vector<float> Download(const float* p, size_t n) {
  std::vector<float> v(n);
  EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  return v;
}

cudaStream_t Stream(int device) {
  EXPECT_EQ(cudaSetDevice(device), cudaSuccess);
  cudaStream_t stream = nullptr;
  EXPECT_EQ(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), cudaSuccess);
  return stream;
}

// Values distinct per (tag, index).
std::vector<float> Values(int tag, size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>(1000 * tag + static_cast<int>(i));
  return v;
}

bool AllNan(const std::vector<float>& v) {
  for (const float x : v) {
    if (x == x) return false;
  }
  return true;
}

// Waits up to 10 s for `stream` to finish its work: true if it did (a broken emulation then fails
// the test instead of hanging it).
bool Drains(cudaStream_t stream) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e != cudaErrorNotReady) return e == cudaSuccess;
    std::this_thread::yield();
  }
  return false;
}

// Polls `stream` for a while: true if it stayed not ready the whole time.
bool StaysNotReady(cudaStream_t stream) {
  for (int i = 0; i < 20; ++i) {
    if (cudaStreamQuery(stream) != cudaErrorNotReady) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

TEST(NcclEmulation, PointerAttributesNameTheAllocatingDevice) {
  CMOE_NEED_DEVICES(2);
  float* on1 = Fresh(1, 4);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  cudaPointerAttributes attr{};
  ASSERT_EQ(cudaPointerGetAttributes(&attr, on1 + 1), cudaSuccess);
  EXPECT_EQ(attr.type, cudaMemoryTypeDevice);
  EXPECT_EQ(attr.device, 1);
  EXPECT_EQ(cudaFree(on1), cudaSuccess);
}

// Each rank on its own thread and device: send to the other, receive from it, in one group.
TEST(NcclEmulation, SendRecvMatchAcrossTwoThreadsOnTwoDevices) {
  CMOE_NEED_DEVICES(2);
  ncclComm_t comms[2] = {};
  const int devices[] = {0, 1};
  ASSERT_EQ(ncclCommInitAll(comms, 2, devices), ncclSuccess);
  constexpr size_t kN = 37;
  std::vector<float> got[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      float* send = Upload(r, Values(r, kN));
      float* recv = Fresh(r, kN);
      cudaStream_t stream = Stream(r);
      EXPECT_EQ(ncclGroupStart(), ncclSuccess);
      EXPECT_EQ(ncclSend(send, kN, ncclFloat, 1 - r, comms[r], stream), ncclSuccess);
      EXPECT_EQ(ncclRecv(recv, kN, ncclFloat, 1 - r, comms[r], stream), ncclSuccess);
      EXPECT_EQ(ncclGroupEnd(), ncclSuccess);
      ASSERT_TRUE(Drains(stream));
      ncclResult_t async = ncclInternalError;
      EXPECT_EQ(ncclCommGetAsyncError(comms[r], &async), ncclSuccess);
      EXPECT_EQ(async, ncclSuccess);
      got[r] = Download(recv, kN);
      EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
      EXPECT_EQ(cudaFree(send), cudaSuccess);
      EXPECT_EQ(cudaFree(recv), cudaSuccess);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(got[0], Values(1, kN));
  EXPECT_EQ(got[1], Values(0, kN));
  for (ncclComm_t comm : comms) EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
}

// One thread drives both ranks (one group over both communicators): three sends from rank 0 to
// rank 1 arrive in order, and the work queued after the receives on rank 1's stream (a device
// copy, then a copy to pageable host memory) sees what they received.
TEST(NcclEmulation, PairsMatchInFifoOrderAndLaterWorkWaits) {
  CMOE_NEED_DEVICES(2);
  ncclComm_t comms[2] = {};
  ASSERT_EQ(ncclCommInitAll(comms, 2, nullptr), ncclSuccess);
  constexpr size_t kN = 8;
  float* send[3];
  float* recv[3];
  for (int i = 0; i < 3; ++i) send[i] = Upload(0, Values(i + 1, kN));
  for (int i = 0; i < 3; ++i) recv[i] = Fresh(1, kN);
  float* copy = Fresh(1, kN);
  cudaStream_t s0 = Stream(0);
  cudaStream_t s1 = Stream(1);

  // Rank 1's receives first: its stream waits for rank 0.
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(ncclRecv(recv[i], kN, ncclFloat, 0, comms[1], s1), ncclSuccess);
  ASSERT_EQ(cudaMemcpyAsync(copy, recv[2], kN * sizeof(float), cudaMemcpyDeviceToDevice, s1),
            cudaSuccess);
  EXPECT_TRUE(StaysNotReady(s1));
  EXPECT_TRUE(AllNan(Download(copy, kN))) << "the copy ran before the receive it waits for";

  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  for (int i = 0; i < 3; ++i)
    ASSERT_EQ(ncclSend(send[i], kN, ncclFloat, 1, comms[0], s0), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  ASSERT_TRUE(Drains(s0));
  ASSERT_TRUE(Drains(s1));

  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  std::vector<float> host(kN);
  ASSERT_EQ(cudaMemcpyAsync(host.data(), copy, kN * sizeof(float), cudaMemcpyDeviceToHost, s1),
            cudaSuccess);
  EXPECT_EQ(host, Values(3, kN));
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(Download(recv[i], kN), Values(i + 1, kN)) << "message " << i;

  for (ncclComm_t comm : comms) EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
  for (cudaStream_t s : {s0, s1}) EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  for (float* p : {send[0], send[1], send[2], recv[0], recv[1], recv[2], copy}) {
    EXPECT_EQ(cudaFree(p), cudaSuccess);
  }
}

// A receive whose sender never comes: the stream stays not ready (no thread hangs) until another
// thread aborts the communicator; then the stream drains without data, the aborted communicator
// refuses every call, and the peer that sends to it gets ncclRemoteError.
TEST(NcclEmulation, AbortFromAnotherThreadEndsARecvWithoutSender) {
  CMOE_NEED_DEVICES(2);
  ncclComm_t comms[2] = {};
  ASSERT_EQ(ncclCommInitAll(comms, 2, nullptr), ncclSuccess);
  constexpr size_t kN = 16;
  float* recv = Fresh(1, kN);
  cudaStream_t s1 = Stream(1);
  ASSERT_EQ(ncclRecv(recv, kN, ncclFloat, 0, comms[1], s1), ncclSuccess);
  std::atomic<bool> synchronized{false};
  std::thread waiter([&] {
    EXPECT_EQ(cudaStreamSynchronize(s1), cudaSuccess);
    synchronized = true;
  });
  EXPECT_TRUE(StaysNotReady(s1));
  EXPECT_FALSE(synchronized) << "cudaStreamSynchronize returned before the receive completed";
  ncclResult_t async = ncclInternalError;
  ASSERT_EQ(ncclCommGetAsyncError(comms[1], &async), ncclSuccess);
  EXPECT_EQ(async, ncclSuccess);

  std::thread aborter([&] { EXPECT_EQ(ncclCommAbort(comms[1]), ncclSuccess); });
  aborter.join();
  if (!Drains(s1)) {
    waiter.detach();  // blocked for good: fail instead of hanging
    FAIL() << "the abort left the receive pending";
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (!synchronized && std::chrono::steady_clock::now() < deadline) std::this_thread::yield();
  if (!synchronized) {
    waiter.detach();  // blocked for good: fail instead of hanging
    FAIL() << "cudaStreamSynchronize did not return after the abort";
  }
  waiter.join();
  EXPECT_TRUE(AllNan(Download(recv, kN))) << "an aborted receive wrote data";
  EXPECT_EQ(ncclCommGetAsyncError(comms[1], &async), ncclInvalidArgument);
  EXPECT_EQ(ncclRecv(recv, kN, ncclFloat, 0, comms[1], s1), ncclInvalidArgument);
  EXPECT_EQ(ncclCommAbort(comms[1]), ncclInvalidArgument);
  EXPECT_NE(std::string(ncclGetLastError(nullptr)).find("invalid communicator"), std::string::npos)
      << ncclGetLastError(nullptr);

  float* send = Upload(0, Values(0, kN));
  cudaStream_t s0 = Stream(0);
  ASSERT_EQ(ncclSend(send, kN, ncclFloat, 1, comms[0], s0), ncclSuccess);
  EXPECT_TRUE(StaysNotReady(s0));
  ASSERT_EQ(ncclCommGetAsyncError(comms[0], &async), ncclSuccess);
  EXPECT_EQ(async, ncclRemoteError);
  EXPECT_EQ(ncclCommAbort(comms[0]), ncclSuccess);
  ASSERT_TRUE(Drains(s0));

  for (cudaStream_t s : {s0, s1}) EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  for (float* p : {send, recv}) EXPECT_EQ(cudaFree(p), cudaSuccess);
}

// A matched send and receive of different sizes: both ranks' asynchronous error, nothing
// received, the streams stuck until the communicators are aborted.
TEST(NcclEmulation, SizeMismatchIsAnAsyncError) {
  CMOE_NEED_DEVICES(2);
  ncclComm_t comms[2] = {};
  ASSERT_EQ(ncclCommInitAll(comms, 2, nullptr), ncclSuccess);
  float* send = Upload(0, Values(0, 4));
  float* recv = Fresh(1, 5);
  cudaStream_t s0 = Stream(0);
  cudaStream_t s1 = Stream(1);
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  ASSERT_EQ(ncclSend(send, 4, ncclFloat, 1, comms[0], s0), ncclSuccess);
  ASSERT_EQ(ncclRecv(recv, 5, ncclFloat, 0, comms[1], s1), ncclSuccess);
  ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
  for (int r = 0; r < 2; ++r) {
    ncclResult_t async = ncclSuccess;
    ASSERT_EQ(ncclCommGetAsyncError(comms[r], &async), ncclSuccess);
    EXPECT_EQ(async, ncclInvalidUsage) << "rank " << r;
  }
  EXPECT_NE(std::string(ncclGetLastError(nullptr)).find("must agree"), std::string::npos)
      << ncclGetLastError(nullptr);
  EXPECT_TRUE(StaysNotReady(s1));
  for (ncclComm_t comm : comms) EXPECT_EQ(ncclCommAbort(comm), ncclSuccess);
  for (cudaStream_t s : {s0, s1}) ASSERT_TRUE(Drains(s));
  for (cudaStream_t s : {s0, s1}) EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_TRUE(AllNan(Download(recv, 5)));
  for (float* p : {send, recv}) EXPECT_EQ(cudaFree(p), cudaSuccess);
}

// Three threads join one id (each blocks until all have), then pass data around the ring.
TEST(NcclEmulation, InitRankJoinsThreeThreads) {
  CMOE_NEED_DEVICES(kDevices);
  ncclUniqueId id;
  ASSERT_EQ(ncclGetUniqueId(&id), ncclSuccess);
  ncclUniqueId other;
  ASSERT_EQ(ncclGetUniqueId(&other), ncclSuccess);
  EXPECT_NE(std::memcmp(id.internal, other.internal, sizeof id.internal), 0);
  constexpr size_t kN = 10;
  std::vector<float> got[kDevices];
  int seen_count[kDevices] = {}, seen_rank[kDevices] = {}, seen_device[kDevices] = {};
  std::vector<std::thread> threads;
  for (int r = 0; r < kDevices; ++r) {
    threads.emplace_back([&, r] {
      ASSERT_EQ(cudaSetDevice(r), cudaSuccess);
      ncclComm_t comm = nullptr;
      ASSERT_EQ(ncclCommInitRank(&comm, kDevices, id, r), ncclSuccess);
      ASSERT_EQ(ncclCommCount(comm, &seen_count[r]), ncclSuccess);
      ASSERT_EQ(ncclCommUserRank(comm, &seen_rank[r]), ncclSuccess);
      ASSERT_EQ(ncclCommCuDevice(comm, &seen_device[r]), ncclSuccess);
      float* send = Upload(r, Values(r, kN));
      float* recv = Fresh(r, kN);
      cudaStream_t stream = Stream(r);
      ASSERT_EQ(ncclGroupStart(), ncclSuccess);
      ASSERT_EQ(ncclSend(send, kN, ncclFloat, (r + 1) % kDevices, comm, stream), ncclSuccess);
      ASSERT_EQ(ncclRecv(recv, kN, ncclFloat, (r + kDevices - 1) % kDevices, comm, stream),
                ncclSuccess);
      ASSERT_EQ(ncclGroupEnd(), ncclSuccess);
      ASSERT_TRUE(Drains(stream));
      got[r] = Download(recv, kN);
      EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
      EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
      EXPECT_EQ(cudaFree(send), cudaSuccess);
      EXPECT_EQ(cudaFree(recv), cudaSuccess);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < kDevices; ++r) {
    EXPECT_EQ(seen_count[r], kDevices);
    EXPECT_EQ(seen_rank[r], r);
    EXPECT_EQ(seen_device[r], r);
    EXPECT_EQ(got[r], Values((r + kDevices - 1) % kDevices, kN)) << "rank " << r;
  }
}

// Arguments NCCL rejects at the call: a peer outside the group, host memory, memory or a stream
// of another device; inside a group the first error is also ncclGroupEnd's.
TEST(NcclEmulation, BadArgumentsAreInvalidArgument) {
  CMOE_NEED_DEVICES(2);
  ncclComm_t comms[2] = {};
  ASSERT_EQ(ncclCommInitAll(comms, 2, nullptr), ncclSuccess);
  float* on0 = Fresh(0, 4);
  float* on1 = Fresh(1, 4);
  cudaStream_t s0 = Stream(0);
  cudaStream_t s1 = Stream(1);
  std::vector<float> host(4);
  EXPECT_EQ(ncclSend(on0, 4, ncclFloat, 2, comms[0], s0), ncclInvalidArgument);
  EXPECT_EQ(ncclSend(host.data(), 4, ncclFloat, 1, comms[0], s0), ncclInvalidArgument);
  EXPECT_EQ(ncclSend(on1, 4, ncclFloat, 1, comms[0], s0), ncclInvalidArgument);
  EXPECT_EQ(ncclSend(on0, 4, ncclFloat, 1, comms[0], s1), ncclInvalidArgument);
  EXPECT_EQ(ncclSend(on0, 5, ncclFloat, 1, comms[0], s0), ncclInvalidArgument);  // past the end
  ASSERT_EQ(ncclGroupStart(), ncclSuccess);
  EXPECT_EQ(ncclRecv(on0, 4, ncclFloat, 5, comms[0], s0), ncclInvalidArgument);
  EXPECT_EQ(ncclGroupEnd(), ncclInvalidArgument);
  EXPECT_EQ(ncclGroupEnd(), ncclInvalidUsage);  // no group open
  EXPECT_EQ(cudaStreamQuery(s0), cudaSuccess) << "a rejected operation was queued";
  const int twice[] = {1, 1};
  ncclComm_t more[2] = {};
  EXPECT_EQ(ncclCommInitAll(more, 2, twice), ncclInvalidUsage);
  for (ncclComm_t comm : comms) EXPECT_EQ(ncclCommDestroy(comm), ncclSuccess);
  for (cudaStream_t s : {s0, s1}) EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  for (float* p : {on0, on1}) EXPECT_EQ(cudaFree(p), cudaSuccess);
}

}  // namespace
}  // namespace cmoe::cuda_emu::testing
