// A dense or carved (CMoE) Llama-family model bound to a backend: one batched forward step over
// sequences of different lengths, mixing prefill chunks and single decode tokens (exactly what
// continuous batching schedules).
//
//   CMOE_ASSIGN_OR_RETURN(auto model, Model::Create(std::move(checkpoint), std::move(backend)));
//   SequenceChunk chunk{.tokens = ids, .start_pos = 0, .blocks = &seq_blocks};
//   ForwardOutput out;
//   CMOE_RETURN_IF_ERROR(model->Forward({&chunk, 1}, *kv_cache, out));
//   std::span<const float> logits = out.Logits(0);   // (vocab) of the chunk's last token
//
// Not thread-safe: one thread (the engine's step thread) calls Forward at a time. The model owns
// its checkpoint (weights stay memory-mapped) and its backend.
//
// On a device backend (Backend::IsDevice, e.g. CUDA) the weights are uploaded at Create
// (engine/device_weights.h), activations and the KV cache live on the device (the cache must be
// made with KvCacheOptions::memory = &backend()), and the FFNs run the fused device path of
// kernels/moe_ops.h: routing, dispatch and the experts' grouped matmuls without host round
// trips. Only the logits (or, for chunks sampled in the model, the token ids) and the step's
// per-expert counts come back. Decode steps (one token per sequence) run their embedding and
// layers as one step graph (Backend::BeginGraph; CUDA graphs), falling back to op-by-op for
// batches too large for the device-side grouped GEMV. ForwardWithFfn (carving) is host-only.
#ifndef CMOE_ENGINE_MODEL_H_
#define CMOE_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/checkpoint.h"
#include "engine/kv_cache.h"
#include "engine/moe_layer.h"
#include "kernels/backend.h"
#include "kernels/communicator.h"

namespace cmoe::engine {

// The new tokens of one sequence in a step.
struct SequenceChunk {
  std::span<const int32_t> tokens;  // the tokens to run; at least one
  int64_t start_pos = 0;            // positions already in the cache (= position of tokens[0])
  // The sequence's cache blocks; must already hold start_pos + tokens.size() positions
  // (KvCache::Reserve). Read only.
  const SequenceBlocks* blocks = nullptr;
  bool all_logits = false;  // logits for every token (perplexity), not only the last
  // Carved models: routed experts per token for this sequence, in [1, N_r]; 0 takes the
  // checkpoint's num_activated_experts. Must be 0 for dense models.
  int32_t num_activated_experts = 0;
  // When set, the model samples the next token from the last token's logits itself
  // (Backend::SampleTokens, kernels/sampling.h): ForwardOutput::tokens holds it and the logits
  // never leave the backend -- on a GPU only the id comes back. Read during Forward; not with
  // all_logits.
  const kernels::RowSampling* sample = nullptr;
};

// What the FFNs of one step computed (the activation-ratio and expert-load metrics read these).
struct FfnStepStats {
  int64_t tokens = 0;            // T, rows of the step
  int64_t neurons_computed = 0;  // FFN neurons evaluated, summed over tokens and layers
  int64_t neurons_dense = 0;     // the dense model's count: T * intermediate_size * layers
  int32_t num_routed = 0;        // N_r (0 for dense models)
  // (layers, N_r) layer-major: tokens routed to expert e of layer l this step; empty when dense.
  std::vector<int64_t> tokens_per_expert;
};

// Replaces the FFN of `layer` during ForwardWithFfn: given the normed FFN input h (rows, d) it
// must add the FFN output into the residual x (rows, d). Both are host f32 row-major.
using FfnOverride = std::function<absl::Status(int64_t layer, std::span<const float> h,
                                               int64_t rows, std::span<float> x)>;

// Logits of a step: for each chunk, one row per token when all_logits, else one row -- or, for a
// chunk with `sample`, no logits but its sampled token.
struct ForwardOutput {
  std::vector<float> logits;       // (rows, vocab)
  std::vector<int64_t> first_row;  // per chunk: its first row in `logits`
  std::vector<int64_t> num_rows;   // per chunk: 1 or tokens.size(); 0 when sampled
  std::vector<int32_t> tokens;     // per chunk: the token sampled for it, or -1
  int64_t vocab = 0;

