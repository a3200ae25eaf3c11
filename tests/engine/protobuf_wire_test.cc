#include "engine/protobuf_wire.h"

#include "gtest/gtest.h"

namespace cmoe::engine {
namespace {

TEST(ProtobufWireTest, ReadsVarintAndLengthDelimitedFields) {
  std::string data;
  AppendVarint(1 << 3 | kWireVarint, &data);  // field 1, varint 300
  AppendVarint(300, &data);
  AppendVarint(2 << 3 | kWireLengthDelimited, &data);  // field 2, "abc"
  AppendVarint(3, &data);
  data += "abc";
  AppendVarint(3 << 3 | 5, &data);  // field 3, fixed32: skipped over
  data += std::string(4, '\0');
  size_t pos = 0;
  auto f = ReadWireField(data, &pos);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->number, 1u);
  EXPECT_EQ(f->varint, 300u);
  f = ReadWireField(data, &pos);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->number, 2u);
  EXPECT_EQ(f->payload, "abc");
  f = ReadWireField(data, &pos);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->number, 3u);
  EXPECT_FALSE(ReadWireField(data, &pos).has_value());
  EXPECT_EQ(pos, data.size());
}

TEST(ProtobufWireTest, StopsShortOnMalformedData) {
  std::string data;
  AppendVarint(2 << 3 | kWireLengthDelimited, &data);
  AppendVarint(10, &data);  // claims 10 bytes, has 2
  data += "ab";
  size_t pos = 0;
  EXPECT_FALSE(ReadWireField(data, &pos).has_value());
  EXPECT_NE(pos, data.size());
  const std::string truncated_varint = "\x08\xff";
  pos = 0;
  EXPECT_FALSE(ReadWireField(truncated_varint, &pos).has_value());
  const std::string group = "\x0b";  // field 1, start-group
  pos = 0;
  EXPECT_FALSE(ReadWireField(group, &pos).has_value());
}

}  // namespace
}  // namespace cmoe::engine
