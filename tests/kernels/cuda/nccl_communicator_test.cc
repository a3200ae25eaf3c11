// NcclCommunicator (kernels/cuda/nccl_communicator.h), label gpu: a group of one on device 0
// (rows copied exactly with the guards around the receive buffer intact, zero counts, the counts
// exchange, argument errors that leave the communicator usable) and, on a machine with two GPUs
// or more, a two-rank exchange with one thread per rank, from both factories, with a zero-count
// pair, and Abort releasing a rank that waits for a peer that never comes. Skips without a GPU, and
// entirely when the build has no NCCL (CMOE_HAVE_NCCL).
//
// The exchange is a copy, so every comparison is exact (the values are small integers).
//
// Not tested here: engine/expert_parallel.h RunExpertParallelMoe. Its round trip gathers, sends
// and receives rows in host std::vectors and calls the experts on host spans, so it cannot run
// over a device communicator; NcclCommunicator rejects host buffers with InvalidArgument
// (HostBuffersAreInvalidArgument below). A device round trip belongs with the CUDA MoE layer.
#include "gtest/gtest.h"

#if defined(CMOE_HAVE_NCCL)

#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <numeric>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/nccl_communicator.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace cmoe::kernels::cuda::testing {
namespace {

int DeviceCount() {
  const absl::StatusOr<int> count = CudaDeviceCount();
  return count.ok() ? *count : 0;
}

// The group of one on device 0 (the CUDA backend `gpu` is on device 0 too).
std::unique_ptr<NcclCommunicator> SoloCommunicator() {
  const int devices[] = {0};
  absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> comms =
      MakeNcclCommunicators(devices);
  EXPECT_TRUE(comms.ok()) << comms.status();
  if (!comms.ok()) return nullptr;
  EXPECT_EQ(comms->size(), 1u);
  return std::move((*comms)[0]);
}

std::span<float> Span(GuardedDeviceArray<float>& a) {
  return {a.data(), static_cast<size_t>(a.size())};
}

TEST(NcclCommunicator, GroupOfOneCopiesRows) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::unique_ptr<NcclCommunicator> comm = SoloCommunicator();
  ASSERT_NE(comm, nullptr);
  EXPECT_EQ(comm->rank(), 0);
  EXPECT_EQ(comm->world_size(), 1);
  EXPECT_EQ(comm->device(), 0);
  // Widths around the 16-byte alignment NCCL likes, one row and many.
  for (const auto& [rows, width] :
       {std::pair<int64_t, int64_t>{1, 1}, {5, 7}, {33, 64}, {300, 129}}) {
    SCOPED_TRACE(::testing::Message() << rows << " rows of " << width);
    std::mt19937 rng(static_cast<uint32_t>(rows * 1000 + width));
    const std::vector<float> host = RandomFloats(rows * width, rng);
    GuardedDeviceArray<float> send(*gpu, host);
    GuardedDeviceArray<float> recv(*gpu, rows * width);
    CMOE_ASSERT_OK(gpu->Synchronize());  // the uploads ran on the backend's stream
    const int64_t counts[] = {rows};
    CMOE_ASSERT_OK(comm->AllToAllRows({.send = Span(send),
                                       .send_counts = counts,
                                       .recv = Span(recv),
                                       .recv_counts = counts,
                                       .row_width = width}));
    CMOE_ASSERT_OK(comm->Synchronize());
    EXPECT_EQ(recv.Download(), host);  // exact; Download also checks both guards
  }
}

TEST(NcclCommunicator, ZeroRowsWriteNothing) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::unique_ptr<NcclCommunicator> comm = SoloCommunicator();
  ASSERT_NE(comm, nullptr);
  GuardedDeviceArray<float> send(*gpu, 0);
  GuardedDeviceArray<float> recv(*gpu, 0);
  CMOE_ASSERT_OK(gpu->Synchronize());
  const int64_t counts[] = {0};
  CMOE_ASSERT_OK(comm->AllToAllRows({.send = Span(send),
                                     .send_counts = counts,
                                     .recv = Span(recv),
                                     .recv_counts = counts,
                                     .row_width = 16}));
  CMOE_ASSERT_OK(comm->Synchronize());
  EXPECT_TRUE(recv.Download().empty());  // the guards on both sides still hold their sentinels
}

TEST(NcclCommunicator, GroupOfOneExchangesCounts) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::unique_ptr<NcclCommunicator> comm = SoloCommunicator();
  ASSERT_NE(comm, nullptr);
  // 3 values, then 1000 (past the first staging buffer: it must grow), then 1 again.
  for (const int64_t per_peer : {int64_t{3}, int64_t{1000}, int64_t{1}}) {
    std::vector<int64_t> send(static_cast<size_t>(per_peer));
    std::iota(send.begin(), send.end(), int64_t{1} << 40);  // beyond int32
    std::vector<int64_t> recv(send.size(), -1);
    CMOE_ASSERT_OK(comm->AllToAllCounts(send, recv, per_peer));
    EXPECT_EQ(recv, send) << "per_peer " << per_peer;
  }
}

