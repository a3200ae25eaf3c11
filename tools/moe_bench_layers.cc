#include "tools/moe_bench_layers.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/half.h"
#include "common/status.h"

namespace cmoe::tools {
namespace {

using kernels::Accumulate;
using kernels::Backend;
using kernels::Buffer;
using kernels::DType;

// `rows` random BF16 rows of `cols` (variance 1/cols) written at `dst`, a (rows, cols) block.
void FillBf16(uint16_t* dst, int64_t rows, int64_t cols, Rng& rng) {
  const float a = std::sqrt(3.0f / static_cast<float>(cols));
  for (int64_t i = 0; i < rows * cols; ++i) dst[i] = FloatToBf16(rng.Uniform(a));
}

absl::StatusOr<Weight> Upload(Backend& backend, std::vector<uint16_t> host, int64_t rows,
                              int64_t cols) {
  Weight w{.host = std::move(host)};
  CMOE_ASSIGN_OR_RETURN(
      w.view, backend.UploadWeight(
                  {.data = w.host.data(), .dtype = DType::kBF16, .rows = rows, .cols = cols}));
  return w;
}

absl::StatusOr<Weight> RandomWeight(Backend& backend, int64_t rows, int64_t cols, Rng& rng) {
  std::vector<uint16_t> host(static_cast<size_t>(rows * cols));
  FillBf16(host.data(), rows, cols, rng);
  return Upload(backend, std::move(host), rows, cols);
}

absl::StatusOr<Buffer> AllocateFloats(Backend& backend, int64_t count) {
  return backend.Allocate(count * static_cast<int64_t>(sizeof(float)));
}

absl::StatusOr<Buffer> AllocateInts(Backend& backend, int64_t count) {
  return backend.Allocate(count * static_cast<int64_t>(sizeof(int32_t)));
}

absl::StatusOr<RoutedWeights> MakeRoutedWeights(Backend& backend, const CarvedShape& c, int64_t dim,
                                                int64_t ffn, Rng& rng) {
  const int32_t n_r = c.routed();
  const int64_t m = c.expert_width, rest = ffn - c.shared_width;
  const float down_scale = std::sqrt(3.0f / static_cast<float>(ffn));
  std::vector<uint16_t> gate_up(static_cast<size_t>(n_r * 2 * m * dim), 0);
  std::vector<uint16_t> down(static_cast<size_t>(n_r * dim * m), 0);
  for (int32_t e = 0; e < n_r; ++e) {
    const int64_t width = rest / n_r + (e < rest % n_r ? 1 : 0);
    uint16_t* gu = gate_up.data() + e * 2 * m * dim;
    FillBf16(gu, width, dim, rng);            // gate rows [0, width)
    FillBf16(gu + m * dim, width, dim, rng);  // up rows [m, m + width)
    uint16_t* dn = down.data() + e * dim * m;
    for (int64_t r = 0; r < dim; ++r) {
      for (int64_t i = 0; i < width; ++i) dn[r * m + i] = FloatToBf16(rng.Uniform(down_scale));
    }
  }
  RoutedWeights w;
  CMOE_ASSIGN_OR_RETURN(w.gate_up, Upload(backend, std::move(gate_up), n_r * 2 * m, dim));
  CMOE_ASSIGN_OR_RETURN(w.down, Upload(backend, std::move(down), n_r * dim, m));
  w.gate_up_grouped = {.data = w.gate_up.view.data,
                       .dtype = DType::kBF16,
                       .groups = n_r,
                       .rows = 2 * m,
                       .cols = dim};
  w.down_grouped = {
      .data = w.down.view.data, .dtype = DType::kBF16, .groups = n_r, .rows = dim, .cols = m};
  return w;
}

}  // namespace

absl::StatusOr<CarvedShape> ParseCarvedShape(absl::string_view text, int64_t ffn) {
  const std::string upper = absl::AsciiStrToUpper(text);
  const auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--config '", text, "': ", why, " (expected dense or SxAyEz, e.g. S2A2E16)"));
  };
  const size_t a = upper.find('A'), e = upper.find('E');
  if (upper.empty() || upper[0] != 'S' || a == std::string::npos || e == std::string::npos ||
      a > e) {
    return bad("not of the form SxAyEz");
  }
  CarvedShape c{.name = upper};
  if (!absl::SimpleAtoi(upper.substr(1, a - 1), &c.shared) ||
      !absl::SimpleAtoi(upper.substr(a + 1, e - a - 1), &c.activated) ||
      !absl::SimpleAtoi(upper.substr(e + 1), &c.experts)) {
    return bad("x, y and z must be integers");
  }
  if (c.experts < 2 || c.shared < 0 || c.shared >= c.experts) {
    return bad("need z >= 2 experts and 0 <= x < z shared ones");
  }
  if (c.activated < 1 || c.activated > c.routed()) {
    return bad(absl::StrCat("y must be in [1, ", c.routed(), "], the routed experts"));
  }
  if (ffn < c.experts) return bad(absl::StrCat("--ffn ", ffn, " is narrower than the experts"));
  c.shared_width = c.shared * (ffn / c.experts);
  const int64_t rest = ffn - c.shared_width;
  c.expert_width = (rest + c.routed() - 1) / c.routed();
  return c;
}

