// The device-style MoE pipeline of kernels/moe_ops.h, run through the kernels::Backend interface
// on the reference and the fast CPU backends, against the engine's CPU MoE forward
// (engine/moe_layer.h MoeLayer::Forward on the reference backend), which is the ground truth:
//
//   MatMul(h, router (2E, d)) -> RouteTopK -> BuildDispatch -> GroupedMatMul(h[slot_token],
//   gate_up (E, 2m, d)) -> SiluMulPacked -> GroupedMatMul(act, down (E, d, m)) -> CombineExperts,
//   the shared expert as MatMul(gate_up (2m_s, d)) -> SiluMulPacked -> MatMul(down, accumulate).
//
// Layers are random carved layers: d 24 or 64, 4 to 16 routed experts whose widths differ by at
// most one (e.g. 70 neurons over 8 experts: six of 9 and two of 8, shuffled), width-1 experts, a
// shared expert of width 0 or more, F32/F16/BF16 weights, with and without bias and scale, both
// routers (|up * silu(gate)| and the paper's signed score), k from 1 to E.
//
// Tolerance (kLayerTolerance): per element |got - want| <= 1e-5 + 1e-4 |want| and NMSE <= 1e-12.
// Both sides read the same weights bit for bit and differ only in f32 rounding: the engine rounds
// gate, up, silu*up and each expert's output to f32 and adds w * out into x expert by expert in
// f32; the pipeline rounds the fused gate_up, the activation and the expert output to f32 and
// combines the k slots of a token in double, once. The fast backend also accumulates its dot
// products in f32. Activations are O(1) (weights scaled by 1/sqrt(fan-in); |x| reaches about 16),
// so these are a few f32 ulps: when written, the largest |got - want| was 9.5e-7 on the reference
// backend and 4.3e-6 on the fast one (AVX-512), the largest NMSE 6e-14; the bounds leave more than
// a factor of ten.
//
// Routing: the engine scores in double from h and the f32 router (RouterScores), the pipeline
// from f32 logits (MatMul), so a token whose k-th and (k+1)-th keys p + b are within a rounding
// of each other could pick different experts. Tokens are drawn so that this gap is at least
// kMinKeyGap = 1e-4 on the engine's keys (the two keys differ by ~1e-7), and the routing is then
// checked to agree exactly (tokens per expert).
//
// Also: padding is exact (an expert computed from its unpadded (2m_e, d) and (d, m_e) blocks, and
// a layer padded wider than its widest expert, give bit-identical results on the reference
// backend); RouteTopK and BuildDispatch equal the engine's RouteTokens and BuildDispatchPlan on
// the same scores; BuildDispatch rejects bad ids and duplicates, and GroupedMatMul bad offsets,
// with InvalidArgument and nothing written (sentinels).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "common/logging.h"
#include "common/status.h"
#include "engine/model_weights.h"
#include "engine/moe_dispatch.h"
#include "engine/moe_layer.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/reference_backend.h"

namespace cmoe::engine {
namespace {

using kernels::Accumulate;
using kernels::Backend;
using kernels::Buffer;
using kernels::DType;
using kernels::GroupedWeightView;

constexpr double kMinKeyGap = 1e-4;

struct Tolerance {
  double atol, rtol, max_nmse;
};
constexpr Tolerance kLayerTolerance{.atol = 1e-5, .rtol = 1e-4, .max_nmse = 1e-12};

// --- Backends: both CPU backends, made once. ---

Backend& Reference() {
  static Backend* const backend = kernels::cpu::MakeReferenceBackend().release();
  return *backend;
}

Backend& FastCpu() {
  static Backend* const backend = [] {
    absl::StatusOr<std::unique_ptr<Backend>> b = kernels::cpu::MakeCpuBackend({.threads = 2});
    CMOE_CHECK(b.ok()) << b.status();
    return std::move(b).value().release();
  }();
  return *backend;
}

// --- Owned weights ---

// A row-major (rows, cols) matrix stored in `dtype`.
struct Matrix {
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;  // zero-filled: 0.0 in every dtype

  Matrix() = default;
  Matrix(DType type, int64_t r, int64_t c)
      : dtype(type), rows(r), cols(c), bytes(static_cast<size_t>(r * c) * ElemSize()) {}
  size_t ElemSize() const { return kernels::DTypeSize(dtype); }
  uint8_t* Row(int64_t r) { return bytes.data() + r * cols * ElemSize(); }
  const uint8_t* Row(int64_t r) const { return bytes.data() + r * cols * ElemSize(); }
  kernels::WeightView View() const {
    return {.data = bytes.data(), .dtype = dtype, .rows = rows, .cols = cols};
  }
};

void Store(Matrix& m, int64_t i, float f) {
  uint8_t* p = m.bytes.data() + i * m.ElemSize();
  if (m.dtype == DType::kF32) {
    std::memcpy(p, &f, 4);
    return;
  }
  const uint16_t h = m.dtype == DType::kBF16 ? FloatToBf16(f) : FloatToF16(f);
  std::memcpy(p, &h, 2);
}

// N(0, 1 / fan_in) entries (activations stay O(1)), rounded to `dtype`.
Matrix RandomMatrix(std::mt19937& rng, int64_t rows, int64_t cols, DType dtype) {
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(cols)));
  Matrix m(dtype, rows, cols);
  for (int64_t i = 0; i < rows * cols; ++i) Store(m, i, normal(rng));
  return m;
}

struct OwnedExpert {
  Matrix gate, up, down;  // (m, d), (m, d), (d, m)
  ExpertWeights View() const { return {.gate = gate.View(), .up = up.View(), .down = down.View()}; }
};

