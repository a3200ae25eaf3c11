// Just enough of the protobuf wire format to read and patch a SentencePiece ModelProto without
// the generated sentencepiece_model.pb.h (Debian does not ship it) or libprotobuf.
//
//   size_t pos = 0;
//   while (std::optional<WireField> f = ReadWireField(proto, &pos)) { ... }
#ifndef CMOE_ENGINE_PROTOBUF_WIRE_H_
#define CMOE_ENGINE_PROTOBUF_WIRE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace cmoe::engine {

inline constexpr uint32_t kWireVarint = 0;
inline constexpr uint32_t kWireLengthDelimited = 2;

struct WireField {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t varint = 0;       // wire type 0
  std::string_view payload;  // wire type 2 (a view into the input)
};

// Reads the field at *pos and advances past it (fixed32/fixed64 fields are skipped over but
// returned with an empty payload). nullopt at the end of the data, on malformed data, or on the
// deprecated group wire types; *pos then says where it stopped (data.size() at a clean end).
std::optional<WireField> ReadWireField(std::string_view data, size_t* pos);

// Appends `value` as a base-128 varint.
void AppendVarint(uint64_t value, std::string* out);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_PROTOBUF_WIRE_H_
