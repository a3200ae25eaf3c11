// A Backend that forwards every call to another one; tests derive from it and override the few
// calls they want to change (a failing op, a device that is really the CPU).
#ifndef CMOE_TESTS_KERNELS_DELEGATING_BACKEND_H_
#define CMOE_TESTS_KERNELS_DELEGATING_BACKEND_H_

#include <memory>
#include <utility>

#include "kernels/backend.h"

namespace cmoe::testing {

class DelegatingBackend : public kernels::Backend {
 public:
  explicit DelegatingBackend(std::unique_ptr<kernels::Backend> inner) : inner_(std::move(inner)) {}

  std::string_view Name() const override { return inner_->Name(); }
  void Idle() override { inner_->Idle(); }
  absl::Status Health() const override { return inner_->Health(); }

  absl::Status Embedding(const kernels::WeightView& t, std::span<const int32_t> ids,
                         float* out) override {
    return inner_->Embedding(t, ids, out);
  }
  absl::Status RmsNorm(const float* x, int64_t rows, const kernels::WeightView& w, float eps,
                       float* y) override {
    return inner_->RmsNorm(x, rows, w, eps, y);
  }
  absl::Status Rope(float* x, std::span<const int32_t> pos, int32_t heads, int32_t hd,
                    float theta) override {
    return inner_->Rope(x, pos, heads, hd, theta);
  }
  absl::Status MatMul(const float* x, int64_t rows, const kernels::WeightView& w, float* y,
                      kernels::Accumulate acc) override {
    return inner_->MatMul(x, rows, w, y, acc);
  }
  absl::Status SiluMul(const float* g, const float* u, int64_t n, float* out) override {
    return inner_->SiluMul(g, u, n, out);
  }
  absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                       const kernels::PagedKvLayer& cache) override {
    return inner_->KvWrite(k, v, slots, cache);
  }
  absl::Status Attention(const kernels::AttentionParams& p) override {
    return inner_->Attention(p);
  }
  absl::Status RouteTopK(const kernels::RouteTopKParams& p) override {
    return inner_->RouteTopK(p);
  }
  absl::Status BuildDispatch(const kernels::DispatchParams& p) override {
    return inner_->BuildDispatch(p);
  }
  absl::Status GroupedMatMul(const kernels::GroupedMatMulParams& p) override {
    return inner_->GroupedMatMul(p);
  }
  absl::Status SiluMulPacked(const float* gu, int64_t rows, int64_t width, float* out) override {
    return inner_->SiluMulPacked(gu, rows, width, out);
  }
  absl::Status CombineExperts(const kernels::CombineParams& p) override {
    return inner_->CombineExperts(p);
  }
  absl::Status SampleTokens(const kernels::SampleTokensParams& p) override {
    return inner_->SampleTokens(p);
  }

 protected:
  kernels::Backend& inner() { return *inner_; }

 private:
  std::unique_ptr<kernels::Backend> inner_;
};

}  // namespace cmoe::testing

#endif  // CMOE_TESTS_KERNELS_DELEGATING_BACKEND_H_