OwnedExpert RandomExpert(std::mt19937& rng, int64_t width, int64_t dim, DType dtype) {
  return {.gate = RandomMatrix(rng, width, dim, dtype),
          .up = RandomMatrix(rng, width, dim, dtype),
          .down = RandomMatrix(rng, dim, width, dtype)};
}

struct Shape {
  int64_t dim;
  int32_t num_experts;
  int64_t routed_width;  // total over the routed experts, split as evenly as possible
  int64_t shared_width;  // 0: no shared expert
  int32_t k;
  int64_t num_tokens;
};

struct LayerSpec {
  Shape shape;
  DType dtype = DType::kF32;
  bool bias = false;
  bool scale = false;
  RouterVariant variant = RouterVariant::kReference;
};

// A carved layer and the engine's view of it.
struct CarvedLayer {
  int64_t dim = 0;
  OwnedExpert shared;  // empty matrices for width 0
  std::vector<OwnedExpert> experts;
  MoeLayerWeights weights;

  int32_t NumExperts() const { return static_cast<int32_t>(experts.size()); }
  int64_t Width(int32_t e) const { return experts[e].gate.rows; }
  int64_t MaxWidth() const {
    int64_t m = 0;
    for (int32_t e = 0; e < NumExperts(); ++e) m = std::max(m, Width(e));
    return m;
  }
};

std::unique_ptr<CarvedLayer> MakeLayer(const LayerSpec& spec, std::mt19937& rng) {
  const Shape& s = spec.shape;
  auto layer = std::make_unique<CarvedLayer>();
  layer->dim = s.dim;
  std::vector<int64_t> widths;
  widths.reserve(s.num_experts);
  for (int32_t e = 0; e < s.num_experts; ++e) {
    widths.push_back(s.routed_width / s.num_experts + (e < s.routed_width % s.num_experts));
  }
  std::shuffle(widths.begin(), widths.end(), rng);  // the narrow ones anywhere
  if (s.shared_width > 0) layer->shared = RandomExpert(rng, s.shared_width, s.dim, spec.dtype);
  for (int64_t w : widths) layer->experts.push_back(RandomExpert(rng, w, s.dim, spec.dtype));
  MoeLayerWeights& mw = layer->weights;
  mw.shared = layer->shared.View();
  for (const OwnedExpert& e : layer->experts) mw.experts.push_back(e.View());
  std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(static_cast<float>(s.dim)));
  for (int64_t i = 0; i < s.num_experts * s.dim; ++i) {
    mw.router_gate.push_back(normal(rng));
    mw.router_up.push_back(normal(rng));
  }
  std::uniform_real_distribution<float> bias(-0.02f, 0.02f), scale(0.5f, 2.0f);
  for (int32_t e = 0; spec.bias && e < s.num_experts; ++e) mw.bias.push_back(bias(rng));
  for (int32_t e = 0; spec.scale && e < s.num_experts; ++e) mw.scale.push_back(scale(rng));
  mw.variant = spec.variant;
  return layer;
}

// --- The layout the pipeline reads ---

// Expert e's gate rows are rows [e * 2m, e * 2m + m_e) of gate_up and its up rows
// [e * 2m + m, e * 2m + m + m_e); its down is block e of `down` with columns [0, m_e). Every other
// element is zero. m >= the widest expert (wider only to test that padding is exact).
struct PipelineLayout {
  int64_t m = 0;
  Matrix router;          // (2E, d) F32: Wr_gate rows, then Wr_up rows
  Matrix gate_up;         // (E * 2m, d)
  Matrix down;            // (E * d, m)
  Matrix shared_gate_up;  // (2 m_s, d); no rows when m_s = 0
};

void CopyRows(const Matrix& from, Matrix& to, int64_t first_row) {
  std::memcpy(to.Row(first_row), from.bytes.data(), from.bytes.size());
}

// from (d, m_e) into rows [first_row, first_row + d) of `to` (cols m >= m_e), left-aligned.
void CopyColumns(const Matrix& from, Matrix& to, int64_t first_row) {
  for (int64_t r = 0; r < from.rows; ++r) {
    std::memcpy(to.Row(first_row + r), from.Row(r), from.cols * from.ElemSize());
  }
}

PipelineLayout LayOut(const CarvedLayer& layer, int64_t m) {
  const int64_t n = layer.NumExperts();
  const int64_t d = layer.dim;
  const DType dtype = layer.experts[0].gate.dtype;
  PipelineLayout lay{.m = m,
                     .router = Matrix(DType::kF32, 2 * n, d),
                     .gate_up = Matrix(dtype, n * 2 * m, d),
                     .down = Matrix(dtype, n * d, m)};
  const std::vector<float>& rg = layer.weights.router_gate;
  const std::vector<float>& ru = layer.weights.router_up;
  std::memcpy(lay.router.Row(0), rg.data(), rg.size() * sizeof(float));
  std::memcpy(lay.router.Row(n), ru.data(), ru.size() * sizeof(float));
  for (int64_t e = 0; e < n; ++e) {
    CopyRows(layer.experts[e].gate, lay.gate_up, e * 2 * m);
    CopyRows(layer.experts[e].up, lay.gate_up, e * 2 * m + m);
    CopyColumns(layer.experts[e].down, lay.down, e * d);
  }
  const int64_t ms = layer.shared.gate.rows;
  lay.shared_gate_up = Matrix(dtype, 2 * ms, d);
  if (ms > 0) {
    CopyRows(layer.shared.gate, lay.shared_gate_up, 0);
    CopyRows(layer.shared.up, lay.shared_gate_up, ms);
  }
  return lay;
}

