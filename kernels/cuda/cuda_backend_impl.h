// The CudaBackend class, shared by the files that define its ops (cuda_backend.cc: creation,
// memory, errors; cuda_backend_ops.cc: elementwise ops; cuda_backend_attention.cc;
// cuda_backend_matmul.cc; cuda_backend_moe.cc; cuda_backend_ffn.cc; cuda_backend_sampling.cc).
// Internal to kernels/cuda.
#ifndef CMOE_KERNELS_CUDA_CUDA_BACKEND_IMPL_H_
#define CMOE_KERNELS_CUDA_CUDA_BACKEND_IMPL_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/pinned_staging.h"

namespace cmoe::kernels::cuda {

// Scratch areas of the backend, each grown on demand and reused across calls. An op may hold
// several at once but never two calls' worth of the same one (ops are queued in order on one
// stream, so reuse by the next op is safe).
enum class Scratch : int {
  kIds,               // Embedding: token ids
  kPositions,         // Rope: positions
  kSlots,             // KvWrite: cache slots
  kTables,            // attention: sequences + block tables
  kCastX,             // cuBLAS: x rounded to the weight dtype
  kCastY,             // cuBLAS: y in the weight dtype before widening, when needed
  kGather,            // GroupedMatMul: gathered rows
  kSampling,          // SampleTokens: the rows' RowSampling
  kAttentionPartial,  // attention: split-K partial results
  kCount
};

class CudaBackend final : public Backend {
 public:
  // What MakeCudaBackend settled (nothing kFromEnvironment).
  struct Tuning {
    GroupedGemmPath grouped_gemm = GroupedGemmPath::kCublas;
    int32_t attention_split_keys = 0;  // CudaBackendOptions::attention_split_keys
    int sm_count = 1;                  // the device's multiprocessors
    bool graphs = true;                // record BeginGraph..EndGraph into CUDA graphs
    PrefillAttention prefill_attention = PrefillAttention::kTensorCores;
    FfnActivations ffn_activations = FfnActivations::kBf16;
  };
  // The CUDA objects the backend owns from construction on.
  struct Handles {
    cudaStream_t stream = nullptr;
    cublasHandle_t cublas = nullptr;
    void* cublas_workspace = nullptr;  // cudaMalloc'd, set on `cublas` with cublasSetWorkspace
  };
  CudaBackend(int device, std::string name, const Handles& handles, const Tuning& tuning);
  ~CudaBackend() override;

  std::string_view Name() const override { return name_; }
  bool IsDevice() const override { return true; }
  absl::StatusOr<Buffer> Allocate(int64_t bytes) override;
  absl::Status CopyToBackend(void* dst, const void* src, int64_t bytes) override;
  absl::Status CopyToHost(void* dst, const void* src, int64_t bytes) override;
  absl::StatusOr<WeightView> UploadWeight(const WeightView& host) override;
  absl::Status Synchronize() override;
  absl::Status Health() const override { return sticky_; }
  // cuda_backend_graph.cc
  absl::Status BeginGraph() override;
  absl::Status EndGraph() override;
  void CancelGraph() override;
  GraphStats graph_stats() const override { return graph_stats_; }

  // cuda_backend_ops.cc
  absl::Status Embedding(const WeightView& table, std::span<const int32_t> ids,
                         float* out) override;
  absl::Status RmsNorm(const float* x, int64_t num_rows, const WeightView& weight, float eps,
                       float* y) override;
  absl::Status Rope(float* x, std::span<const int32_t> positions, int32_t n_heads, int32_t head_dim,
                    float theta) override;
  absl::Status SiluMul(const float* gate, const float* up, int64_t count, float* out) override;
  absl::Status SiluMulPacked(const float* gate_up, int64_t rows, int64_t width,
                             float* out) override;
  absl::Status KvWrite(const float* k, const float* v, std::span<const int32_t> slots,
                       const PagedKvLayer& cache) override;
  // cuda_backend_attention.cc
  absl::Status Attention(const AttentionParams& params) override;
  // cuda_backend_matmul.cc
  absl::Status MatMul(const float* x, int64_t num_rows, const WeightView& w, float* y,
                      Accumulate accumulate) override;
  absl::Status MatMuls(const float* x, int64_t num_rows,
                       std::span<const MatMulOutput> outputs) override;
  // cuda_backend_moe.cc
  absl::Status RouteTopK(const RouteTopKParams& params) override;
  absl::Status BuildDispatch(const DispatchParams& params) override;
  absl::Status GroupedMatMul(const GroupedMatMulParams& params) override;
  absl::Status CombineExperts(const CombineParams& params) override;
  // cuda_backend_ffn.cc
  absl::Status GatedFfn(const GatedFfnParams& params) override;
  // cuda_backend_sampling.cc
  absl::Status SampleTokens(const SampleTokensParams& params) override;

