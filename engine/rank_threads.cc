#include "engine/rank_threads.h"

#include <algorithm>

namespace cmoe::engine {

RankThreads::RankThreads(int32_t ranks) {
  for (int32_t r = 1; r < std::max(ranks, 1); ++r) {
    threads_.emplace_back([this, r] { Loop(r); });
  }
}

RankThreads::~RankThreads() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  start_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void RankThreads::Run(const std::function<void(int32_t)>& fn) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    running_ = static_cast<int32_t>(threads_.size());
    ++generation_;
  }
  start_.notify_all();
  fn(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return running_ == 0; });
  fn_ = nullptr;
}

void RankThreads::Loop(int32_t rank) {
  uint64_t seen = 0;
  while (true) {
    const std::function<void(int32_t)>* fn;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      start_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      fn = fn_;
    }
    (*fn)(rank);
    std::lock_guard<std::mutex> lock(mutex_);
    if (--running_ == 0) done_.notify_one();
  }
}

}  // namespace cmoe::engine
