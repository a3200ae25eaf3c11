#include "engine/tokenizer.h"

#include "common/status.h"

namespace cmoe::engine {

absl::StatusOr<std::string> Tokenizer::Decode(std::span<const int32_t> ids) const {
  std::string text;
  int32_t previous = -1;
  for (int32_t id : ids) {
    CMOE_ASSIGN_OR_RETURN(std::string bytes, TokenBytes(previous, id));
    text += bytes;
    previous = id;
  }
  return text;
}

}  // namespace cmoe::engine
