// The CUDA backend: every op of kernels/backend.h on one NVIDIA GPU. Activations between ops are
// f32 in device memory (inside GatedFfn's GEMM paths BF16, FfnActivations); weights are uploaded
// once (UploadWeight) in their checkpoint dtype (BF16/F16/F32) and read in it with f32
// accumulation. Skinny matmuls (decode) run our own GEMV kernels that read each weight once; larger
// ones cuBLAS (cublasGemmEx) with the activations rounded to the weight dtype. The MoE primitives
// run on the device without host round trips in decode. Ops are queued on the backend's stream in
// call order; CopyToHost and Synchronize wait. What the engine calls between BeginGraph and
// EndGraph (its decode steps) is recorded into a CUDA graph and launched once
// (cuda_backend_graph.cc).
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> gpu, MakeCudaBackend({.device = 0}));
//
// A sticky device error (kernels/cuda/cuda_status.h) is remembered: every later call returns it
// and Health() reports it.
#ifndef CMOE_KERNELS_CUDA_CUDA_BACKEND_H_
#define CMOE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "kernels/backend.h"

namespace cmoe::kernels::cuda {

// How GroupedMatMul runs above the grouped GEMV's reach (prefill, large decode batches).
enum class GroupedGemmPath {
  kFromEnvironment,  // CMOE_CUDA_GROUPED_GEMM: "cublas" (also when unset) or "tensor-core"
  kCublas,           // one host sync for the offsets, then one cublasGemmEx per non-empty group
  kTensorCore,       // grouped_gemm.cu: one WMMA kernel, offsets read on the device (BF16/F16
                     // weights; F32 weights take cuBLAS)
};

// Whether Backend::BeginGraph..EndGraph (the engine's decode steps) run as CUDA graphs.
enum class GraphMode {
  kFromEnvironment,  // CMOE_CUDA_GRAPHS: "on" (also when unset) or "off"
  kOn,
  kOff,  // every op is queued as it is called
};

// How Attention runs prefill chunks (sequences with >= 64 query vectors: rows x query heads per kv
// head) when head_dim is 64 or 128; decode rows and other head sizes always take the f32
// flash-decoding kernel.
enum class PrefillAttention {
  kFromEnvironment,  // CMOE_CUDA_PREFILL_ATTENTION: "tensor-core" (also when unset), "cuda-core"
  kTensorCores,      // attention_tile.cu: 64 x 64 tiles, BF16 Q/K/V/P, f32 softmax and sums
  kCudaCores,        // attention.cu: f32 throughout
};

// The precision of GatedFfn's intermediates (the gate/up output and the activations) on its GEMM
// paths (more rows than the GEMVs take) with BF16 weights; the GEMV paths (decode) and F16 / F32
// weights always keep them f32, as the chain of single ops does.
enum class FfnActivations {
  kFromEnvironment,  // CMOE_CUDA_FFN_ACTIVATIONS: "bf16" (also when unset) or "f32"
  kBf16,             // cuBLAS / the tensor-core kernel write BF16, SiLU reads and writes BF16,
                     // the down projection reads it as it is: 12 bytes per row and neuron, not 28
  kF32,              // GatedFfnByOps: f32 gate/up and activations, rounded before the down GEMM
};

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  GroupedGemmPath grouped_gemm = GroupedGemmPath::kFromEnvironment;
  GraphMode graphs = GraphMode::kFromEnvironment;
  PrefillAttention prefill_attention = PrefillAttention::kFromEnvironment;
  FfnActivations ffn_activations = FfnActivations::kFromEnvironment;
  // Split-K decode attention (attention.cuh PlanAttentionSplit): 0 decides per step, > 0 splits
  // every context into chunks of this many keys (tests), < 0 never splits.
  int32_t attention_split_keys = 0;
};

// Devices the driver sees; Unavailable (with the driver's reason) when there is no usable driver
// or device, e.g. on a machine without a GPU.
absl::StatusOr<int> CudaDeviceCount();

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for device `device`.
absl::StatusOr<std::string> CudaDeviceDescription(int device);

// Unavailable without a usable device; InvalidArgument for an ordinal outside [0, count) or an
// environment setting (CMOE_CUDA_GROUPED_GEMM, CMOE_CUDA_GRAPHS, CMOE_CUDA_PREFILL_ATTENTION,
// CMOE_CUDA_FFN_ACTIVATIONS) other than those listed above.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CUDA_BACKEND_H_