// --- Running the pipeline through a Backend ---

// Backend memory owned for one run (host memory for the CPU backends; the same code would run on
// a device backend).
class Arena {
 public:
  explicit Arena(Backend& backend) : backend_(backend) {}

  template <class T>
  absl::StatusOr<T*> Alloc(int64_t n) {
    CMOE_ASSIGN_OR_RETURN(Buffer b, backend_.Allocate(n * static_cast<int64_t>(sizeof(T))));
    buffers_.push_back(std::move(b));
    return buffers_.back().as<T>();
  }
  template <class T>
  absl::StatusOr<T*> Upload(std::span<const T> host) {
    CMOE_ASSIGN_OR_RETURN(T * data, Alloc<T>(static_cast<int64_t>(host.size())));
    CMOE_RETURN_IF_ERROR(backend_.CopyToBackend(data, host.data(), host.size_bytes()));
    return data;
  }
  template <class T>
  absl::StatusOr<std::vector<T>> Download(const T* data, int64_t n) {
    std::vector<T> host(static_cast<size_t>(n));
    CMOE_RETURN_IF_ERROR(backend_.CopyToHost(host.data(), data, n * sizeof(T)));
    return host;
  }

 private:
  Backend& backend_;
  std::vector<Buffer> buffers_;
};

// One step's inputs (host).
struct Step {
  int64_t num_tokens = 0;
  int32_t k = 0;
  std::vector<float> h;  // (T, d)
  std::vector<float> x;  // (T, d) residual before the layer
};

// What the pipeline produced, copied back to the host.
struct PipelineResult {
  std::vector<float> x;  // (T, d)
  std::vector<int32_t> selected, counts, offsets, slot_token, slot_source, token_slot;
  std::vector<float> route_w;     // (T, k)
  std::vector<float> expert_out;  // (P, d)
};

// The layer's weights in backend memory.
struct DeviceLayer {
  kernels::WeightView router, shared_gate_up, shared_down;
  GroupedWeightView gate_up, down;
  const float* bias = nullptr;
  const float* scale = nullptr;
};

absl::StatusOr<DeviceLayer> Upload(Backend& backend, Arena& arena, const CarvedLayer& layer,
                                   const PipelineLayout& lay) {
  const int32_t n = layer.NumExperts();
  DeviceLayer dev;
  CMOE_ASSIGN_OR_RETURN(dev.router, backend.UploadWeight(lay.router.View()));
  CMOE_ASSIGN_OR_RETURN(const kernels::WeightView gu, backend.UploadWeight(lay.gate_up.View()));
  CMOE_ASSIGN_OR_RETURN(const kernels::WeightView dn, backend.UploadWeight(lay.down.View()));
  dev.gate_up = {
      .data = gu.data, .dtype = gu.dtype, .groups = n, .rows = 2 * lay.m, .cols = layer.dim};
  dev.down = {.data = dn.data, .dtype = dn.dtype, .groups = n, .rows = layer.dim, .cols = lay.m};
  if (layer.shared.gate.rows > 0) {
    CMOE_ASSIGN_OR_RETURN(dev.shared_gate_up, backend.UploadWeight(lay.shared_gate_up.View()));
    CMOE_ASSIGN_OR_RETURN(dev.shared_down, backend.UploadWeight(layer.shared.down.View()));
  }
  if (!layer.weights.bias.empty()) {
    CMOE_ASSIGN_OR_RETURN(dev.bias, arena.Upload<float>(layer.weights.bias));
  }
  if (!layer.weights.scale.empty()) {
    CMOE_ASSIGN_OR_RETURN(dev.scale, arena.Upload<float>(layer.weights.scale));
  }
  return dev;
}

// Device arrays of one step. P = T * k.
struct StepArrays {
  float *h, *x, *logits, *route_w, *gate_up, *act, *expert_out, *shared_gate_up, *shared_act;
  int32_t *selected, *counts, *offsets, *slot_token, *slot_source, *token_slot;
};

absl::StatusOr<StepArrays> AllocStep(Arena& arena, const CarvedLayer& layer,
                                     const PipelineLayout& lay, const Step& step) {
  const int64_t t = step.num_tokens;
  const int64_t p = t * step.k;
  const int64_t d = layer.dim;
  const int64_t ms = layer.shared.gate.rows;
  const int32_t n = layer.NumExperts();
  StepArrays a{};
  CMOE_ASSIGN_OR_RETURN(a.h, arena.Upload<float>(step.h));
  CMOE_ASSIGN_OR_RETURN(a.x, arena.Upload<float>(step.x));
  CMOE_ASSIGN_OR_RETURN(a.logits, arena.Alloc<float>(t * 2 * n));
  CMOE_ASSIGN_OR_RETURN(a.route_w, arena.Alloc<float>(p));
  CMOE_ASSIGN_OR_RETURN(a.gate_up, arena.Alloc<float>(p * 2 * lay.m));
  CMOE_ASSIGN_OR_RETURN(a.act, arena.Alloc<float>(p * lay.m));
  CMOE_ASSIGN_OR_RETURN(a.expert_out, arena.Alloc<float>(p * d));
  CMOE_ASSIGN_OR_RETURN(a.shared_gate_up, arena.Alloc<float>(t * 2 * ms));
  CMOE_ASSIGN_OR_RETURN(a.shared_act, arena.Alloc<float>(t * ms));
  CMOE_ASSIGN_OR_RETURN(a.selected, arena.Alloc<int32_t>(p));
  CMOE_ASSIGN_OR_RETURN(a.counts, arena.Alloc<int32_t>(n));
  CMOE_ASSIGN_OR_RETURN(a.offsets, arena.Alloc<int32_t>(n + 1));
  CMOE_ASSIGN_OR_RETURN(a.slot_token, arena.Alloc<int32_t>(p));
  CMOE_ASSIGN_OR_RETURN(a.slot_source, arena.Alloc<int32_t>(p));
  CMOE_ASSIGN_OR_RETURN(a.token_slot, arena.Alloc<int32_t>(p));
  return a;
}

