// Kernel benchmarks of the fast CPU backend (Google Benchmark).
//
//   build/bin/kernels_benchmark [--bench_threads=N] [--cold_mib=1024]
//       --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
//
// Before (and after) the benchmarks it measures the read bandwidth of the same N threads
// (MeasureReadBandwidthGBps over a 1 GiB buffer) and prints it. GEMV (decode, memory-bound)
// cycles through enough copies of the matrix to total --cold_mib, so every call streams its
// weights from memory rather than from the (possibly huge) last-level cache; it reports GB/s of
// weights read and `of_read_bw`, the fraction of the measured read bandwidth. GEMM (prefill,
// compute-bound) reports GFLOP/s. Attention decode reports GB/s of K/V read.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/half.h"
#include "common/thread_pool.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/memory_bandwidth.h"

namespace cmoe::kernels::cpu {
namespace {

int g_threads = 0;               // --bench_threads (0: all cores)
int64_t g_cold_bytes = 1 << 30;  // --cold_mib
double g_read_gbps = 0.0;        // measured at start-up

Backend& GetBackend(int threads) {
  static std::map<int, std::unique_ptr<Backend>> backends;
  std::unique_ptr<Backend>& b = backends[threads];
  if (b == nullptr) b = std::move(MakeCpuBackend({.threads = threads})).value();
  return *b;
}

int Threads(const benchmark::State& state, int arg) {
  return state.range(arg) > 0 ? static_cast<int>(state.range(arg)) : g_threads;
}

// Random weights in [-1, 1) (no denormals), a 1 MiB random pattern repeated.
std::vector<uint8_t> RandomWeights(DType dtype, int64_t elements, uint32_t seed) {
  const size_t size = DTypeSize(dtype);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<uint8_t> pattern((1 << 20) + 64);
  for (size_t i = 0; i + size <= pattern.size(); i += size) {
    const float f = dist(rng);
    const uint16_t h = dtype == DType::kBF16 ? FloatToBf16(f) : FloatToF16(f);
    if (dtype == DType::kF32) std::memcpy(&pattern[i], &f, 4);
    if (dtype != DType::kF32) std::memcpy(&pattern[i], &h, 2);
  }
  std::vector<uint8_t> bytes(static_cast<size_t>(elements) * size);
  const size_t shift = (seed % 16) * 4;  // copies differ, elements stay whole
  for (size_t i = 0; i < bytes.size(); i += 1 << 20) {
    std::memcpy(&bytes[i], &pattern[shift], std::min<size_t>(1 << 20, bytes.size() - i));
  }
  return bytes;
}

// Enough copies of a (rows, cols) matrix to exceed g_cold_bytes; kept between benchmark runs of
// the same shape.
const std::vector<std::vector<uint8_t>>& ColdCopies(DType dtype, int64_t rows, int64_t cols) {
  static std::vector<std::vector<uint8_t>> copies;
  static std::tuple<DType, int64_t, int64_t> key{DType::kF32, -1, -1};
  if (key != std::make_tuple(dtype, rows, cols)) {
    copies.clear();
    const int64_t bytes = rows * cols * static_cast<int64_t>(DTypeSize(dtype));
    const int64_t n = std::max<int64_t>(2, (g_cold_bytes + bytes - 1) / bytes);
    for (int64_t i = 0; i < n; ++i) {
      copies.push_back(RandomWeights(dtype, rows * cols, static_cast<uint32_t>(i)));
    }
    key = {dtype, rows, cols};
  }
  return copies;
}

// Args: out rows, in, dtype, tokens, threads (0: --bench_threads).
void BM_Gemv(benchmark::State& state) {
  const int64_t out = state.range(0), in = state.range(1), tokens = state.range(3);
  const auto dtype = static_cast<DType>(state.range(2));
  Backend& backend = GetBackend(Threads(state, 4));
  const auto& copies = ColdCopies(dtype, out, in);
  std::vector<float> x(static_cast<size_t>(tokens * in), 0.5f),
      y(static_cast<size_t>(tokens * out));
  size_t next = 0;
  for (auto _ : state) {
    const WeightView w{.data = copies[next].data(), .dtype = dtype, .rows = out, .cols = in};
    next = (next + 1) % copies.size();
    if (!backend.MatMul(x.data(), tokens, w, y.data(), Accumulate::kNo).ok()) {
      state.SkipWithError("MatMul failed");
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double bytes = static_cast<double>(out * in * static_cast<int64_t>(DTypeSize(dtype)));
  const auto iters = static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(bytes * iters));
  state.counters["GB/s"] = benchmark::Counter(bytes * iters / 1e9, benchmark::Counter::kIsRate);
  state.counters["of_read_bw"] =
      benchmark::Counter(bytes * iters / 1e9 / g_read_gbps, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(DTypeName(dtype)));
}

// Args: tokens, out rows, in, dtype, threads.
void BM_Gemm(benchmark::State& state) {
  const int64_t tokens = state.range(0), out = state.range(1), in = state.range(2);
  const auto dtype = static_cast<DType>(state.range(3));
  Backend& backend = GetBackend(Threads(state, 4));
  const std::vector<uint8_t> weights = RandomWeights(dtype, out * in, 7);
  const WeightView w{.data = weights.data(), .dtype = dtype, .rows = out, .cols = in};
  std::vector<float> x(static_cast<size_t>(tokens * in), 0.25f),
      y(static_cast<size_t>(tokens * out));
  for (auto _ : state) {
    if (!backend.MatMul(x.data(), tokens, w, y.data(), Accumulate::kNo).ok()) {
      state.SkipWithError("MatMul failed");
    }
    benchmark::DoNotOptimize(y.data());
  }
  const double flops = 2.0 * static_cast<double>(tokens * out * in);
  state.counters["GFLOP/s"] = benchmark::Counter(
      flops * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
  state.SetLabel(std::string(DTypeName(dtype)));
}

// Args: sequences (one decode token each), context, n_heads, n_kv_heads, head_dim, threads.
void BM_AttentionDecode(benchmark::State& state) {
  const int64_t seqs = state.range(0), context = state.range(1), hd = state.range(4);
  const auto n_heads = static_cast<int32_t>(state.range(2));
  const auto n_kv = static_cast<int32_t>(state.range(3));
  Backend& backend = GetBackend(Threads(state, 5));
  const int32_t block = 16;
  const int64_t blocks_per_seq = (context + block - 1) / block;
  const int64_t slots = seqs * blocks_per_seq * block;
  std::vector<float> k(static_cast<size_t>(slots * n_kv * hd), 0.01f), v(k.size(), 0.02f);
  std::vector<float> q(static_cast<size_t>(seqs * n_heads * hd), 0.1f), out(q.size());
  std::vector<int32_t> table(static_cast<size_t>(seqs * blocks_per_seq));
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>(i);
  std::vector<AttentionSequence> sequences;
  for (int64_t s = 0; s < seqs; ++s) {
    sequences.push_back({.first_row = s,
                         .num_tokens = 1,
                         .context_len = context,
                         .block_table = std::span<const int32_t>(table).subspan(s * blocks_per_seq,
                                                                                blocks_per_seq)});
  }
  const AttentionParams params{.q = q.data(),
                               .num_rows = seqs,
                               .n_heads = n_heads,
                               .scale = 1.0f / std::sqrt(static_cast<float>(hd)),
                               .sequences = sequences,
                               .cache = {.k = k.data(),
                                         .v = v.data(),
                                         .num_blocks = seqs * blocks_per_seq,
                                         .block_size = block,
                                         .n_kv_heads = n_kv,
                                         .head_dim = static_cast<int32_t>(hd)},
                               .out = out.data()};
  for (auto _ : state) {
    if (!backend.Attention(params).ok()) state.SkipWithError("Attention failed");
    benchmark::DoNotOptimize(out.data());
  }
  const double kv_bytes = 2.0 * static_cast<double>(seqs * context * n_kv * hd) * sizeof(float);
  state.counters["KV GB/s"] = benchmark::Counter(
      kv_bytes * static_cast<double>(state.iterations()) / 1e9, benchmark::Counter::kIsRate);
}

constexpr int64_t kF32 = static_cast<int64_t>(DType::kF32);
constexpr int64_t kF16 = static_cast<int64_t>(DType::kF16);
constexpr int64_t kBf16 = static_cast<int64_t>(DType::kBF16);

void GemvArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"out", "in", "dtype", "T", "threads"});
  for (int64_t dtype : {kBf16, kF16, kF32}) {
    b->Args({5632, 2048, dtype, 1, 0});  // TinyLlama FFN gate/up
    b->Args({2048, 5632, dtype, 1, 0});  // FFN down
  }
  b->Args({32000, 2048, kBf16, 1, 0});  // LM head
  b->Args({5632, 2048, kBf16, 1, 1});   // one thread
  for (int64_t tokens : {2, 4, 8, 16}) b->Args({5632, 2048, kBf16, tokens, 0});
}

void GemmArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"T", "out", "in", "dtype", "threads"});
  b->Args({512, 2048, 2048, kBf16, 0});
  b->Args({512, 5632, 2048, kBf16, 0});
  b->Args({512, 2048, 5632, kBf16, 0});
  b->Args({512, 2048, 2048, kF32, 0});
  b->Args({512, 2048, 2048, kBf16, 1});
  b->Args({64, 2048, 2048, kBf16, 0});
}

