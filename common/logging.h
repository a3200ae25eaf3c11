// A thin logger on stderr. Debian's Abseil has no absl/log, and we want no glog dependency
// in the bottom layer.
//
//   CMOE_LOG(INFO) << "loaded " << n << " tensors";
//   CMOE_CHECK(ptr != nullptr) << "broken invariant";   // aborts: invariants only, never input
//
// Thread-safe: each message is written with a single write under a mutex.
#ifndef CMOE_COMMON_LOGGING_H_
#define CMOE_COMMON_LOGGING_H_

#include <sstream>
#include <string_view>

namespace cmoe {

enum class LogSeverity { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kFatal = 4 };

// Messages below this severity are dropped. Default kInfo; CMOE_LOG_LEVEL=debug|info|warning|error
// in the environment overrides it at the first log call.
void SetMinLogSeverity(LogSeverity severity);
LogSeverity MinLogSeverity();

namespace internal {

class LogMessage {
 public:
  LogMessage(LogSeverity severity, const char* file, int line);
  ~LogMessage();  // writes the line; aborts for kFatal
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogSeverity severity_;
  std::ostringstream stream_;
};

// Swallows the stream when the message is disabled.
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace internal
}  // namespace cmoe

#define CMOE_LOG_SEVERITY_DEBUG ::cmoe::LogSeverity::kDebug
#define CMOE_LOG_SEVERITY_INFO ::cmoe::LogSeverity::kInfo
#define CMOE_LOG_SEVERITY_WARNING ::cmoe::LogSeverity::kWarning
#define CMOE_LOG_SEVERITY_ERROR ::cmoe::LogSeverity::kError
#define CMOE_LOG_SEVERITY_FATAL ::cmoe::LogSeverity::kFatal

#define CMOE_LOG(severity)                                                                 \
  (CMOE_LOG_SEVERITY_##severity < ::cmoe::MinLogSeverity())                                \
      ? (void)0                                                                            \
      : ::cmoe::internal::LogVoidify() &                                                   \
            ::cmoe::internal::LogMessage(CMOE_LOG_SEVERITY_##severity, __FILE__, __LINE__) \
                .stream()

#define CMOE_CHECK(cond)                                                                           \
  (cond)                                                                                           \
      ? (void)0                                                                                    \
      : ::cmoe::internal::LogVoidify() &                                                           \
            ::cmoe::internal::LogMessage(::cmoe::LogSeverity::kFatal, __FILE__, __LINE__).stream() \
                << "Check failed: " #cond " "

#endif  // CMOE_COMMON_LOGGING_H_
