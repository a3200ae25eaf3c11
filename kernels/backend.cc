#include "kernels/backend.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/sample_row.h"

namespace cmoe::kernels {
namespace {

constexpr int64_t kHostAlignment = 64;
constexpr char kNotInGraphPayload[] = "type.cmoe/backend.not-in-graph";

void FreeHost(void* /*context*/, void* data) { std::free(data); }

absl::Status NullOperand(const char* op, const char* operand) {
  return absl::InvalidArgumentError(absl::StrCat(op, ": ", operand, " is null"));
}

absl::Status ValidateTopK(const char* op, int64_t num_tokens, int32_t k, int32_t experts) {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat(op, ": num_tokens ", num_tokens, " < 0"));
  }
  if (experts < 1 || k < 1 || k > experts) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": k ", k, " outside [1, ", experts, "] (num_experts ", experts, ")"));
  }
  if (num_tokens * k >= std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat(op, ": ", num_tokens, " tokens x k ", k, " slots exceed int32"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status NotInGraphError(std::string_view op) {
  absl::Status status = absl::FailedPreconditionError(
      absl::StrCat(std::string(op), " waits for the device and cannot run inside a step graph"));
  status.SetPayload(kNotInGraphPayload, absl::Cord("1"));
  return status;
}

bool IsNotInGraph(const absl::Status& status) {
  return status.GetPayload(kNotInGraphPayload).has_value();
}

absl::StatusOr<Buffer> Backend::Allocate(int64_t bytes) {
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("Allocate: ", bytes, " bytes"));
  if (bytes == 0) return Buffer();
  const int64_t rounded = (bytes + kHostAlignment - 1) / kHostAlignment * kHostAlignment;
  void* data = std::aligned_alloc(kHostAlignment, static_cast<size_t>(rounded));
  if (data == nullptr) {
    return absl::ResourceExhaustedError(absl::StrCat("Allocate: ", bytes, " bytes of host memory"));
  }
  return Buffer(data, bytes, &FreeHost, nullptr);
}

absl::Status Backend::Reserve(Buffer& buffer, int64_t bytes) {
  if (buffer.bytes() >= bytes) return absl::OkStatus();
  // Half again as much as before, so that steps growing one row at a time do not reallocate
  // (a device allocation synchronises) every step.
  const int64_t grown_bytes = std::max(bytes, buffer.bytes() + buffer.bytes() / 2);
  buffer.Reset();  // free first: device memory may not hold both
  absl::StatusOr<Buffer> grown = Allocate(grown_bytes);
  if (!grown.ok()) return grown.status();
  buffer = std::move(grown).value();
  return absl::OkStatus();
}

absl::Status Backend::CopyToBackend(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::Status Backend::CopyToHost(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  return absl::OkStatus();
}

absl::StatusOr<WeightView> Backend::UploadWeight(const WeightView& host) { return host; }

absl::Status ValidateRouteTopK(const RouteTopKParams& p) {
  constexpr const char* kOp = "RouteTopK";
  if (absl::Status s = ValidateTopK(kOp, p.num_tokens, p.num_activated, p.num_experts); !s.ok()) {
    return s;
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  if (p.logits == nullptr) return NullOperand(kOp, "logits");
  if (p.selected == nullptr) return NullOperand(kOp, "selected");
  if (p.weights == nullptr) return NullOperand(kOp, "weights");
  return absl::OkStatus();
}

absl::Status ValidateDispatch(const DispatchParams& p) {
  constexpr const char* kOp = "BuildDispatch";
  if (absl::Status s = ValidateTopK(kOp, p.num_tokens, p.k, p.num_experts); !s.ok()) return s;
  if (p.counts == nullptr) return NullOperand(kOp, "counts");
  if (p.offsets == nullptr) return NullOperand(kOp, "offsets");
  if (p.num_tokens == 0) return absl::OkStatus();
  if (p.selected == nullptr) return NullOperand(kOp, "selected");
  if (p.slot_token == nullptr) return NullOperand(kOp, "slot_token");
  if (p.slot_source == nullptr) return NullOperand(kOp, "slot_source");
  if (p.token_slot == nullptr) return NullOperand(kOp, "token_slot");
  return absl::OkStatus();
}

absl::Status ValidateGroupedMatMul(const GroupedMatMulParams& p) {
  constexpr const char* kOp = "GroupedMatMul";
  if (p.w.groups < 1 || p.w.rows < 1 || p.w.cols < 1 || !IsFloatDType(p.w.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": weights (", p.w.groups, ", ", p.w.rows, ", ", p.w.cols, ") ",
                     std::string(DTypeName(p.w.dtype)), " is not a float tensor of groups"));
  }
  if (p.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": num_rows ", p.num_rows, " < 0"));
  }
  if (p.offsets == nullptr) return NullOperand(kOp, "offsets");
  if (p.w.data == nullptr) return NullOperand(kOp, "weights");
  if (p.num_rows == 0) return absl::OkStatus();
  if (p.x == nullptr) return NullOperand(kOp, "x");
  if (p.y == nullptr) return NullOperand(kOp, "y");
  return absl::OkStatus();
}

