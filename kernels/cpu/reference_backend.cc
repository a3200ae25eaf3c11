#include "kernels/cpu/reference_backend.h"

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "kernels/cpu/moe_ops_host.h"
#include "kernels/cpu/sampling_host.h"

namespace cmoe::kernels::cpu {
namespace {

class ReferenceBackend final : public Backend {
 public:
  std::string_view Name() const override { return "reference"; }

  absl::Status RouteTopK(const RouteTopKParams& params) override { return RouteTopKHost(params); }
  absl::Status SampleTokens(const SampleTokensParams& params) override {
    return SampleTokensHost(params);
  }
  absl::Status BuildDispatch(const DispatchParams& params) override {
    return BuildDispatchHost(params);
  }
  absl::Status GroupedMatMul(const GroupedMatMulParams& params) override {
    return GroupedMatMulHost(params);
  }
  absl::Status SiluMulPacked(const float* gate_up, int64_t rows, int64_t width,
                             float* out) override {
    return SiluMulPackedHost(gate_up, rows, width, out);
  }
  absl::Status CombineExperts(const CombineParams& params) override {
    return CombineExpertsHost(params);
  }

  absl::Status Embedding(const WeightView& table, std::span<const int32_t> ids,
                         float* out) override {
    if (absl::Status s = ValidateEmbedding(table, ids); !s.ok()) return s;
    for (size_t t = 0; t < ids.size(); ++t) {
      for (int64_t c = 0; c < table.cols; ++c) out[t * table.cols + c] = table.At(ids[t], c);
    }
    return absl::OkStatus();
  }

  absl::Status RmsNorm(const float* x, int64_t num_rows, const WeightView& weight, float eps,
                       float* y) override {
    const int64_t dim = weight.elements();
    for (int64_t t = 0; t < num_rows; ++t) {
      double sum = 0.0;
      for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(x[t * dim + i]) * x[t * dim + i];
      const double inv = 1.0 / std::sqrt(sum / static_cast<double>(dim) + eps);
      for (int64_t i = 0; i < dim; ++i) {
        y[t * dim + i] = static_cast<float>(x[t * dim + i] * inv * weight.At(0, i));
      }
    }
    return absl::OkStatus();
  }

