// SwiGLU activations: out = silu(gate) * up = gate / (1 + exp(-gate)) * up, elementwise in f32.
//   LaunchSiluMul:       gate, up, out (count) separate arrays; out may alias gate or up.
//   LaunchSiluMulPacked: gate_up (rows, 2 width) holds gate then up per row; out (rows, width).
//   LaunchSiluMulPackedBf16: the same in BF16 (CudaBackend::GatedFfn's intermediates); 8 halves
//   per thread on the vector path (width % 8 == 0, 16-byte aligned).
//
// Launch geometry: SiluMul is a 1-D grid-stride loop, 256-thread blocks, at most 4096 blocks
// (enough to fill any current GPU; larger counts loop). SiluMulPacked is a 2-D grid: blockIdx.y
// walks the rows (at most 65535 blocks, looping beyond), blockIdx.x * blockDim.x + threadIdx.x
// the columns (blocks of 256 threads, or the row's width rounded up to a warp when narrower). When
// every pointer is 16-byte aligned (and for Packed width % 4 == 0) each thread handles float4s,
// SiluMul's tail of count % 4 elements one by one; otherwise single floats.
//
// Tolerance against the CPU reference (double): expf (<= 2 ulp), one division and one product in
// f32 put each output within a few f32 ulps: |got - want| <= 1e-5 + 1e-4 |want| and normalised
// MSE <= 1e-10 (kF32Tolerance) are asserted. Gates below about -88 give -0 here where the
// reference gives a tiny denormal (inside atol).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/silu_mul.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 4096;
constexpr int64_t kMaxRowBlocks = 65535;  // gridDim.y limit

__device__ __forceinline__ float SiluMulOne(float g, float u) { return g / (1.0f + expf(-g)) * u; }

__device__ __forceinline__ float4 SiluMul4(float4 g, float4 u) {
  return make_float4(SiluMulOne(g.x, u.x), SiluMulOne(g.y, u.y), SiluMulOne(g.z, u.z),
                     SiluMulOne(g.w, u.w));
}

// No __restrict__: out may alias gate or up (each element is read, then written, by one thread).
template <bool kVec4>
__global__ void __launch_bounds__(kThreads)
    SiluMulKernel(const float* gate, const float* up, int64_t count, float* out) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t done = 0;
  if constexpr (kVec4) {
    const int64_t vecs = count / 4;
    for (int64_t v = first; v < vecs; v += stride) {
      reinterpret_cast<float4*>(out)[v] = SiluMul4(reinterpret_cast<const float4*>(gate)[v],
                                                   reinterpret_cast<const float4*>(up)[v]);
    }
    done = vecs * 4;
  }
  for (int64_t i = done + first; i < count; i += stride) out[i] = SiluMulOne(gate[i], up[i]);
}

__device__ __forceinline__ float Bf16Lo(unsigned pair) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(pair & 0xffffu)));
}
__device__ __forceinline__ float Bf16Hi(unsigned pair) {
  return __bfloat162float(__ushort_as_bfloat16(static_cast<unsigned short>(pair >> 16)));
}
__device__ __forceinline__ unsigned Bf16Pair(float lo, float hi) {
  return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}
// Two adjacent BF16 gates and ups (one 32-bit word each) to two BF16 outputs.
__device__ __forceinline__ unsigned SiluMulBf16Pair(unsigned g, unsigned u) {
  return Bf16Pair(SiluMulOne(Bf16Lo(g), Bf16Lo(u)), SiluMulOne(Bf16Hi(g), Bf16Hi(u)));
}

