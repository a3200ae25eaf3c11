#include "engine/protobuf_wire.h"

namespace cmoe::engine {
namespace {

std::optional<uint64_t> ReadVarint(std::string_view data, size_t* pos) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64 && *pos < data.size(); shift += 7) {
    const auto byte = static_cast<uint8_t>(data[(*pos)++]);
    value |= static_cast<uint64_t>(byte & 0x7F) << shift;
    if ((byte & 0x80) == 0) return value;
  }
  return std::nullopt;
}

}  // namespace

void AppendVarint(uint64_t value, std::string* out) {
  while (value >= 0x80) {
    out->push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out->push_back(static_cast<char>(value));
}

std::optional<WireField> ReadWireField(std::string_view data, size_t* pos) {
  if (*pos >= data.size()) return std::nullopt;
  const std::optional<uint64_t> key = ReadVarint(data, pos);
  if (!key) return std::nullopt;
  WireField field;
  field.number = static_cast<uint32_t>(*key >> 3);
  field.wire_type = static_cast<uint32_t>(*key & 7);
  if (field.wire_type == kWireVarint) {
    const std::optional<uint64_t> value = ReadVarint(data, pos);
    if (!value) return std::nullopt;
    field.varint = *value;
    return field;
  }
  uint64_t size = field.wire_type == 1 ? 8 : field.wire_type == 5 ? 4 : 0;
  if (field.wire_type == kWireLengthDelimited) {
    const std::optional<uint64_t> length = ReadVarint(data, pos);
    if (!length) return std::nullopt;
    size = *length;
  } else if (size == 0) {
    return std::nullopt;
  }
  if (size > data.size() - *pos) return std::nullopt;
  if (field.wire_type == kWireLengthDelimited) field.payload = data.substr(*pos, size);
  *pos += size;
  return field;
}

}  // namespace cmoe::engine
