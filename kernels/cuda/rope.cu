// Rotate-half RoPE in place (the Hugging Face layout): for row t, head h and i < head_dim / 2,
// with angle = positions[t] * theta^(-2i / head_dim),
//   (x[i], x[i + half]) <- (x[i] cos - x[i + half] sin, x[i] sin + x[i + half] cos).
//
// Launch geometry: one block per row (blockIdx.x walks the rows, at most 65535 blocks, looping
// beyond) of 256 threads shaped (half rounded up to a warp, at most 256) x (the rest, over heads).
// For up to 512 pairs i at a time the block first computes cos / sin of the row's angles once
// into shared memory (in double: theta^(-2i / head_dim) with pow, the angle position * freq and
// sincos, then rounded to f32, as the CPU backends do, so large positions keep their accuracy),
// then rotates those pairs of every head in f32; consecutive threads touch consecutive floats.
//
// Tolerance against the CPU reference (all in double): cos and sin are rounded to f32 and the
// rotation is done in f32, so each output is within a few f32 ulps of |x|:
// |got - want| <= 1e-5 + 1e-4 |want| and normalised MSE <= 1e-10 (kF32Tolerance) are asserted.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/rope.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 512;  // pairs whose cos / sin sit in shared memory at once
constexpr int64_t kMaxBlocks = 65535;
static_assert(kChunk >= kThreads);

__global__ void __launch_bounds__(kThreads)
    RopeKernel(float* __restrict__ x, const int32_t* __restrict__ positions, int64_t rows,
               int32_t n_heads, int32_t head_dim, float theta) {
  __shared__ float2 cos_sin[kChunk];
  const int32_t half = head_dim / 2;
  const int tid = static_cast<int>(threadIdx.y * blockDim.x + threadIdx.x);
  const int threads = static_cast<int>(blockDim.x * blockDim.y);
  for (int64_t t = blockIdx.x; t < rows; t += gridDim.x) {
    const double position = positions[t];
    float* row = x + t * n_heads * head_dim;
    for (int32_t i0 = 0; i0 < half; i0 += kChunk) {
      const int32_t n = min(kChunk, half - i0);
      __syncthreads();  // the previous chunk's cos_sin has been read
      for (int32_t j = tid; j < n; j += threads) {
        const double freq = pow(static_cast<double>(theta), -2.0 * (i0 + j) / head_dim);
        double s, c;
        sincos(position * freq, &s, &c);
        cos_sin[j] = make_float2(static_cast<float>(c), static_cast<float>(s));
      }
      __syncthreads();
      for (int32_t h = threadIdx.y; h < n_heads; h += blockDim.y) {
        float* a = row + static_cast<int64_t>(h) * head_dim + i0;
        float* b = a + half;
        for (int32_t j = threadIdx.x; j < n; j += blockDim.x) {
          const float2 cs = cos_sin[j];
          const float aj = a[j], bj = b[j];
          a[j] = aj * cs.x - bj * cs.y;
          b[j] = aj * cs.y + bj * cs.x;
        }
      }
    }
  }
}

}  // namespace

cudaError_t LaunchRope(float* x, const int32_t* positions, int64_t rows, int32_t n_heads,
                       int32_t head_dim, float theta, cudaStream_t stream) {
  if (rows < 0 || n_heads < 0 || head_dim < 0 || head_dim % 2 != 0) return cudaErrorInvalidValue;
  if (rows == 0 || n_heads == 0 || head_dim == 0) return cudaSuccess;
  const int32_t half = head_dim / 2;
  const int width = std::min(kThreads, (half + 31) / 32 * 32);
  const dim3 block(width, kThreads / width);
  const auto blocks = static_cast<unsigned>(std::min(kMaxBlocks, rows));
  RopeKernel<<<blocks, block, 0, stream>>>(x, positions, rows, n_heads, head_dim, theta);
  return cudaGetLastError();
}

}  // namespace cmoe::kernels::cuda
