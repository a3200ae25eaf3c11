#include "engine/carve/carved_checkpoint_writer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <memory>
#include <set>
#include <span>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/carve/expert_slicing.h"
#include "engine/safetensors.h"
#include "engine/staged_output_dir.h"

namespace cmoe::engine::carve {
namespace {

constexpr size_t kChunkBytes = size_t{4} << 20;

// Streams rows[i] of `w` (an expert's gate or up) in chunks.
TensorProducer RowProducer(kernels::WeightView w, std::span<const int64_t> rows) {
  return [w, rows](TensorSink& sink) -> absl::Status {
    const size_t row_bytes = static_cast<size_t>(w.cols) * kernels::DTypeSize(w.dtype);
    const size_t per_chunk = std::max<size_t>(1, kChunkBytes / std::max<size_t>(row_bytes, 1));
    std::vector<uint8_t> buffer(per_chunk * row_bytes);
    for (size_t i = 0; i < rows.size(); i += per_chunk) {
      const size_t n = std::min(per_chunk, rows.size() - i);
      GatherRows(w, rows.subspan(i, n), buffer.data());
      CMOE_RETURN_IF_ERROR(sink.Write({buffer.data(), n * row_bytes}));
    }
    return absl::OkStatus();
  };
}

// Streams the columns `cols` of `w` (the dense down projection), a block of rows at a time.
TensorProducer ColumnProducer(kernels::WeightView w, std::span<const int64_t> cols) {
  return [w, cols](TensorSink& sink) -> absl::Status {
    const size_t row_bytes = cols.size() * kernels::DTypeSize(w.dtype);
    if (row_bytes == 0) return absl::OkStatus();
    const auto per_chunk = static_cast<int64_t>(std::max<size_t>(1, kChunkBytes / row_bytes));
    std::vector<uint8_t> buffer(static_cast<size_t>(per_chunk) * row_bytes);
    for (int64_t r = 0; r < w.rows; r += per_chunk) {
      const int64_t end = std::min(w.rows, r + per_chunk);
      GatherColumns(w, cols, r, end, buffer.data());
      CMOE_RETURN_IF_ERROR(sink.Write({buffer.data(), static_cast<size_t>(end - r) * row_bytes}));
    }
    return absl::OkStatus();
  };
}

absl::Status AddExpert(SafetensorsWriter& writer, const std::string& prefix,
                       const LayerWeights& dense, std::span<const int64_t> neurons) {
  const auto m = static_cast<int64_t>(neurons.size());
  const int64_t d = dense.w_gate.cols;
  CMOE_RETURN_IF_ERROR(writer.AddProduced(prefix + "gate_proj.weight", dense.w_gate.dtype, {m, d},
                                          RowProducer(dense.w_gate, neurons)));
  CMOE_RETURN_IF_ERROR(writer.AddProduced(prefix + "up_proj.weight", dense.w_up.dtype, {m, d},
                                          RowProducer(dense.w_up, neurons)));
  return writer.AddProduced(prefix + "down_proj.weight", dense.w_down.dtype, {d, m},
                            ColumnProducer(dense.w_down, neurons));
}

absl::Status AddLayer(SafetensorsWriter& writer, int64_t layer, const LayerWeights& dense,
                      const CarvedLayer& carved, std::vector<int32_t>& index) {
  const std::string p = absl::StrCat("model.layers.", layer, ".mlp.");
  const auto n_r = static_cast<int64_t>(carved.expert_neurons.size());
  const int64_t d = dense.w_gate.cols;
  index.clear();
  if (!carved.shared_neurons.empty()) {
    CMOE_RETURN_IF_ERROR(AddExpert(writer, p + "shared_experts.", dense, carved.shared_neurons));
  }
  index.insert(index.end(), carved.shared_neurons.begin(), carved.shared_neurons.end());
  for (int64_t j = 0; j < n_r; ++j) {
    CMOE_RETURN_IF_ERROR(
        AddExpert(writer, absl::StrCat(p, "experts.", j, "."), dense, carved.expert_neurons[j]));
    index.insert(index.end(), carved.expert_neurons[j].begin(), carved.expert_neurons[j].end());
  }
  CMOE_RETURN_IF_ERROR(writer.AddF32(p + "gate.gate.weight", {n_r, d}, carved.router.gate));
  CMOE_RETURN_IF_ERROR(writer.AddF32(p + "gate.classifier.weight", {n_r, d}, carved.router.up));
  CMOE_RETURN_IF_ERROR(writer.AddF32(p + "gate.extra_bias", {n_r}, carved.bias));
  const std::vector<float> scale(static_cast<size_t>(n_r), 0.0f);  // training-free: u = 0
  CMOE_RETURN_IF_ERROR(writer.AddF32(p + "gate.extra_scale", {n_r}, scale));
  std::vector<uint8_t> bytes(index.size() * sizeof(int32_t));
  std::memcpy(bytes.data(), index.data(), bytes.size());
  return writer.AddOwned(p + "neuron_index", kernels::DType::kI32,
                         {static_cast<int64_t>(index.size())}, std::move(bytes));
}

absl::Status CheckMatches(const Checkpoint& dense, const CarvedModel& carved) {
  const ModelConfig& c = dense.config();
  if (c.cmoe.has_value() || !carved.config.cmoe.has_value() ||
      static_cast<int64_t>(carved.layers.size()) != c.num_hidden_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("carve of ", carved.layers.size(), " layers does not match the dense model ",
                     dense.dir(), " (", c.num_hidden_layers, " layers)"));
  }
  for (size_t l = 0; l < carved.layers.size(); ++l) {
    const CarvedLayer& layer = carved.layers[l];
    std::vector<bool> seen(static_cast<size_t>(c.intermediate_size), false);
    int64_t total = 0;
    const auto mark = [&](std::span<const int64_t> neurons) {
      for (int64_t n : neurons) {
        if (n < 0 || n >= c.intermediate_size || seen[n]) return false;
        seen[n] = true;
        ++total;
      }
      return true;
    };
    bool ok = mark(layer.shared_neurons);
    for (const auto& e : layer.expert_neurons) ok = ok && !e.empty() && mark(e);
    if (!ok || total != c.intermediate_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "carve of layer ", l, " does not partition the ", c.intermediate_size, " neurons"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status WriteCarvedCheckpoint(const Checkpoint& dense, const CarvedModel& carved,
                                   StagedOutputDir& dir, const WriteProgress& progress) {
  CMOE_RETURN_IF_ERROR(CheckMatches(dense, carved));
  const ModelConfig& c = dense.config();
  std::set<std::string> dense_ffn;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    for (const char* proj : {"gate_proj", "up_proj", "down_proj"}) {
      dense_ffn.insert(absl::StrCat("model.layers.", l, ".mlp.", proj, ".weight"));
    }
  }
  SafetensorsWriter writer;
  writer.SetMetadata("format", "pt");
  for (const auto& [name, t] : dense.tensors().tensors()) {
    if (dense_ffn.contains(name)) continue;
    CMOE_RETURN_IF_ERROR(writer.AddBorrowed(name, t->dtype, t->shape, t->bytes()));
  }
  std::vector<int32_t> index;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    CMOE_RETURN_IF_ERROR(AddLayer(writer, l, dense.weights().layers[l], carved.layers[l], index));
  }
  CMOE_RETURN_IF_ERROR(writer.Write(dir.Join("model.safetensors"), progress));
  CMOE_RETURN_IF_ERROR(
      WriteFileAtomically(dir.Join("config.json"), ModelConfigToJson(carved.config)));
  for (const char* name : kTokenizerFiles) {
    const std::string src = absl::StrCat(dense.dir(), "/", name);
    if (!std::filesystem::exists(src)) continue;
    CMOE_ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(src));
    CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir.Join(name), bytes));
  }
  CarveReport report = carved.report;
  report.out_dir = dir.target();
  CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir.Join("carve_report.json"), CarveReportJson(report)));
  CMOE_RETURN_IF_ERROR(WriteFileAtomically(dir.Join("carve_report.html"), CarveReportHtml(report)));
  return absl::OkStatus();
}

}  // namespace cmoe::engine::carve
