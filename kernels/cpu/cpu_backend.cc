// The fast CPU backend: validation (the same errors as the reference), threading and cache
// blocking here; the SIMD arithmetic in the per-instruction-set tables of simd_kernels.h.
//
// MatMul: up to kGemvMaxTokens rows of x it is a memory-bound GEMV; the output rows are cut into
// chunks that are contiguous stretches of W, claimed by the threads dynamically. Above that it is
// a compute-bound GEMM blocked GotoBLAS-style: x packed once per call, then blocks of kNc output
// rows claimed dynamically; per (kNc x kKc) block of W a packed, widened f32 copy, and the
// register-tiled micro-kernel over every (mr tokens x nr rows) tile of it.
//
// Tolerance against the reference (double accumulation): f32 accumulation throughout, so MatMul
// and attention agree to ~1e-6 relative to the magnitude of the summed terms; see
// simd_kernels_impl.h.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/moe_ops_host.h"
#include "kernels/cpu/sampling_host.h"
#include "kernels/cpu/simd_kernels.h"

namespace cmoe::kernels::cpu {
namespace {

static_assert(static_cast<int>(DType::kF32) == kWeightF32);
static_assert(static_cast<int>(DType::kF16) == kWeightF16);
static_assert(static_cast<int>(DType::kBF16) == kWeightBf16);

constexpr int64_t kGemvMaxTokens = 8;            // more tokens: the blocked GEMM
constexpr int64_t kMinBytesPerChunk = 64 << 10;  // GEMV: smaller chunks cost more than they save
constexpr int64_t kKc = 256;                     // GEMM: k block (W panel kKc x nr f32 fits in L1)
constexpr int64_t kMc = 96;   // GEMM: token block (multiple of every mr: 12, 6, 4)
constexpr int64_t kNc = 256;  // GEMM: output-row block (multiple of every nr)
static_assert(kKc <= kGemmMaxKc);

// Per-thread scratch that grows on demand and is kept for the next call.
float* Scratch(std::vector<float>& buffer, int64_t n) {
  if (static_cast<int64_t>(buffer.size()) < n) buffer.resize(static_cast<size_t>(n));
  return buffer.data();
}
thread_local std::vector<float> tls_pack_w, tls_tile, tls_scores, tls_rope, tls_kv;

// Runs body(c) for every c in [0, chunks) on the pool's threads, each thread claiming the next
// chunk when it finishes one: on a shared machine a preempted thread then delays only its current
// chunk instead of a fixed share of the work.
template <class Body>
void ForEachChunk(ThreadPool& pool, int64_t chunks, const Body& body) {
  std::atomic<int64_t> next{0};
  pool.ParallelFor(std::min<int64_t>(pool.num_threads(), chunks), 1, [&](int64_t, int64_t) {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) body(c);
  });
}

int WeightIndex(const WeightView& w) { return static_cast<int>(w.dtype); }

class CpuBackend final : public Backend {
 public:
  CpuBackend(int threads, const SimdKernels& kernels)
      : pool_(threads), k_(kernels), name_(absl::StrCat("cpu-", kernels.name)) {}

  std::string_view Name() const override { return name_; }
  void Idle() override { pool_.Park(); }

  absl::Status Embedding(const WeightView& table, std::span<const int32_t> ids,
                         float* out) override {
    if (absl::Status s = ValidateEmbedding(table, ids); !s.ok()) return s;
    for (size_t t = 0; t < ids.size(); ++t) {
      k_.widen[WeightIndex(table)](table.Row(ids[t]).data, table.cols,
                                   out + static_cast<int64_t>(t) * table.cols);
    }
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const float* x, int64_t num_rows, const WeightView& weight, float eps,
                       float* y) override;
  absl::Status Rope(float* x, std::span<const int32_t> positions, int32_t n_heads, int32_t head_dim,
                    float theta) override;
  absl::Status MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                      Accumulate accumulate) override;
  absl::Status SiluMul(const float* gate, const float* up, int64_t count, float* out) override;
  absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                       const PagedKvLayer& cache) override;
  absl::Status Attention(const AttentionParams& params) override;

  absl::Status RouteTopK(const RouteTopKParams& params) override { return RouteTopKHost(params); }
  absl::Status SampleTokens(const SampleTokensParams& params) override {
    return SampleTokensHost(params);
  }
  absl::Status BuildDispatch(const DispatchParams& params) override {
    return BuildDispatchHost(params);
  }
  absl::Status GroupedMatMul(const GroupedMatMulParams& params) override;
  absl::Status SiluMulPacked(const float* gate_up, int64_t rows, int64_t width,
                             float* out) override {
    return SiluMulPackedHost(gate_up, rows, width, out);
  }
  absl::Status CombineExperts(const CombineParams& params) override {
    return CombineExpertsHost(params);
  }

 private:
  void Gemv(const GemvArgs& args, const WeightView& w);
  void Gemm(const GemvArgs& args, const WeightView& w);
  void GemmRows(const GemvArgs& args, const WeightView& w, const float* xp, int64_t n0, int64_t n1);
  void GemmBlock(const float* xp, const float* wp, int64_t kc, int64_t mc, int64_t nc, float* c,
                 int64_t ldc, bool accumulate);
  void AttendHeads(const AttentionParams& p, const AttentionSequence& seq, int64_t i, int32_t h0,
                   int32_t heads);

  ThreadPool pool_;
  const SimdKernels& k_;
  std::string name_;
  std::vector<float> norm_weight_;   // RmsNorm's weight widened to f32
  std::vector<float> gemm_x_;        // Gemm's packed x
  std::vector<float> gemv_x_pairs_;  // Gemv's x arranged for the BF16 one-token path
  std::vector<float> group_x_;       // GroupedMatMul's gathered rows of one group
};