  absl::Status Rope(float* x, std::span<const int32_t> positions, int32_t n_heads, int32_t head_dim,
                    float theta) override {
    if (head_dim % 2 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("Rope: head_dim ", head_dim, " is odd"));
    }
    const int32_t half = head_dim / 2;
    for (size_t t = 0; t < positions.size(); ++t) {
      for (int32_t h = 0; h < n_heads; ++h) {
        float* row = x + (static_cast<int64_t>(t) * n_heads + h) * head_dim;
        for (int32_t i = 0; i < half; ++i) {
          const double freq = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
          const double angle = positions[t] * freq;
          const double c = std::cos(angle), s = std::sin(angle);
          const double a = row[i], b = row[i + half];
          row[i] = static_cast<float>(a * c - b * s);
          row[i + half] = static_cast<float>(a * s + b * c);
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                      Accumulate accumulate) override {
    std::vector<float> row(static_cast<size_t>(w.cols));
    for (int64_t o = 0; o < w.rows; ++o) {
      WidenToFloat(w, o * w.cols, w.cols, row.data());
      for (int64_t t = 0; t < num_rows; ++t) {
        double sum = accumulate == Accumulate::kYes ? y[t * w.rows + o] : 0.0;
        for (int64_t i = 0; i < w.cols; ++i) sum += static_cast<double>(x[t * w.cols + i]) * row[i];
        y[t * w.rows + o] = static_cast<float>(sum);
      }
    }
    return absl::OkStatus();
  }

  absl::Status SiluMul(const float* gate, const float* up, int64_t count, float* out) override {
    for (int64_t i = 0; i < count; ++i) {
      const double g = gate[i];
      out[i] = static_cast<float>(g / (1.0 + std::exp(-g)) * up[i]);
    }
    return absl::OkStatus();
  }

  absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                       const PagedKvLayer& cache) override {
    if (absl::Status s = ValidateKvCacheDType("KvWrite", cache); !s.ok()) return s;
    const int64_t width = static_cast<int64_t>(cache.n_kv_heads) * cache.head_dim;
    const int64_t num_slots = cache.num_blocks * cache.block_size;
    for (size_t t = 0; t < slots.size(); ++t) {
      if (slots[t] < 0 || slots[t] >= num_slots) {
        return absl::InvalidArgumentError(
            absl::StrCat("KvWrite: slot ", slots[t], " outside the cache of ", num_slots));
      }
    }
    for (size_t t = 0; t < slots.size(); ++t) {
      for (int64_t i = 0; i < width; ++i) {
        const int64_t src = static_cast<int64_t>(t) * width + i;
        const int64_t dst = slots[t] * width + i;
        if (cache.dtype == DType::kBF16) {
          static_cast<uint16_t*>(cache.k)[dst] = FloatToBf16(k[src]);
          static_cast<uint16_t*>(cache.v)[dst] = FloatToBf16(v[src]);
        } else {
          static_cast<float*>(cache.k)[dst] = k[src];
          static_cast<float*>(cache.v)[dst] = v[src];
        }
      }
    }
    return absl::OkStatus();
  }

  absl::Status Attention(const AttentionParams& p) override {
    if (absl::Status s = ValidateAttention(p); !s.ok()) return s;
    for (const AttentionSequence& seq : p.sequences) {
      for (int64_t i = 0; i < seq.num_tokens; ++i) {
        for (int32_t h = 0; h < p.n_heads; ++h) AttendOne(p, seq, i, h);
      }
    }
    return absl::OkStatus();
  }

 private:
  // Element `index` of a cache tensor, widened to float.
  static float CacheAt(const PagedKvLayer& c, const void* data, int64_t index) {
    return c.dtype == DType::kBF16 ? Bf16ToFloat(static_cast<const uint16_t*>(data)[index])
                                   : static_cast<const float*>(data)[index];
  }

  static void AttendOne(const AttentionParams& p, const AttentionSequence& seq, int64_t i,
                        int32_t h) {
    const PagedKvLayer& c = p.cache;
    const int64_t hd = c.head_dim;
    const int32_t kv_head = h / (p.n_heads / c.n_kv_heads);
    const int64_t row = seq.first_row + i;
    const int64_t pos = seq.context_len - seq.num_tokens + i;
    const float* q = p.q + (row * p.n_heads + h) * hd;
    std::vector<double> scores(static_cast<size_t>(pos + 1));
    double max_score = -INFINITY;
    for (int64_t j = 0; j <= pos; ++j) {
      const int64_t slot = seq.block_table[j / c.block_size] * c.block_size + j % c.block_size;
      const int64_t k = (slot * c.n_kv_heads + kv_head) * hd;
      double dot = 0.0;
      for (int64_t d = 0; d < hd; ++d) dot += static_cast<double>(q[d]) * CacheAt(c, c.k, k + d);
      scores[j] = dot * p.scale;
      max_score = std::max(max_score, scores[j]);
    }
    double total = 0.0;
    for (double& s : scores) total += (s = std::exp(s - max_score));
    std::vector<double> acc(static_cast<size_t>(hd), 0.0);
    for (int64_t j = 0; j <= pos; ++j) {
      const int64_t slot = seq.block_table[j / c.block_size] * c.block_size + j % c.block_size;
      const int64_t v = (slot * c.n_kv_heads + kv_head) * hd;
      for (int64_t d = 0; d < hd; ++d) acc[d] += scores[j] / total * CacheAt(c, c.v, v + d);
    }
    float* out = p.out + (row * p.n_heads + h) * hd;
    for (int64_t d = 0; d < hd; ++d) out[d] = static_cast<float>(acc[d]);
  }
};

}  // namespace

std::unique_ptr<Backend> MakeReferenceBackend() { return std::make_unique<ReferenceBackend>(); }

}  // namespace cmoe::kernels::cpu