void AttentionArgs(benchmark::internal::Benchmark* b) {
  b->ArgNames({"seqs", "ctx", "heads", "kv", "hd", "threads"});
  for (int64_t context : {512, 2048}) b->Args({1, context, 32, 4, 64, 0});
  b->Args({8, 1024, 32, 4, 64, 0});
  b->Args({1, 2048, 32, 8, 128, 0});
}

BENCHMARK(BM_Gemv)->Apply(GemvArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Gemm)->Apply(GemmArgs)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AttentionDecode)->Apply(AttentionArgs)->UseRealTime()->Unit(benchmark::kMicrosecond);

double MeasureBandwidth(const char* when) {
  ThreadPool pool(g_threads);
  const double gbps = MeasureReadBandwidthGBps(pool, size_t{1} << 30, 7);
  std::printf("read bandwidth (%s, %d threads, 1 GiB, %s loads): %.2f GB/s\n", when, g_threads,
              std::string(SimdLevelName(DetectSimdLevel())).c_str(), gbps);
  std::fflush(stdout);
  return gbps;
}

// Removes our own flags from argv before Google Benchmark sees it.
void ParseOwnFlags(int* argc, char** argv) {
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--bench_threads=", 0) == 0) {
      g_threads = std::stoi(arg.substr(16));
    } else if (arg.rfind("--cold_mib=", 0) == 0) {
      g_cold_bytes = std::stoll(arg.substr(11)) << 20;
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
  if (g_threads <= 0) g_threads = ThreadPool::HardwareThreads();
}

}  // namespace
}  // namespace cmoe::kernels::cpu

int main(int argc, char** argv) {
  using namespace cmoe::kernels::cpu;  // NOLINT(google-build-using-namespace)
  ParseOwnFlags(&argc, argv);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_read_gbps = MeasureBandwidth("before");
  benchmark::AddCustomContext("read_bandwidth_gbps", std::to_string(g_read_gbps));
  benchmark::AddCustomContext("threads", std::to_string(g_threads));
  benchmark::RunSpecifiedBenchmarks();
  MeasureBandwidth("after");
  benchmark::Shutdown();
  return 0;
}