absl::Status CpuBackend::RmsNorm(const float* x, int64_t num_rows, const WeightView& weight,
                                 float eps, float* y) {
  const int64_t dim = weight.elements();
  if (num_rows < 0) return absl::InvalidArgumentError("RmsNorm: negative num_rows");
  if (num_rows == 0 || dim == 0) return absl::OkStatus();
  float* w = Scratch(norm_weight_, dim);
  k_.widen[WeightIndex(weight)](weight.data, dim, w);
  const int64_t grain = std::max<int64_t>(1, (16 << 10) / dim);
  pool_.ParallelFor(num_rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const double mean = static_cast<double>(k_.sum_squares(x + t * dim, dim)) / dim;
      const auto inv = static_cast<float>(1.0 / std::sqrt(mean + eps));
      k_.scale_mul(x + t * dim, inv, w, dim, y + t * dim);
    }
  });
  return absl::OkStatus();
}

// Rotates the heads of one row; cs holds (cos, sin) pairs for i < head_dim / 2.
void RotateRow(float* row, int32_t n_heads, int32_t head_dim, const float* cs) {
  const int32_t half = head_dim / 2;
  for (int32_t h = 0; h < n_heads; ++h) {
    float* a = row + static_cast<int64_t>(h) * head_dim;
    float* b = a + half;
    for (int32_t i = 0; i < half; ++i) {
      const float c = cs[2 * i], s = cs[2 * i + 1];
      const float ai = a[i], bi = b[i];
      a[i] = ai * c - bi * s;
      b[i] = ai * s + bi * c;
    }
  }
}