  // Row `row` of chunk `chunk` (the last token's logits when row is -1).
  std::span<const float> Logits(size_t chunk, int64_t row = -1) const;
};

struct ModelOptions {
  // Expert parallelism (engine/expert_parallel.h): when set, this model is rank comm->rank() of
  // comm->world_size() models of the same carved checkpoint. It holds only its block of every
  // carved layer's routed experts (ExpertPlacement), routes its own tokens, and sends each
  // (token, expert) row to the rank owning the expert and gets the output back, every carved
  // layer (two AllToAllRows and one AllToAllCounts); attention and the shared experts run on
  // every rank for its own tokens. The communicator's memory must be the backend's (host for
  // the CPU backends, device for NCCL with CUDA). Every rank must call Forward for the same
  // steps, concurrently (ForwardIdle on a rank without sequences of its own), and no sequence
  // may override num_activated_experts. Not owned: it must outlive the model. Null: no parallelism.
  kernels::Communicator* expert_parallel = nullptr;
};

class Model {
 public:
  // InvalidArgument for expert parallelism over a dense checkpoint.
  static absl::StatusOr<std::unique_ptr<Model>> Create(std::unique_ptr<Checkpoint> checkpoint,
                                                       std::unique_ptr<kernels::Backend> backend,
                                                       const ModelOptions& options = {});
  ~Model();

  // Runs one step. Validates chunks (token ids in the vocabulary, positions within the context,
  // blocks covering the positions) before touching the cache; on error nothing is written.
  absl::Status Forward(std::span<const SequenceChunk> chunks, KvCache& cache, ForwardOutput& out);

  // Under expert parallelism, the step of a rank without sequences of its own: it joins every
  // carved layer's exchanges with no rows and computes its experts for the peers' rows (every
  // rank must take part in every step). last_step_stats() is zero afterwards.
  // FailedPrecondition for a model without expert parallelism.
  absl::Status ForwardIdle();

  // Forward without the LM head, with every layer's FFN replaced by `ffn` (called in layer order
  // after the layer's attention block and post-attention norm). Carving runs calibration tokens
  // through this: layer l's FFN input comes from layers 0..l-1 as already carved.
  // FailedPrecondition on a device backend.
  absl::Status ForwardWithFfn(std::span<const SequenceChunk> chunks, KvCache& cache,
                              const FfnOverride& ffn);

  // The FFN work of the last Forward (zeroed by one that failed validation).
  const FfnStepStats& last_step_stats() const { return stats_; }
  // Whether the last successful Forward ran its layers as one step graph (decode steps on a
  // backend with graphs, Backend::BeginGraph).
  bool last_step_graphed() const { return graphed_; }

  const ModelConfig& config() const { return checkpoint_->config(); }
  // ModelOptions::expert_parallel (null without expert parallelism).
  kernels::Communicator* expert_parallel() const { return comm_; }
  const Checkpoint& checkpoint() const { return *checkpoint_; }
  kernels::Backend& backend() { return *backend_; }

  // Weight bytes one single-token decode step reads: every layer and the LM head (the embedding
  // is gathered by row, so it is not counted). Carved layers count the shared expert, the router
  // and num_activated_experts / N_r of the routed experts' bytes (k <= 0: the default N_k).
  int64_t DecodeWeightBytes(int32_t k = 0) const;
  // Weight bytes the last Forward read: like DecodeWeightBytes, but carved layers count the
  // routed experts the step actually touched (the union over its tokens).
  int64_t LastStepWeightBytes() const;
  // Multiply-adds x2 of the weight matmuls for one token (attention over the context excluded),
  // with the same expected share of routed experts for carved layers.
  int64_t MatmulFlopsPerToken(int32_t k = 0) const;

 private:
  struct DeviceState;  // engine/model_device.h

  Model(std::unique_ptr<Checkpoint> checkpoint, std::unique_ptr<kernels::Backend> backend);

  // The weights the backend reads: the checkpoint's, or their device copies.
  const ModelWeights& weights() const;

