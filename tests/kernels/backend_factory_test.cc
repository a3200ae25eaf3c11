// --device parsing and the errors a user sees: unknown devices and malformed CUDA ordinals are
// InvalidArgument naming the value; "cuda" on a build or machine without a GPU is Unavailable
// with the reason (never a crash), and on a GPU machine it gives the CUDA backend.
#include "kernels/backend_factory.h"

#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace cmoe::kernels {
namespace {

TEST(BackendFactoryTest, MakesTheCpuBackends) {
  auto cpu = CreateBackend({.device = "cpu", .threads = 1});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(absl::StartsWith(std::string((*cpu)->Name()), "cpu-"));
  EXPECT_FALSE((*cpu)->IsDevice());
  auto reference = CreateBackend({.device = "reference"});
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_EQ((*reference)->Name(), "reference");
}

TEST(BackendFactoryTest, NamesAnUnknownDevice) {
  for (const std::string device : {"gpu", "CPU", "", "cuda0", "tpu:0"}) {
    auto backend = CreateBackend({.device = device});
    ASSERT_FALSE(backend.ok()) << device;
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << device;
    EXPECT_TRUE(absl::StrContains(backend.status().message(), "'" + device + "'"))
        << backend.status();
  }
}

TEST(BackendFactoryTest, RejectsAMalformedCudaOrdinal) {
  for (const std::string device : {"cuda:", "cuda:x", "cuda:-1", "cuda:1x", "cuda: 1"}) {
    auto backend = CreateBackend({.device = device});
    ASSERT_FALSE(backend.ok()) << device;
    EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument) << device;
    EXPECT_TRUE(absl::StrContains(backend.status().message(), "cuda:N")) << backend.status();
  }
  EXPECT_EQ(*ParseCudaDevice("cuda"), 0);
  EXPECT_EQ(*ParseCudaDevice("cuda:0"), 0);
  EXPECT_EQ(*ParseCudaDevice("cuda:7"), 7);
}

TEST(BackendFactoryTest, CudaIsABackendOrAClearError) {
  auto backend = CreateBackend({.device = "cuda"});
  if (backend.ok()) {
    EXPECT_TRUE((*backend)->IsDevice());
    EXPECT_TRUE(absl::StartsWith(std::string((*backend)->Name()), "cuda:0 ")) << (*backend)->Name();
    EXPECT_TRUE((*backend)->Health().ok());
    return;
  }
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kUnavailable) << backend.status();
  EXPECT_TRUE(absl::StartsWith(backend.status().message(), "--device cuda: ")) << backend.status();
  EXPECT_TRUE(absl::StrContains(backend.status().message(), "CUDA")) << backend.status();
}

TEST(BackendFactoryTest, AnOrdinalBeyondTheDevicesIsAnError) {
  auto backend = CreateBackend({.device = "cuda:999"});
  ASSERT_FALSE(backend.ok());
  // No GPU (or no CUDA build): Unavailable; with GPUs: the ordinal does not exist.
  EXPECT_TRUE(backend.status().code() == absl::StatusCode::kUnavailable ||
              backend.status().code() == absl::StatusCode::kInvalidArgument)
      << backend.status();
  EXPECT_TRUE(absl::StrContains(backend.status().message(), "cuda:999")) << backend.status();
}

TEST(BackendFactoryTest, RejectsAbsurdThreadCounts) {
  auto backend = CreateBackend({.device = "cpu", .threads = kMaxThreads + 1});
  ASSERT_FALSE(backend.ok());
  EXPECT_EQ(backend.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(backend.status().message(), "--threads")) << backend.status();
}

}  // namespace
}  // namespace cmoe::kernels
