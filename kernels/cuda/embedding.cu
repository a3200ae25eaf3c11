// Embedding gather: out[t, :] = table[ids[t], :] widened from F32 / F16 / BF16 to f32.
//
// Launch geometry: a 2-D grid of 1-D blocks. blockIdx.y walks the ids (at most 65535 blocks,
// looping beyond); blockIdx.x * blockDim.x + threadIdx.x walks the columns of a row. When the
// table and `out` allow it (dim % 4 == 0, out 16-byte aligned, table data aligned to 4 elements)
// each thread moves 4 elements at a time (16-byte f32 loads, 8-byte f16/bf16 loads, 16-byte
// stores); otherwise one. Blocks of up to 256 threads (a narrow row gets one warp per row).
//
// Tolerance against the CPU reference: bit-exact (widening F16 / BF16 to f32 is exact).
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/embedding.cuh"
#include "kernels/cuda/weight_widen.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kMaxRowBlocks = 65535;  // gridDim.y limit
constexpr int64_t kMaxColBlocks = 65535;

// kVec4: dim % 4 == 0 and both pointers aligned for 4-element accesses (checked by the launcher).
template <class W, bool kVec4>
__global__ void __launch_bounds__(kMaxThreads)
    EmbeddingKernel(const WeightBits<W>* __restrict__ table, const int32_t* __restrict__ ids,
                    int64_t num_ids, int64_t dim, float* __restrict__ out) {
  const int64_t per_thread = kVec4 ? 4 : 1;
  const int64_t units = dim / per_thread;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = blockIdx.y; t < num_ids; t += gridDim.y) {
    const WeightBits<W>* src = table + static_cast<int64_t>(ids[t]) * dim;
    float* dst = out + t * dim;
    for (int64_t u = first; u < units; u += stride) {
      if constexpr (kVec4) {
        const auto packed = reinterpret_cast<const WeightBits4<W>*>(src)[u];
        reinterpret_cast<float4*>(dst)[u] = WidenVector4<W>(packed);
      } else {
        dst[u] = WeightTraits<W>::Widen(src[u]);
      }
    }
  }
}

bool Aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <class W>
cudaError_t Launch(const WeightView& table, const int32_t* ids, int64_t num_ids, float* out,
                   cudaStream_t stream) {
  const int64_t dim = table.cols;
  const bool vec4 = dim % 4 == 0 && Aligned(out, 16) && Aligned(table.data, 4 * sizeof(W));
  const int64_t units = vec4 ? dim / 4 : dim;
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (units + 31) / 32 * 32));
  const dim3 grid(static_cast<unsigned>(std::min(kMaxColBlocks, (units + threads - 1) / threads)),
                  static_cast<unsigned>(std::min(kMaxRowBlocks, num_ids)));
  const auto* data = static_cast<const WeightBits<W>*>(table.data);
  if (vec4) {
    EmbeddingKernel<W, true><<<grid, threads, 0, stream>>>(data, ids, num_ids, dim, out);
  } else {
    EmbeddingKernel<W, false><<<grid, threads, 0, stream>>>(data, ids, num_ids, dim, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchEmbedding(const WeightView& table, const int32_t* ids, int64_t num_ids,
                            float* out, cudaStream_t stream) {
  if (num_ids < 0 || table.cols < 0) return cudaErrorInvalidValue;
  if (num_ids == 0 || table.cols == 0) return cudaSuccess;
  switch (table.dtype) {
    case DType::kF32:
      return Launch<float>(table, ids, num_ids, out, stream);
    case DType::kF16:
      return Launch<__half>(table, ids, num_ids, out, stream);
    case DType::kBF16:
      return Launch<__nv_bfloat16>(table, ids, num_ids, out, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cmoe::kernels::cuda
