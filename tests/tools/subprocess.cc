#include "tests/tools/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

extern char** environ;

namespace cmoe::testing {
namespace {

using Clock = std::chrono::steady_clock;

// Both ends close on exec; the child gets its copies through dup2, which clears the flag.
struct Pipe {
  int read_fd = -1;
  int write_fd = -1;
  bool Open() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return false;
    read_fd = fds[0];
    write_fd = fds[1];
    return true;
  }
  void CloseRead() { CloseFd(read_fd); }
  void CloseWrite() { CloseFd(write_fd); }
  static void CloseFd(int& fd) {
    if (fd >= 0) ::close(fd);
    fd = -1;
  }
};

bool Spawn(const std::vector<std::string>& argv, Pipe& out, Pipe& err, pid_t& pid,
           std::string& error) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out.write_fd, STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err.write_fd, STDERR_FILENO);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  const int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) error = argv[0] + ": " + std::strerror(rc);
  return rc == 0;
}

// Reads both pipes until they reach EOF or the deadline passes; false on timeout.
bool Drain(Pipe& out, Pipe& err, SubprocessResult& result, Clock::time_point deadline) {
  char buf[65536];
  while (out.read_fd >= 0 || err.read_fd >= 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    pollfd fds[2] = {{.fd = out.read_fd, .events = POLLIN, .revents = 0},
                     {.fd = err.read_fd, .events = POLLIN, .revents = 0}};
    const int ready = ::poll(fds, 2, static_cast<int>(left));
    if (ready < 0 && errno != EINTR) return false;
    Pipe* pipes[2] = {&out, &err};
    std::string* sinks[2] = {&result.out, &result.err};
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof(buf));
      if (n > 0) {
        sinks[i]->append(buf, static_cast<size_t>(n));
      } else if (n == 0 || errno != EINTR) {
        pipes[i]->CloseRead();
      }
    }
  }
  return true;
}

void Reap(pid_t pid, SubprocessResult& result) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.term_signal = WTERMSIG(status);
}

}  // namespace

std::string SubprocessResult::Describe() const {
  if (!spawned) return "not started: " + error;
  if (timed_out) return "timed out";
  if (term_signal != 0) return "signal " + std::to_string(term_signal);
  return "exit " + std::to_string(exit_code);
}

SubprocessResult RunSubprocess(const SubprocessOptions& options) {
  SubprocessResult result;
  if (options.argv.empty()) {
    result.error = "empty argv";
    return result;
  }
  Pipe out, err;
  if (!out.Open() || !err.Open()) {
    result.error = std::string("pipe: ") + std::strerror(errno);
    out.CloseRead(), out.CloseWrite(), err.CloseRead(), err.CloseWrite();
    return result;
  }
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(options.timeout_seconds));
  pid_t pid = -1;
  result.spawned = Spawn(options.argv, out, err, pid, result.error);
  out.CloseWrite();
  err.CloseWrite();
  if (result.spawned) {
    if (!Drain(out, err, result, deadline)) {
      result.timed_out = true;
      ::kill(pid, SIGKILL);
    }
    Reap(pid, result);
  }
  out.CloseRead();
  err.CloseRead();
  return result;
}

}  // namespace cmoe::testing
