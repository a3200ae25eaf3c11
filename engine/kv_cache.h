// The paged KV cache: a preallocated pool of fixed-size blocks per layer, and the free list that
// hands blocks to sequences. A sequence owns a block table (indices into the pool); position p of
// the sequence lives in block table[p / block_size] at offset p % block_size.
//
//   CMOE_ASSIGN_OR_RETURN(auto cache, KvCache::Create(config, {.block_size = 16,
//                                                              .num_blocks = 1024}));
//   SequenceBlocks seq;
//   CMOE_RETURN_IF_ERROR(cache->Reserve(seq, prompt_len));   // ResourceExhausted when full
//   ... forward ...
//   cache->Release(seq);
//
// Not thread-safe: the engine's step thread owns it.
#ifndef CMOE_ENGINE_KV_CACHE_H_
#define CMOE_ENGINE_KV_CACHE_H_

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model_config.h"
#include "kernels/backend.h"

namespace cmoe::engine {

struct KvCacheOptions {
  int32_t block_size = 16;  // positions per block
  int64_t num_blocks = 0;   // blocks in the pool (shared by all sequences)
  // kF32, or kBF16: half the memory (twice the positions in the same bytes) and half the
  // attention's cache reads, keys and values rounded to BF16 when stored.
  kernels::DType dtype = kernels::DType::kF32;
  // Where the pool lives: null for host memory, else memory of this backend (a GPU's), which
  // must outlive the cache.
  kernels::Backend* memory = nullptr;
};

// The blocks one sequence holds and how many positions of them are in use.
struct SequenceBlocks {
  std::vector<int32_t> table;
  int64_t length = 0;  // positions reserved (written or about to be written this step)
};

// The default capacity of a serving cache, in positions: room for `max_running` full contexts,
// capped at 4 GiB of keys and values in `dtype` (but at least one context).
int64_t DefaultKvCacheTokens(const ModelConfig& config, int64_t max_running,
                             kernels::DType dtype = kernels::DType::kF32);

// "f32" / "bf16" (the --kv-cache-dtype spellings) -> the dtype; InvalidArgument naming the
// accepted values otherwise.
absl::StatusOr<kernels::DType> ParseKvCacheDType(std::string_view name);

class KvCache {
 public:
  // Allocates num_blocks * BytesPerBlock(config, block_size, dtype) bytes. InvalidArgument for
  // non-positive sizes or a dtype other than F32 / BF16; ResourceExhausted when the allocation
  // fails.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(const ModelConfig& config,
                                                         const KvCacheOptions& options);

  // Bytes one block takes over all layers (keys and values in `dtype`).
  static int64_t BytesPerBlock(const ModelConfig& config, int32_t block_size,
                               kernels::DType dtype = kernels::DType::kF32);

  // The pool slice of layer `layer` for the backend.
  kernels::PagedKvLayer Layer(int64_t layer);

  // Grows `seq` to hold `new_length` positions, taking blocks from the free list. All or nothing:
  // ResourceExhausted (and `seq` unchanged) when too few blocks are free.
  absl::Status Reserve(SequenceBlocks& seq, int64_t new_length);
  // Returns all blocks of `seq` to the free list and empties it.
  void Release(SequenceBlocks& seq);

  // Slot (block * block_size + offset) of position `pos` of `seq`; pos < seq.length.
  int32_t Slot(const SequenceBlocks& seq, int64_t pos) const;

  int32_t block_size() const { return block_size_; }
  kernels::DType dtype() const { return dtype_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_free_blocks() const { return static_cast<int64_t>(free_.size()); }
  // Blocks needed to hold `length` positions.
  int64_t BlocksFor(int64_t length) const { return (length + block_size_ - 1) / block_size_; }

 private:
  KvCache() = default;

  int32_t block_size_ = 0;
  int64_t num_blocks_ = 0;
  int64_t num_layers_ = 0;
  int32_t n_kv_heads_ = 0;
  int32_t head_dim_ = 0;
  kernels::DType dtype_ = kernels::DType::kF32;
  int64_t layer_bytes_ = 0;  // bytes per layer for k (and for v)
  // (layers, num_blocks * block_size, n_kv_heads, head_dim) of dtype_. Left uninitialised: a
  // position is always written before attention reads it, and untouched pages cost no memory, so
  // a pool sized for a full context only takes what sequences use.
  std::unique_ptr<float[]> host_k_;  // floats, for their alignment
  std::unique_ptr<float[]> host_v_;
  kernels::Buffer device_k_;  // when options.memory is set
  kernels::Buffer device_v_;
  char* k_ = nullptr;
  char* v_ = nullptr;
  std::vector<int32_t> free_;  // free block indices, used as a stack
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_KV_CACHE_H_
