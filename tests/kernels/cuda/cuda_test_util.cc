#include "tests/kernels/cuda/cuda_test_util.h"

#include <cmath>

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

std::vector<float> RandomFloats(int64_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& f : v) f = dist(rng);
  return v;
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

}  // namespace cmoe::kernels::cuda::testing
