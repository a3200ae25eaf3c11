// Shared pieces of the CUDA parity tests (label gpu): a backend or a clean skip, device arrays
// with sentinel guards (also one float off alignment), random weights of every dtype on the host
// and the device, and the closeness checks with their stated bounds.
//
//   TEST(CudaRmsNorm, MatchesReference) {
//     CMOE_CUDA_BACKEND_OR_SKIP(gpu);              // std::unique_ptr<Backend> gpu, or GTEST_SKIP
//     GuardedDeviceArray<float> x(*gpu, host_x);   // uploaded between sentinel guards
//     GuardedDeviceArray<float> y(*gpu, rows * dim);  // sentinel-filled output
//     CMOE_ASSERT_OK(gpu->RmsNorm(x.data(), rows, w, eps, y.data()));
//     std::vector<float> got = y.Download();       // fails the test if a guard was overwritten
//     ExpectClose(got, want, kF32Tolerance, "RmsNorm");
//   }
#ifndef CMOE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
#define CMOE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_

#include <bit>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/dtype.h"
#include "kernels/weight_view.h"

namespace cmoe::kernels::cuda::testing {

// The CUDA backend on device 0, or null with the reason the test skips (no CUDA device).
std::unique_ptr<Backend> CudaBackendOrNull(std::string* skip_reason);

#define CMOE_CUDA_BACKEND_OR_SKIP(var)                                       \
  std::string var##_skip_reason;                                             \
  std::unique_ptr<::cmoe::kernels::Backend> var =                            \
      ::cmoe::kernels::cuda::testing::CudaBackendOrNull(&var##_skip_reason); \
  if (var == nullptr) GTEST_SKIP() << var##_skip_reason

// Asserts that a Status expression is OK, naming the expression and the status otherwise.
#define CMOE_ASSERT_OK(expr)                                               \
  do {                                                                     \
    const ::absl::Status cmoe_assert_ok_ = (expr);                         \
    ASSERT_TRUE(cmoe_assert_ok_.ok()) << #expr << ": " << cmoe_assert_ok_; \
  } while (false)

// The weight dtypes every op takes.
inline constexpr DType kWeightDTypes[] = {DType::kF32, DType::kF16, DType::kBF16};

inline constexpr int64_t kGuardElements = 64;

// A sentinel value no kernel produces: a NaN payload for floats, a large odd value for ints.
template <class T>
T Sentinel() {
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<float>(0x7fa5a5a5u);
  } else {
    return static_cast<T>(0x5a5a5a5b);
  }
}
template <class T>
bool IsSentinel(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return std::bit_cast<uint32_t>(v) == 0x7fa5a5a5u;
  } else {
    return v == Sentinel<T>();
  }
}

// Device memory of n elements with kGuardElements sentinels on each side.
template <class T>
class GuardedDeviceArray {
 public:
  // n sentinel elements (an output).
  GuardedDeviceArray(Backend& backend, int64_t n) : GuardedDeviceArray(backend, Filled(n)) {}
  // A copy of `host` (an input, or an output that is read too).
  GuardedDeviceArray(Backend& backend, std::span<const T> host)
      : backend_(backend), n_(static_cast<int64_t>(host.size())) {
    std::vector<T> staged(host.size() + 2 * kGuardElements, Sentinel<T>());
    std::copy(host.begin(), host.end(), staged.begin() + kGuardElements);
    auto buffer = backend.Allocate(static_cast<int64_t>(staged.size() * sizeof(T)));
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    if (!buffer.ok()) return;
    buffer_ = std::move(buffer).value();
    const absl::Status s = backend.CopyToBackend(buffer_.data(), staged.data(), buffer_.bytes());
    EXPECT_TRUE(s.ok()) << s;
  }
  GuardedDeviceArray(Backend& backend, const std::vector<T>& host)
      : GuardedDeviceArray(backend, std::span<const T>(host)) {}

  T* data() const { return buffer_.as<T>() + kGuardElements; }
  int64_t size() const { return n_; }

  // The n elements; a failure is recorded if a guard element changed.
  std::vector<T> Download() const {
    std::vector<T> staged(static_cast<size_t>(n_ + 2 * kGuardElements));
    const absl::Status s = backend_.CopyToHost(staged.data(), buffer_.data(), buffer_.bytes());
    EXPECT_TRUE(s.ok()) << s;
    for (int64_t i = 0; i < kGuardElements; ++i) {
      EXPECT_TRUE(IsSentinel(staged[i])) << "guard element " << i << " before the output changed";
      EXPECT_TRUE(IsSentinel(staged[n_ + kGuardElements + i]))
          << "guard element " << i << " after the output changed";
    }
    return {staged.begin() + kGuardElements, staged.end() - kGuardElements};
  }

 private:
  static std::vector<T> Filled(int64_t n) {
    return std::vector<T>(static_cast<size_t>(n), Sentinel<T>());
  }

  Backend& backend_;
  int64_t n_;
  Buffer buffer_;
};