// One vector unit of a packed row (16 bytes: 4 floats or 8 BF16s), or one element, at index u.
__device__ __forceinline__ void SiluMulUnit(const float* gate, const float* up, float* o, int64_t u,
                                            bool vec) {
  if (vec) {
    reinterpret_cast<float4*>(o)[u] =
        SiluMul4(reinterpret_cast<const float4*>(gate)[u], reinterpret_cast<const float4*>(up)[u]);
  } else {
    o[u] = SiluMulOne(gate[u], up[u]);
  }
}
__device__ __forceinline__ void SiluMulUnit(const __nv_bfloat16* gate, const __nv_bfloat16* up,
                                            __nv_bfloat16* o, int64_t u, bool vec) {
  if (vec) {
    const uint4 g = reinterpret_cast<const uint4*>(gate)[u];
    const uint4 v = reinterpret_cast<const uint4*>(up)[u];
    reinterpret_cast<uint4*>(o)[u] =
        make_uint4(SiluMulBf16Pair(g.x, v.x), SiluMulBf16Pair(g.y, v.y), SiluMulBf16Pair(g.z, v.z),
                   SiluMulBf16Pair(g.w, v.w));
  } else {
    o[u] = __float2bfloat16_rn(SiluMulOne(__bfloat162float(gate[u]), __bfloat162float(up[u])));
  }
}

// T: float or __nv_bfloat16 (f32 arithmetic, each output rounded once).
template <class T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    SiluMulPackedKernel(const T* __restrict__ gate_up, int64_t rows, int64_t width,
                        T* __restrict__ out) {
  constexpr int64_t kPerUnit = kVec ? 16 / static_cast<int64_t>(sizeof(T)) : 1;
  const int64_t units = width / kPerUnit;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const T* gate = gate_up + r * 2 * width;
    for (int64_t u = first; u < units; u += stride) {
      SiluMulUnit(gate, gate + width, out + r * width, u, kVec);
    }
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks of `threads` covering `units`, at least 1 and at most max_blocks.
unsigned Blocks(int64_t units, int threads, int64_t max_blocks) {
  return static_cast<unsigned>(std::clamp<int64_t>((units + threads - 1) / threads, 1, max_blocks));
}

}  // namespace

cudaError_t LaunchSiluMul(const float* gate, const float* up, int64_t count, float* out,
                          cudaStream_t stream) {
  if (count < 0) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  if (Aligned(gate) && Aligned(up) && Aligned(out)) {
    SiluMulKernel<true>
        <<<Blocks(count / 4, kThreads, kMaxBlocks), kThreads, 0, stream>>>(gate, up, count, out);
  } else {
    SiluMulKernel<false>
        <<<Blocks(count, kThreads, kMaxBlocks), kThreads, 0, stream>>>(gate, up, count, out);
  }
  return cudaGetLastError();
}

namespace {

// The packed launch for elements of type T: 16-byte units where every row start is aligned.
template <class T>
cudaError_t LaunchPacked(const T* gate_up, int64_t rows, int64_t width, T* out,
                         cudaStream_t stream) {
  if (rows < 0 || width < 0) return cudaErrorInvalidValue;
  if (rows == 0 || width == 0) return cudaSuccess;
  constexpr int64_t kPerVector = 16 / static_cast<int64_t>(sizeof(T));
  const bool vec = width % kPerVector == 0 && Aligned(gate_up) && Aligned(out);
  const int64_t units = vec ? width / kPerVector : width;
  // Narrow rows get narrower blocks (a warp at least) so fewer threads idle.
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (units + 31) / 32 * 32));
  const dim3 grid(Blocks(units, threads, kMaxRowBlocks),
                  static_cast<unsigned>(std::min(kMaxRowBlocks, rows)));
  if (vec) {
    SiluMulPackedKernel<T, true><<<grid, threads, 0, stream>>>(gate_up, rows, width, out);
  } else {
    SiluMulPackedKernel<T, false><<<grid, threads, 0, stream>>>(gate_up, rows, width, out);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchSiluMulPacked(const float* gate_up, int64_t rows, int64_t width, float* out,
                                cudaStream_t stream) {
  return LaunchPacked(gate_up, rows, width, out, stream);
}

cudaError_t LaunchSiluMulPackedBf16(const void* gate_up, int64_t rows, int64_t width, void* out,
                                    cudaStream_t stream) {
  return LaunchPacked(static_cast<const __nv_bfloat16*>(gate_up), rows, width,
                      static_cast<__nv_bfloat16*>(out), stream);
}

}  // namespace cmoe::kernels::cuda
