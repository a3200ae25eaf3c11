// Grouped skinny matmul for decode steps (kernels/moe_ops.h GroupedMatMulParams): for every group
// e and row p in [offsets[e], offsets[e+1]), y[p] = W_e . x_{row(p)}, with row(p) = row_index[p]
// when set, else p. Offsets are read on the device, so no host round trip is needed.
//
// Launch: grid (ceil(out / 8), min(groups, P)), 128 threads = 4 warps; warp w of block (bx, by)
// computes output rows o = 8 bx + 2 w and o + 1 of the by-th NON-EMPTY group (at most min(groups,
// P) groups have rows, so no block is spent on an empty group; a block whose index is past the
// last non-empty group exits at once). The group's rows are taken in chunks of up to 8: for each
// chunk the warp streams its two weight rows once (16-byte evict-first loads, two 16-byte loads
// per weight row in flight per lane), widens them to f32 and applies them to every row of the
// chunk, with 2 x chunk f32 accumulators per lane in registers; then a warp reduction and one
// store per (output, row). So the weights are read from HBM once per step; a group with more than
// 8 rows re-reads its tile from L2 once per further chunk.
// Vector path: 16-byte weight loads (4 f32 or 8 f16/bf16) when in % (16 / sizeof(W)) == 0 and the
// weight and x pointers are 16-byte aligned; otherwise coalesced scalar loads (correct, slower:
// carved widths that are multiples of 8 keep the fast path).
// Limits: min(groups, P) <= 65535 (grid.y), P < 2^31; the launcher returns cudaErrorInvalidValue
// beyond them. Offsets are clamped to [0, P] on the device so a bad plan cannot write outside y;
// row_index is not checked (BuildDispatch makes it).
// Tolerance against the host (double accumulation, the same widened weights, x not rounded): f32
// accumulation error only, within kF32Tolerance for every weight dtype.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/grouped_gemv.cuh"
#include "kernels/cuda/weight_widen.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 4;
constexpr int kOutPerWarp = 2;
constexpr int kOutPerBlock = kWarps * kOutPerWarp;
constexpr int kMaxChunkRows = 8;
constexpr int kUnroll = 2;
constexpr int kMaxGridY = 65535;
constexpr unsigned kFullMask = 0xffffffffu;

struct GemvArgs {
  const float* x;            // (rows of x, in) f32
  const int32_t* row_index;  // (P) or null
  const int32_t* offsets;    // (groups + 1)
  const void* w;             // (groups, out, in) of W
  float* y;                  // (P, out) f32
  int64_t out;
  int64_t in;
  int32_t groups;
  int32_t num_rows;
};

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(kFullMask, v, offset);
  }
  return v;
}

// Rows of group g, clamped to [0, num_rows].
__device__ __forceinline__ int2 GroupRows(const GemvArgs& a, int g) {
  const int32_t begin = max(__ldg(a.offsets + g), 0);
  const int32_t end = min(__ldg(a.offsets + g + 1), a.num_rows);
  return make_int2(begin, max(begin, end));
}

// The n-th (from 0) group with rows, or -1. Warp-wide (every lane gets the same answer).
__device__ int NthNonEmptyGroup(const GemvArgs& a, int n) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  for (int base = 0; base < a.groups; base += kWarpSize) {
    const int g = base + lane;
    bool has_rows = false;
    if (g < a.groups) {
      const int2 rows = GroupRows(a, g);
      has_rows = rows.y > rows.x;
    }
    unsigned mask = __ballot_sync(kFullMask, has_rows);
    const int count = __popc(mask);
    if (n < count) {
      for (int i = 0; i < n; ++i) mask &= mask - 1u;  // drop the n lowest groups with rows
      return base + __ffs(static_cast<int>(mask)) - 1;
    }
    n -= count;
  }
  return -1;
}

// Output rows o0, o0 + 1 (n_out of them valid) of one group for x rows r0 .. r0 + R - 1.
// w: the group's weight row o0.
template <class W, bool kVec, int R>
__device__ __forceinline__ void GemvTile(const GemvArgs& a, const W* w, int n_out, int64_t o0,
                                         int32_t r0) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const float* xr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t src = a.row_index != nullptr ? __ldg(a.row_index + r0 + r) : r0 + r;
    xr[r] = a.x + src * a.in;
  }
  float acc[kOutPerWarp][R];
#pragma unroll
  for (int q = 0; q < kOutPerWarp; ++q) {
#pragma unroll
    for (int r = 0; r < R; ++r) acc[q][r] = 0.0f;
  }

  if constexpr (kVec) {
    constexpr int kV = 16 / sizeof(W);  // elements per 16-byte load
    const int64_t chunks = a.in / kV;
    for (int64_t c = lane; c < chunks; c += kWarpSize * kUnroll) {
      uint4 raw[kUnroll][kOutPerWarp];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t cc = c + u * kWarpSize;
#pragma unroll
        for (int q = 0; q < kOutPerWarp; ++q) {
          raw[u][q] = make_uint4(0u, 0u, 0u, 0u);
          if (cc < chunks && q < n_out) {
            raw[u][q] = __ldcs(reinterpret_cast<const uint4*>(w + q * a.in) + cc);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t cc = c + u * kWarpSize;
        if (cc >= chunks) continue;
        float wf[kOutPerWarp][kV];
#pragma unroll
        for (int q = 0; q < kOutPerWarp; ++q) WidenVector16<W>(raw[u][q], wf[q]);
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float xv[kV];
#pragma unroll
          for (int i = 0; i < kV; i += 4) {
            const float4 v = __ldg(reinterpret_cast<const float4*>(xr[r] + cc * kV + i));
            xv[i] = v.x;
            xv[i + 1] = v.y;
            xv[i + 2] = v.z;
            xv[i + 3] = v.w;
          }
#pragma unroll
          for (int q = 0; q < kOutPerWarp; ++q) {
#pragma unroll
            for (int i = 0; i < kV; ++i) acc[q][r] = fmaf(wf[q][i], xv[i], acc[q][r]);
          }
        }
      }
    }
  } else {
    for (int64_t i = lane; i < a.in; i += kWarpSize) {
      float wf[kOutPerWarp];
#pragma unroll
      for (int q = 0; q < kOutPerWarp; ++q) wf[q] = q < n_out ? WidenWeight(w[q * a.in + i]) : 0.0f;
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const float xv = __ldg(xr[r] + i);
#pragma unroll
        for (int q = 0; q < kOutPerWarp; ++q) acc[q][r] = fmaf(wf[q], xv, acc[q][r]);
      }
    }
  }

  // Every lane ends with every sum; lane q * R + r stores (output o0 + q, row r0 + r).
