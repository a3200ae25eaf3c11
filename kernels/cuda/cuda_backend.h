// The CUDA backend: every op of kernels/backend.h on one NVIDIA GPU. Activations stay f32 in
// device memory; weights are uploaded once (UploadWeight) in their checkpoint dtype (BF16/F16/
// F32) and read in it with f32 accumulation. Skinny matmuls (decode) run our own GEMV kernels
// that read each weight once; larger ones cuBLAS (cublasGemmEx) with the activations rounded to
// the weight dtype. The MoE primitives run on the device without host round trips in decode.
// Ops are queued on the backend's stream in call order; CopyToHost and Synchronize wait.
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

struct CudaBackendOptions {
  int device = 0;  // CUDA device ordinal
  GroupedGemmPath grouped_gemm = GroupedGemmPath::kFromEnvironment;
  // Split-K decode attention (attention.cuh PlanAttentionSplit): 0 decides per step, > 0 splits
  // every context into chunks of this many keys (tests), < 0 never splits.
  int32_t attention_split_keys = 0;
};

// Devices the driver sees; Unavailable (with the driver's reason) when there is no usable driver
// or device, e.g. on a machine without a GPU.
absl::StatusOr<int> CudaDeviceCount();

// "NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" for device `device`.
absl::StatusOr<std::string> CudaDeviceDescription(int device);

// Unavailable without a usable device; InvalidArgument for an ordinal outside [0, count) or a
// CMOE_CUDA_GROUPED_GEMM other than "cublas" or "tensor-core".
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const CudaBackendOptions& options);

}  // namespace cmoe::kernels::cuda

#endif  // CMOE_KERNELS_CUDA_CUDA_BACKEND_H_
