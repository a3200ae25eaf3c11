// The two FFN layers cmoe-moe-bench times against each other, with random BF16 weights (seeded,
// uniform with variance 1/fan-in) uploaded through Backend::UploadWeight:
//   DenseFfn:  MatMul gate (d_h, d), MatMul up (d_h, d), SiluMul, MatMul down (d, d_h) accumulated
//   CarvedFfn: the shared expert MatMul (2 m_s, d) -> SiluMulPacked -> MatMul (d, m_s)
//              accumulated, then the routed experts through the MoE primitives of
//              kernels/moe_ops.h: MatMul router (2 N_r, d) -> RouteTopK -> BuildDispatch ->
//              GroupedMatMul gate+up (N_r, 2 m, d) -> SiluMulPacked -> GroupedMatMul down
//              (N_r, d, m) -> CombineExperts.
//
//   Rng rng(seed);
//   CMOE_ASSIGN_OR_RETURN(CarvedShape shape, ParseCarvedShape("S2A2E16", 11008));
//   CMOE_ASSIGN_OR_RETURN(auto carved, CarvedFfn::Create(backend, shape, 4096, 11008,
//                                                        /*max_rows=*/256, /*bias=*/{}, rng));
//   CMOE_RETURN_IF_ERROR(carved->Run(x, rows, out));   // out += FFN(x), asynchronously
//
// The layers keep the host copies of their weights (the CPU backends read them in place) and
// borrow the backend, which must outlive them. One thread at a time, like the Backend.
#ifndef CMOE_TOOLS_MOE_BENCH_LAYERS_H_
#define CMOE_TOOLS_MOE_BENCH_LAYERS_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kernels/backend.h"

namespace cmoe::tools {

// One carved configuration S{shared}A{activated}E{experts} at FFN width d_h. Widths follow
// docs/cmoe-method.md: the shared expert takes shared * floor(d_h / N) neurons and the routed
// experts split the rest with widths differing by at most one, zero-padded to the widest.
struct CarvedShape {
  std::string name;  // "S2A2E16"
  int32_t shared = 0;
  int32_t activated = 0;
  int32_t experts = 0;
  int64_t shared_width = 0;  // m_s
  int64_t expert_width = 0;  // m: the widest routed expert, the padded width of all
  int32_t routed() const { return experts - shared; }
};

// "S2A2E16" (any case) at FFN width `ffn`; InvalidArgument naming --config otherwise.
absl::StatusOr<CarvedShape> ParseCarvedShape(absl::string_view text, int64_t ffn);

// splitmix64: fast enough for ~10^9 weights, and the same stream on every machine.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [-a, a).
  float Uniform(float a) { return a * (static_cast<float>(Next() >> 40) * 0x1p-23f - 1.0f); }

 private:
  uint64_t state_;
};

// A BF16 weight in host memory and its view in the backend's memory.
struct Weight {
  std::vector<uint16_t> host;
  kernels::WeightView view;
};

// One FFN layer over `rows` token rows: out (rows, d) f32 += FFN(x (rows, d) f32), both in the
// backend's memory, rows <= the max_rows it was made for. Asynchronous on a device backend.
class FfnLayer {
 public:
  virtual ~FfnLayer() = default;
  virtual absl::Status Run(const float* x, int64_t rows, float* out) = 0;
};

class DenseFfn final : public FfnLayer {
 public:
  static absl::StatusOr<std::unique_ptr<DenseFfn>> Create(kernels::Backend& backend, int64_t dim,
                                                          int64_t ffn, int64_t max_rows, Rng& rng);
  absl::Status Run(const float* x, int64_t rows, float* out) override;
  int64_t WeightBytes() const;

 private:
  explicit DenseFfn(kernels::Backend& backend) : backend_(backend) {}

  kernels::Backend& backend_;
  Weight gate_up_, down_;      // (2 d_h, d): gate rows, then up rows; (d, d_h)
  kernels::Buffer workspace_;  // GatedFfnWorkspaceBytes(max_rows, d_h)
};

// The routed experts' weights in the grouped layout of kernels/moe_ops.h: gate_up (N_r, 2m, d)
// with each expert's gate rows then its up rows, down (N_r, d, m); an expert narrower than m has
// zero rows (gate_up) and zero columns (down) at its end.
struct RoutedWeights {
  Weight gate_up, down;
  kernels::GroupedWeightView gate_up_grouped, down_grouped;
};

class CarvedFfn final : public FfnLayer {
 public:
  // `bias` (N_r) is the RouteTopK bias added to p before the top-k; empty for none.
  static absl::StatusOr<std::unique_ptr<CarvedFfn>> Create(kernels::Backend& backend,
                                                           const CarvedShape& shape, int64_t dim,
                                                           int64_t ffn, int64_t max_rows,
                                                           const std::vector<float>& bias,
                                                           Rng& rng);
  absl::Status Run(const float* x, int64_t rows, float* out) override;

  // The experts the last Run selected, (rows, k) int32 copied to the host (waits for it).
  absl::StatusOr<std::vector<int32_t>> Selected(int64_t rows);
  // Weight bytes read every step (router and shared expert), and per touched routed expert
  // (its padded gate, up and down rows).
  int64_t FixedBytes() const;
  int64_t ExpertBytes() const;
  const CarvedShape& shape() const { return c_; }

 private:
  CarvedFfn(kernels::Backend& backend, const CarvedShape& c, int64_t dim)
      : backend_(backend), c_(c), dim_(dim) {}
  absl::Status AllocateScratch(int64_t max_rows, const std::vector<float>& bias);
  absl::Status RunShared(const float* x, int64_t rows, float* out);
  absl::Status RunRouted(const float* x, int64_t rows, float* out);

  kernels::Backend& backend_;
  CarvedShape c_;
  int64_t dim_;
  Weight router_;                        // (2 N_r, d): gate scores, then up scores
  Weight shared_gate_up_, shared_down_;  // (2 m_s, d), (d, m_s); empty without shared experts
  RoutedWeights routed_;
  // Scratch for max_rows tokens, P = max_rows * k slots (kernels/moe_ops.h names them).
  kernels::Buffer logits_, selected_, weights_, counts_, offsets_;
  kernels::Buffer slot_token_, slot_source_, token_slot_;
  kernels::Buffer ffn_workspace_;  // GatedFfn's, for the shared or the routed experts
  kernels::Buffer expert_out_, bias_;
};

}  // namespace cmoe::tools

#endif  // CMOE_TOOLS_MOE_BENCH_LAYERS_H_