// Every size error of kernels/communicator.h, then a valid exchange: argument errors are not
// fatal.
TEST(NcclCommunicator, BadSizesAreInvalidArgument) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::unique_ptr<NcclCommunicator> comm = SoloCommunicator();
  ASSERT_NE(comm, nullptr);
  std::vector<int64_t> values = {7, 8};
  std::vector<int64_t> out(2);
  EXPECT_EQ(comm->AllToAllCounts(values, out, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->AllToAllCounts(values, out, 1).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(comm->AllToAllCounts(values, std::span<int64_t>(out).first(1), 2).code(),
            absl::StatusCode::kInvalidArgument);

  GuardedDeviceArray<float> send(*gpu, 32);  // 4 rows of 8
  GuardedDeviceArray<float> recv(*gpu, 32);
  const int64_t four[] = {4};
  const int64_t three[] = {3};
  const int64_t negative[] = {-1};
  const int64_t two_peers[] = {2, 2};
  const AllToAllRowsArgs good{.send = Span(send),
                              .send_counts = four,
                              .recv = Span(recv),
                              .recv_counts = four,
                              .row_width = 8};
  const auto code = [&](AllToAllRowsArgs args) { return comm->AllToAllRows(args).code(); };
  AllToAllRowsArgs bad = good;
  bad.row_width = 0;
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument) << "row_width 0";
  bad = good;
  bad.send_counts = two_peers;
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument) << "send_counts of size 2";
  bad = good;
  bad.recv_counts = negative;
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument) << "negative count";
  bad = good;
  bad.send_counts = three;
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument) << "send size != 3 rows";
  bad = good;
  bad.recv = Span(recv).first(31);
  EXPECT_EQ(code(bad), absl::StatusCode::kInvalidArgument) << "recv size != 4 rows";

  CMOE_ASSERT_OK(comm->Health());
  CMOE_ASSERT_OK(comm->AllToAllCounts(values, out, 2));
  EXPECT_EQ(out, values);
}

TEST(NcclCommunicator, HostBuffersAreInvalidArgument) {
  CMOE_CUDA_BACKEND_OR_SKIP(gpu);
  std::unique_ptr<NcclCommunicator> comm = SoloCommunicator();
  ASSERT_NE(comm, nullptr);
  std::vector<float> host_send(8, 1.0f);  // 2 rows of 4
  std::vector<float> host_recv(8, 0.0f);
  GuardedDeviceArray<float> device_recv(*gpu, 8);
  const int64_t counts[] = {2};
  const absl::Status both = comm->AllToAllRows({.send = host_send,
                                                .send_counts = counts,
                                                .recv = host_recv,
                                                .recv_counts = counts,
                                                .row_width = 4});
  EXPECT_EQ(both.code(), absl::StatusCode::kInvalidArgument) << both;
  EXPECT_NE(both.message().find("host memory"), std::string::npos) << both;
  const absl::Status send_only = comm->AllToAllRows({.send = host_send,
                                                     .send_counts = counts,
                                                     .recv = Span(device_recv),
                                                     .recv_counts = counts,
                                                     .row_width = 4});
  EXPECT_EQ(send_only.code(), absl::StatusCode::kInvalidArgument) << send_only;
  CMOE_ASSERT_OK(comm->Health());
  for (const float v : device_recv.Download()) EXPECT_TRUE(IsSentinel(v)) << "recv was written";
}

