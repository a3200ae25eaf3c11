// A fixed pool of worker threads for data-parallel loops in kernels.
//
//   ThreadPool pool(4);  // the caller plus 3 workers
//   pool.ParallelFor(rows, /*grain=*/16, [&](int64_t begin, int64_t end) { ... });
//
// ParallelFor splits [0, n) into at most num_threads() contiguous chunks (each a multiple of
// `grain` except the last), runs them on the workers and the calling thread, and returns when all
// are done. Only one thread may call ParallelFor at a time (kernels are called from the engine's
// single step thread); calls from inside a running body execute serially. Workers spin briefly
// before sleeping so that the many short loops of a decode step do not pay a wake-up each, unless
// the caller said (Park) that a longer gap follows.
#ifndef CMOE_COMMON_THREAD_POOL_H_
#define CMOE_COMMON_THREAD_POOL_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cmoe {

class ThreadPool {
 public:
  // `num_threads` counts the calling thread; values < 1 mean 1 (no workers).
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body);

  // A hint from the thread that calls ParallelFor that the next loop may be a while off (e.g. a
  // serving engine between steps): idle workers spin at most kParkedSpin more, then sleep and
  // leave their cores to other threads; the next ParallelFor wakes them. A short gap (a decode
  // step's sampling) costs no wake-up, a long one (delivering a big batch) burns no core. Same
  // thread as ParallelFor.
  void Park();
  static constexpr std::chrono::microseconds kParkedSpin{100};

  // Number of hardware threads available to this process (at least 1).
  static int HardwareThreads();

 private:
  void WorkerLoop(int worker_index);
  void RunChunk(int chunk_index);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> stop_{false};
  std::atomic<bool> in_parallel_{false};
  // steady_clock nanoseconds after which idle workers sleep (Park); 0: not parked.
  std::atomic<int64_t> park_deadline_ns_{0};
  // The job being run; written by the caller before generation_ is bumped.
  const std::function<void(int64_t, int64_t)>* body_ = nullptr;
  int64_t n_ = 0;
  int64_t chunk_size_ = 0;
};

}  // namespace cmoe

#endif  // CMOE_COMMON_THREAD_POOL_H_
