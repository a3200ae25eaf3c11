// A straightforward double-precision Llama forward written independently of the engine's
// kernels, for tests: full causal attention recomputed from scratch, no KV cache, no batching.
#ifndef CMOE_TESTS_ENGINE_REFERENCE_FORWARD_H_
#define CMOE_TESTS_ENGINE_REFERENCE_FORWARD_H_

#include <cstdint>
#include <span>
#include <vector>

#include "engine/model_config.h"
#include "engine/model_weights.h"

namespace cmoe::testing {

// Logits (tokens.size(), vocab) for every position of `tokens`.
std::vector<std::vector<double>> ReferenceForward(const engine::ModelConfig& config,
                                                  const engine::ModelWeights& weights,
                                                  std::span<const int32_t> tokens);

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_ENGINE_REFERENCE_FORWARD_H_