  // --- for the op files ---
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }
  // Every entry point starts with CMOE_RETURN_IF_ERROR(Ready()): the sticky error if there is
  // one; else it makes this backend's device current on the calling thread (the engine calls
  // from its step thread, not the thread that made the backend; the current device is per
  // thread, and a launch into a stream of another device fails) and returns OK.
  absl::Status Ready();
  // Turns a CUDA result into a Status (CMOE_CUDA_STATUS) and remembers sticky errors; after a
  // non-sticky error it clears the thread's last CUDA error, which the next launch's
  // cudaGetLastError() would report otherwise. Ops call it after each launch with
  // cudaGetLastError(): Check(CMOE_CUDA_STATUS(cudaGetLastError())).
  absl::Status Check(absl::Status status);
  // At least `bytes` of device scratch of kind `which`, valid until the next call for it.
  absl::StatusOr<void*> ScratchSpace(Scratch which, int64_t bytes);
  // Copies a host int32 span to scratch `which` and returns the device pointer (null for an empty
  // span). The host span may be reused at once: an asynchronous copy from pageable memory
  // returns after the driver has staged it, and while a graph is recorded the bytes are staged
  // in pinned memory first (HostToDevice). The step's metadata (positions, slots, block tables)
  // is the same for every layer: when the bytes equal the last upload to `which`, no copy is
  // made and the device copy is reused (one upload per kind per step, not per layer).
  absl::StatusOr<const int32_t*> UploadInts(std::span<const int32_t> host, Scratch which);
  // As UploadInts for raw bytes.
  absl::StatusOr<void*> UploadBytes(const void* host, int64_t bytes, Scratch which);
  // Queues dst (device) <- src (host), `bytes` > 0, on the stream; src may be reused at once.
  absl::Status HostToDevice(void* dst, const void* src, int64_t bytes);
  // Whether BeginGraph..EndGraph is recording now: ops that would wait for the device return
  // NotInGraphError instead.
  bool recording() const { return recording_; }

 private:
  struct Area {
    void* device = nullptr;
    int64_t bytes = 0;
    std::vector<char> uploaded;  // host bytes of the last UploadBytes into this area
  };

  // Forgets every area's last upload (the copies recorded for them will not run).
  void ForgetUploads();
  // Frees the scratch areas ScratchSpace replaced, once the stream is idle.
  void FreeRetired();

  int device_;
  std::string name_;
  cudaStream_t stream_;
  cublasHandle_t cublas_;
  void* cublas_workspace_;
  GroupedGemmPath grouped_gemm_;
  int32_t attention_split_keys_;
  int sm_count_;
  bool graphs_;
  PrefillAttention prefill_attention_;
  FfnActivations ffn_activations_;
  absl::Status sticky_;
  std::array<Area, static_cast<int>(Scratch::kCount)> scratch_{};
  // Areas ScratchSpace outgrew: recorded or queued work may still read them; freed by
  // Synchronize (cudaFree would wait for the device, and cannot be called while recording).
  std::vector<void*> retired_;
  std::vector<void*> weights_;  // device copies made by UploadWeight
  // Step graphs (cuda_backend_graph.cc).
  bool recording_ = false;
  PinnedStaging staging_;
  // Instantiated graphs by node count: a new recording with the same count is tried as an
  // update of that graph first (the same step shape: only arguments changed).
  std::map<size_t, cudaGraphExec_t> execs_;
  GraphStats graph_stats_;
};

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CUDA_BACKEND_IMPL_H_
