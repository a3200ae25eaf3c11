#include "kernels/cpu/memory_bandwidth.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/simd_kernels.h"

namespace cmoe::kernels::cpu {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kChunk = size_t{4} << 20;  // claimed dynamically, like the GEMV's chunks

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// Keeps the sums alive so the reads cannot be optimised away.
volatile float g_sink = 0.0f;

}  // namespace

double MeasureReadBandwidthGBps(ThreadPool& pool, size_t bytes, int repeats) {
  const size_t total = std::max<size_t>((bytes + kChunk - 1) / kChunk, 1) * kChunk;
  const auto chunks = static_cast<int64_t>(total / kChunk);
  std::unique_ptr<uint8_t, FreeDeleter> buffer(
      static_cast<uint8_t*>(std::aligned_alloc(kPage, total)));
  if (buffer == nullptr) return 0.0;
  const SimdKernels& kernels = *KernelsFor(SimdLevel::kAuto);
  std::vector<float> sums(static_cast<size_t>(chunks), 0.0f);
  // 1.0f everywhere keeps the float adds free of denormals.
  pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
    auto* f = reinterpret_cast<float*>(buffer.get() + static_cast<size_t>(begin) * kChunk);
    std::fill(f, f + static_cast<size_t>(end - begin) * kChunk / sizeof(float), 1.0f);
  });
  std::vector<double> gbps;
  for (int r = -1; r < std::max(repeats, 1); ++r) {
    std::atomic<int64_t> next{0};
    const auto start = std::chrono::steady_clock::now();
    pool.ParallelFor(std::min<int64_t>(pool.num_threads(), chunks), 1, [&](int64_t, int64_t) {
      for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
        sums[c] += kernels.read_sum(buffer.get() + static_cast<size_t>(c) * kChunk, kChunk);
      }
    });
    const std::chrono::duration<double> seconds = std::chrono::steady_clock::now() - start;
    if (r >= 0) gbps.push_back(static_cast<double>(total) / seconds.count() / 1e9);
  }
  for (float s : sums) g_sink = g_sink + s;
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace cmoe::kernels::cpu
