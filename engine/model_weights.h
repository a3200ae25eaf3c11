// Views of every weight of a dense or carved (CMoE) Llama model, bound to the tensors of a loaded
// checkpoint. Views point into memory-mapped files owned by the Checkpoint (engine/checkpoint.h);
// they are valid as long as it lives.
#ifndef CMOE_ENGINE_MODEL_WEIGHTS_H_
#define CMOE_ENGINE_MODEL_WEIGHTS_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/moe_dispatch.h"
#include "kernels/weight_view.h"

namespace cmoe::engine {

using kernels::WeightView;

// One SwiGLU expert of width m_e: E(h) = down · (silu(gate · h) * (up · h)).
// Views are not owning; the weights must outlive every Forward that reads them.
struct ExpertWeights {
  kernels::WeightView gate;  // (m_e, d) F32/F16/BF16, read
  kernels::WeightView up;    // (m_e, d) F32/F16/BF16, read
  kernels::WeightView down;  // (d, m_e) F32/F16/BF16, read

  int64_t width() const { return gate.rows; }
};

// The carved FFN of one layer. d is taken from experts[0].gate.cols. The shared expert may have
// width 0 (N_s = 0: all views with rows == 0, or a down with cols == 0); routed experts may not.
struct MoeLayerWeights {
  ExpertWeights shared;                // width m_s >= 0 (all shared experts concatenated)
  std::vector<ExpertWeights> experts;  // N_r >= 1 routed experts, widths m_e >= 1
  std::vector<float> router_gate;      // (N_r, d) f32 row-major, normalised gate rows
  std::vector<float> router_up;        // (N_r, d) f32 row-major, normalised up rows
  std::vector<float> bias;             // (N_r) load-balancing bias b; empty means zero
  std::vector<float> scale;            // (N_r) router scale u; empty means zero (w = 1)
  RouterVariant variant = RouterVariant::kReference;
};

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
  // Carved checkpoints (config.json "cmoe"): w_gate/w_up/w_down are empty and the FFN is `moe`
  // (model.layers.L.mlp.{shared_experts,experts.J,gate}.*), with neuron_index (f) the original
  // dense neuron of every column: shared first, then expert 0, 1, ... (a permutation of [0, f)).
  std::optional<MoeLayerWeights> moe;
  std::vector<int32_t> neuron_index;
};

struct ModelWeights {
  WeightView embed;  // (vocab, d)  model.embed_tokens.weight
  std::vector<LayerWeights> layers;
  WeightView final_norm;  // (1, d)      model.norm.weight
  WeightView lm_head;     // (vocab, d)  lm_head.weight, or the embedding when tied
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_WEIGHTS_H_
