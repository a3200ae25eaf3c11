// Monotonic wall-clock stopwatch for tool timings and progress lines.
#ifndef CMOE_COMMON_TIMER_H_
#define CMOE_COMMON_TIMER_H_

#include <chrono>

namespace cmoe {

class Timer {
 public:
  Timer() : start_(std::chrono::steady_clock::now()) {}
  void Reset() { start_ = std::chrono::steady_clock::now(); }
  double Seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

}  // namespace cmoe

#endif  // CMOE_COMMON_TIMER_H_
