#include "tests/test_util.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "common/logging.h"
#include "gtest/gtest.h"

namespace cmoe::testing {

std::string SharedDir() {
  if (const char* env = std::getenv("CMOE_SHARED_DIR"); env != nullptr) return env;
  return std::string(CMOE_SOURCE_DIR) + "/../shared";
}

std::string SharedModel(const std::string& name) { return SharedDir() + "/models/" + name; }
std::string SharedData(const std::string& name) { return SharedDir() + "/data/" + name; }

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string base = (tmp != nullptr && *tmp != '\0') ? tmp : "/tmp";
  std::string name = "cmoe_test";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
    name += std::string("_") + info->test_suite_name() + "_" + info->name();
  }
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  std::string pattern = base + "/" + name + "_XXXXXX";
  CMOE_CHECK(::mkdtemp(pattern.data()) != nullptr) << "mkdtemp " << pattern;
  path_ = pattern;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  CMOE_CHECK(out.good()) << "cannot write " << path;
  out.write(contents.data(), static_cast<std::streamsize>(contents.size()));
  CMOE_CHECK(out.good()) << "cannot write " << path;
}

}  // namespace cmoe::testing
