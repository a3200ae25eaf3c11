#include "engine/kv_cache.h"

#include <set>
#include <string>

#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

ModelConfig SmallConfig() {
  ModelConfig c;
  c.hidden_size = 16;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 64;
  return c;
}

TEST(KvCacheTest, ReserveTakesWholeBlocksAndReleaseReturnsThem) {
  auto cache = KvCache::Create(SmallConfig(), {.block_size = 4, .num_blocks = 5});
  ASSERT_TRUE(cache.ok()) << cache.status();
  SequenceBlocks a, b;
  ASSERT_TRUE((*cache)->Reserve(a, 5).ok());
  EXPECT_EQ(a.table.size(), 2u);
  EXPECT_EQ(a.length, 5);
  ASSERT_TRUE((*cache)->Reserve(a, 8).ok());  // still fits in 2 blocks
  EXPECT_EQ(a.table.size(), 2u);
  ASSERT_TRUE((*cache)->Reserve(b, 12).ok());
  EXPECT_EQ((*cache)->num_free_blocks(), 0);
  std::set<int32_t> all(a.table.begin(), a.table.end());
  all.insert(b.table.begin(), b.table.end());
  EXPECT_EQ(all.size(), 5u);  // no block handed out twice
  (*cache)->Release(a);
  EXPECT_TRUE(a.table.empty());
  EXPECT_EQ(a.length, 0);
  EXPECT_EQ((*cache)->num_free_blocks(), 2);
}

TEST(KvCacheTest, ReserveIsAllOrNothing) {
  auto cache = KvCache::Create(SmallConfig(), {.block_size = 4, .num_blocks = 3});
  ASSERT_TRUE(cache.ok());
  SequenceBlocks a;
  ASSERT_TRUE((*cache)->Reserve(a, 4).ok());
  const absl::Status status = (*cache)->Reserve(a, 16);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(a.table.size(), 1u);
  EXPECT_EQ(a.length, 4);
  EXPECT_EQ((*cache)->num_free_blocks(), 2);
}

TEST(KvCacheTest, SlotsFollowTheBlockTable) {
  auto cache = KvCache::Create(SmallConfig(), {.block_size = 4, .num_blocks = 4});
  ASSERT_TRUE(cache.ok());
  SequenceBlocks a;
  a.table = {3, 1};
  a.length = 8;
  EXPECT_EQ((*cache)->Slot(a, 0), 12);
  EXPECT_EQ((*cache)->Slot(a, 3), 15);
  EXPECT_EQ((*cache)->Slot(a, 4), 4);
  EXPECT_EQ((*cache)->Slot(a, 7), 7);
}

TEST(KvCacheTest, LayersDoNotOverlap) {
  auto cache = KvCache::Create(SmallConfig(), {.block_size = 4, .num_blocks = 2});
  ASSERT_TRUE(cache.ok());
  const kernels::PagedKvLayer l0 = (*cache)->Layer(0), l1 = (*cache)->Layer(1);
  EXPECT_EQ(static_cast<char*>(l1.k) - static_cast<char*>(l0.k), 2 * 4 * 2 * 4 * 4);
  EXPECT_EQ(static_cast<char*>(l1.v) - static_cast<char*>(l0.v), 2 * 4 * 2 * 4 * 4);
  EXPECT_EQ(l0.dtype, kernels::DType::kF32);
  EXPECT_EQ(l0.n_kv_heads, 2);
  EXPECT_EQ(l0.head_dim, 4);
  EXPECT_EQ(KvCache::BytesPerBlock(SmallConfig(), 4), 2 * 2 * 4 * 2 * 4 * 4);
}

TEST(KvCacheTest, Bf16CacheTakesHalfTheBytes) {
  auto cache = KvCache::Create(SmallConfig(),
                               {.block_size = 4, .num_blocks = 2, .dtype = kernels::DType::kBF16});
  ASSERT_TRUE(cache.ok()) << cache.status();
  const kernels::PagedKvLayer l0 = (*cache)->Layer(0), l1 = (*cache)->Layer(1);
  EXPECT_EQ(l0.dtype, kernels::DType::kBF16);
  EXPECT_EQ((*cache)->dtype(), kernels::DType::kBF16);
  EXPECT_EQ(static_cast<char*>(l1.k) - static_cast<char*>(l0.k), 2 * 4 * 2 * 4 * 2);
  EXPECT_EQ(KvCache::BytesPerBlock(SmallConfig(), 4, kernels::DType::kBF16),
            KvCache::BytesPerBlock(SmallConfig(), 4) / 2);
  // The default capacity is capped in bytes: twice the positions in BF16.
  const int64_t many = int64_t{1} << 40;
  EXPECT_EQ(DefaultKvCacheTokens(SmallConfig(), many, kernels::DType::kBF16),
            2 * DefaultKvCacheTokens(SmallConfig(), many));
  const auto f16 = KvCache::Create(
      SmallConfig(), {.block_size = 4, .num_blocks = 2, .dtype = kernels::DType::kF16});
  EXPECT_EQ(f16.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(*ParseKvCacheDType("bf16"), kernels::DType::kBF16);
  EXPECT_EQ(*ParseKvCacheDType("f32"), kernels::DType::kF32);
  const auto bad = ParseKvCacheDType("fp8");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("f32 or bf16"), std::string::npos);
}

TEST(KvCacheTest, RejectsNonPositiveSizes) {
  EXPECT_EQ(KvCache::Create(SmallConfig(), {.block_size = 0, .num_blocks = 4}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KvCache::Create(SmallConfig(), {.block_size = 4, .num_blocks = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace cmoe::engine
