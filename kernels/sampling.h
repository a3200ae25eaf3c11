// Parameters of Backend::SampleTokens: the next token of each row of logits, picked where the
// logits are (on a GPU only the token ids come back to the host).
//
// Semantics (those of engine/sampler.h without the penalties, which stay on the host): greedy
// when temperature is 0 (the largest logit, ties to the lowest id); otherwise the logits are
// scaled s = (l - max) / temperature and ordered by s, ties to the lower id; top_k keeps the
// first k, min_p the tokens with exp(s) >= min_p, top_p the shortest prefix of what is left whose
// probability mass reaches top_p of its total, and the token is drawn from that prefix by
// inverse CDF with the row's `uniform`. Probability masses are fixed point (exp(s) * 2^40
// rounded, kernels/sample_row.h): tokens below 2^-41 of the most likely one are never drawn,
// and every implementation makes the same decisions bit for bit whatever order it sums in.
#ifndef CMOE_KERNELS_SAMPLING_H_
#define CMOE_KERNELS_SAMPLING_H_

#include <cstdint>

namespace cmoe::kernels {

// How one row is sampled.
struct RowSampling {
  float temperature = 0.0f;  // >= 0; 0: greedy, the other fields are ignored
  int32_t top_k = 0;         // >= 0; 0: off
  float top_p = 1.0f;        // (0, 1]; 1: off
  float min_p = 0.0f;        // [0, 1]; 0: off
  double uniform = 0.0;      // [0, 1): the request's random draw for this token
};

struct SampleTokensParams {
  const float* logits = nullptr;          // (rows, vocab) f32 in the backend's memory, read
  int64_t rows = 0;                       // >= 0
  int64_t vocab = 0;                      // [1, 2^23] (sample_row::kMaxVocab)
  const RowSampling* sampling = nullptr;  // (rows) in HOST memory, read
  int32_t* tokens = nullptr;              // (rows) int32 in the backend's memory, written
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_SAMPLING_H_