// Router, top-k, dispatch plan, the routed experts into expert_out.
absl::Status RunRouted(Backend& b, const CarvedLayer& layer, const DeviceLayer& dev,
                       const Step& step, const StepArrays& a) {
  const int32_t n = layer.NumExperts();
  const int64_t p = step.num_tokens * step.k;
  const int64_t m = dev.down.cols;
  CMOE_RETURN_IF_ERROR(b.MatMul(a.h, step.num_tokens, dev.router, a.logits, Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(b.RouteTopK({.logits = a.logits,
                                    .num_tokens = step.num_tokens,
                                    .num_experts = n,
                                    .num_activated = step.k,
                                    .abs_score = layer.weights.variant == RouterVariant::kReference,
                                    .bias = dev.bias,
                                    .scale = dev.scale,
                                    .selected = a.selected,
                                    .weights = a.route_w}));
  CMOE_RETURN_IF_ERROR(b.BuildDispatch({.selected = a.selected,
                                        .num_tokens = step.num_tokens,
                                        .k = step.k,
                                        .num_experts = n,
                                        .counts = a.counts,
                                        .offsets = a.offsets,
                                        .slot_token = a.slot_token,
                                        .slot_source = a.slot_source,
                                        .token_slot = a.token_slot}));
  CMOE_RETURN_IF_ERROR(b.GroupedMatMul({.x = a.h,
                                        .row_index = a.slot_token,
                                        .num_rows = p,
                                        .offsets = a.offsets,
                                        .w = dev.gate_up,
                                        .y = a.gate_up}));
  CMOE_RETURN_IF_ERROR(b.SiluMulPacked(a.gate_up, p, m, a.act));
  return b.GroupedMatMul(
      {.x = a.act, .num_rows = p, .offsets = a.offsets, .w = dev.down, .y = a.expert_out});
}

// x += Shared(h) (when m_s > 0), then x += sum_j w_j E_j(h): the engine's order.
absl::Status RunSharedAndCombine(Backend& b, const CarvedLayer& layer, const DeviceLayer& dev,
                                 const Step& step, const StepArrays& a) {
  const int64_t t = step.num_tokens;
  const int64_t ms = layer.shared.gate.rows;
  if (ms > 0) {
    CMOE_RETURN_IF_ERROR(b.MatMul(a.h, t, dev.shared_gate_up, a.shared_gate_up, Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b.SiluMulPacked(a.shared_gate_up, t, ms, a.shared_act));
    CMOE_RETURN_IF_ERROR(b.MatMul(a.shared_act, t, dev.shared_down, a.x, Accumulate::kYes));
  }
  return b.CombineExperts({.expert_out = a.expert_out,
                           .token_slot = a.token_slot,
                           .weights = a.route_w,
                           .num_tokens = t,
                           .k = step.k,
                           .dim = layer.dim,
                           .x = a.x});
}

absl::StatusOr<PipelineResult> RunPipeline(Backend& b, const CarvedLayer& layer,
                                           const PipelineLayout& lay, const Step& step) {
  Arena arena(b);
  CMOE_ASSIGN_OR_RETURN(const DeviceLayer dev, Upload(b, arena, layer, lay));
  CMOE_ASSIGN_OR_RETURN(const StepArrays a, AllocStep(arena, layer, lay, step));
  CMOE_RETURN_IF_ERROR(RunRouted(b, layer, dev, step, a));
  CMOE_RETURN_IF_ERROR(RunSharedAndCombine(b, layer, dev, step, a));
  const int64_t p = step.num_tokens * step.k;
  const int32_t n = layer.NumExperts();
  PipelineResult r;
  CMOE_ASSIGN_OR_RETURN(r.x, arena.Download(a.x, step.num_tokens * layer.dim));
  CMOE_ASSIGN_OR_RETURN(r.selected, arena.Download(a.selected, p));
  CMOE_ASSIGN_OR_RETURN(r.route_w, arena.Download(a.route_w, p));
  CMOE_ASSIGN_OR_RETURN(r.counts, arena.Download(a.counts, n));
  CMOE_ASSIGN_OR_RETURN(r.offsets, arena.Download(a.offsets, n + 1));
  CMOE_ASSIGN_OR_RETURN(r.slot_token, arena.Download(a.slot_token, p));
  CMOE_ASSIGN_OR_RETURN(r.slot_source, arena.Download(a.slot_source, p));
  CMOE_ASSIGN_OR_RETURN(r.token_slot, arena.Download(a.token_slot, p));
  CMOE_ASSIGN_OR_RETURN(r.expert_out, arena.Download(a.expert_out, p * layer.dim));
  return r;
}

// --- Routing margins ---

// The gap between the k-th and (k+1)-th largest keys; with `all`, the smallest gap between
// consecutive keys among the k + 1 largest (the order of the top k too). Infinity when k = E.
double KeyGap(std::vector<double> keys, int32_t k, bool all) {
  if (k >= static_cast<int32_t>(keys.size())) return std::numeric_limits<double>::infinity();
  std::sort(keys.begin(), keys.end(), std::greater<>());
  double gap = keys[k - 1] - keys[k];
  for (int32_t j = 0; all && j < k; ++j) gap = std::min(gap, keys[j] - keys[j + 1]);
  return gap;
}

// The engine's keys p + b for one token's scores (N_r).
std::vector<double> EngineKeys(std::span<const float> scores, const MoeLayerWeights& w) {
  const auto n = static_cast<int32_t>(scores.size());
  std::vector<float> probs(n), weights(1);
  std::vector<int32_t> selected(1);
  const absl::Status s =
      RouteTokens(scores, 1, {.bias = w.bias, .num_experts = n, .num_activated = 1},
                  {.probs = probs, .selected = selected, .weights = weights});
  CMOE_CHECK(s.ok()) << s;
  std::vector<double> keys(n);
  for (int32_t e = 0; e < n; ++e) keys[e] = probs[e] + (w.bias.empty() ? 0.0f : w.bias[e]);
  return keys;
}

// h rows drawn until the engine's k-th and (k+1)-th keys are kMinKeyGap apart; x random.
Step MakeStep(const CarvedLayer& layer, const Shape& shape, std::mt19937& rng, int* redraws) {
  const int64_t d = layer.dim;
  const int32_t n = layer.NumExperts();
  Step step{.num_tokens = shape.num_tokens, .k = shape.k};
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> row(d), scores(n);
  for (int64_t t = 0; t < shape.num_tokens; ++t) {
    for (;;) {
      for (float& v : row) v = normal(rng);
      const absl::Status s = RouterScores({.x = row,
                                           .wr_gate = layer.weights.router_gate,
                                           .wr_up = layer.weights.router_up,
                                           .num_tokens = 1,
                                           .dim = d,
                                           .num_experts = n,
                                           .variant = layer.weights.variant},
                                          scores);
      CMOE_CHECK(s.ok()) << s;
      if (KeyGap(EngineKeys(scores, layer.weights), shape.k, false) >= kMinKeyGap) break;
      ++*redraws;
    }
    step.h.insert(step.h.end(), row.begin(), row.end());
  }
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (int64_t i = 0; i < shape.num_tokens * d; ++i) step.x.push_back(uniform(rng));
  return step;
}

// --- Comparisons ---

void ExpectClose(std::span<const float> got, std::span<const float> want, const Tolerance& tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  double err = 0.0, ref = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    err += diff * diff;
    ref += static_cast<double>(want[i]) * want[i];
    if (!(diff <= tol.atol + tol.rtol * std::abs(want[i])) && ++bad <= 5) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what << ": elements out of bounds";
  EXPECT_LE(ref == 0.0 ? err : err / ref, tol.max_nmse) << what << ": normalised MSE";
}

// Bitwise equality (exactness claims), reporting the first difference.
void ExpectIdentical(std::span<const float> got, std::span<const float> want,
                     const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i])) {
      ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i];
      return;
    }
  }
}

