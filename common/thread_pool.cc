#include "common/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <chrono>

namespace cmoe {
namespace {

// The caller spins this many polls for stragglers before it starts yielding its core.
constexpr int kSpinIterations = 20000;
// Idle workers poll for new work this long before sleeping. A decode step runs hundreds of
// short loops with a little serial work between them; a worker that fell asleep in a gap costs a
// futex wake-up (tens of microseconds on a VM) on the next loop.
constexpr auto kWorkerSpin = std::chrono::milliseconds(2);

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Tells the core this is a spin-wait (frees pipeline resources for a sibling hyperthread).
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  const int workers = std::max(num_threads, 1) - 1;
  workers_.reserve(workers);
  for (int i = 0; i < workers; ++i) workers_.emplace_back([this, i] { WorkerLoop(i); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_.store(true);
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

int ThreadPool::HardwareThreads() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(CPU_COUNT(&set), 1);
  return std::max(static_cast<int>(std::thread::hardware_concurrency()), 1);
}

void ThreadPool::Park() {
  park_deadline_ns_.store(NowNs() + std::chrono::nanoseconds(kParkedSpin).count(),
                          std::memory_order_relaxed);
}

void ThreadPool::RunChunk(int chunk_index) {
  const int64_t begin = chunk_index * chunk_size_;
  const int64_t end = std::min(n_, begin + chunk_size_);
  if (begin < end) (*body_)(begin, end);
}

void ThreadPool::ParallelFor(int64_t n, int64_t grain,
                             const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_chunks = (n + grain - 1) / grain;
  if (workers_.empty() || max_chunks == 1 || in_parallel_.exchange(true)) {
    body(0, n);
    return;
  }
  const int chunks = static_cast<int>(std::min<int64_t>(max_chunks, num_threads()));
  const int64_t per_chunk = (max_chunks + chunks - 1) / chunks;
  body_ = &body;
  n_ = n;
  chunk_size_ = per_chunk * grain;
  pending_.store(static_cast<int>(workers_.size()));
  park_deadline_ns_.store(0, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_.notify_all();
  RunChunk(0);
  // Spin first (chunks usually finish together), then yield: on a machine shared with other
  // processes a worker may be waiting for a core that this loop would otherwise keep busy.
  for (int spin = 0; pending_.load(std::memory_order_acquire) > 0; ++spin) {
    if (spin >= kSpinIterations) std::this_thread::yield();
  }
  in_parallel_.store(false);
}

void ThreadPool::WorkerLoop(int worker_index) {
  uint64_t seen = 0;
  while (true) {
    uint64_t current = generation_.load(std::memory_order_acquire);
    const auto spin_until = std::chrono::steady_clock::now() + kWorkerSpin;
    for (int spin = 1; current == seen; ++spin) {
      CpuRelax();
      current = generation_.load(std::memory_order_acquire);
      if (spin % 64 == 0) {
        const int64_t park = park_deadline_ns_.load(std::memory_order_relaxed);
        if (park != 0 && NowNs() > park) break;
      }
      if (spin % 1024 == 0 && std::chrono::steady_clock::now() > spin_until) break;
    }
    if (current == seen) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      current = generation_.load();
    }
    seen = current;
    if (stop_.load()) return;
    // Chunk 0 belongs to the caller; worker i runs chunk i + 1 when it exists. Every worker
    // reports back, so the caller never rewrites the job while a worker may still read it.
    const int64_t chunk = worker_index + 1;
    if (chunk * chunk_size_ < n_) RunChunk(static_cast<int>(chunk));
    pending_.fetch_sub(1, std::memory_order_acq_rel);
  }
}

}  // namespace cmoe