// A device float array whose data() lies `offset` floats past GuardedDeviceArray's 16-byte
// aligned start: offset 1 sends the kernels down their scalar paths (x off its alignment). The
// padding in front holds sentinels that must survive, like the guards.
class OffsetArray {
 public:
  // `n` sentinels (an output).
  OffsetArray(Backend& backend, int64_t n, int64_t offset)
      : offset_(offset), array_(backend, n + offset) {}
  // A copy of `host` (an input, or an output that is read too).
  OffsetArray(Backend& backend, const std::vector<float>& host, int64_t offset)
      : offset_(offset), array_(backend, Padded(host, offset)) {}

  float* data() const { return array_.data() + offset_; }

  // The elements after the padding; a failure is recorded if the padding or a guard changed.
  std::vector<float> Download() const {
    std::vector<float> all = array_.Download();
    for (int64_t i = 0; i < offset_; ++i) {
      EXPECT_TRUE(IsSentinel(all[i])) << "padding element " << i << " changed";
    }
    return {all.begin() + offset_, all.end()};
  }

 private:
  static std::vector<float> Padded(const std::vector<float>& host, int64_t offset) {
    std::vector<float> padded(static_cast<size_t>(offset), Sentinel<float>());
    padded.insert(padded.end(), host.begin(), host.end());
    return padded;
  }

  int64_t offset_;
  GuardedDeviceArray<float> array_;
};

// True when every element is the float sentinel (an output nothing wrote).
bool AllSentinels(std::span<const float> v);

// Uniform floats in [lo, hi), never all zero.
std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float lo = -1.0f, float hi = 1.0f);

// The F16 or BF16 bits of v, rounded to nearest even (dtype is kF16 or kBF16).
uint16_t HalfBits(DType dtype, float v);

// A random (rows, cols) weight of `dtype` (values uniform in [-1, 1)): the host bytes, the host
// view and the device view. The device view starts `offset` elements into a buffer from
// UploadWeight (16-byte aligned), so offset 1 puts it off the alignment of the kernels' vector
// loads (2 bytes off for 16-bit weights); the host view skips the same elements.
struct Weights {
  std::vector<uint8_t> host;
  WeightView host_view;
  WeightView device_view;
};
void MakeWeights(Backend& gpu, DType dtype, int64_t rows, int64_t cols, int64_t offset,
                 std::mt19937& rng, Weights* w);

// Grouped weights (groups, rows, cols) of one dtype: host values, and the same bytes on the device
// `offset` elements past a 16-byte boundary (offset 1 sends the GEMV down its scalar path).
class GroupedWeights {
 public:
  GroupedWeights(Backend& gpu, DType dtype, int32_t groups, int64_t rows, int64_t cols,
                 std::mt19937& rng, int64_t offset = 0);

  // The weights as the kernels read them (rounded to the dtype), (groups, rows, cols).
  std::vector<float> Values() const;

  GroupedWeightView Host() const {
    return View(dtype_ == DType::kF32 ? static_cast<const void*>(f32_.data()) : bits_.data());
  }
  GroupedWeightView Device() const {
    return View(dtype_ == DType::kF32 ? static_cast<const void*>(device_f32_->data() + offset_)
                                      : device_bits_->data() + offset_);
  }

 private:
  GroupedWeightView View(const void* data) const {
    return {.data = data, .dtype = dtype_, .groups = groups_, .rows = rows_, .cols = cols_};
  }

  DType dtype_;
  int32_t groups_;
  int64_t rows_;
  int64_t cols_;
  int64_t offset_;
  std::vector<float> f32_;
  std::vector<uint16_t> bits_;
  std::unique_ptr<GuardedDeviceArray<float>> device_f32_;
  std::unique_ptr<GuardedDeviceArray<uint16_t>> device_bits_;
};

struct Tolerance {
  double max_nmse;  // sum((got - want)^2) / sum(want^2)
  double atol;      // per element: |got - want| <= atol + rtol * |want|
  double rtol;
};
// f32 activations and weights, f32 accumulation in another order than the reference's double.
inline constexpr Tolerance kF32Tolerance{.max_nmse = 1e-10, .atol = 1e-5, .rtol = 1e-4};
// Activations rounded to bf16 for a tensor-core matmul (8 mantissa bits), f32 accumulation.
inline constexpr Tolerance kBf16Tolerance{.max_nmse = 3e-5, .atol = 2e-2, .rtol = 2e-2};
// Activations rounded to f16 (11 mantissa bits), f32 accumulation.
inline constexpr Tolerance kF16Tolerance{.max_nmse = 2e-6, .atol = 5e-3, .rtol = 5e-3};

// A matmul's bound by weight dtype where x is rounded to it (cuBLAS, the tensor-core kernels):
// kF32Tolerance, kF16Tolerance or kBf16Tolerance.
const Tolerance& GemmTolerance(DType dtype);

// MakeCudaBackend({.device = 0}) with the environment variable `name` set to `value` for the call.
absl::StatusOr<std::unique_ptr<Backend>> CudaBackendWithEnvironment(const char* name,
                                                                    const char* value);

double Nmse(std::span<const float> got, std::span<const float> want);

// Every element within atol + rtol * |want| (NaN never passes) and the NMSE within max_nmse;
// reports the first few offenders with `what`.
void ExpectClose(std::span<const float> got, std::span<const float> want, const Tolerance& tol,
                 const std::string& what);

}  // namespace cmoe::kernels::cuda::testing

#endif  // CMOE_TESTS_KERNELS_CUDA_CUDA_TEST_UTIL_H_
