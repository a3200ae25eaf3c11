// The CPU backend dressed as a device, for testing the engine's device path on a machine without
// a GPU: weights are copied at upload (the model must never read the checkpoint's memory), fresh
// allocations are NaN bytes (nothing may be read before it is written), every op is the CPU
// backend's, and the bytes copied back to the host (what a GPU would send over PCIe) and the rows
// sampled are counted. The counters are read by the test's thread between steps.
#ifndef CMOE_TESTS_ENGINE_FAKE_DEVICE_BACKEND_H_
#define CMOE_TESTS_ENGINE_FAKE_DEVICE_BACKEND_H_

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <utility>
#include <vector>

#include "common/logging.h"
#include "common/status.h"
#include "kernels/cpu/cpu_backend.h"
#include "tests/kernels/delegating_backend.h"

namespace cmoe::testing {

class FakeDeviceBackend final : public DelegatingBackend {
 public:
  FakeDeviceBackend() : DelegatingBackend(MakeCpu()) {}

  std::string_view Name() const override { return "fake-device"; }
  bool IsDevice() const override { return true; }
  absl::StatusOr<kernels::Buffer> Allocate(int64_t bytes) override {
    CMOE_ASSIGN_OR_RETURN(kernels::Buffer b, Backend::Allocate(bytes));
    if (bytes > 0) std::memset(b.data(), 0xff, static_cast<size_t>(bytes));
    return b;
  }
  absl::StatusOr<kernels::WeightView> UploadWeight(const kernels::WeightView& host) override {
    uploads_.emplace_back(static_cast<const char*>(host.data),
                          static_cast<const char*>(host.data) + host.bytes());
    kernels::WeightView copy = host;
    copy.data = uploads_.back().data();
    uploaded_bytes_ += host.bytes();
    return copy;
  }
  absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override {
    copied_to_host_ += bytes;
    return Backend::CopyToHost(dst, src, bytes);
  }

  absl::Status SampleTokens(const kernels::SampleTokensParams& params) override {
    sampled_rows_ += params.rows;
    return DelegatingBackend::SampleTokens(params);
  }

  int64_t uploaded_bytes() const { return uploaded_bytes_; }
  // Rows sampled on the "device" so far.
  int64_t sampled_rows() const { return sampled_rows_; }
  // Bytes copied back to the host so far.
  int64_t copied_to_host() const { return copied_to_host_; }

 private:
  static std::unique_ptr<kernels::Backend> MakeCpu() {
    auto cpu = kernels::cpu::MakeCpuBackend({.threads = 1});
    CMOE_CHECK(cpu.ok()) << cpu.status();
    return std::move(cpu).value();
  }

  std::vector<std::vector<char>> uploads_;
  int64_t uploaded_bytes_ = 0;
  std::atomic<int64_t> copied_to_host_{0};
  std::atomic<int64_t> sampled_rows_{0};
};

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_ENGINE_FAKE_DEVICE_BACKEND_H_
