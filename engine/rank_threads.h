// The threads of an expert-parallel engine's ranks: every step, each rank's Forward runs on a
// thread of its own, all at once (their collectives wait for one another), and the step thread
// goes on when all have returned.
//
//   RankThreads threads(4);  // rank 0 runs on the caller, ranks 1-3 on threads of their own
//   threads.Run([&](int32_t rank) { statuses[rank] = Forward(rank); });
//
// The threads live as long as the object, so that each rank is always driven by the same thread
// (the backends' per-thread state, such as CUDA's current device, stays put).
#ifndef CMOE_ENGINE_RANK_THREADS_H_
#define CMOE_ENGINE_RANK_THREADS_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace cmoe::engine {

class RankThreads {
 public:
  // ranks >= 1; ranks - 1 threads.
  explicit RankThreads(int32_t ranks);
  ~RankThreads();
  RankThreads(const RankThreads&) = delete;
  RankThreads& operator=(const RankThreads&) = delete;

  int32_t ranks() const { return static_cast<int32_t>(threads_.size()) + 1; }

  // Calls fn(r) for every rank r concurrently (rank 0 on the calling thread) and returns when all
  // calls have returned. One caller at a time; fn must not throw.
  void Run(const std::function<void(int32_t)>& fn);

 private:
  void Loop(int32_t rank);

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable start_;
  std::condition_variable done_;
  const std::function<void(int32_t)>* fn_ = nullptr;  // the current Run's (guarded by mutex_)
  uint64_t generation_ = 0;                           // Runs started (guarded by mutex_)
  int32_t running_ = 0;  // threads still in the current Run (guarded by mutex_)
  bool stop_ = false;    // guarded by mutex_
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_RANK_THREADS_H_