absl::StatusOr<std::unique_ptr<DenseFfn>> DenseFfn::Create(Backend& backend, int64_t dim,
                                                           int64_t ffn, int64_t max_rows,
                                                           Rng& rng) {
  auto layer = std::unique_ptr<DenseFfn>(new DenseFfn(backend));
  CMOE_ASSIGN_OR_RETURN(layer->gate_up_, RandomWeight(backend, 2 * ffn, dim, rng));
  CMOE_ASSIGN_OR_RETURN(layer->down_, RandomWeight(backend, dim, ffn, rng));
  CMOE_ASSIGN_OR_RETURN(layer->workspace_,
                        backend.Allocate(kernels::GatedFfnWorkspaceBytes(max_rows, ffn)));
  return layer;
}

absl::Status DenseFfn::Run(const float* x, int64_t rows, float* out) {
  return backend_.GatedFfn({.x = x,
                            .num_rows = rows,
                            .gate_up = kernels::AsOneGroup(gate_up_.view),
                            .down = kernels::AsOneGroup(down_.view),
                            .workspace = workspace_.data(),
                            .workspace_bytes = workspace_.bytes(),
                            .y = out,
                            .accumulate = true});
}

int64_t DenseFfn::WeightBytes() const { return gate_up_.view.bytes() + down_.view.bytes(); }

absl::StatusOr<std::unique_ptr<CarvedFfn>> CarvedFfn::Create(Backend& backend, const CarvedShape& c,
                                                             int64_t dim, int64_t ffn,
                                                             int64_t max_rows,
                                                             const std::vector<float>& bias,
                                                             Rng& rng) {
  auto layer = std::unique_ptr<CarvedFfn>(new CarvedFfn(backend, c, dim));
  CMOE_ASSIGN_OR_RETURN(layer->router_, RandomWeight(backend, 2 * c.routed(), dim, rng));
  if (c.shared > 0) {
    CMOE_ASSIGN_OR_RETURN(layer->shared_gate_up_,
                          RandomWeight(backend, 2 * c.shared_width, dim, rng));
    CMOE_ASSIGN_OR_RETURN(layer->shared_down_, RandomWeight(backend, dim, c.shared_width, rng));
  }
  CMOE_ASSIGN_OR_RETURN(layer->routed_, MakeRoutedWeights(backend, c, dim, ffn, rng));
  CMOE_RETURN_IF_ERROR(layer->AllocateScratch(max_rows, bias));
  return layer;
}

absl::Status CarvedFfn::AllocateScratch(int64_t max_rows, const std::vector<float>& bias) {
  const int64_t p = max_rows * c_.activated, m = c_.expert_width, n_r = c_.routed();
  CMOE_ASSIGN_OR_RETURN(logits_, AllocateFloats(backend_, max_rows * 2 * n_r));
  CMOE_ASSIGN_OR_RETURN(selected_, AllocateInts(backend_, p));
  CMOE_ASSIGN_OR_RETURN(weights_, AllocateFloats(backend_, p));
  CMOE_ASSIGN_OR_RETURN(counts_, AllocateInts(backend_, n_r));
  CMOE_ASSIGN_OR_RETURN(offsets_, AllocateInts(backend_, n_r + 1));
  CMOE_ASSIGN_OR_RETURN(slot_token_, AllocateInts(backend_, p));
  CMOE_ASSIGN_OR_RETURN(slot_source_, AllocateInts(backend_, p));
  CMOE_ASSIGN_OR_RETURN(token_slot_, AllocateInts(backend_, p));
  CMOE_ASSIGN_OR_RETURN(expert_out_, AllocateFloats(backend_, p * dim_));
  CMOE_ASSIGN_OR_RETURN(
      ffn_workspace_,
      backend_.Allocate(std::max(kernels::GatedFfnWorkspaceBytes(p, m),
                                 kernels::GatedFfnWorkspaceBytes(max_rows, c_.shared_width))));
  if (bias.empty()) return absl::OkStatus();
  CMOE_ASSIGN_OR_RETURN(bias_, AllocateFloats(backend_, n_r));
  return backend_.CopyToBackend(bias_.data(), bias.data(), bias_.bytes());
}

