#include "server/serial_executor.h"

#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace cmoe::server {
namespace {

TEST(SerialExecutorTest, RunsTasksInPostOrderOnOneThread) {
  std::vector<int> order;
  std::thread::id first_thread;
  std::atomic<bool> other_thread{false};
  {
    SerialExecutor executor("test");
    for (int i = 0; i < 1000; ++i) {
      executor.Post([&, i] {
        if (i == 0) first_thread = std::this_thread::get_id();
        if (std::this_thread::get_id() != first_thread) other_thread = true;
        order.push_back(i);  // one thread: no lock needed
      });
      if (i % 100 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }  // the destructor runs what is queued, then joins
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) EXPECT_EQ(order[i], i);
  EXPECT_FALSE(other_thread.load());
  EXPECT_NE(first_thread, std::this_thread::get_id());
}

TEST(SerialExecutorTest, ManyPostersAndTasksThatPost) {
  std::atomic<int> ran{0};
  {
    SerialExecutor executor("test");
    std::vector<std::thread> posters;
    for (int t = 0; t < 8; ++t) {
      posters.emplace_back([&] {
        for (int i = 0; i < 500; ++i) {
          // Each task posts a follow-up, as a pump that finds more to write would.
          executor.Post([&] {
            ++ran;
            executor.Post([&] { ++ran; });
          });
        }
      });
    }
    for (std::thread& t : posters) t.join();
    // Wait until the follow-ups are queued too (each first-level task queues one).
    while (ran.load() < 8 * 500) std::this_thread::yield();
  }
  EXPECT_EQ(ran.load(), 2 * 8 * 500);
}

TEST(SerialExecutorTest, IdleExecutorStops) {
  // Constructed and destroyed with nothing posted: the waiting thread must be woken to exit.
  for (int i = 0; i < 100; ++i) SerialExecutor executor("idle");
}

}  // namespace
}  // namespace cmoe::server