TEST(NcclCommunicator, FactoriesRejectBadArguments) {
  const int count = DeviceCount();
  if (count == 0) GTEST_SKIP() << "no CUDA device";
  EXPECT_EQ(MakeNcclCommunicators({}).status().code(), absl::StatusCode::kInvalidArgument);
  const int twice[] = {0, 0};
  EXPECT_EQ(MakeNcclCommunicators(twice).status().code(), absl::StatusCode::kInvalidArgument);
  const int missing[] = {count};
  EXPECT_EQ(MakeNcclCommunicators(missing).status().code(), absl::StatusCode::kInvalidArgument);
  const int one[] = {0};
  const cudaStream_t two_streams[] = {nullptr, nullptr};
  EXPECT_EQ(MakeNcclCommunicators(one, two_streams).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::StatusOr<ncclUniqueId> id = MakeNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(MakeNcclCommunicator(*id, 2, 2, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeNcclCommunicator(*id, 0, 1, count).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// --- Two ranks, one thread each ---

constexpr int64_t kWidth = 6;
// kRows[s][d]: rows rank s sends to rank d. Rank 0 sends nothing to rank 1 (a skipped pair).
constexpr std::array<std::array<int64_t, 2>, 2> kRows = {{{2, 0}, {3, 1}}};

// Row i from rank s to rank d, exact in f32.
float Value(int64_t s, int64_t d, int64_t row, int64_t col) {
  return static_cast<float>(1000 * s + 100 * d + 10 * row + col);
}

// One rank's buffers, made on the main thread (so no rank can fail before the collectives).
struct RankBuffers {
  std::unique_ptr<Backend> backend;
  std::unique_ptr<GuardedDeviceArray<float>> send, recv;
  std::vector<float> want;  // what recv must hold
};

RankBuffers MakeRankBuffers(int rank) {
  RankBuffers b;
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend({.device = rank});
  EXPECT_TRUE(backend.ok()) << backend.status();
  if (!backend.ok()) return b;
  b.backend = std::move(backend).value();
  std::vector<float> send;
  for (int64_t d = 0; d < 2; ++d) {
    for (int64_t i = 0; i < kRows[rank][d] * kWidth; ++i) {
      send.push_back(Value(rank, d, i / kWidth, i % kWidth));
    }
  }
  for (int64_t s = 0; s < 2; ++s) {
    for (int64_t i = 0; i < kRows[s][rank] * kWidth; ++i) {
      b.want.push_back(Value(s, rank, i / kWidth, i % kWidth));
    }
  }
  b.send = std::make_unique<GuardedDeviceArray<float>>(*b.backend, send);
  b.recv =
      std::make_unique<GuardedDeviceArray<float>>(*b.backend, static_cast<int64_t>(b.want.size()));
  EXPECT_TRUE(b.backend->Synchronize().ok());
  return b;
}

// The rank's step: counts, then rows; `got` is what arrived.
absl::Status Exchange(NcclCommunicator& comm, RankBuffers& b, std::vector<int64_t>* recv_counts,
                      std::vector<float>* got) {
  const int r = comm.rank();
  const std::vector<int64_t> send_counts = {kRows[r][0], kRows[r][1]};
  recv_counts->assign(2, -1);
  if (absl::Status s = comm.AllToAllCounts(send_counts, *recv_counts, 1); !s.ok()) return s;
  if (absl::Status s = comm.AllToAllRows({.send = Span(*b.send),
                                          .send_counts = send_counts,
                                          .recv = Span(*b.recv),
                                          .recv_counts = *recv_counts,
                                          .row_width = kWidth});
      !s.ok()) {
    return s;
  }
  if (absl::Status s = comm.Synchronize(); !s.ok()) return s;
  *got = b.recv->Download();  // on this thread: comm.Synchronize made this rank's GPU current
  return absl::OkStatus();
}

void ExpectExchanged(const std::vector<RankBuffers>& buffers,
                     const std::vector<std::vector<int64_t>>& recv_counts,
                     const std::vector<std::vector<float>>& got) {
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(recv_counts[r], (std::vector<int64_t>{kRows[0][r], kRows[1][r]})) << "rank " << r;
    EXPECT_EQ(got[r], buffers[r].want) << "rank " << r;
  }
}

// Both ranks' buffers, made on this thread before any rank starts.
std::vector<RankBuffers> MakeTwoRankBuffers() {
  std::vector<RankBuffers> buffers;
  buffers.reserve(2);
  for (int r = 0; r < 2; ++r) buffers.push_back(MakeRankBuffers(r));
  return buffers;
}

// One rank's part of a two-rank run, on the rank's own thread: Exchange over its communicator.
using RankRun = std::function<absl::Status(
    int rank, RankBuffers& b, std::vector<int64_t>* recv_counts, std::vector<float>* got)>;

// Runs ranks 0 and 1 on a thread each and checks that both succeed and receive what they should.
void ExpectTwoRankExchange(std::vector<RankBuffers>& buffers, const RankRun& run) {
  std::vector<absl::Status> statuses(2);
  std::vector<std::vector<int64_t>> recv_counts(2);
  std::vector<std::vector<float>> got(2);
  std::vector<std::thread> threads;
  threads.reserve(2);
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] { statuses[r] = run(r, buffers[r], &recv_counts[r], &got[r]); });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < 2; ++r) EXPECT_TRUE(statuses[r].ok()) << "rank " << r << ": " << statuses[r];
  ExpectExchanged(buffers, recv_counts, got);
}

