// One thread that runs posted tasks in order. The service hands it the gRPC writes of streaming
// calls, so the engine's step thread only queues tokens and goes back to the model: starting a
// gRPC write costs tens of microseconds (framing, the transport's locks, often the socket write
// itself), and the step thread is the serial path of every token in the batch.
//
//   SerialExecutor writer("cmoe-writer");
//   writer.Post([reactor] { reactor->Pump(); });
//
// Tasks posted before destruction all run, and so do tasks that running tasks post; the
// destructor then joins the thread. Posting from another thread once the destructor has started
// is a programming error. Thread-safe.
#ifndef CMOE_SERVER_SERIAL_EXECUTOR_H_
#define CMOE_SERVER_SERIAL_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

namespace cmoe::server {

class SerialExecutor {
 public:
  // `name` becomes the thread's name (first 15 bytes), for top and perf.
  explicit SerialExecutor(std::string name);
  ~SerialExecutor();
  SerialExecutor(const SerialExecutor&) = delete;
  SerialExecutor& operator=(const SerialExecutor&) = delete;

  void Post(std::function<void()> task);

 private:
  void Run();

  const std::string name_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  bool running_ = false;  // the thread is between taking tasks and waiting again
  std::thread thread_;    // last: starts after the members above exist
};

}  // namespace cmoe::server

#endif  // CMOE_SERVER_SERIAL_EXECUTOR_H_
