// Carving a whole dense model (docs/cmoe-method.md "Carving, layer by layer"): calibration tokens
// run through the model once, layer by layer; at each layer the FFN input X of the calibration
// tokens is captured, the layer is carved (CarveLayer + RouterRows), and the CARVED FFN (with
// its router and N_k experts per token) produces the input of the next layer. Attention weights
// never change.
//
//   CMOE_ASSIGN_OR_RETURN(LoadedModel dense, LoadModel({.model_dir = dir, .threads = 2}));
//   CMOE_ASSIGN_OR_RETURN(CalibrationSet calib, LoadCalibration(calib_options, *dense.tokenizer));
//   CMOE_ASSIGN_OR_RETURN(CarvedModel carved, CarveModel(*dense.model, calib, options));
//   CMOE_RETURN_IF_ERROR(WriteCarvedCheckpoint(dense.model->checkpoint(), carved, out, force));
#ifndef CMOE_ENGINE_CARVE_CARVE_MODEL_H_
#define CMOE_ENGINE_CARVE_CARVE_MODEL_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carve_layer.h"
#include "engine/carve/carve_report.h"
#include "engine/carve/expert_slicing.h"
#include "engine/model.h"
#include "engine/moe_dispatch.h"

namespace cmoe::engine::carve {

struct CarveModelOptions {
  CarveConfig layer;  // N, N_s, N_k, K_a, score variant, cluster iterations
  RouterVariant router = RouterVariant::kReference;
  // Step 8 during calibration: after each calibration sequence, b_j -= gamma for experts above
  // the mean load and += gamma below it. 0: off (b stays 0).
  double balance_bias_gamma = 0;
  int threads = 0;  // carving threads (<= 0: all cores); the model's backend has its own
  // Description of the calibration for the config and the report (the windows come separately).
  CalibrationOptions calibration;
  // Called after each layer is carved (progress); may be empty.
  std::function<void(const LayerReport&)> on_layer;
};

// One carved layer: which dense neurons went where, and the router.
struct CarvedLayer {
  std::vector<int64_t> shared_neurons;               // sorted original indices
  std::vector<std::vector<int64_t>> expert_neurons;  // (N_r) sorted original indices
  RouterWeights router;                              // (N_r, d) gate and up rows, f32
  std::vector<float> bias;                           // (N_r) b after calibration
};

struct CarvedModel {
  ModelConfig config;  // the dense config with `cmoe` filled in
  std::vector<CarvedLayer> layers;
  CarveReport report;  // out_dir left empty
};

// `model` must be dense (FailedPrecondition "already carved" otherwise); calib windows must fit
// the context (InvalidArgument). Invalid configs are InvalidArgument (ValidateCarveConfig).
// Memory: the calibration batch's activations (q x d several times, q = seqs * len), its KV
// cache, and one layer's scores (q x d_h f32).
absl::StatusOr<CarvedModel> CarveModel(Model& model, const CalibrationSet& calib,
                                       const CarveModelOptions& options);

// The MoE weights of a carved layer over the dense layer's tensors, for running it (the owned
// expert copies live in `storage`).
struct CarvedLayerWeights {
  std::vector<OwnedExpert> storage;  // shared first, then the routed experts
  MoeLayerWeights weights;
};
CarvedLayerWeights BuildCarvedLayerWeights(const LayerWeights& dense, const CarvedLayer& carved,
                                           RouterVariant variant);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_CARVE_MODEL_H_
