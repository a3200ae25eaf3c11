#include "engine/kv_cache.h"

#include <algorithm>
#include <new>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace cmoe::engine {

int64_t DefaultKvCacheTokens(const ModelConfig& config, int64_t max_running, kernels::DType dtype) {
  const int64_t context = config.max_position_embeddings;
  const int64_t bytes_per_token =
      std::max<int64_t>(1, 2 * config.num_hidden_layers * config.num_key_value_heads *
                               config.head_dim * static_cast<int64_t>(kernels::DTypeSize(dtype)));
  const int64_t cap = std::max<int64_t>(context, (int64_t{4} << 30) / bytes_per_token);
  // Clamped before multiplying: an absurd max_running must not overflow.
  const int64_t running =
      std::clamp<int64_t>(max_running, 1, cap / std::max<int64_t>(context, 1) + 1);
  return std::min(running * context, cap);
}

absl::StatusOr<kernels::DType> ParseKvCacheDType(std::string_view name) {
  if (name == "f32") return kernels::DType::kF32;
  if (name == "bf16") return kernels::DType::kBF16;
  return absl::InvalidArgumentError(
      absl::StrCat("KV cache dtype \"", std::string(name), "\": expected f32 or bf16"));
}

int64_t KvCache::BytesPerBlock(const ModelConfig& config, int32_t block_size,
                               kernels::DType dtype) {
  return 2 * config.num_hidden_layers * block_size * config.num_key_value_heads * config.head_dim *
         static_cast<int64_t>(kernels::DTypeSize(dtype));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelConfig& config,
                                                         const KvCacheOptions& options) {
  if (options.block_size <= 0 || options.num_blocks <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache: block_size ", options.block_size,
                                                   " and num_blocks ", options.num_blocks,
                                                   " must be positive"));
  }
  if (options.num_blocks > INT32_MAX / options.block_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: ", options.num_blocks, " blocks of ", options.block_size,
                     " positions exceed 2^31 - 1 slots; use a smaller cache"));
  }
  if (options.dtype != kernels::DType::kF32 && options.dtype != kernels::DType::kBF16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: dtype ", std::string(kernels::DTypeName(options.dtype)), "; F32 or BF16"));
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->block_size_ = options.block_size;
  cache->num_blocks_ = options.num_blocks;
  cache->num_layers_ = config.num_hidden_layers;
  cache->n_kv_heads_ = static_cast<int32_t>(config.num_key_value_heads);
  cache->head_dim_ = static_cast<int32_t>(config.head_dim);
  cache->dtype_ = options.dtype;
  cache->layer_bytes_ = options.num_blocks * options.block_size * config.num_key_value_heads *
                        config.head_dim * static_cast<int64_t>(kernels::DTypeSize(options.dtype));
  const int64_t bytes = cache->layer_bytes_ * config.num_hidden_layers;
  if (options.memory != nullptr) {
    const auto allocate = [&](kernels::Buffer& buffer) -> absl::Status {
      absl::StatusOr<kernels::Buffer> b = options.memory->Allocate(bytes);
      if (!b.ok()) {
        return absl::ResourceExhaustedError(
            absl::StrCat("KV cache: cannot allocate ", 2 * bytes, " bytes on ",
                         std::string(options.memory->Name()), ": ", b.status().message()));
      }
      buffer = std::move(b).value();
      return absl::OkStatus();
    };
    CMOE_RETURN_IF_ERROR(allocate(cache->device_k_));
    CMOE_RETURN_IF_ERROR(allocate(cache->device_v_));
    cache->k_ = cache->device_k_.as<char>();
    cache->v_ = cache->device_v_.as<char>();
  } else {
    const auto floats = static_cast<size_t>((bytes + 3) / 4);
    cache->host_k_.reset(new (std::nothrow) float[floats]);
    cache->host_v_.reset(new (std::nothrow) float[floats]);
    if (cache->host_k_ == nullptr || cache->host_v_ == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("KV cache: cannot allocate ", 2 * bytes, " bytes"));
    }
    cache->k_ = reinterpret_cast<char*>(cache->host_k_.get());
    cache->v_ = reinterpret_cast<char*>(cache->host_v_.get());
  }
  cache->free_.reserve(static_cast<size_t>(options.num_blocks));
  for (int64_t b = options.num_blocks - 1; b >= 0; --b) {
    cache->free_.push_back(static_cast<int32_t>(b));
  }
  return cache;
}

kernels::PagedKvLayer KvCache::Layer(int64_t layer) {
  return kernels::PagedKvLayer{.k = k_ + layer * layer_bytes_,
                               .v = v_ + layer * layer_bytes_,
                               .dtype = dtype_,
                               .num_blocks = num_blocks_,
                               .block_size = block_size_,
                               .n_kv_heads = n_kv_heads_,
                               .head_dim = head_dim_};
}

absl::Status KvCache::Reserve(SequenceBlocks& seq, int64_t new_length) {
  const int64_t needed = BlocksFor(new_length) - static_cast<int64_t>(seq.table.size());
  if (needed > num_free_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat("KV cache: ", needed, " blocks needed, ",
                                                     num_free_blocks(), " free of ", num_blocks_));
  }
  for (int64_t i = 0; i < needed; ++i) {
    seq.table.push_back(free_.back());
    free_.pop_back();
  }
  if (new_length > seq.length) seq.length = new_length;
  return absl::OkStatus();
}

void KvCache::Release(SequenceBlocks& seq) {
  for (auto it = seq.table.rbegin(); it != seq.table.rend(); ++it) free_.push_back(*it);
  seq.table.clear();
  seq.length = 0;
}

int32_t KvCache::Slot(const SequenceBlocks& seq, int64_t pos) const {
  return seq.table[static_cast<size_t>(pos / block_size_)] * block_size_ +
         static_cast<int32_t>(pos % block_size_);
}

}  // namespace cmoe::engine
