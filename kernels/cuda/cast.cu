// f32 -> F16 / BF16 element conversion for cuBLAS operands (kernels/cuda/cast.cuh).
//
// Computes out[i] = round_to_nearest_even(x[i]) in the target format for i < count: NaN stays NaN,
// f16 overflow gives inf (cvt.rn.f16.f32 / cvt.rn.bf16.f32, the rounding of common/half.h
// FloatToF16 / FloatToBf16).
//
// Launch geometry: blocks of 256 threads, a grid-stride loop over groups of 4 elements (a float4
// load and an 8-byte store per thread per step when x is 16-byte and out 8-byte aligned; one
// element per step otherwise), at most kMaxBlocks blocks. Memory-bound: 6 bytes moved per element.
//
// Tolerance against the CPU reference: exact (bit-identical to common/half.h);
// tests/kernels/cuda/matmul_test.cc compares bits, ties and specials included.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/cast.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;

__device__ __forceinline__ unsigned short Round(float f, __half*) {
  return __half_as_ushort(__float2half_rn(f));
}
__device__ __forceinline__ unsigned short Round(float f, __nv_bfloat16*) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

template <class Out>
__global__ void __launch_bounds__(kThreads)
    CastKernel(const float* x, int64_t count, unsigned short* out, bool vector) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  int64_t scalar_from = 0;
  if (vector) {
    const int64_t quads = count / 4;
    for (int64_t q = first; q < quads; q += stride) {
      const float4 v = __ldg(reinterpret_cast<const float4*>(x) + q);
      const uint2 packed =
          make_uint2(Round(v.x, static_cast<Out*>(nullptr)) |
                         (static_cast<unsigned int>(Round(v.y, static_cast<Out*>(nullptr))) << 16),
                     Round(v.z, static_cast<Out*>(nullptr)) |
                         (static_cast<unsigned int>(Round(v.w, static_cast<Out*>(nullptr))) << 16));
      reinterpret_cast<uint2*>(out)[q] = packed;
    }
    scalar_from = quads * 4;
  }
  for (int64_t i = scalar_from + first; i < count; i += stride) {
    out[i] = Round(__ldg(x + i), static_cast<Out*>(nullptr));
  }
}

}  // namespace

cudaError_t LaunchCastFromF32(const float* x, int64_t count, DType dtype, void* out,
                              cudaStream_t stream) {
  if (count < 0 || (dtype != DType::kF16 && dtype != DType::kBF16)) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const bool vector =
      reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 8 == 0;
  const int64_t steps = vector ? (count + 3) / 4 : count;
  const int64_t wanted = (steps + kThreads - 1) / kThreads;
  const int blocks = static_cast<int>(wanted < kMaxBlocks ? wanted : kMaxBlocks);
  auto* bits = static_cast<unsigned short*>(out);
  if (dtype == DType::kF16) {
    CastKernel<__half><<<blocks, kThreads, 0, stream>>>(x, count, bits, vector);
  } else {
    CastKernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(x, count, bits, vector);
  }
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