std::vector<int64_t> Widen(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

// Expert e of `layer` computed alone from its unpadded blocks on the rows the pipeline routed to
// it: (count_e, d), to compare with rows [offsets[e], offsets[e + 1]) of expert_out.
std::vector<float> UnpaddedExpert(Backend& b, const CarvedLayer& layer, int32_t e, const Step& step,
                                  const PipelineResult& r) {
  const OwnedExpert& ex = layer.experts[e];
  const int64_t m = ex.gate.rows;
  const int64_t d = layer.dim;
  const int32_t first = r.offsets[e];
  const int32_t count = r.offsets[e + 1] - first;
  Matrix gate_up(ex.gate.dtype, 2 * m, d);
  CopyRows(ex.gate, gate_up, 0);
  CopyRows(ex.up, gate_up, m);
  const int32_t offsets[] = {0, count};
  const int64_t rows = count;
  std::vector<float> gu(rows * 2 * m), act(rows * m), out(rows * d);
  const auto one = [](const Matrix& w, int64_t rows, int64_t cols) {
    return GroupedWeightView{
        .data = w.bytes.data(), .dtype = w.dtype, .groups = 1, .rows = rows, .cols = cols};
  };
  EXPECT_TRUE(b.GroupedMatMul({.x = step.h.data(),
                               .row_index = r.slot_token.data() + first,
                               .num_rows = count,
                               .offsets = offsets,
                               .w = one(gate_up, 2 * m, d),
                               .y = gu.data()})
                  .ok());
  EXPECT_TRUE(b.SiluMulPacked(gu.data(), count, m, act.data()).ok());
  EXPECT_TRUE(b.GroupedMatMul({.x = act.data(),
                               .num_rows = count,
                               .offsets = offsets,
                               .w = one(ex.down, d, m),
                               .y = out.data()})
                  .ok());
  return out;
}

// --- The layer against the engine ---

struct LayerCase {
  LayerSpec spec;
  std::string name;
};

void PrintTo(const LayerCase& c, std::ostream* os) { *os << c.name; }

std::string DTypeLabel(DType dtype) { return std::string(kernels::DTypeName(dtype)); }

std::vector<LayerCase> LayerCases() {
  // d, E, routed width, shared width, k, T
  const Shape shapes[] = {
      {24, 8, 70, 0, 2, 7},      // widths 9 and 8, no shared expert
      {64, 16, 130, 24, 4, 50},  // widths 9 and 8
      {64, 4, 37, 5, 1, 1},      // one token, k = 1
      {24, 6, 48, 16, 6, 13},    // equal widths (no padding), k = E
      {24, 5, 7, 3, 2, 9},       // widths 2 and 1
  };
  std::vector<LayerCase> cases;
  for (const Shape& s : shapes) {
    for (const DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
      for (const RouterVariant variant : {RouterVariant::kReference, RouterVariant::kPaper}) {
        for (int extras = 0; extras < 4; ++extras) {
          LayerCase c{.spec = {.shape = s,
                               .dtype = dtype,
                               .bias = (extras & 1) != 0,
                               .scale = (extras & 2) != 0,
                               .variant = variant}};
          c.name =
              absl::StrCat("d", s.dim, "_E", s.num_experts, "_m", s.routed_width, "_s",
                           s.shared_width, "_k", s.k, "_T", s.num_tokens, "_", DTypeLabel(dtype),
                           variant == RouterVariant::kReference ? "_abs" : "_paper",
                           c.spec.bias ? "_bias" : "", c.spec.scale ? "_scale" : "");
          cases.push_back(c);
        }
      }
    }
  }
  return cases;
}

class MoePipelineTest : public ::testing::TestWithParam<LayerCase> {};

TEST_P(MoePipelineTest, MatchesTheEngineLayer) {
  const LayerSpec& spec = GetParam().spec;
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(GetParam().name)));
  const std::unique_ptr<CarvedLayer> layer = MakeLayer(spec, rng);
  int redraws = 0;
  const Step step = MakeStep(*layer, spec.shape, rng, &redraws);
  EXPECT_LE(redraws, 2 + spec.shape.num_tokens) << "most tokens should have no near-tie";

  std::vector<float> want = step.x;
  MoeLayer engine;
  MoeStepStats stats;
  ASSERT_TRUE(engine
                  .Forward(Reference(), layer->weights,
                           {.h = step.h.data(),
                            .num_tokens = step.num_tokens,
                            .num_activated = step.k,
                            .x = want.data()},
                           &stats)
                  .ok());

  const PipelineLayout lay = LayOut(*layer, layer->MaxWidth());
  for (Backend* b : {&Reference(), &FastCpu()}) {
    SCOPED_TRACE(std::string(b->Name()));
    absl::StatusOr<PipelineResult> got = RunPipeline(*b, *layer, lay, step);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(Widen(got->counts), stats.tokens_per_expert) << "routing differs from the engine's";
    ExpectClose(got->x, want, kLayerTolerance, "x");
  }
}