  absl::Status Validate(std::span<const SequenceChunk> chunks, const KvCache& cache) const;
  absl::Status PlanStep(std::span<const SequenceChunk> chunks, const KvCache& cache,
                        bool dense_ffn);
  absl::Status AttentionBlock(int64_t layer, KvCache& cache);
  absl::Status FfnBlock(int64_t layer, std::span<const SequenceChunk> chunks);
  absl::Status MoeFfn(int64_t layer, std::span<const SequenceChunk> chunks);
  // Validates and plans the step, sizes the workspace and zeroes the step's statistics.
  absl::Status Begin(std::span<const SequenceChunk> chunks, KvCache& cache, bool dense_ffn);
  // Decode steps (one token per chunk) on a device backend, up to graph_row_limit_ rows, run
  // their layers as one step graph (kernels::Backend::BeginGraph).
  bool IsGraphStep(std::span<const SequenceChunk> chunks) const;
  // The embedding and every layer, recorded as one step graph when `graph`.
  absl::Status Layers(std::span<const SequenceChunk> chunks, KvCache& cache, bool graph);
  absl::Status LmHead(std::span<const SequenceChunk> chunks, ForwardOutput& out);
  absl::Status Resize(int64_t rows, bool dense_ffn);
  // engine/model_device.cc: the FFN of a device backend, and the step's counts brought back.
  absl::Status DeviceFfn(int64_t layer, std::span<const SequenceChunk> chunks);
  // engine/model_expert_parallel.cc: the routed experts of the run of `rows` tokens from
  // `first_row` (0 rows: a rank with no tokens) over the communicator; its per-expert counts go
  // to `counts` (backend memory; null: not wanted).
  absl::Status ExpertParallelRun(int64_t layer, int64_t first_row, int64_t rows, int32_t k,
                                 int32_t* counts);
  absl::Status DeviceBeginStep(std::span<const SequenceChunk> chunks);
  absl::Status DeviceFinishStep();

  std::unique_ptr<Checkpoint> checkpoint_;
  std::unique_ptr<kernels::Backend> backend_;

  // Per-step plan and workspace, reused across steps (T = rows of the step).
  int64_t rows_ = 0;
  std::vector<int32_t> tokens_;     // (T)
  std::vector<int32_t> positions_;  // (T)
  std::vector<int32_t> slots_;      // (T)
  std::vector<kernels::AttentionSequence> sequences_;
  // Activations in the backend's memory (f32), grown to the largest step.
  kernels::Buffer x_;        // (T, d) residual stream
  kernels::Buffer h_;        // (T, d) normed input of a block
  kernels::Buffer q_;        // (T, H * hd)
  kernels::Buffer k_;        // (T, KV * hd)
  kernels::Buffer v_;        // (T, KV * hd)
  kernels::Buffer attn_;     // (T, H * hd)
  kernels::Buffer gate_;     // (T, f) host dense FFN
  kernels::Buffer up_;       // (T, f) host dense FFN
  kernels::Buffer lm_rows_;  // (R + 2) int32: the rows that need logits, then offsets {0, R}
  kernels::Buffer logits_;   // (R, vocab) device backends: the logits before the copy back
  kernels::Buffer sampled_;  // (S) int32: tokens of the chunks sampled in the model
  std::vector<kernels::RowSampling> sampling_;  // (S) their parameters
  std::vector<int32_t> sampled_host_;           // (S) the tokens, copied back
  std::vector<int32_t> lm_index_;               // host copy of lm_rows_
  MoeLayer moe_;  // host backends: carved layers' routing/dispatch workspace
  MoeStepStats moe_stats_;
  FfnStepStats stats_;
  // Device backends, and every backend under expert parallelism (the fused FFN path).
  std::unique_ptr<DeviceState> device_;
  kernels::Communicator* comm_ = nullptr;  // ModelOptions::expert_parallel
  // Decode steps with more rows than this run op by op: lowered to one less than the rows of a
  // step that had an op unable to run inside a graph.
  int64_t graph_row_limit_ = std::numeric_limits<int64_t>::max();
  bool graphed_ = false;        // last_step_graphed()
  int64_t graph_launches_ = 0;  // the backend's graph_stats().launched after the last step
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_MODEL_H_
