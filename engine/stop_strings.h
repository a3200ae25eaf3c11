// Stop strings over streamed text: text that could still become the start of a stop string is
// held back, so a client never receives part of a stop string, and a stop string split over
// several tokens is found.
//
//   StopStringMatcher stops({"\n\n", "The end"});
//   std::string out = stops.Push(delta);   // safe to send now
//   if (stops.matched()) ...                // finish: `out` ended just before the stop string
//   std::string rest = stops.Flush();       // when the request ends for another reason
#ifndef CMOE_ENGINE_STOP_STRINGS_H_
#define CMOE_ENGINE_STOP_STRINGS_H_

#include <string>
#include <string_view>
#include <vector>

namespace cmoe::engine {

class StopStringMatcher {
 public:
  // Empty strings in `stops` are ignored.
  explicit StopStringMatcher(std::vector<std::string> stops);

  // Appends `text` (whole UTF-8 characters); returns what can be sent now. After a match, the
  // returned text ends right before the earliest stop string and later calls return "".
  std::string Push(std::string_view text);
  // The text held back (empty after a match).
  std::string Flush();
  bool matched() const { return matched_; }

 private:
  std::vector<std::string> stops_;
  size_t longest_ = 0;
  std::string held_;
  bool matched_ = false;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_STOP_STRINGS_H_