// Padding never changes a result: each expert alone from its unpadded blocks, and the layer padded
// three columns wider than its widest expert, are bit-identical on the reference backend (double
// accumulation: the padded terms add exact zeros). The fast backend promises no more than
// kLayerTolerance here (its SIMD reductions may associate differently for another column count),
// though on AVX-512 it was bit-identical too when this test was written.
TEST_P(MoePipelineTest, PaddingIsExact) {
  const LayerSpec& spec = GetParam().spec;
  std::mt19937 rng(static_cast<uint32_t>(std::hash<std::string>{}(GetParam().name)) + 1);
  const std::unique_ptr<CarvedLayer> layer = MakeLayer(spec, rng);
  int redraws = 0;
  const Step step = MakeStep(*layer, spec.shape, rng, &redraws);
  const int64_t m = layer->MaxWidth();
  for (Backend* b : {&Reference(), &FastCpu()}) {
    SCOPED_TRACE(std::string(b->Name()));
    const bool exact = b == &Reference();
    const auto expect_same = [&](std::span<const float> got, std::span<const float> want,
                                 const std::string& what) {
      if (exact) {
        ExpectIdentical(got, want, what);
      } else {
        ExpectClose(got, want, kLayerTolerance, what);
      }
    };
    absl::StatusOr<PipelineResult> tight = RunPipeline(*b, *layer, LayOut(*layer, m), step);
    ASSERT_TRUE(tight.ok()) << tight.status();
    absl::StatusOr<PipelineResult> wide = RunPipeline(*b, *layer, LayOut(*layer, m + 3), step);
    ASSERT_TRUE(wide.ok()) << wide.status();
    expect_same(wide->expert_out, tight->expert_out, "expert_out padded wider");
    expect_same(wide->x, tight->x, "x padded wider");
    for (int32_t e = 0; e < layer->NumExperts(); ++e) {
      const std::vector<float> alone = UnpaddedExpert(*b, *layer, e, step, *tight);
      const std::span<const float> rows(tight->expert_out.data() + tight->offsets[e] * layer->dim,
                                        alone.size());
      expect_same(rows, alone, absl::StrCat("expert ", e, " (width ", layer->Width(e), ")"));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(CarvedLayers, MoePipelineTest, ::testing::ValuesIn(LayerCases()),
                         [](const ::testing::TestParamInfo<LayerCase>& info) {
                           return info.param.name;
                         });

// --- RouteTopK and BuildDispatch against the engine's routing on the same scores ---

double Silu(double v) { return v / (1.0 + std::exp(-v)); }

// What RouteTopK scores from logits (T, 2E): up * silu(gate) in double, |.| when abs, as f32.
std::vector<float> ScoresOf(std::span<const float> logits, int64_t num_tokens, int32_t n,
                            bool abs_score) {
  std::vector<float> scores(static_cast<size_t>(num_tokens * n));
  for (int64_t t = 0; t < num_tokens; ++t) {
    for (int32_t e = 0; e < n; ++e) {
      const double s = static_cast<double>(logits[t * 2 * n + n + e]) * Silu(logits[t * 2 * n + e]);
      scores[t * n + e] = static_cast<float>(abs_score ? std::abs(s) : s);
    }
  }
  return scores;
}

// BuildDispatch's outputs for T tokens, k slots each, over n experts, on the host.
struct DispatchOutputs {
  DispatchOutputs(int64_t tokens, int32_t k, int32_t n, int32_t fill)
      : counts(n, fill),
        offsets(n + 1, fill),
        slot_token(tokens * k, fill),
        slot_source(tokens * k, fill),
        token_slot(tokens * k, fill) {}

  std::vector<int32_t> counts, offsets, slot_token, slot_source, token_slot;
};

// b.BuildDispatch of `selected` (tokens x k ids over n experts) into `out`.
absl::Status RunBuildDispatch(Backend& b, const std::vector<int32_t>& selected, int64_t tokens,
                              int32_t k, int32_t n, DispatchOutputs& out) {
  return b.BuildDispatch({.selected = selected.data(),
                          .num_tokens = tokens,
                          .k = k,
                          .num_experts = n,
                          .counts = out.counts.data(),
                          .offsets = out.offsets.data(),
                          .slot_token = out.slot_token.data(),
                          .slot_source = out.slot_source.data(),
                          .token_slot = out.token_slot.data()});
}

void ExpectPlanEquals(const DispatchOutputs& got, const DispatchPlan& want) {
  EXPECT_EQ(Widen(got.counts), want.counts);
  EXPECT_EQ(Widen(got.offsets), want.offsets);
  EXPECT_EQ(got.slot_token, want.slot_token);
  EXPECT_EQ(got.slot_source, want.slot_source);
  EXPECT_EQ(got.token_slot, want.token_slot);
}

struct RouteCase {
  int64_t num_tokens;
  int32_t num_experts;
  int32_t k;
  bool abs_score, bias, scale;
};

TEST(MoePipelineRouting, RouteTopKAndBuildDispatchEqualTheEngine) {
  std::mt19937 rng(11);
  const RouteCase cases[] = {{1, 4, 1, true, false, false},   {7, 8, 2, true, true, true},
                             {50, 16, 4, false, true, false}, {13, 6, 6, true, false, true},
                             {33, 12, 3, false, true, true},  {64, 1, 1, true, true, true}};
  for (const RouteCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << "T=" << c.num_tokens << " E=" << c.num_experts
                                      << " k=" << c.k << " abs=" << c.abs_score);
    const int32_t n = c.num_experts;
    std::normal_distribution<float> normal(0.0f, 1.5f);
    std::uniform_real_distribution<float> bias_dist(-0.02f, 0.02f), scale_dist(0.5f, 2.0f);
    MoeLayerWeights w;  // only bias and scale are used
    for (int32_t e = 0; c.bias && e < n; ++e) w.bias.push_back(bias_dist(rng));
    for (int32_t e = 0; c.scale && e < n; ++e) w.scale.push_back(scale_dist(rng));
    // Logits drawn per token until every gap among its k + 1 largest keys is kMinKeyGap: then the
    // order, not only the set, is the same under f32 and double softmax.
    std::vector<float> logits;
    for (int64_t t = 0; t < c.num_tokens; ++t) {
      std::vector<float> token(2 * static_cast<size_t>(n));
      do {
        for (float& v : token) v = normal(rng);
      } while (KeyGap(EngineKeys(ScoresOf(token, 1, n, c.abs_score), w), c.k, true) < kMinKeyGap);
      logits.insert(logits.end(), token.begin(), token.end());
    }
    const std::vector<float> scores = ScoresOf(logits, c.num_tokens, n, c.abs_score);
    const int64_t p = c.num_tokens * c.k;
    std::vector<int32_t> want_selected(p);
    std::vector<float> want_w(p);
    ASSERT_TRUE(
        RouteTokens(scores, c.num_tokens,
                    {.bias = w.bias, .scale = w.scale, .num_experts = n, .num_activated = c.k},
                    {.selected = want_selected, .weights = want_w})
            .ok());
    absl::StatusOr<DispatchPlan> want_plan = BuildDispatchPlan(want_selected, c.num_tokens, c.k, n);
    ASSERT_TRUE(want_plan.ok()) << want_plan.status();
    for (Backend* b : {&Reference(), &FastCpu()}) {
      SCOPED_TRACE(std::string(b->Name()));
      std::vector<int32_t> selected(p, -1);
      std::vector<float> weights(p, -1.0f);
      ASSERT_TRUE(b->RouteTopK({.logits = logits.data(),
                                .num_tokens = c.num_tokens,
                                .num_experts = n,
                                .num_activated = c.k,
                                .abs_score = c.abs_score,
                                .bias = c.bias ? w.bias.data() : nullptr,
                                .scale = c.scale ? w.scale.data() : nullptr,
                                .selected = selected.data(),
                                .weights = weights.data()})
                      .ok());
      EXPECT_EQ(selected, want_selected);
      // f32 softmax (engine) vs double (RouteTopK): p differs by an ulp or two.
      for (int64_t i = 0; i < p; ++i) EXPECT_NEAR(weights[i], want_w[i], 1e-6) << "slot " << i;
      if (!c.scale) {
        EXPECT_EQ(weights, want_w);  // exactly 1
      }
      DispatchOutputs plan(c.num_tokens, c.k, n, -1);
      ASSERT_TRUE(RunBuildDispatch(*b, selected, c.num_tokens, c.k, n, plan).ok());
      ExpectPlanEquals(plan, *want_plan);
    }
  }
}

// BuildDispatch on random valid selections (any order within a token) equals BuildDispatchPlan.
TEST(MoePipelineRouting, BuildDispatchEqualsBuildDispatchPlan) {
  std::mt19937 rng(5);
  for (int trial = 0; trial < 200; ++trial) {
    const int32_t n = 1 + static_cast<int32_t>(rng() % 16);
    const int32_t k = 1 + static_cast<int32_t>(rng() % n);
    const int64_t t = trial < 8 ? trial : static_cast<int64_t>(rng() % 200);
    std::vector<int32_t> experts(n), selected;
    std::iota(experts.begin(), experts.end(), 0);
    for (int64_t i = 0; i < t; ++i) {
      std::shuffle(experts.begin(), experts.end(), rng);
      selected.insert(selected.end(), experts.begin(), experts.begin() + k);
    }
    absl::StatusOr<DispatchPlan> want = BuildDispatchPlan(selected, t, k, n);
    ASSERT_TRUE(want.ok()) << want.status();
    for (Backend* b : {&Reference(), &FastCpu()}) {
      SCOPED_TRACE(::testing::Message() << b->Name() << " trial " << trial);
      DispatchOutputs plan(t, k, n, 0);
      ASSERT_TRUE(RunBuildDispatch(*b, selected, t, k, n, plan).ok());
      ExpectPlanEquals(plan, *want);
    }
  }
}

// --- Bad inputs: InvalidArgument and nothing written ---

constexpr int32_t kIntSentinel = 0x5a5a5a5b;
const float kFloatSentinel = std::bit_cast<float>(0x7fa5a5a5u);

bool AllIntSentinel(const std::vector<int32_t>& v) {
  return std::all_of(v.begin(), v.end(), [](int32_t x) { return x == kIntSentinel; });
}
bool AllFloatSentinel(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(),
                     [](float x) { return std::bit_cast<uint32_t>(x) == 0x7fa5a5a5u; });
}

TEST(MoePipelineErrors, BuildDispatchRejectsBadIdsAndDuplicatesWritingNothing) {
  // 3 tokens, k = 2, E = 4; the fault sits in the last token, after valid ones.
  const std::vector<std::vector<int32_t>> bad = {
      {0, 1, 2, 3, 1, -1},  // negative id
      {0, 1, 2, 3, 4, 0},   // id == E
      {0, 1, 2, 3, 2, 2},   // duplicate within a token
      {3, 3, 0, 1, 0, 2},   // duplicate in the first token
  };
  for (Backend* b : {&Reference(), &FastCpu()}) {
    for (const std::vector<int32_t>& selected : bad) {
      DispatchOutputs out(3, 2, 4, kIntSentinel);
      const absl::Status s = RunBuildDispatch(*b, selected, 3, 2, 4, out);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b->Name() << ": " << s;
      EXPECT_TRUE(AllIntSentinel(out.counts) && AllIntSentinel(out.offsets) &&
                  AllIntSentinel(out.slot_token) && AllIntSentinel(out.slot_source) &&
                  AllIntSentinel(out.token_slot))
          << b->Name() << ": BuildDispatch wrote before rejecting " << s;
    }
    // k outside [1, E].
    std::vector<int32_t> selected(10, 0), out(10, kIntSentinel);
    for (const int32_t k : {0, 5}) {
      EXPECT_EQ(b->BuildDispatch({.selected = selected.data(),
                                  .num_tokens = 2,
                                  .k = k,
                                  .num_experts = 4,
                                  .counts = out.data(),
                                  .offsets = out.data(),
                                  .slot_token = out.data(),
                                  .slot_source = out.data(),
                                  .token_slot = out.data()})
                    .code(),
                absl::StatusCode::kInvalidArgument)
          << b->Name() << " k=" << k;
      EXPECT_TRUE(AllIntSentinel(out)) << b->Name();
    }
  }
}

TEST(MoePipelineErrors, GroupedMatMulRejectsBadOffsetsWritingNothing) {
  // 2 groups of (3, 4) F32 weights, 5 rows.
  std::mt19937 rng(3);
  const Matrix w = RandomMatrix(rng, 6, 4, DType::kF32);
  const GroupedWeightView view{
      .data = w.bytes.data(), .dtype = DType::kF32, .groups = 2, .rows = 3, .cols = 4};
  const std::vector<float> x(20, 0.5f);  // (5, 4)
  const std::vector<std::vector<int32_t>> bad_offsets = {
      {1, 2, 5},  // does not start at 0
      {0, 2, 4},  // does not end at num_rows
      {0, 4, 3},  // decreasing (and ends short)
      {0, 6, 5},  // decreasing past num_rows
  };
  for (Backend* b : {&Reference(), &FastCpu()}) {
    for (const std::vector<int32_t>& offsets : bad_offsets) {
      std::vector<float> y(15, kFloatSentinel);  // (5, 3)
      const absl::Status s = b->GroupedMatMul(
          {.x = x.data(), .num_rows = 5, .offsets = offsets.data(), .w = view, .y = y.data()});
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument)
          << b->Name() << " offsets " << offsets[0] << "," << offsets[1] << "," << offsets[2];
      EXPECT_TRUE(AllFloatSentinel(y)) << b->Name() << ": GroupedMatMul wrote before rejecting";
    }
    // A negative gather index.
    const int32_t offsets[] = {0, 2, 5};
    const int32_t row_index[] = {0, 1, 2, -1, 4};
    std::vector<float> y(15, kFloatSentinel);  // (5, 3)
    EXPECT_EQ(b->GroupedMatMul({.x = x.data(),
                                .row_index = row_index,
                                .num_rows = 5,
                                .offsets = offsets,
                                .w = view,
                                .y = y.data()})
                  .code(),
              absl::StatusCode::kInvalidArgument)
        << b->Name();
    EXPECT_TRUE(AllFloatSentinel(y)) << b->Name();
  }
}

}  // namespace
}  // namespace cmoe::engine
