// Grouped GEMM on tensor cores (kernels/moe_ops.h GroupedMatMulParams), for BF16 and F16 weights:
// y[p] = W_e . x_p with f32 accumulation, the rows of group e being [offsets[e], offsets[e+1]).
//
// No host round trip: the offsets stay on the device. The grid covers an upper bound of the row
// tiles, ceil(P / kBM) + E (each group wastes at most one partial tile), times the column tiles;
// thread 0 of a block walks the offsets to find its (group, row tile), and blocks past the last
// tile exit at once. A block computes a kBM x kBN tile of y: per kBK slice of the input it stages
// the x rows (gathered through row_index, rounded to the weight dtype) and the weight rows in
// shared memory, zero-filled past the edges, and four warps (2 x 2, 32 x 32 each) run WMMA
// 16x16x16 fragments on them; the f32 accumulators go through shared memory to the in-range
// elements of y. x and y are f32 or the weight dtype (GatedFfn's BF16 intermediates). Plain loads,
// no cp.async pipeline: a first version to measure against cuBLAS (scripts/gpu-check.sh runs
// cmoe-moe-bench with both), not a tuned one.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/grouped_gemm.cuh"

namespace cmoe::kernels::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64;
constexpr int kBN = 64;
static_assert(kMaxGroupedGemmOutputs == int64_t{65535} * kBN, "grid.y limit of the launch");
constexpr int kBK = 32;
constexpr int kLdAB = kBK + 8;  // halves per staged row: a multiple of 8 (WMMA), rows 16 B apart
constexpr int kLdC = kBN + 4;   // floats per staged output row: a multiple of 4 (WMMA)
constexpr int kThreads = 128;   // 4 warps, 2 x 2 of 32 x 32

template <class T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}

