#include "engine/device_weights.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::engine {
namespace {

using kernels::DType;

// One matrix of a stacked tensor: `view` copied into a block of `rows` x C, zero-padded on the
// right and below.
struct Block {
  WeightView view;
  int64_t rows = 0;
};

// `host` in memory the backend reads that outlives this call: UploadWeight's device copy, or on a
// host backend (whose UploadWeight returns `host` itself) a buffer kept in `owned`.
absl::StatusOr<WeightView> UploadOwned(kernels::Backend& backend, const WeightView& host,
                                       std::vector<kernels::Buffer>& owned) {
  if (backend.IsDevice() || host.bytes() == 0) return backend.UploadWeight(host);
  CMOE_ASSIGN_OR_RETURN(kernels::Buffer buffer, backend.Allocate(host.bytes()));
  CMOE_RETURN_IF_ERROR(backend.CopyToBackend(buffer.data(), host.data, host.bytes()));
  WeightView view = host;
  view.data = buffer.data();
  owned.push_back(std::move(buffer));
  return view;
}

// The blocks stacked vertically into one (sum rows, cols) tensor of `dtype`, uploaded.
absl::StatusOr<WeightView> UploadStacked(kernels::Backend& backend, std::span<const Block> blocks,
                                         DType dtype, int64_t cols, const std::string& what,
                                         std::vector<kernels::Buffer>& owned) {
  const auto size = static_cast<int64_t>(kernels::DTypeSize(dtype));
  int64_t rows = 0;
  for (const Block& b : blocks) {
    if (b.view.dtype != dtype || b.view.rows > b.rows || b.view.cols > cols) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, ": a part is (", b.view.rows, ", ", b.view.cols, ") ",
          std::string(kernels::DTypeName(b.view.dtype)), ", expected at most (", b.rows, ", ", cols,
          ") ", std::string(kernels::DTypeName(dtype)), " (one dtype per layer is needed)"));
    }
    rows += b.rows;
  }
  std::vector<char> staged(static_cast<size_t>(rows * cols * size), 0);  // zero bits = 0.0
  char* dst = staged.data();
  for (const Block& b : blocks) {
    const auto* src = static_cast<const char*>(b.view.data);
    for (int64_t r = 0; r < b.view.rows; ++r) {
      std::memcpy(dst + r * cols * size, src + r * b.view.cols * size,
                  static_cast<size_t>(b.view.cols * size));
    }
    dst += b.rows * cols * size;
  }
  return UploadOwned(backend, {.data = staged.data(), .dtype = dtype, .rows = rows, .cols = cols},
                     owned);
}

absl::StatusOr<kernels::Buffer> UploadFloats(kernels::Backend& backend,
                                             const std::vector<float>& values) {
  if (values.empty()) return kernels::Buffer();
  const auto bytes = static_cast<int64_t>(values.size() * sizeof(float));
  CMOE_ASSIGN_OR_RETURN(kernels::Buffer buffer, backend.Allocate(bytes));
  CMOE_RETURN_IF_ERROR(backend.CopyToBackend(buffer.data(), values.data(), bytes));
  return buffer;
}

absl::Status UploadDense(kernels::Backend& backend, const LayerWeights& l, const std::string& what,
                         std::vector<kernels::Buffer>& owned, DeviceFfnWeights& out) {
  out.width = l.w_gate.rows;
  const Block gate_up[] = {{l.w_gate, l.w_gate.rows}, {l.w_up, l.w_up.rows}};
  CMOE_ASSIGN_OR_RETURN(
      out.gate_up, UploadStacked(backend, gate_up, l.w_gate.dtype, l.w_gate.cols, what, owned));
  CMOE_ASSIGN_OR_RETURN(out.down, backend.UploadWeight(l.w_down));
  return absl::OkStatus();
}