absl::Status CpuBackend::Rope(float* x, std::span<const int32_t> positions, int32_t n_heads,
                              int32_t head_dim, float theta) {
  if (head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Rope: head_dim ", head_dim, " is odd"));
  }
  const int32_t half = head_dim / 2;
  std::vector<double> freq(static_cast<size_t>(half));
  for (int32_t i = 0; i < half; ++i) {
    freq[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
  }
  const auto num_rows = static_cast<int64_t>(positions.size());
  pool_.ParallelFor(num_rows, 16, [&](int64_t begin, int64_t end) {
    float* cs = Scratch(tls_rope, 2 * half);
    for (int64_t t = begin; t < end; ++t) {
      for (int32_t i = 0; i < half; ++i) {
        const double angle = positions[t] * freq[i];  // double: exact enough at large positions
        cs[2 * i] = static_cast<float>(std::cos(angle));
        cs[2 * i + 1] = static_cast<float>(std::sin(angle));
      }
      RotateRow(x + t * n_heads * head_dim, n_heads, head_dim, cs);
    }
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                                Accumulate accumulate) {
  CMOE_RETURN_IF_ERROR(ValidateMatMul(x, num_rows, w, y));
  if (num_rows == 0 || w.rows == 0) return absl::OkStatus();
  const GemvArgs args{.x = x,
                      .ldx = w.cols,
                      .num_tokens = num_rows,
                      .w = w.data,
                      .in = w.cols,
                      .y = y,
                      .ldy = w.rows,
                      .accumulate = accumulate == Accumulate::kYes};
  if (w.cols == 0) {
    if (!args.accumulate) std::fill(y, y + num_rows * w.rows, 0.0f);
  } else if (num_rows <= kGemvMaxTokens) {
    Gemv(args, w);
  } else {
    Gemm(args, w);
  }
  return absl::OkStatus();
}

// One fast MatMul per group with tokens; rows are gathered first when row_index is set.
absl::Status CpuBackend::GroupedMatMul(const GroupedMatMulParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateGroupedMatMul(p));
  CMOE_RETURN_IF_ERROR(ValidateGroupOffsets(p));
  const int64_t in = p.w.cols;
  for (int32_t e = 0; e < p.w.groups; ++e) {
    const int64_t first = p.offsets[e];
    const int64_t rows = p.offsets[e + 1] - first;
    if (rows == 0) continue;
    const float* x = p.x + first * in;
    if (p.row_index != nullptr) {
      group_x_.resize(static_cast<size_t>(rows * in));
      for (int64_t r = 0; r < rows; ++r) {
        std::copy_n(p.x + static_cast<int64_t>(p.row_index[first + r]) * in, in,
                    group_x_.data() + r * in);
      }
      x = group_x_.data();
    }
    CMOE_RETURN_IF_ERROR(MatMul(x, rows, p.w.Group(e), p.y + first * p.w.rows, Accumulate::kNo));
  }
  return absl::OkStatus();
}

// Chunks of whole 16-row tiles, about 16 per thread and at least kMinBytesPerChunk of weights,
// each one contiguous stretch of W, claimed dynamically.
void CpuBackend::Gemv(const GemvArgs& args, const WeightView& w) {
  const int64_t row_bytes = w.cols * static_cast<int64_t>(DTypeSize(w.dtype));
  const int64_t chunk_bytes =
      std::max(w.rows * row_bytes / (16 * pool_.num_threads()), kMinBytesPerChunk);
  const int64_t rows = std::max<int64_t>(16, (chunk_bytes / row_bytes + 15) / 16 * 16);
  const GemvFn gemv = k_.gemv[WeightIndex(w)];
  GemvArgs a = args;
  if (w.dtype == DType::kBF16 && a.num_tokens == 1 && k_.pair_x != nullptr) {
    k_.pair_x(a.x, a.in, Scratch(gemv_x_pairs_, a.in));
    a.x_pairs = gemv_x_pairs_.data();
  }
  ForEachChunk(pool_, (w.rows + rows - 1) / rows,
               [&](int64_t c) { gemv(a, c * rows, std::min(w.rows, (c + 1) * rows)); });
}

// x is packed once for the whole call (shared by the threads); then blocks of kNc output rows are
// claimed dynamically, each packing its slice of W per kKc block.
void CpuBackend::Gemm(const GemvArgs& a, const WeightView& w) {
  const int64_t mr = k_.gemm_mr;
  const int64_t token_panels = (a.num_tokens + mr - 1) / mr;
  const int64_t padded = token_panels * mr;
  float* xp = Scratch(gemm_x_, padded * a.in);
  pool_.ParallelFor(token_panels, 4, [&](int64_t p0, int64_t p1) {
    const int64_t tokens = std::min(a.num_tokens, p1 * mr) - p0 * mr;
    for (int64_t k0 = 0; k0 < a.in; k0 += kKc) {
      const int64_t kc = std::min(kKc, a.in - k0);
      k_.pack_x(a.x + p0 * mr * a.ldx + k0, a.ldx, tokens, kc, xp + padded * k0 + p0 * kc * mr);
    }
  });
  ForEachChunk(pool_, (w.rows + kNc - 1) / kNc,
               [&](int64_t c) { GemmRows(a, w, xp, c * kNc, std::min(w.rows, (c + 1) * kNc)); });
}

// Output rows [n0, n1), at most kNc of them, for every token; xp as packed by Gemm.
void CpuBackend::GemmRows(const GemvArgs& a, const WeightView& w, const float* xp, int64_t n0,
                          int64_t n1) {
  const int64_t mr = k_.gemm_mr;
  const int64_t padded = (a.num_tokens + mr - 1) / mr * mr;
  float* wp = Scratch(tls_pack_w, kNc * kKc);
  for (int64_t k0 = 0; k0 < a.in; k0 += kKc) {
    const int64_t kc = std::min(kKc, a.in - k0);
    k_.pack_w[WeightIndex(w)](a.w, a.in, n0, n1 - n0, k0, kc, wp);
    const bool accumulate = a.accumulate || k0 > 0;
    for (int64_t m0 = 0; m0 < a.num_tokens; m0 += kMc) {
      GemmBlock(xp + padded * k0 + m0 * kc, wp, kc, std::min(kMc, a.num_tokens - m0), n1 - n0,
                a.y + m0 * a.ldy + n0, a.ldy, accumulate);
    }
  }
}

// Every micro-tile of one packed (mc x kc) x (kc x nc) block; edge tiles go through a scratch
// tile so that the micro-kernel always runs full size.
void CpuBackend::GemmBlock(const float* xp, const float* wp, int64_t kc, int64_t mc, int64_t nc,
                           float* c, int64_t ldc, bool accumulate) {
  const int64_t mr = k_.gemm_mr, nr = k_.gemm_nr;
  float* tile = Scratch(tls_tile, mr * nr);
  for (int64_t j = 0; j < nc; j += nr) {
    const float* wpanel = wp + (j / nr) * kc * nr;
    for (int64_t i = 0; i < mc; i += mr) {
      const float* xpanel = xp + (i / mr) * kc * mr;
      float* ct = c + i * ldc + j;
      if (i + mr <= mc && j + nr <= nc) {
        k_.gemm_kernel(kc, xpanel, wpanel, ct, ldc, accumulate);
        continue;
      }
      k_.gemm_kernel(kc, xpanel, wpanel, tile, nr, false);
      for (int64_t ii = 0; ii < std::min(mr, mc - i); ++ii) {
        for (int64_t jj = 0; jj < std::min(nr, nc - j); ++jj) {
          float& dst = ct[ii * ldc + jj];
          dst = accumulate ? dst + tile[ii * nr + jj] : tile[ii * nr + jj];
        }
      }
    }
  }
}

absl::Status CpuBackend::SiluMul(const float* gate, const float* up, int64_t count, float* out) {
  if (count < 0) return absl::InvalidArgumentError("SiluMul: negative count");
  pool_.ParallelFor(count, 32 << 10, [&](int64_t begin, int64_t end) {
    k_.silu_mul(gate + begin, up + begin, end - begin, out + begin);
  });
  return absl::OkStatus();
}

absl::Status CpuBackend::KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                                 const PagedKvLayer& cache) {
  CMOE_RETURN_IF_ERROR(ValidateKvCacheDType("KvWrite", cache));
  const int64_t width = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
  const int64_t num_slots = cache.num_blocks * cache.block_size;
  for (size_t t = 0; t < slots.size(); ++t) {
    if (slots[t] < 0 || slots[t] >= num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("KvWrite: slot ", slots[t], " outside the cache of ", num_slots));
    }
  }
  for (size_t t = 0; t < slots.size(); ++t) {
    const float* src_k = k + static_cast<int64_t>(t) * width;
    const float* src_v = v + static_cast<int64_t>(t) * width;
    if (cache.dtype == DType::kBF16) {
      auto* dst_k = static_cast<uint16_t*>(cache.k) + slots[t] * width;
      auto* dst_v = static_cast<uint16_t*>(cache.v) + slots[t] * width;
      for (int64_t i = 0; i < width; ++i) {
        dst_k[i] = FloatToBf16(src_k[i]);
        dst_v[i] = FloatToBf16(src_v[i]);
      }
    } else {
      const auto bytes = static_cast<size_t>(width) * sizeof(float);
      std::memcpy(static_cast<float*>(cache.k) + slots[t] * width, src_k, bytes);
      std::memcpy(static_cast<float*>(cache.v) + slots[t] * width, src_v, bytes);
    }
  }
  return absl::OkStatus();
}

