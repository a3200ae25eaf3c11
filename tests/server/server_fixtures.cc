#include "tests/server/server_fixtures.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <utility>

#include "tests/test_util.h"
#include "tests/tools/tool_runner.h"

namespace cmoe::testing {

namespace {

constexpr char kTinyStories[] = "tinystories-656k";
constexpr char kCalibration[] = "tinystories_val.txt";

}  // namespace

bool HaveCarveInputs() {
  return std::filesystem::exists(SharedModel(kTinyStories)) &&
         std::filesystem::exists(SharedData(kCalibration));
}

SubprocessResult CarveTinyStories(const std::string& config, const std::string& out) {
  return RunTool(
      "cmoe-carve",
      {"--model", SharedModel(kTinyStories), "--calib", SharedData(kCalibration), "--calib-range",
       "0:200000", "--calib-seqs", "2", "--calib-len", "64", "--config", config, "--out", out});
}

HttpResponse HttpGet(int port, const std::string& target) {
  HttpResponse r;
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return r;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval timeout{.tv_sec = 10, .tv_usec = 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  std::string response;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
    const std::string request =
        "GET " + target + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
        static_cast<ssize_t>(request.size())) {
      char buf[4096];
      ssize_t n;
      while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) {
        response.append(buf, static_cast<size_t>(n));
      }
    }
  }
  ::close(fd);
  const size_t body = response.find("\r\n\r\n");
  if (!response.starts_with("HTTP/1.") || body == std::string::npos) return r;
  r.status = std::atoi(response.c_str() + response.find(' ') + 1);
  r.body = response.substr(body + 4);
  return r;
}

std::string Scrape(int port) {
  HttpResponse r = HttpGet(port, "/metrics");
  return r.status == 200 ? std::move(r.body) : "";
}

std::vector<Sample> ParseSamples(const std::string& text) {
  std::vector<Sample> samples;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t i = line.find_first_of("{ ");
    if (i == std::string::npos) continue;
    s.name = line.substr(0, i);
    if (line[i] == '{') {
      ++i;
      while (i < line.size() && line[i] != '}') {
        const size_t eq = line.find("=\"", i);
        const size_t close = line.find('"', eq + 2);
        if (eq == std::string::npos || close == std::string::npos) break;
        s.labels[line.substr(i, eq - i)] = line.substr(eq + 2, close - eq - 2);
        i = close + 1;
        if (i < line.size() && line[i] == ',') ++i;
      }
      ++i;
    }
    s.value = std::strtod(line.c_str() + i, nullptr);
    samples.push_back(std::move(s));
  }
  return samples;
}

std::optional<double> Value(const std::vector<Sample>& samples, const std::string& name,
                            const std::map<std::string, std::string>& labels) {
  for (const Sample& s : samples) {
    if (s.name != name) continue;
    bool match = true;
    for (const auto& [k, v] : labels) {
      const auto it = s.labels.find(k);
      match = match && it != s.labels.end() && it->second == v;
    }
    if (match) return s.value;
  }
  return std::nullopt;
}

}  // namespace cmoe::testing