// T: the weight dtype; TX, TY: x's and y's element types, each f32 or T.
template <class T, class TX, class TY>
__global__ void __launch_bounds__(kThreads)
    GroupedGemmKernel(const TX* __restrict__ x, const int32_t* __restrict__ row_index,
                      const int32_t* __restrict__ offsets, int groups, int num_rows,
                      const T* __restrict__ w, int n_out, int k_in, TY* __restrict__ y) {
  __shared__ __align__(128) T a_s[kBM * kLdAB];
  __shared__ __align__(128) T b_s[kBN * kLdAB];
  __shared__ __align__(128) float c_s[kBM * kLdC];
  __shared__ int s_group, s_row0, s_row_end;
  if (threadIdx.x == 0) {
    int group = -1, row0 = 0, row_end = 0;
    int tile = static_cast<int>(blockIdx.x);
    for (int e = 0; e < groups; ++e) {
      // Clamped to [0, num_rows], as the grouped GEMV does: a bad plan stays in bounds.
      const int begin = min(max(offsets[e], 0), num_rows);
      const int end = min(max(offsets[e + 1], begin), num_rows);
      const int tiles = (end - begin + kBM - 1) / kBM;
      if (tile < tiles) {
        group = e;
        row0 = begin + tile * kBM;
        row_end = end;
        break;
      }
      tile -= tiles;
    }
    s_group = group;
    s_row0 = row0;
    s_row_end = row_end;
  }
  __syncthreads();
  const int group = s_group;
  if (group < 0) return;  // past the last tile (uniform over the block)
  const int row0 = s_row0, row_end = s_row_end;
  const int n0 = static_cast<int>(blockIdx.y) * kBN;
  const T* wg = w + static_cast<int64_t>(group) * n_out * k_in;
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int wm = warp / 2, wn = warp % 2;

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
  for (auto& row : acc) {
    for (auto& frag : row) wmma::fill_fragment(frag, 0.0f);
  }
  for (int k0 = 0; k0 < k_in; k0 += kBK) {
    for (int i = static_cast<int>(threadIdx.x); i < kBM * kBK; i += kThreads) {
      const int r = i / kBK, c = i % kBK;
      const int row = row0 + r, col = k0 + c;
      T v = FromFloat<T>(0.0f);
      if (row < row_end && col < k_in) {
        const int64_t src = row_index != nullptr ? row_index[row] : row;
        if constexpr (std::is_same_v<TX, float>) {
          v = FromFloat<T>(x[src * k_in + col]);
        } else {
          v = x[src * k_in + col];
        }
      }
      a_s[r * kLdAB + c] = v;
    }
    for (int i = static_cast<int>(threadIdx.x); i < kBN * kBK; i += kThreads) {
      const int r = i / kBK, c = i % kBK;
      const int n = n0 + r, col = k0 + c;
      b_s[r * kLdAB + c] =
          (n < n_out && col < k_in) ? wg[static_cast<int64_t>(n) * k_in + col] : FromFloat<T>(0.0f);
    }
    __syncthreads();
    for (int kk = 0; kk < kBK; kk += 16) {
      // A (rows x k) row-major; B = W^T (k x n) is W's (n, k) rows, i.e. column-major.
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b[2];
      for (int i = 0; i < 2; ++i) {
        wmma::load_matrix_sync(a[i], a_s + (wm * 32 + i * 16) * kLdAB + kk, kLdAB);
        wmma::load_matrix_sync(b[i], b_s + (wn * 32 + i * 16) * kLdAB + kk, kLdAB);
      }
      for (int i = 0; i < 2; ++i) {
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], a[i], b[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(c_s + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, acc[i][j], kLdC,
                              wmma::mem_row_major);
    }
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < kBM * kBN; i += kThreads) {
    const int r = i / kBN, c = i % kBN;
    const int row = row0 + r, n = n0 + c;
    if (row < row_end && n < n_out) {
      if constexpr (std::is_same_v<TY, float>) {
        y[static_cast<int64_t>(row) * n_out + n] = c_s[r * kLdC + c];
      } else {
        y[static_cast<int64_t>(row) * n_out + n] = FromFloat<T>(c_s[r * kLdC + c]);
      }
    }
  }
}

template <class T, class TX, class TY>
void Launch(dim3 grid, const GroupedGemmOperands& p, cudaStream_t stream) {
  GroupedGemmKernel<T, TX, TY><<<grid, kThreads, 0, stream>>>(
      static_cast<const TX*>(p.x), p.row_index, p.offsets, p.w.groups, static_cast<int>(p.num_rows),
      static_cast<const T*>(p.w.data), static_cast<int>(p.w.rows), static_cast<int>(p.w.cols),
      static_cast<TY*>(p.y));
}

// The kernel for weights of type T, x and y each f32 or T.
template <class T>
cudaError_t LaunchFor(dim3 grid, const GroupedGemmOperands& p, cudaStream_t stream) {
  const bool x_f32 = p.x_dtype == DType::kF32;
  const bool y_f32 = p.y_dtype == DType::kF32;
  if ((!x_f32 && p.x_dtype != p.w.dtype) || (!y_f32 && p.y_dtype != p.w.dtype)) {
    return cudaErrorInvalidValue;
  }
  if (x_f32 && y_f32) Launch<T, float, float>(grid, p, stream);
  if (x_f32 && !y_f32) Launch<T, float, T>(grid, p, stream);
  if (!x_f32 && y_f32) Launch<T, T, float>(grid, p, stream);
  if (!x_f32 && !y_f32) Launch<T, T, T>(grid, p, stream);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchGroupedGemm(const GroupedGemmOperands& p, cudaStream_t stream) {
  constexpr int64_t kIntMax = 0x7fffffff;
  if (p.num_rows < 1 || p.w.groups < 1 || p.w.rows < 1 || p.w.cols < 1 ||
      p.num_rows + p.w.groups > kIntMax || p.w.rows > kIntMax || p.w.cols > kIntMax) {
    return cudaErrorInvalidValue;
  }
  const int64_t row_tiles = (p.num_rows + kBM - 1) / kBM + p.w.groups;
  const int64_t col_tiles = (p.w.rows + kBN - 1) / kBN;
  if (col_tiles > 65535 || p.w.rows > kMaxGroupedGemmOutputs) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(row_tiles), static_cast<unsigned>(col_tiles));
  switch (p.w.dtype) {
    case DType::kBF16:
      return LaunchFor<__nv_bfloat16>(grid, p, stream);
    case DType::kF16:
      return LaunchFor<__half>(grid, p, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t LaunchGroupedGemm(const GroupedMatMulParams& p, cudaStream_t stream) {
  return LaunchGroupedGemm(GroupedGemmOperands{.x = p.x,
                                               .row_index = p.row_index,
                                               .num_rows = p.num_rows,
                                               .offsets = p.offsets,
                                               .w = p.w,
                                               .y = p.y},
                           stream);
}

}  // namespace cmoe::kernels::cuda
