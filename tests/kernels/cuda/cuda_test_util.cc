#include "tests/kernels/cuda/cuda_test_util.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/half.h"
#include "kernels/cuda/cuda_backend.h"

namespace cmoe::kernels::cuda::testing {

std::unique_ptr<Backend> CudaBackendOrNull(std::string* skip_reason) {
  absl::StatusOr<int> count = CudaDeviceCount();
  if (!count.ok() || *count == 0) {
    *skip_reason = count.ok() ? "no CUDA device" : std::string(count.status().message());
    return nullptr;
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend({.device = 0});
  if (!backend.ok()) {
    ADD_FAILURE() << "a CUDA device exists but the backend failed: " << backend.status();
    *skip_reason = "CUDA backend failed";
    return nullptr;
  }
  return std::move(backend).value();
}

bool AllSentinels(std::span<const float> v) {
  return std::all_of(v.begin(), v.end(), [](float f) { return IsSentinel(f); });
}

uint16_t HalfBits(DType dtype, float v) {
  return dtype == DType::kBF16 ? FloatToBf16(v) : FloatToF16(v);
}

void MakeWeights(Backend& gpu, DType dtype, int64_t rows, int64_t cols, int64_t offset,
                 std::mt19937& rng, Weights* w) {
  const std::vector<float> values = RandomFloats(offset + rows * cols, rng);
  const size_t size = DTypeSize(dtype);
  w->host.resize(values.size() * size);
  for (size_t i = 0; i < values.size(); ++i) {
    uint8_t* dst = w->host.data() + i * size;
    if (dtype == DType::kF32) {
      std::memcpy(dst, &values[i], size);
    } else {
      const uint16_t h = HalfBits(dtype, values[i]);
      std::memcpy(dst, &h, size);
    }
  }
  const WeightView whole{.data = w->host.data(),
                         .dtype = dtype,
                         .rows = 1,
                         .cols = static_cast<int64_t>(values.size())};
  absl::StatusOr<WeightView> uploaded = gpu.UploadWeight(whole);
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  const size_t skip = static_cast<size_t>(offset) * size;
  w->host_view = {.data = w->host.data() + skip, .dtype = dtype, .rows = rows, .cols = cols};
  w->device_view = {.data = static_cast<const uint8_t*>(uploaded->data) + skip,
                    .dtype = dtype,
                    .rows = rows,
                    .cols = cols};
}

std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
}

const Tolerance& GemmTolerance(DType dtype) {
  switch (dtype) {
    case DType::kF16:
      return kF16Tolerance;
    case DType::kBF16:
      return kBf16Tolerance;
    default:
      return kF32Tolerance;
  }
}

absl::StatusOr<std::unique_ptr<Backend>> CudaBackendWithEnvironment(const char* name,
                                                                    const char* value) {
  EXPECT_EQ(setenv(name, value, 1), 0) << name;
  absl::StatusOr<std::unique_ptr<Backend>> backend = MakeCudaBackend({.device = 0});
  unsetenv(name);
  return backend;
}

double Nmse(std::span<const float> got, std::span<const float> want) {
  double err = 0.0;
  double ref = 0.0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - want[i];
    err += d * d;
    ref += static_cast<double>(want[i]) * want[i];
  }
  return ref == 0.0 ? err : err / ref;
}

void ExpectClose(std::span<const float> got, std::span<const float> want, const Tolerance& tol,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int reported = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = tol.atol + tol.rtol * std::abs(static_cast<double>(want[i]));
    const double diff = std::abs(static_cast<double>(got[i]) - want[i]);
    if (!(diff <= bound)) {  // NaN fails too
      if (++reported <= 5) {
        ADD_FAILURE() << what << ": element " << i << " got " << got[i] << " want " << want[i]
                      << " (|diff| " << diff << " > " << bound << ")";
      }
    }
  }
  if (reported > 5) ADD_FAILURE() << what << ": " << reported << " elements out of bounds";
  const double nmse = Nmse(got, want);
  EXPECT_LE(nmse, tol.max_nmse) << what << ": normalised MSE";
}

GroupedWeights::GroupedWeights(Backend& gpu, DType dtype, int32_t groups, int64_t rows,
                               int64_t cols, std::mt19937& rng, int64_t offset)
    : dtype_(dtype), groups_(groups), rows_(rows), cols_(cols), offset_(offset) {
  const float bound = 1.0f / std::sqrt(static_cast<float>(cols));
  f32_ = RandomFloats(groups * rows * cols, rng, -bound, bound);
  if (dtype == DType::kF32) {
    std::vector<float> padded(offset, 0.0f);
    padded.insert(padded.end(), f32_.begin(), f32_.end());
    device_f32_ = std::make_unique<GuardedDeviceArray<float>>(gpu, padded);
    return;
  }
  bits_.resize(f32_.size());
  for (size_t i = 0; i < f32_.size(); ++i) {
    bits_[i] = HalfBits(dtype, f32_[i]);
  }
  std::vector<uint16_t> padded(offset, 0);
  padded.insert(padded.end(), bits_.begin(), bits_.end());
  device_bits_ = std::make_unique<GuardedDeviceArray<uint16_t>>(gpu, padded);
}

std::vector<float> GroupedWeights::Values() const {
  if (dtype_ == DType::kF32) return f32_;
  std::vector<float> v(bits_.size());
  for (size_t i = 0; i < v.size(); ++i) {
    v[i] = dtype_ == DType::kBF16 ? Bf16ToFloat(bits_[i]) : F16ToFloat(bits_[i]);
  }
  return v;
}

}  // namespace cmoe::kernels::cuda::testing
