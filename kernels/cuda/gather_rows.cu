// Row gather on the device: out[r, :] = x[index[r], :] (the prefill path of GroupedMatMul with a
// row_index, before the rows are cast for cuBLAS).
//
// Launch: one block per output row (grid = rows), up to 256 threads striding over the columns;
// 16-byte loads and stores when cols % 4 == 0 and both pointers are 16-byte aligned, else 4-byte.
// index is not checked on the device (an index outside x reads out of bounds): the caller's rows
// come from BuildDispatch, which only produces token ids in [0, T).
// Exact: a copy.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/gather_rows.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kMaxThreads = 256;

template <class V>
__global__ void GatherRowsKernel(const V* x, int64_t cols, const int32_t* index, V* out) {
  const int64_t r = blockIdx.x;
  const V* src = x + static_cast<int64_t>(index[r]) * cols;
  V* dst = out + r * cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) dst[c] = __ldg(src + c);
}

template <class V>
cudaError_t Launch(const V* x, int64_t cols, const int32_t* index, int64_t rows, V* out,
                   cudaStream_t stream) {
  const int64_t threads = std::min<int64_t>(kMaxThreads, (cols + 31) / 32 * 32);
  GatherRowsKernel<V><<<static_cast<unsigned>(rows), static_cast<unsigned>(threads), 0, stream>>>(
      x, cols, index, out);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGatherRows(const float* x, int64_t cols, const int32_t* index, int64_t rows,
                             float* out, cudaStream_t stream) {
  if (rows < 0 || cols < 0 || rows > 0x7fffffff) return cudaErrorInvalidValue;
  if (rows == 0 || cols == 0) return cudaSuccess;
  const bool vec4 = cols % 4 == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                    reinterpret_cast<uintptr_t>(out) % 16 == 0;
  if (vec4) {
    return Launch(reinterpret_cast<const float4*>(x), cols / 4, index, rows,
                  reinterpret_cast<float4*>(out), stream);
  }
  return Launch(x, cols, index, rows, out, stream);
}

}  // namespace cmoe::kernels::cuda
