#include "engine/stop_strings.h"

#include <algorithm>
#include <utility>

namespace cmoe::engine {

StopStringMatcher::StopStringMatcher(std::vector<std::string> stops) {
  for (std::string& s : stops) {
    if (s.empty()) continue;
    longest_ = std::max(longest_, s.size());
    stops_.push_back(std::move(s));
  }
}

std::string StopStringMatcher::Push(std::string_view text) {
  if (matched_) return "";
  if (stops_.empty()) return std::string(text);
  held_.append(text);
  size_t first = std::string::npos;
  for (const std::string& s : stops_) first = std::min(first, held_.find(s));
  if (first != std::string::npos) {
    matched_ = true;
    std::string out = held_.substr(0, first);
    held_.clear();
    return out;
  }
  // Hold back the longest suffix that begins some stop string (it may complete later), moved
  // back to the start of a UTF-8 character so that what is sent is whole characters.
  size_t keep = 0;
  for (size_t len = std::min(held_.size(), longest_ - 1); len > 0 && keep == 0; --len) {
    const std::string_view suffix = std::string_view(held_).substr(held_.size() - len);
    for (const std::string& s : stops_) {
      if (std::string_view(s).substr(0, len) == suffix) {
        keep = len;
        break;
      }
    }
  }
  size_t cut = held_.size() - keep;
  while (cut > 0 && cut < held_.size() && (static_cast<unsigned char>(held_[cut]) & 0xC0) == 0x80) {
    --cut;
  }
  std::string out = held_.substr(0, cut);
  held_.erase(0, cut);
  return out;
}

std::string StopStringMatcher::Flush() { return std::exchange(held_, ""); }

}  // namespace cmoe::engine
