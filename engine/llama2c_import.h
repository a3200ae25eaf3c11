// Converts a llama2.c checkpoint (karpathy's legacy v0 .bin) and its SentencePiece tokenizer into
// a Hugging Face Llama directory that Checkpoint::Open and the tokenizer loader read.
//
//   CMOE_RETURN_IF_ERROR(ConvertLlama2c({.model_path = "stories260K.bin",
//                                        .tokenizer_path = "tok512.model",
//                                        .out_dir = "/models/stories260K"}));
//
// The .bin layout: 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// a negative vocab_size means an untied classifier follows), then fp32 row-major arrays
// tok_embeddings (vocab, dim), rms_att (L, dim), wq (L, dim, dim), wk (L, kv_dim, dim),
// wv (L, kv_dim, dim), wo (L, dim, dim), rms_ffn (L, dim), w1 (L, hidden, dim),
// w2 (L, dim, hidden), w3 (L, hidden, dim), rms_final (dim), two unused RoPE tables
// (seq_len, head_size / 2) each, and the classifier (vocab, dim) when untied.
//
// Output (F32, HF names): config.json (LlamaForCausalLM, rms_norm_eps 1e-5, rope_theta 10000,
// bos 1, eos 2, max_position_embeddings = seq_len), model.safetensors, tokenizer.model (a copy),
// tokenizer_config.json, special_tokens_map.json, generation_config.json. llama2.c rotates
// interleaved pairs (2i, 2i+1) of each head; HF rotates halves (i, i + head_size/2), so the rows of
// wq and wk are permuted within each head exactly as HF's convert_llama_weights_to_hf.py does:
// view (heads, head_size/2, 2, dim) -> transpose(1, 2) -> reshape.
#ifndef CMOE_ENGINE_LLAMA2C_IMPORT_H_
#define CMOE_ENGINE_LLAMA2C_IMPORT_H_

#include <string>

#include "absl/status/status.h"

namespace cmoe::engine {

struct Llama2cConvertOptions {
  std::string model_path;      // the legacy v0 .bin
  std::string tokenizer_path;  // the SentencePiece .model
  std::string out_dir;
  bool force = false;  // replace an existing non-empty out_dir
};

// Validates the .bin (header values, file size exactly as the header implies) and the tokenizer
// (a SentencePiece model no larger than the model's vocabulary), writes everything into a staging
// directory, checks that the result opens with Checkpoint::Open, then moves it to out_dir. On error
// out_dir is untouched. Errors name the file: InvalidArgument for malformed input, NotFound for
// missing files, AlreadyExists for a non-empty out_dir without force.
absl::Status ConvertLlama2c(const Llama2cConvertOptions& options);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_LLAMA2C_IMPORT_H_