// Query heads [h0, h0 + heads) of token i of `seq`, all reading the same kv head.
void CpuBackend::AttendHeads(const AttentionParams& p, const AttentionSequence& seq, int64_t i,
                             int32_t h0, int32_t heads) {
  const PagedKvLayer& c = p.cache;
  const int64_t hd = c.head_dim;
  const int64_t kv_head = h0 / (p.n_heads / c.n_kv_heads);
  const int64_t row = seq.first_row + i;
  const int64_t positions = seq.context_len - seq.num_tokens + i + 1;
  const float* k = nullptr;
  const float* v = nullptr;
  int64_t slot_stride = c.n_kv_heads * hd;
  const int32_t* block_table = seq.block_table.data();
  int32_t block_size = c.block_size;
  static constexpr int32_t kOneBlock[1] = {0};
  if (c.dtype == DType::kBF16) {
    // The kv head's keys and values for these positions, widened into one contiguous block.
    float* wk = Scratch(tls_kv, 2 * positions * hd);
    float* wv = wk + positions * hd;
    const WidenFn widen = k_.widen[kWeightBf16];
    for (int64_t j = 0; j < positions; ++j) {
      const int64_t slot =
          static_cast<int64_t>(block_table[j / block_size]) * block_size + j % block_size;
      const int64_t at = (slot * c.n_kv_heads + kv_head) * hd;
      widen(static_cast<const uint16_t*>(c.k) + at, hd, wk + j * hd);
      widen(static_cast<const uint16_t*>(c.v) + at, hd, wv + j * hd);
    }
    k = wk;
    v = wv;
    slot_stride = hd;
    block_table = kOneBlock;
    block_size = static_cast<int32_t>(positions);
  } else {
    k = static_cast<const float*>(c.k) + kv_head * hd;
    v = static_cast<const float*>(c.v) + kv_head * hd;
  }
  k_.attend({.q = p.q + (row * p.n_heads + h0) * hd,
             .k = k,
             .v = v,
             .slot_stride = slot_stride,
             .block_table = block_table,
             .block_size = block_size,
             .num_positions = positions,
             .num_heads = heads,
             .head_dim = c.head_dim,
             .scale = p.scale,
             .scores = Scratch(tls_scores, heads * positions),
             .out = p.out + (row * p.n_heads + h0) * hd});
}

