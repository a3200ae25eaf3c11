#include "server/serial_executor.h"

#include <pthread.h>

#include <utility>

namespace cmoe::server {

SerialExecutor::SerialExecutor(std::string name)
    : name_(std::move(name)), thread_([this] { Run(); }) {}

SerialExecutor::~SerialExecutor() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_one();
  thread_.join();
}

void SerialExecutor::Post(std::function<void()> task) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tasks_.push_back(std::move(task));
    // A busy thread takes the task on its next round; only a waiting one needs the (costly)
    // wake-up, so a step that posts many writes wakes it once.
    wake = !running_;
    running_ = true;
  }
  if (wake) wake_.notify_one();
}

void SerialExecutor::Run() {
  pthread_setname_np(pthread_self(), name_.substr(0, 15).c_str());
  std::deque<std::function<void()>> batch;
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    if (tasks_.empty()) {
      if (stop_) return;  // everything posted has run
      running_ = false;
      wake_.wait(lock, [this] { return stop_ || !tasks_.empty(); });
      continue;
    }
    running_ = true;
    batch.swap(tasks_);
    lock.unlock();
    for (auto& task : batch) task();
    batch.clear();
    lock.lock();
  }
}

}  // namespace cmoe::server