absl::Status UploadRouted(kernels::Backend& backend, const MoeLayerWeights& m, int64_t dim,
                          ExpertSlice slice, const std::string& what,
                          std::vector<kernels::Buffer>& owned, DeviceFfnWeights& out) {
  const auto n = static_cast<int32_t>(m.experts.size());
  const int32_t count = slice.count < 0 ? n : slice.count;
  if (slice.first < 0 || slice.first > n || count > n - slice.first) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": experts [", slice.first, ", ", slice.first + count, ") outside the layer's ", n));
  }
  // The widest of all experts, so that every rank's grouped tensors have one shape.
  int64_t width = 0;
  for (const ExpertWeights& e : m.experts) width = std::max(width, e.width());
  const DType dtype = m.experts[0].gate.dtype;
  std::vector<Block> gate_up;
  std::vector<Block> down;
  for (int32_t i = slice.first; i < slice.first + count; ++i) {
    const ExpertWeights& e = m.experts[i];
    gate_up.push_back({e.gate, width});
    gate_up.push_back({e.up, width});
    down.push_back({e.down, dim});
  }
  CMOE_ASSIGN_OR_RETURN(WeightView gu, UploadStacked(backend, gate_up, dtype, dim, what, owned));
  CMOE_ASSIGN_OR_RETURN(WeightView dn, UploadStacked(backend, down, dtype, width, what, owned));
  out.num_routed = n;
  out.first_local_expert = slice.first;
  out.expert_gate_up = {
      .data = gu.data, .dtype = dtype, .groups = count, .rows = 2 * width, .cols = dim};
  out.expert_down = {.data = dn.data, .dtype = dtype, .groups = count, .rows = dim, .cols = width};
  std::vector<float> router(m.router_gate);
  router.insert(router.end(), m.router_up.begin(), m.router_up.end());
  CMOE_ASSIGN_OR_RETURN(
      out.router,
      UploadOwned(backend,
                  {.data = router.data(), .dtype = DType::kF32, .rows = 2 * n, .cols = dim},
                  owned));
  CMOE_ASSIGN_OR_RETURN(out.bias, UploadFloats(backend, m.bias));
  CMOE_ASSIGN_OR_RETURN(out.scale, UploadFloats(backend, m.scale));
  out.abs_score = m.variant == RouterVariant::kReference;
  return absl::OkStatus();
}

absl::Status UploadCarved(kernels::Backend& backend, const MoeLayerWeights& m, int64_t dim,
                          ExpertSlice slice, const std::string& what,
                          std::vector<kernels::Buffer>& owned, DeviceFfnWeights& out) {
  out.width = m.shared.width();
  if (out.width > 0) {
    const Block gate_up[] = {{m.shared.gate, out.width}, {m.shared.up, out.width}};
    CMOE_ASSIGN_OR_RETURN(out.gate_up,
                          UploadStacked(backend, gate_up, m.shared.gate.dtype, dim, what, owned));
    CMOE_ASSIGN_OR_RETURN(out.down, backend.UploadWeight(m.shared.down));
  }
  return UploadRouted(backend, m, dim, slice, what, owned, out);
}

// The attention weights, norms, embedding and LM head, uploaded as they are.
absl::Status UploadCommon(kernels::Backend& backend, const ModelWeights& host, ModelWeights& out) {
  out.layers.resize(host.layers.size());
  CMOE_ASSIGN_OR_RETURN(out.embed, backend.UploadWeight(host.embed));
  CMOE_ASSIGN_OR_RETURN(out.final_norm, backend.UploadWeight(host.final_norm));
  // A tied LM head is the embedding: upload it once.
  if (host.lm_head.data == host.embed.data) {
    out.lm_head = out.embed;
  } else {
    CMOE_ASSIGN_OR_RETURN(out.lm_head, backend.UploadWeight(host.lm_head));
  }
  for (size_t i = 0; i < host.layers.size(); ++i) {
    const LayerWeights& h = host.layers[i];
    LayerWeights& d = out.layers[i];
    CMOE_ASSIGN_OR_RETURN(d.attn_norm, backend.UploadWeight(h.attn_norm));
    CMOE_ASSIGN_OR_RETURN(d.wq, backend.UploadWeight(h.wq));
    CMOE_ASSIGN_OR_RETURN(d.wk, backend.UploadWeight(h.wk));
    CMOE_ASSIGN_OR_RETURN(d.wv, backend.UploadWeight(h.wv));
    CMOE_ASSIGN_OR_RETURN(d.wo, backend.UploadWeight(h.wo));
    CMOE_ASSIGN_OR_RETURN(d.ffn_norm, backend.UploadWeight(h.ffn_norm));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DeviceWeights> UploadModelWeights(const ModelWeights& host,
                                                 const ModelConfig& config,
                                                 kernels::Backend& backend, ExpertSlice experts) {
  DeviceWeights out;
  CMOE_RETURN_IF_ERROR(UploadCommon(backend, host, out.model));
  out.ffn.resize(host.layers.size());
  for (size_t i = 0; i < host.layers.size(); ++i) {
    const LayerWeights& l = host.layers[i];
    const std::string what = absl::StrCat("layer ", i, " FFN");
    if (l.moe.has_value()) {
      CMOE_RETURN_IF_ERROR(
          UploadCarved(backend, *l.moe, config.hidden_size, experts, what, out.owned, out.ffn[i]));
    } else {
      CMOE_RETURN_IF_ERROR(UploadDense(backend, l, what, out.owned, out.ffn[i]));
    }
  }
  return out;
}

}  // namespace cmoe::engine