// Heads per work item: a whole GQA group (so each key and value is read once per group), split
// while there are fewer than two items per thread, and never more than kMaxAttendHeads.
int32_t HeadsPerItem(int64_t rows, int32_t n_heads, int32_t n_kv_heads, int threads) {
  int32_t heads = n_heads / n_kv_heads;
  const auto halve_ok = [&] {
    return heads % 2 == 0 && (heads > kMaxAttendHeads ||
                              rows * (n_heads / heads) < 2 * static_cast<int64_t>(threads));
  };
  while (halve_ok()) heads /= 2;
  while (heads > kMaxAttendHeads) heads = (heads % 3 == 0) ? heads / 3 : 1;
  return heads;
}

// Work items are (query row, group of heads), dealt round-robin to the threads: causal rows differ
// in length, and dealing them out keeps the threads' shares even.
absl::Status CpuBackend::Attention(const AttentionParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateAttention(p));
  std::vector<std::pair<int32_t, int64_t>> rows;  // (sequence, token within it)
  for (size_t s = 0; s < p.sequences.size(); ++s) {
    for (int64_t i = 0; i < p.sequences[s].num_tokens; ++i) {
      rows.emplace_back(static_cast<int32_t>(s), i);
    }
  }
  const int32_t heads = HeadsPerItem(static_cast<int64_t>(rows.size()), p.n_heads,
                                     p.cache.n_kv_heads, pool_.num_threads());
  const int64_t groups = p.n_heads / heads;
  const int64_t items = static_cast<int64_t>(rows.size()) * groups;
  const int64_t stride = std::min<int64_t>(pool_.num_threads(), items);
  pool_.ParallelFor(stride, 1, [&](int64_t begin, int64_t end) {
    for (int64_t first = begin; first < end; ++first) {
      for (int64_t item = first; item < items; item += stride) {
        const auto& [s, i] = rows[item / groups];
        AttendHeads(p, p.sequences[s], i, static_cast<int32_t>(item % groups) * heads, heads);
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace

SimdLevel DetectSimdLevel() {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512dq");
  return avx512 ? SimdLevel::kAvx512 : avx2 ? SimdLevel::kAvx2 : SimdLevel::kScalar;
}

std::string_view SimdLevelName(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAuto:
      return "auto";
    case SimdLevel::kScalar:
      return "scalar";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kAvx512:
      return "avx512";
  }
  return "unknown";
}

const SimdKernels* KernelsFor(SimdLevel level) {
  const SimdLevel best = DetectSimdLevel();
  if (level == SimdLevel::kAuto) level = best;
  if (static_cast<int>(level) > static_cast<int>(best)) return nullptr;
  switch (level) {
    case SimdLevel::kAvx512:
      return &Avx512Kernels();
    case SimdLevel::kAvx2:
      return &Avx2Kernels();
    default:
      return &ScalarKernels();
  }
}

absl::StatusOr<std::unique_ptr<Backend>> MakeCpuBackend(const CpuBackendOptions& options) {
  const SimdKernels* kernels = KernelsFor(options.simd);
  if (kernels == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "MakeCpuBackend: this CPU does not support ", std::string(SimdLevelName(options.simd)),
        " (best: ", std::string(SimdLevelName(DetectSimdLevel())), ")"));
  }
  const int threads = options.threads > 0 ? options.threads : ThreadPool::HardwareThreads();
  return std::make_unique<CpuBackend>(threads, *kernels);
}

}  // namespace cmoe::kernels::cpu