TEST(NcclCommunicator, TwoRanksOneThreadEach) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices, found " << DeviceCount();
  std::vector<RankBuffers> buffers = MakeTwoRankBuffers();
  ASSERT_FALSE(::testing::Test::HasFailure());
  const int devices[] = {0, 1};
  absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> comms =
      MakeNcclCommunicators(devices);
  ASSERT_TRUE(comms.ok()) << comms.status();
  ExpectTwoRankExchange(buffers, [&comms](int r, RankBuffers& b, std::vector<int64_t>* recv_counts,
                                          std::vector<float>* got) {
    return Exchange(*(*comms)[r], b, recv_counts, got);
  });
}

TEST(NcclCommunicator, TwoRanksFromAUniqueId) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices, found " << DeviceCount();
  std::vector<RankBuffers> buffers = MakeTwoRankBuffers();
  ASSERT_FALSE(::testing::Test::HasFailure());
  const absl::StatusOr<ncclUniqueId> id = MakeNcclUniqueId();
  ASSERT_TRUE(id.ok()) << id.status();
  ExpectTwoRankExchange(buffers, [&id](int r, RankBuffers& b, std::vector<int64_t>* recv_counts,
                                       std::vector<float>* got) {
    // Each rank joins (ncclCommInitRank blocks until both have), exchanges, and destroys its
    // communicator on its own thread, as separate processes would.
    absl::StatusOr<std::unique_ptr<NcclCommunicator>> comm =
        MakeNcclCommunicator(*id, r, 2, /*device=*/r);
    return comm.ok() ? Exchange(**comm, b, recv_counts, got) : comm.status();
  });
}

// A rank waiting in a collective for a peer that never comes (the peer failed elsewhere) is
// released by Abort from another thread, in the counts exchange (whose copies go through
// pageable host memory) and in a row exchange waited on with Synchronize; the communicator then
// refuses every call. The pair first exchanges once, so that NCCL's connections exist (a
// first connection waiting for its peer cannot be aborted; the serving engine does the same).
TEST(NcclCommunicator, AbortReleasesARankWaitingForAPeer) {
  if (DeviceCount() < 2) GTEST_SKIP() << "needs two CUDA devices, found " << DeviceCount();
  for (const bool counts : {true, false}) {
    SCOPED_TRACE(counts ? "AllToAllCounts" : "AllToAllRows + Synchronize");
    std::vector<RankBuffers> buffers = MakeTwoRankBuffers();
    ASSERT_FALSE(::testing::Test::HasFailure());
    const int devices[] = {0, 1};
    absl::StatusOr<std::vector<std::unique_ptr<NcclCommunicator>>> comms =
        MakeNcclCommunicators(devices);
    ASSERT_TRUE(comms.ok()) << comms.status();
    ExpectTwoRankExchange(
        buffers,
        [&comms](int r, RankBuffers& b, std::vector<int64_t>* recv_counts,
                 std::vector<float>* got) { return Exchange(*(*comms)[r], b, recv_counts, got); });
    NcclCommunicator& waiting = *(*comms)[0];
    absl::Status status;
    std::atomic<bool> returned{false};
    std::thread rank0([&] {
      if (counts) {
        const std::vector<int64_t> send = {1, 2};
        std::vector<int64_t> recv(2);
        status = waiting.AllToAllCounts(send, recv, 1);
      } else {
        const std::vector<int64_t> send_counts = {0, 1}, recv_counts = {0, 1};
        status = waiting.AllToAllRows({.send = Span(*buffers[0].send).first(kWidth),
                                       .send_counts = send_counts,
                                       .recv = Span(*buffers[0].recv).first(kWidth),
                                       .recv_counts = recv_counts,
                                       .row_width = kWidth});
        if (status.ok()) status = waiting.Synchronize();
      }
      returned = true;
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 is waiting for rank 1
    waiting.Abort();  // rank 1 "failed": its thread tears rank 0 down
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!returned && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    if (!returned) {
      // Rank 0 can never be joined: fail now rather than hang until the test times out.
      std::fprintf(stderr, "FAILED: Abort left rank 0 waiting in %s\n",
                   counts ? "AllToAllCounts" : "Synchronize");
      std::_Exit(1);
    }
    rank0.join();
    EXPECT_EQ(status.code(), absl::StatusCode::kAborted) << status;
    EXPECT_FALSE(waiting.Health().ok());
    const std::vector<int64_t> send = {1, 2};
    std::vector<int64_t> recv(2);
    EXPECT_FALSE(waiting.AllToAllCounts(send, recv, 1).ok());
    (*comms)[1]->Abort();  // the group is torn down: rank 1 never got its rows
  }
}

}  // namespace
}  // namespace cmoe::kernels::cuda::testing

#else  // !CMOE_HAVE_NCCL

TEST(NcclCommunicator, NotBuilt) { GTEST_SKIP() << "built without NCCL (CMOE_HAVE_NCCL unset)"; }

#endif  // CMOE_HAVE_NCCL