absl::Status CarvedFfn::Run(const float* x, int64_t rows, float* out) {
  if (c_.shared > 0) CMOE_RETURN_IF_ERROR(RunShared(x, rows, out));
  return RunRouted(x, rows, out);
}

absl::Status CarvedFfn::RunShared(const float* x, int64_t rows, float* out) {
  return backend_.GatedFfn({.x = x,
                            .num_rows = rows,
                            .gate_up = kernels::AsOneGroup(shared_gate_up_.view),
                            .down = kernels::AsOneGroup(shared_down_.view),
                            .workspace = ffn_workspace_.data(),
                            .workspace_bytes = ffn_workspace_.bytes(),
                            .y = out,
                            .accumulate = true});
}

absl::Status CarvedFfn::RunRouted(const float* x, int64_t rows, float* out) {
  const int32_t n_r = c_.routed(), k = c_.activated;
  const int64_t p = rows * k;
  CMOE_RETURN_IF_ERROR(
      backend_.MatMul(x, rows, router_.view, logits_.as<float>(), Accumulate::kNo));
  CMOE_RETURN_IF_ERROR(backend_.RouteTopK({.logits = logits_.as<float>(),
                                           .num_tokens = rows,
                                           .num_experts = n_r,
                                           .num_activated = k,
                                           .abs_score = true,
                                           .bias = bias_.as<float>(),
                                           .selected = selected_.as<int32_t>(),
                                           .weights = weights_.as<float>()}));
  CMOE_RETURN_IF_ERROR(backend_.BuildDispatch({.selected = selected_.as<int32_t>(),
                                               .num_tokens = rows,
                                               .k = k,
                                               .num_experts = n_r,
                                               .counts = counts_.as<int32_t>(),
                                               .offsets = offsets_.as<int32_t>(),
                                               .slot_token = slot_token_.as<int32_t>(),
                                               .slot_source = slot_source_.as<int32_t>(),
                                               .token_slot = token_slot_.as<int32_t>()}));
  CMOE_RETURN_IF_ERROR(backend_.GatedFfn({.x = x,
                                          .row_index = slot_token_.as<int32_t>(),
                                          .num_rows = p,
                                          .offsets = offsets_.as<int32_t>(),
                                          .gate_up = routed_.gate_up_grouped,
                                          .down = routed_.down_grouped,
                                          .workspace = ffn_workspace_.data(),
                                          .workspace_bytes = ffn_workspace_.bytes(),
                                          .y = expert_out_.as<float>()}));
  return backend_.CombineExperts({.expert_out = expert_out_.as<float>(),
                                  .token_slot = token_slot_.as<int32_t>(),
                                  .weights = weights_.as<float>(),
                                  .num_tokens = rows,
                                  .k = k,
                                  .dim = dim_,
                                  .x = out});
}

absl::StatusOr<std::vector<int32_t>> CarvedFfn::Selected(int64_t rows) {
  std::vector<int32_t> host(static_cast<size_t>(rows * c_.activated));
  CMOE_RETURN_IF_ERROR(backend_.CopyToHost(host.data(), selected_.data(),
                                           static_cast<int64_t>(host.size() * sizeof(int32_t))));
  return host;
}

int64_t CarvedFfn::FixedBytes() const {
  return router_.view.bytes() + shared_gate_up_.view.bytes() + shared_down_.view.bytes();
}

int64_t CarvedFfn::ExpertBytes() const {
  return (routed_.gate_up.view.bytes() + routed_.down.view.bytes()) / c_.routed();
}

}  // namespace cmoe::tools
