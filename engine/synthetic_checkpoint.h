// Synthetic dense Llama checkpoints with seeded random weights, for benchmarks and tests at real
// model sizes without downloading one. The output is a normal Hugging Face directory (config.json,
// model.safetensors, tokenizer.json and friends) that Checkpoint::Open and LoadTokenizer read.
//
//   CMOE_RETURN_IF_ERROR(WriteSyntheticCheckpoint({.shape = "tinyllama-1.1b",
//                                                  .dtype = kernels::DType::kBF16,
//                                                  .seed = 1, .out_dir = "/tmp/synth"}));
//
// Weights are streamed to disk in chunks (a 7B bf16 model needs tens of MB of memory, not 13.5 GB)
// and are a pure function of (seed, tensor name, element index): the same seed gives the same
// bytes whatever the thread count. Matrices are uniform with standard deviation 0.02 (as HF's
// initializer_range), norm weights are 1.0, so activations stay finite through the forward.
#ifndef CMOE_ENGINE_SYNTHETIC_CHECKPOINT_H_
#define CMOE_ENGINE_SYNTHETIC_CHECKPOINT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "kernels/dtype.h"

namespace cmoe::engine {

struct SynthOptions {
  // "tinyllama-1.1b" (d 2048, ffn 5632, 22 layers, 32 heads / 4 kv heads, vocab 32000, ctx 2048),
  // "llama2-7b" (4096, 11008, 32, 32 / 32, 32000, 4096), both untied, or
  // "custom(hidden=256,ffn=688,layers=4,heads=8,kv_heads=4,vocab=1024,ctx=512)" (kv_heads
  // defaults to heads, ctx to 2048; optional head_dim=N and tied=0|1).
  std::string shape;
  kernels::DType dtype = kernels::DType::kBF16;
  uint64_t seed = 0;
  std::string out_dir;
  bool force = false;        // replace an existing non-empty out_dir
  int threads = 2;           // generation threads (the caller counts as one)
  bool log_progress = true;  // progress lines on stderr (CMOE_LOG(INFO))
};

// The config of a shape name or custom spec; InvalidArgument naming the bad key or value. The
// vocabulary must hold at least 259 tokens (3 specials and 256 byte tokens).
absl::StatusOr<ModelConfig> SynthShapeConfig(std::string_view shape);

// "bf16", "f16" or "f32".
absl::StatusOr<kernels::DType> ParseSynthDType(std::string_view name);

// A minimal valid tokenizer.json for `vocab_size` (>= 259) tokens: BPE with byte fallback, no
// merges; <unk>=0, <s>=1, </s>=2, <0x00>..<0xFF>=3..258, then "▁" and the printable ASCII
// characters, then filler pieces. The Llama-2 normalizer (prepend "▁", spaces to "▁") and decoder.
std::string SyntheticTokenizerJson(int64_t vocab_size);

// Writes the checkpoint into a staging directory beside out_dir, checks it loads, then moves it
// into place (AlreadyExists for a non-empty out_dir without force).
absl::Status WriteSyntheticCheckpoint(const SynthOptions& options);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SYNTHETIC_CHECKPOINT_H_
