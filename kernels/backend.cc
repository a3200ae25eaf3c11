#include "kernels/backend.h"

#include "absl/strings/str_cat.h"

namespace cmoe::kernels {

absl::Status ValidateEmbedding(const WeightView& table, std::span<const int32_t> ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= table.rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("Embedding: token id ", id, " outside the vocabulary of ", table.rows));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateAttention(const AttentionParams& p) {
  const PagedKvLayer& c = p.cache;
  if (p.q == nullptr || p.out == nullptr || c.k == nullptr || c.v == nullptr) {
    return absl::InvalidArgumentError("Attention: null q, out or cache pointer");
  }
  if (c.n_kv_heads <= 0 || c.head_dim <= 0 || c.block_size <= 0 || p.n_heads <= 0 ||
      p.n_heads % c.n_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: n_heads ", p.n_heads,
                                                   " is not a positive multiple of n_kv_heads ",
                                                   c.n_kv_heads));
  }
  for (size_t i = 0; i < p.sequences.size(); ++i) {
    const AttentionSequence& s = p.sequences[i];
    if (s.num_tokens < 0 || s.first_row < 0 || s.first_row + s.num_tokens > p.num_rows) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " rows [",
                                                     s.first_row, ", ", s.first_row + s.num_tokens,
                                                     ") outside the batch of ", p.num_rows));
    }
    if (s.context_len < s.num_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " context_len ",
                                                     s.context_len, " < num_tokens ",
                                                     s.num_tokens));
    }
    const int64_t blocks_needed = (s.context_len + c.block_size - 1) / c.block_size;
    if (static_cast<int64_t>(s.block_table.size()) < blocks_needed) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: sequence ", i, " has ", s.block_table.size(),
                       " blocks but its context of ", s.context_len, " needs ", blocks_needed));
    }
    for (int64_t b = 0; b < blocks_needed; ++b) {
      if (s.block_table[b] < 0 || s.block_table[b] >= c.num_blocks) {
        return absl::InvalidArgumentError(absl::StrCat("Attention: sequence ", i, " block ",
                                                       s.block_table[b], " outside the cache of ",
                                                       c.num_blocks, " blocks"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace cmoe::kernels
