#include "tests/engine/reference_forward.h"

#include <cmath>

namespace cmoe::testing {
namespace {

using Matrix = std::vector<std::vector<double>>;  // (rows, cols)

Matrix Linear(const Matrix& x, const kernels::WeightView& w) {
  Matrix y(x.size(), std::vector<double>(static_cast<size_t>(w.rows), 0.0));
  for (int64_t o = 0; o < w.rows; ++o) {
    for (int64_t i = 0; i < w.cols; ++i) {
      const double wv = w.At(o, i);
      for (size_t t = 0; t < x.size(); ++t) y[t][o] += x[t][i] * wv;
    }
  }
  return y;
}

Matrix RmsNorm(const Matrix& x, const kernels::WeightView& w, double eps) {
  Matrix y = x;
  for (auto& row : y) {
    double ss = 0.0;
    for (double v : row) ss += v * v;
    const double inv = 1.0 / std::sqrt(ss / static_cast<double>(row.size()) + eps);
    for (size_t i = 0; i < row.size(); ++i) row[i] *= inv * w.At(0, static_cast<int64_t>(i));
  }
  return y;
}

void RotateHalf(Matrix& x, int64_t heads, int64_t hd, double theta) {
  for (size_t t = 0; t < x.size(); ++t) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < hd / 2; ++i) {
        const double angle = static_cast<double>(t) * std::pow(theta, -2.0 * i / hd);
        double& a = x[t][h * hd + i];
        double& b = x[t][h * hd + i + hd / 2];
        const double a0 = a, b0 = b;
        a = a0 * std::cos(angle) - b0 * std::sin(angle);
        b = a0 * std::sin(angle) + b0 * std::cos(angle);
      }
    }
  }
}

Matrix Attention(const Matrix& q, const Matrix& k, const Matrix& v, const engine::ModelConfig& c) {
  const int64_t hd = c.head_dim, group = c.num_attention_heads / c.num_key_value_heads;
  Matrix out(q.size(), std::vector<double>(q[0].size(), 0.0));
  for (size_t t = 0; t < q.size(); ++t) {
    for (int64_t h = 0; h < c.num_attention_heads; ++h) {
      const int64_t kvh = h / group;
      std::vector<double> p(t + 1);
      double max_s = -1e300, total = 0.0;
      for (size_t j = 0; j <= t; ++j) {
        double s = 0.0;
        for (int64_t d = 0; d < hd; ++d) s += q[t][h * hd + d] * k[j][kvh * hd + d];
        p[j] = s / std::sqrt(static_cast<double>(hd));
        max_s = std::max(max_s, p[j]);
      }
      for (double& s : p) total += (s = std::exp(s - max_s));
      for (size_t j = 0; j <= t; ++j) {
        for (int64_t d = 0; d < hd; ++d) out[t][h * hd + d] += p[j] / total * v[j][kvh * hd + d];
      }
    }
  }
  return out;
}

void AddInto(Matrix& x, const Matrix& y) {
  for (size_t t = 0; t < x.size(); ++t) {
    for (size_t i = 0; i < x[t].size(); ++i) x[t][i] += y[t][i];
  }
}

}  // namespace

std::vector<std::vector<double>> ReferenceForward(const engine::ModelConfig& c,
                                                  const engine::ModelWeights& w,
                                                  std::span<const int32_t> tokens) {
  Matrix x;
  for (int32_t id : tokens) {
    std::vector<double> row(static_cast<size_t>(c.hidden_size));
    for (int64_t i = 0; i < c.hidden_size; ++i) row[i] = w.embed.At(id, i);
    x.push_back(std::move(row));
  }
  for (const engine::LayerWeights& l : w.layers) {
    const Matrix h = RmsNorm(x, l.attn_norm, c.rms_norm_eps);
    Matrix q = Linear(h, l.wq), k = Linear(h, l.wk);
    RotateHalf(q, c.num_attention_heads, c.head_dim, c.rope_theta);
    RotateHalf(k, c.num_key_value_heads, c.head_dim, c.rope_theta);
    AddInto(x, Linear(Attention(q, k, Linear(h, l.wv), c), l.wo));
    const Matrix f = RmsNorm(x, l.ffn_norm, c.rms_norm_eps);
    Matrix g = Linear(f, l.w_gate);
    const Matrix u = Linear(f, l.w_up);
    for (size_t t = 0; t < g.size(); ++t) {
      for (size_t i = 0; i < g[t].size(); ++i)
        g[t][i] = g[t][i] / (1.0 + std::exp(-g[t][i])) * u[t][i];
    }
    AddInto(x, Linear(g, l.w_down));
  }
  return Linear(RmsNorm(x, w.final_norm, c.rms_norm_eps), w.lm_head);
}

}  // namespace cmoe::testing
