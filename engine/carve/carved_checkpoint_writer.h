// Writing a carved checkpoint directory (docs/architecture.md "Model formats"): config.json with
// the "cmoe" object, model.safetensors (every non-FFN tensor of the dense checkpoint copied
// unchanged; per layer the shared expert, the routed experts, the router rows, bias, scale and
// neuron_index), the dense model's tokenizer files, carve_report.json and carve_report.html.
// The files go into a staged directory that the caller commits, so a tool can claim (and check)
// its output directory before spending minutes carving, and nothing half-written ever appears.
//
//   CMOE_ASSIGN_OR_RETURN(auto dir, StagedOutputDir::Create("/models/m-S2A2E16", force));
//   ... carve ...
//   CMOE_RETURN_IF_ERROR(WriteCarvedCheckpoint(dense.checkpoint(), carved, *dir));
//   CMOE_RETURN_IF_ERROR(dir->Commit());
#ifndef CMOE_ENGINE_CARVE_CARVED_CHECKPOINT_WRITER_H_
#define CMOE_ENGINE_CARVE_CARVED_CHECKPOINT_WRITER_H_

#include <string>

#include "absl/status/status.h"
#include "engine/carve/carve_model.h"
#include "engine/checkpoint.h"
#include "engine/safetensors_writer.h"
#include "engine/staged_output_dir.h"

namespace cmoe::engine::carve {

// Files copied from the dense directory when present.
inline constexpr const char* kTokenizerFiles[] = {
    "tokenizer.json",          "tokenizer.model",        "tokenizer_config.json",
    "special_tokens_map.json", "generation_config.json", "added_tokens.json"};

// Expert tensors keep the dtype of the dense FFN tensors; router rows, bias and scale are F32;
// neuron_index is I32 (shared columns first, then expert 0, 1, ...). `carved` must come from
// CarveModel on `dense` (InvalidArgument when the layers do not partition its neurons). Errors
// name the path. `progress` reports the safetensors bytes written (may be null).
absl::Status WriteCarvedCheckpoint(const Checkpoint& dense, const CarvedModel& carved,
                                   StagedOutputDir& dir, const WriteProgress& progress = nullptr);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_CARVED_CHECKPOINT_WRITER_H_