absl::Status ValidateGatedFfn(const GatedFfnParams& p) {
  constexpr const char* kOp = "GatedFfn";
  const GroupedWeightView& gu = p.gate_up;
  const GroupedWeightView& dn = p.down;
  if (gu.groups < 1 || dn.groups != gu.groups || dn.cols < 1 || dn.rows < 1 ||
      gu.rows != 2 * dn.cols || gu.cols != dn.rows || gu.dtype != dn.dtype ||
      !IsFloatDType(gu.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": gate_up (", gu.groups, ", ", gu.rows, ", ", gu.cols, ") ",
                     std::string(DTypeName(gu.dtype)), " and down (", dn.groups, ", ", dn.rows,
                     ", ", dn.cols, ") ", std::string(DTypeName(dn.dtype)),
                     " are not (E, 2m, d) and (E, d, m) float weights of one dtype"));
  }
  if (gu.data == nullptr) return NullOperand(kOp, "gate_up weights");
  if (dn.data == nullptr) return NullOperand(kOp, "down weights");
  if (p.num_rows < 0) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": num_rows ", p.num_rows, " < 0"));
  }
  if (p.offsets == nullptr && gu.groups != 1) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": ", gu.groups, " groups need offsets"));
  }
  if (p.offsets == nullptr && p.row_index != nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": a row_index needs offsets"));
  }
  if (p.offsets != nullptr && p.accumulate) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": accumulate is for one group without offsets"));
  }
  if (p.num_rows == 0) return absl::OkStatus();
  if (p.x == nullptr) return NullOperand(kOp, "x");
  if (p.y == nullptr) return NullOperand(kOp, "y");
  if (p.workspace == nullptr) return NullOperand(kOp, "workspace");
  const int64_t m = dn.cols;
  if (p.num_rows > std::numeric_limits<int64_t>::max() / 12 / m ||
      p.workspace_bytes < GatedFfnWorkspaceBytes(p.num_rows, m)) {
    return absl::InvalidArgumentError(absl::StrCat(
        kOp, ": workspace of ", p.workspace_bytes, " bytes; ", p.num_rows, " rows of width ", m,
        " need GatedFfnWorkspaceBytes = ", p.num_rows, " x 12 x ", m));
  }
  return absl::OkStatus();
}

absl::Status GatedFfnByOps(Backend& b, const GatedFfnParams& p) {
  CMOE_RETURN_IF_ERROR(ValidateGatedFfn(p));
  if (p.num_rows == 0) return absl::OkStatus();
  const int64_t m = p.down.cols;
  float* gate_up = static_cast<float*>(p.workspace);
  float* act = gate_up + p.num_rows * 2 * m;
  if (p.offsets == nullptr) {
    CMOE_RETURN_IF_ERROR(b.MatMul(p.x, p.num_rows, p.gate_up.Group(0), gate_up, Accumulate::kNo));
    CMOE_RETURN_IF_ERROR(b.SiluMulPacked(gate_up, p.num_rows, m, act));
    return b.MatMul(act, p.num_rows, p.down.Group(0), p.y,
                    p.accumulate ? Accumulate::kYes : Accumulate::kNo);
  }
  CMOE_RETURN_IF_ERROR(b.GroupedMatMul({.x = p.x,
                                        .row_index = p.row_index,
                                        .num_rows = p.num_rows,
                                        .offsets = p.offsets,
                                        .w = p.gate_up,
                                        .y = gate_up}));
  CMOE_RETURN_IF_ERROR(b.SiluMulPacked(gate_up, p.num_rows, m, act));
  return b.GroupedMatMul(
      {.x = act, .num_rows = p.num_rows, .offsets = p.offsets, .w = p.down, .y = p.y});
}

absl::Status Backend::MatMuls(const float* x, int64_t num_rows,
                              std::span<const MatMulOutput> outputs) {
  for (const MatMulOutput& o : outputs) {  // every output checked before the first is written
    CMOE_RETURN_IF_ERROR(ValidateMatMul(x, num_rows, o.w, o.y));
  }
  for (const MatMulOutput& o : outputs) {
    CMOE_RETURN_IF_ERROR(MatMul(x, num_rows, o.w, o.y, Accumulate::kNo));
  }
  return absl::OkStatus();
}

absl::Status Backend::GatedFfn(const GatedFfnParams& params) {
  return GatedFfnByOps(*this, params);
}

