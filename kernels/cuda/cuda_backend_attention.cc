// CudaBackend::Attention: validates on the host, stages the sequences and their block tables in one
// upload, and launches the tensor-core tile kernel (kernels/cuda/attention_tile.cu) for prefill
// chunks and the flash-decoding kernel (kernels/cuda/attention.cu) for the other sequences.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "kernels/cuda/attention.cuh"
#include "kernels/cuda/attention_tile.cuh"
#include "kernels/cuda/cuda_backend_impl.h"
#include "kernels/cuda/cuda_status.h"

namespace cmoe::kernels::cuda {
namespace {

// The kernel keeps head_dim / 32 values per lane in registers, up to 16 (attention.cu).
constexpr int32_t kMaxHeadDim = 512;

// The upload: (num_sequences) DeviceAttentionSequence, then every sequence's block table cut to
// the blocks its context needs, concatenated (int32).
struct Staged {
  std::vector<unsigned char> bytes;
  int64_t max_tokens = 0;
  int64_t max_context = 0;
  // Over the sequences below min_tile_queries query vectors (the flash-decoding kernel's share
  // when the tile kernel takes the others).
  int64_t short_max_tokens = 0;
  int64_t short_max_context = 0;
  bool any_long = false;  // some sequence has >= min_tile_queries query vectors
};

Staged StageSequences(const AttentionParams& p, int64_t min_tile_queries) {
  const int64_t group = p.n_heads / p.cache.n_kv_heads;
  const int32_t block_size = p.cache.block_size;
  std::vector<DeviceAttentionSequence> seqs;
  std::vector<int32_t> tables;
  Staged staged;
  seqs.reserve(p.sequences.size());
  for (const AttentionSequence& s : p.sequences) {
    const int64_t blocks = (s.context_len + block_size - 1) / block_size;
    seqs.push_back({.first_row = s.first_row,
                    .num_tokens = s.num_tokens,
                    .context_len = s.context_len,
                    .table_offset = static_cast<int64_t>(tables.size())});
    tables.insert(tables.end(), s.block_table.begin(), s.block_table.begin() + blocks);
    staged.max_tokens = std::max(staged.max_tokens, s.num_tokens);
    staged.max_context = std::max(staged.max_context, s.context_len);
    if (s.num_tokens * group >= min_tile_queries) {
      staged.any_long = true;
    } else {
      staged.short_max_tokens = std::max(staged.short_max_tokens, s.num_tokens);
      staged.short_max_context = std::max(staged.short_max_context, s.context_len);
    }
  }
  const size_t seq_bytes = seqs.size() * sizeof(DeviceAttentionSequence);
  staged.bytes.resize(seq_bytes + tables.size() * sizeof(int32_t));
  std::memcpy(staged.bytes.data(), seqs.data(), seq_bytes);
  if (!tables.empty()) {
    std::memcpy(staged.bytes.data() + seq_bytes, tables.data(), tables.size() * sizeof(int32_t));
  }
  return staged;
}

absl::Status CheckKernelLimits(const AttentionParams& p) {
  if (p.cache.head_dim > kMaxHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: head_dim ", p.cache.head_dim,
                                                   " is over the CUDA kernel's limit of ",
                                                   kMaxHeadDim));
  }
  if (p.cache.n_kv_heads > 65535 ||
      p.sequences.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("Attention: ", p.cache.n_kv_heads,
                                                   " kv heads or ", p.sequences.size(),
                                                   " sequences are over the CUDA limits"));
  }
  for (const AttentionSequence& s : p.sequences) {
    if (s.context_len > std::numeric_limits<int32_t>::max()) {
      return absl::InvalidArgumentError(
          absl::StrCat("Attention: context_len ", s.context_len, " does not fit int32"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CudaBackend::Attention(const AttentionParams& params) {
  CMOE_RETURN_IF_ERROR(Ready());
  CMOE_RETURN_IF_ERROR(ValidateAttention(params));
  CMOE_RETURN_IF_ERROR(CheckKernelLimits(params));
  if (params.sequences.empty()) return absl::OkStatus();
  // Prefill chunks on the tensor cores (BF16 inputs), when asked for and the shape allows: the
  // tile kernel reads the cache with 16-byte loads.
  const bool tile = prefill_attention_ == PrefillAttention::kTensorCores &&
                    TileAttentionSupports(params.cache.head_dim) &&
                    reinterpret_cast<uintptr_t>(params.cache.k) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(params.cache.v) % 16 == 0;
  const int64_t min_tile_queries =
      tile ? kTileAttentionMinQueries : std::numeric_limits<int64_t>::max();
  const Staged staged = StageSequences(params, min_tile_queries);
  if (staged.max_tokens == 0) return absl::OkStatus();  // no query rows: nothing to write
  CMOE_ASSIGN_OR_RETURN(void* device,
                        UploadBytes(staged.bytes.data(), static_cast<int64_t>(staged.bytes.size()),
                                    Scratch::kTables));
  const auto* device_seqs = static_cast<const DeviceAttentionSequence*>(device);
  PagedAttentionArgs args{
      .q = params.q,
      .num_rows = params.num_rows,
      .n_heads = params.n_heads,
      .scale = params.scale,
      .sequences = device_seqs,
      .num_sequences = static_cast<int32_t>(params.sequences.size()),
      .block_tables = reinterpret_cast<const int32_t*>(device_seqs + params.sequences.size()),
      .max_tokens = staged.max_tokens,
      .max_context = staged.max_context,
      .cache = params.cache,
      .out = params.out,
  };
  if (staged.any_long) {
    CMOE_RETURN_IF_ERROR(
        Check(CMOE_CUDA_STATUS(LaunchTileAttention(args, kTileAttentionMinQueries, stream()))));
    if (staged.short_max_tokens == 0) return absl::OkStatus();
    // The decode rows beside them: the flash-decoding kernel over its own shapes only.
    args.tile_min_queries = kTileAttentionMinQueries;
    args.max_tokens = staged.short_max_tokens;
    args.max_context = staged.short_max_context;
  }
  const AttentionSplit split = PlanAttentionSplit(args, sm_count_, attention_split_keys_);
  if (split.num_splits > 1) {
    CMOE_ASSIGN_OR_RETURN(void* partial,
                          ScratchSpace(Scratch::kAttentionPartial,
                                       split.partial_floats * static_cast<int64_t>(sizeof(float))));
    args.num_splits = split.num_splits;
    args.split_keys = split.split_keys;
    args.partial = static_cast<float*>(partial);
  }
  return Check(CMOE_CUDA_STATUS(LaunchPagedAttention(args, stream())));
}

}  // namespace cmoe::kernels::cuda
