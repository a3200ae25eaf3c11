#include "engine/incremental_detokenizer.h"

#include "common/status.h"
#include "engine/utf8.h"

namespace cmoe::engine {

absl::StatusOr<std::string> IncrementalDetokenizer::Push(int32_t id) {
  CMOE_ASSIGN_OR_RETURN(std::string bytes, tokenizer_->TokenBytes(previous_, id));
  previous_ = id;
  pending_ += bytes;
  const size_t held = IncompleteUtf8SuffixLength(pending_);
  std::string ready = SanitizeUtf8(std::string_view(pending_).substr(0, pending_.size() - held));
  pending_.erase(0, pending_.size() - held);
  return ready;
}

std::string IncrementalDetokenizer::Flush() {
  std::string rest = SanitizeUtf8(pending_);
  pending_.clear();
  previous_ = -1;
  return rest;
}

}  // namespace cmoe::engine