#pragma unroll
  for (int q = 0; q < kOutPerWarp; ++q) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float sum = WarpSum(acc[q][r]);
      if (lane == q * R + r && q < n_out) a.y[static_cast<int64_t>(r0 + r) * a.out + o0 + q] = sum;
    }
  }
}

// GemvTile for `rows` in [1, kChunk] rows, instantiated for every count up to kChunk.
template <class W, bool kVec, int kChunk>
__device__ __forceinline__ void GemvRows(const GemvArgs& a, const W* w, int n_out, int64_t o0,
                                         int32_t r0, int rows) {
  if constexpr (kChunk > 1) {
    if (rows < kChunk) {
      GemvRows<W, kVec, kChunk - 1>(a, w, n_out, o0, r0, rows);
      return;
    }
  }
  GemvTile<W, kVec, kChunk>(a, w, n_out, o0, r0);
}

// kChunk: the most rows one pass takes (1, 2, 4 or 8; min(8, P) rounded up), so that a decode
// step with one or two rows per group runs a variant with few registers.
template <class W, bool kVec, int kChunk>
__global__ void __launch_bounds__(kWarps* kWarpSize, kChunk >= 8 ? 3 : 4)
    GroupedGemvKernel(GemvArgs a) {
  const int group = NthNonEmptyGroup(a, static_cast<int>(blockIdx.y));
  if (group < 0) return;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t o0 = static_cast<int64_t>(blockIdx.x) * kOutPerBlock + warp * kOutPerWarp;
  if (o0 >= a.out) return;  // warp-uniform; no block-wide barrier follows
  const int n_out = a.out - o0 < kOutPerWarp ? static_cast<int>(a.out - o0) : kOutPerWarp;
  const W* w = static_cast<const W*>(a.w) + (static_cast<int64_t>(group) * a.out + o0) * a.in;
  const int2 rows = GroupRows(a, group);
  for (int32_t r0 = rows.x; r0 < rows.y; r0 += kChunk) {
    GemvRows<W, kVec, kChunk>(a, w, n_out, o0, r0, min(kChunk, rows.y - r0));
  }
}

template <class W, bool kVec>
cudaError_t LaunchChunk(const GemvArgs& a, dim3 grid, cudaStream_t stream) {
  constexpr int kThreads = kWarps * kWarpSize;
  if (a.num_rows <= 1) {
    GroupedGemvKernel<W, kVec, 1><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.num_rows <= 2) {
    GroupedGemvKernel<W, kVec, 2><<<grid, kThreads, 0, stream>>>(a);
  } else if (a.num_rows <= 4) {
    GroupedGemvKernel<W, kVec, 4><<<grid, kThreads, 0, stream>>>(a);
  } else {
    GroupedGemvKernel<W, kVec, kMaxChunkRows><<<grid, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <class W>
cudaError_t LaunchTyped(const GemvArgs& a, bool vec, dim3 grid, cudaStream_t stream) {
  return vec ? LaunchChunk<W, true>(a, grid, stream) : LaunchChunk<W, false>(a, grid, stream);
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

}  // namespace

cudaError_t LaunchGroupedGemv(const GroupedMatMulParams& params, cudaStream_t stream) {
  const GroupedWeightView& w = params.w;
  if (w.groups < 1 || w.rows < 1 || w.cols < 1 || params.num_rows < 0 ||
      params.num_rows >= 0x7fffffff || !IsFloatDType(w.dtype)) {
    return cudaErrorInvalidValue;
  }
  if (params.num_rows == 0) return cudaSuccess;
  const int64_t grid_y = std::min<int64_t>(w.groups, params.num_rows);
  const int64_t grid_x = (w.rows + kOutPerBlock - 1) / kOutPerBlock;
  if (grid_y > kMaxGridY || grid_x > 0x7fffffff) return cudaErrorInvalidValue;
  const GemvArgs args{.x = params.x,
                      .row_index = params.row_index,
                      .offsets = params.offsets,
                      .w = w.data,
                      .y = params.y,
                      .out = w.rows,
                      .in = w.cols,
                      .groups = w.groups,
                      .num_rows = static_cast<int32_t>(params.num_rows)};
  const int64_t per_load = 16 / static_cast<int64_t>(DTypeSize(w.dtype));
  const bool vec = w.cols % per_load == 0 && Aligned16(w.data) && Aligned16(params.x);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  switch (w.dtype) {
    case DType::kF32:
      return LaunchTyped<float>(args, vec, grid, stream);
    case DType::kF16:
      return LaunchTyped<__half>(args, vec, grid, stream);
    case DType::kBF16:
      return LaunchTyped<__nv_bfloat16>(args, vec, grid, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cmoe::kernels::cuda
