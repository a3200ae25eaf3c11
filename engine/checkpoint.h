// Loads a Hugging Face Llama directory (dense, or carved by cmoe-carve): config.json plus
// model.safetensors, or sharded *.safetensors with model.safetensors.index.json. Files are
// memory-mapped and the weights are used in place (never copied); the Checkpoint owns the
// mappings.
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open("/models/m"));
//   const ModelWeights& w = ckpt->weights();
#ifndef CMOE_ENGINE_CHECKPOINT_H_
#define CMOE_ENGINE_CHECKPOINT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace cmoe::engine {

class TensorStore;  // engine/safetensors.h

class Checkpoint {
 public:
  // Validates everything before returning: every error names the file and the tensor or key
  // (missing files, bad safetensors headers, offsets outside the file, overlapping tensors, unknown
  // dtypes, shapes that disagree with config.json, missing or unexpected tensors). Logs progress
  // for large checkpoints.
  //
  // Tensors are bound by their Hugging Face names; norms are 1-D (d) tensors bound as (1, d)
  // views. With tie_word_embeddings, either model.embed_tokens.weight or lm_head.weight may be
  // stored alone and serves as both (tinystories-656k stores only lm_head.weight); untied
  // checkpoints need both. Any other tensor is InvalidArgument "unexpected tensor X in file Y",
  // except *rotary_emb.inv_freq, which is ignored. Tensors may mix F32, F16 and BF16.
  // A config.json with a "cmoe" object is a carved checkpoint: each layer's FFN is bound from
  // the shared/routed expert, router and neuron_index tensors instead (see LayerWeights::moe).
  // Errors: NotFound for missing files or tensors, InvalidArgument for everything malformed.
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& model_dir);

  ~Checkpoint();
  Checkpoint(const Checkpoint&) = delete;
  Checkpoint& operator=(const Checkpoint&) = delete;

  const std::string& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const ModelWeights& weights() const { return weights_; }
  const TensorStore& tensors() const { return *tensors_; }
  // Bytes of all weight tensors as stored (the lm_head counted once when tied).
  int64_t weight_bytes() const;

 private:
  Checkpoint() = default;

  std::string dir_;
  ModelConfig config_;
  std::unique_ptr<TensorStore> tensors_;
  ModelWeights weights_;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_CHECKPOINT_H_