absl::Status ValidateCombine(const CombineParams& p) {
  constexpr const char* kOp = "CombineExperts";
  if (p.num_tokens < 0 || p.k < 1 || p.dim < 1) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": num_tokens ", p.num_tokens, ", k ", p.k,
                                                   ", dim ", p.dim, " (need T >= 0, k, dim >= 1)"));
  }
  if (p.num_tokens == 0) return absl::OkStatus();
  if (p.expert_out == nullptr) return NullOperand(kOp, "expert_out");
  if (p.token_slot == nullptr) return NullOperand(kOp, "token_slot");
  if (p.weights == nullptr) return NullOperand(kOp, "weights");
  if (p.x == nullptr) return NullOperand(kOp, "x");
  return absl::OkStatus();
}

absl::Status ValidateRowSampling(const RowSampling& s) {
  const auto bad = [](const char* field, double value, const char* rule) {
    return absl::InvalidArgumentError(absl::StrCat(field, " = ", value, " ", rule));
  };
  if (!std::isfinite(s.temperature) || s.temperature < 0.0f) {
    return bad("temperature", s.temperature, "must be finite and >= 0");
  }
  if (s.top_k < 0) return bad("top_k", s.top_k, "must be >= 0");
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f)) return bad("top_p", s.top_p, "must be in (0, 1]");
  if (!(s.min_p >= 0.0f && s.min_p <= 1.0f)) return bad("min_p", s.min_p, "must be in [0, 1]");
  if (!(s.uniform >= 0.0 && s.uniform < 1.0)) return bad("uniform", s.uniform, "must be in [0, 1)");
  return absl::OkStatus();
}

absl::Status ValidateSampleTokens(const SampleTokensParams& p) {
  constexpr const char* kOp = "SampleTokens";
  if (p.rows < 0 || p.vocab < 1 || p.vocab > sample_row::kMaxVocab) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": rows ", p.rows, ", vocab ", p.vocab,
                                                   " (need rows >= 0, vocab in [1, ",
                                                   sample_row::kMaxVocab, "])"));
  }
  if (p.rows == 0) return absl::OkStatus();
  if (p.logits == nullptr) return NullOperand(kOp, "logits");
  if (p.sampling == nullptr) return NullOperand(kOp, "sampling");
  if (p.tokens == nullptr) return NullOperand(kOp, "tokens");
  for (int64_t r = 0; r < p.rows; ++r) {
    if (absl::Status s = ValidateRowSampling(p.sampling[r]); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(kOp, ": row ", r, ": ", s.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMatMul(const float* x, int64_t num_rows, const WeightView& w, const float* y) {
  if (num_rows < 0 || w.rows < 0 || w.cols < 0) {
    return absl::InvalidArgumentError(absl::StrCat("MatMul: negative shape: x rows ", num_rows,
                                                   ", w (", w.rows, ", ", w.cols, ")"));
  }
  if (num_rows == 0 || w.rows == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr || (w.data == nullptr && w.cols > 0)) {
    return absl::InvalidArgumentError("MatMul: null x, y or weight data");
  }
  return absl::OkStatus();
}

absl::Status ValidateEmbedding(const WeightView& table, std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= table.rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: token id ", id, " outside the vocabulary of ", table.rows));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateKvCacheDType(const char* op, const PagedKvLayer& cache) {
  if (cache.dtype == DType::kF32 || cache.dtype == DType::kBF16) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(op, ": a KV cache of ",
                                                 std::string(DTypeName(cache.dtype)),
                                                 "; the kernels take F32 or BF16"));
}

absl::Status ValidateAttention(const AttentionParams& p) {
  const PagedKvLayer& c = p.cache;
  if (p.q == nullptr || p.out == nullptr || c.k == nullptr || c.v == nullptr) {
    return absl::InvalidArgumentError("Attention: null q, out or cache pointer");
  }
  if (absl::Status s = ValidateKvCacheDType("Attention", c); !s.ok()) return s;
  if (c.n_kv_heads <= 0 || c.head_dim <= 0 || c.block_size <= 0 || p.n_heads <= 0 ||
      p.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: n_heads ", p.n_heads,
                                                   " is not a positive multiple of n_kv_heads ",
                                                   c.n_kv_heads));
  }
  for (size_t i = 0; i < p.sequences.size(); ++i) {
    const AttentionSequence& s = p.sequences[i];
    if (s.num_tokens < 0 || s.first_row < 0 || s.first_row + s.num_tokens > p.num_rows) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " rows [",
                                                     s.first_row, ", ", s.first_row + s.num_tokens,
                                                     ") outside the batch of ", p.num_rows));
    }
    if (s.context_len < s.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " context_len ",
                                                     s.context_len, " < num_tokens ",
                                                     s.num_tokens));
    }
    const int64_t blocks_needed = (s.context_len + c.block_size - 1) / c.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: sequence ", i, " has ", s.block_table.size(),
                       " blocks but its context of ", s.context_len, " needs ", blocks_needed));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= c.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " block ",
                                                       s.block_table[b], " outside the cache of ",
                                                       c.num_blocks, " blocks"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels
