#include "engine/tokenizer.h"

#include <string>

#include "common/status.h"

namespace cmoe::engine {

absl::Status Tokenizer::CheckTokenId(int32_t id) const {
  if (id >= 0 && id < vocab_size()) return absl::OkStatus();
  return absl::InvalidArgumentError("token id " + std::to_string(id) +
                                    " is outside the vocabulary of " +
                                    std::to_string(vocab_size()));
}

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
