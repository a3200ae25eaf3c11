#include "common/thread_pool.h"

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe {
namespace {

TEST(ThreadPoolTest, CoversEveryIndexExactlyOnce) {
  ThreadPool pool(4);
  for (int64_t n : {1, 2, 3, 7, 64, 1000, 4097}) {
    for (int64_t grain : {1, 3, 16, 5000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.ParallelFor(n, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
      });
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << n << " " << grain << " " << i;
    }
  }
}

TEST(ThreadPoolTest, ChunksAreMultiplesOfGrain) {
  ThreadPool pool(3);
  std::atomic<bool> ok{true};
  pool.ParallelFor(100, 8, [&](int64_t begin, int64_t end) {
    if (begin % 8 != 0 || (end != 100 && end % 8 != 0)) ok = false;
  });
  EXPECT_TRUE(ok.load());
}

TEST(ThreadPoolTest, ManyShortLoopsInARow) {
  ThreadPool pool(2);
  int64_t total = 0;
  for (int round = 0; round < 20000; ++round) {
    std::atomic<int64_t> sum{0};
    pool.ParallelFor(10, 1, [&](int64_t begin, int64_t end) { sum += end - begin; });
    total += sum.load();
  }
  EXPECT_EQ(total, 200000);
}

TEST(ThreadPoolTest, NestedCallsRunSerially) {
  ThreadPool pool(2);
  std::atomic<int> inner{0};
  pool.ParallelFor(4, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      pool.ParallelFor(10, 1, [&](int64_t b, int64_t e) { inner += static_cast<int>(e - b); });
    }
  });
  EXPECT_EQ(inner.load(), 40);
}

TEST(ThreadPoolTest, ParkedWorkersWakeForTheNextLoop) {
  // Park between loops (as the engine does between steps), sometimes long enough for the workers
  // to be asleep, sometimes not: every loop still covers every index, and none hangs.
  ThreadPool pool(4);
  int64_t total = 0;
  for (int round = 0; round < 3000; ++round) {
    std::atomic<int64_t> sum{0};
    pool.ParallelFor(64, 1, [&](int64_t begin, int64_t end) { sum += end - begin; });
    total += sum.load();
    pool.Park();
    if (round % 2 == 0) pool.Park();
    if (round % 500 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  EXPECT_EQ(total, 3000 * 64);
}

TEST(ThreadPoolTest, SingleThreadPoolRunsInline) {
  ThreadPool pool(1);
  EXPECT_EQ(pool.num_threads(), 1);
  int64_t seen = 0;
  pool.ParallelFor(5, 1, [&](int64_t begin, int64_t end) { seen += end - begin; });
  EXPECT_EQ(seen, 5);
}

}  // namespace
}  // namespace cmoe
