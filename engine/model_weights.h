// Views of every weight of a dense Llama model, bound to the tensors of a loaded checkpoint.
// Views point into memory-mapped files owned by the Checkpoint (engine/checkpoint.h); they are
// valid as long as it lives.
#ifndef CMOE_ENGINE_MODEL_WEIGHTS_H_
#define CMOE_ENGINE_MODEL_WEIGHTS_H_

#include <vector>

#include "kernels/weight_view.h"

namespace cmoe::engine {

using kernels::WeightView;

// d = hidden_size, f = intermediate_size, hd = head_dim, H = heads, KV = kv heads.
struct LayerWeights {
  WeightView attn_norm;  // (1, d)      model.layers.L.input_layernorm.weight
  WeightView wq;         // (H*hd, d)   model.layers.L.self_attn.q_proj.weight (rotate-half rows)
  WeightView wk;         // (KV*hd, d)  model.layers.L.self_attn.k_proj.weight (rotate-half rows)
  WeightView wv;         // (KV*hd, d)  model.layers.L.self_attn.v_proj.weight
  WeightView wo;         // (d, H*hd)   model.layers.L.self_attn.o_proj.weight
  WeightView ffn_norm;   // (1, d)      model.layers.L.post_attention_layernorm.weight
  WeightView w_gate;     // (f, d)      model.layers.L.mlp.gate_proj.weight
  WeightView w_up;       // (f, d)      model.layers.L.mlp.up_proj.weight
  WeightView w_down;     // (d, f)      model.layers.L.mlp.down_proj.weight
};

struct ModelWeights {
  WeightView embed;  // (vocab, d)  model.embed_tokens.weight
  std::vector<LayerWeights> layers;
  WeightView final_norm;  // (1, d)      model.norm.weight
  WeightView lm_head;     // (vocab, d)  lm_head.weight, or the embedding when tied
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_WEIGHTS_H_
