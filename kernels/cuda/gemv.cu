// Skinny matmul for decode steps (kernels/cuda/gemv.cuh LaunchGemv), 1 <= T <= 8 token rows:
//   y[t, o] = sum_i x[t, i] * w[o, i]   (+ y[t, o] when accumulating)
// x (T, in) f32, w (out, in) F32 / F16 / BF16 row-major, y (T, out) f32, all device memory.
// Weights are widened exactly to f32, products are summed in f32, and each weight element is read
// from HBM once: the kernel is memory-bound and its speed is the weight bytes / HBM bandwidth.
//
// Launch geometry: blocks of 256 threads (8 warps). A warp owns R consecutive output rows
// (R = 2 for T <= 2, 4 above), a block owns 8 * R rows (a row group); the grid is
// min(row groups, SMs x resident blocks per SM) and strides over the row groups.
// x is staged in shared memory as f32, (T, kt) per block: all of `in` when T * in * 4 <= 96 KB
// (staged once per block, so the loop over row groups has no barrier), else (the kTiled kernels)
// in column tiles of kt (a multiple of 256) restaged per row group. While x is staged, each warp
// prefetches its first weight vectors into L2 so that HBM is busy from the start.
// Per lane: 16-byte weight vectors (8 bf16 / f16 or 4 f32), consecutive lanes on consecutive
// vectors (512 contiguous bytes per warp load), 8 vectors in flight (R rows x 8 / R vectors)
// before the first FMA; T x R partial sums in registers, reduced with warp shuffles; lane t * R + r
// writes y[t, row0 + r]. R > 1 reuses each x value read from shared memory for R rows, keeping
// shared-memory traffic (T * 4 / R bytes per weight element) well under its bandwidth. For 16-bit
// weights x is stored permuted inside each 256-column block so that a lane's 8 values are two
// float4 at lane * 16 and 512 + lane * 16 bytes: conflict-free 128-bit shared loads.
// Vector loads need w 16-byte aligned and a row pitch that is a multiple of 16 bytes (in % 8 == 0
// for 16-bit weights, in % 4 == 0 for f32; UploadWeight's cudaMalloc gives the alignment);
// otherwise the kVector = false kernels read one element per lane per load (coalesced, slower).
// Registers: kMinBlocks below; nvcc --resource-usage shows no spills for sm_80 and sm_90.
//
// Tolerance against the CPU reference (double accumulation): x is not rounded, so the only
// difference is f32 accumulation in another order (per lane a sequential fmaf chain over in / 32
// products, then a 5-step shuffle tree): for x, w in [-1, 1] the error has a standard deviation
// of about 1e-9 * in (1.2e-5 at in = 11008). tests/kernels/cuda/matmul_test.cc asserts per element
// |got - want| <= 2e-6 * sqrt(in) + 1e-5 * |want| (4x the largest error expected over 90k
// outputs at in = 11008) and a normalised MSE <= 1e-10.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "kernels/cuda/gemv.cuh"
#include "kernels/cuda/weight_widen.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kVectorsInFlight = 8;   // 16-byte weight loads per lane before the first use
constexpr int kScalarsInFlight = 16;  // scalar path: element loads per lane in flight
constexpr int kColumnBlock = 256;     // x tiles and the permutation work in 256-column blocks
constexpr int kMaxSmemBytes = 96 << 10;
constexpr int kDefaultSmemBytes = 48 << 10;     // above this the kernel must opt in
constexpr int kSmemReservedPerBlock = 1 << 10;  // the system's shared memory per block
constexpr int kStageLoads = 8;                  // x staging: loads per thread in flight

// Rows per warp for T token rows (see the header comment).
template <int T>
constexpr int kRowsPerWarp = T <= 2 ? 2 : 4;
// Resident blocks per SM the register allocation must allow (__launch_bounds__): 3 (80 registers,
// 24 warps per SM) for the 16-bit batch-1 kernel that decode time depends on, fewer where more
// rows (T x R accumulators) need more registers; 1 (no cap) for the tiled and scalar kernels,
// which are off the fast path. Checked spill-free with nvcc --resource-usage (sm_80, sm_90).
template <class W, int T, bool kVector, bool kTiled>
constexpr int kMinBlocks =
    !kVector || kTiled ? 1 : (T == 1 ? (sizeof(W) == 2 ? 3 : 2) : (T <= 4 ? 2 : 1));

struct GemvArgs {
  const float* x;  // (T, in) f32
  const void* w;   // (out, in) weight dtype
  float* y;        // (T, out) f32
  int out;
  int in;
  int kt;  // shared-memory columns per x row: a multiple of kColumnBlock; >= in when not tiled
  int groups;
  bool x_vec;  // x rows may be staged with float4 loads
  bool accumulate;
};

// Shared-memory position of column k (relative to the tile) of a staged x row. For 16-bit
// weights, column 8c + 4h + j of a 256-column block (vector c < 32, half h, j < 4) goes to
// 128h + 4c + j, so that the warp's 128-bit reads of one half are contiguous.
template <bool kPermute>
__device__ __forceinline__ int XPos(int k) {
  if constexpr (kPermute) {
    return (k & ~(kColumnBlock - 1)) | ((k & 4) << 5) | (((k >> 3) & 31) << 2) | (k & 3);
  } else {
    return k;
  }
}

// xs[t, XPos(k)] = x[t, k0 + k] for t < T, k < len, by the whole block: each thread has about
// kStageLoads loads in flight (columns b * kThreads apart, all T rows) before it stores.
template <int T, bool kPermute, class V>
__device__ __forceinline__ void StageColumns(const GemvArgs& a, int k0, int len, float* xs) {
  constexpr int kWidth = sizeof(V) / sizeof(float);
  constexpr int kB = (kStageLoads + T - 1) / T;
  const int n = len / kWidth;  // len % 4 == 0 when V is float4
  const float* x = a.x + k0;
#pragma unroll 1
  for (int base = threadIdx.x; base < n; base += kThreads * kB) {
    V v[kB][T];
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      const int i = base + b * kThreads;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        if (i < n) {
          v[b][t] = __ldg(reinterpret_cast<const V*>(x + t * static_cast<int64_t>(a.in)) + i);
        }
      }
    }
#pragma unroll
    for (int b = 0; b < kB; ++b) {
      const int i = base + b * kThreads;
#pragma unroll
      for (int t = 0; t < T; ++t) {
        if (i < n) *reinterpret_cast<V*>(xs + t * a.kt + XPos<kPermute>(i * kWidth)) = v[b][t];
      }
    }
  }
}

template <int T, bool kPermute>
__device__ __forceinline__ void StageX(const GemvArgs& a, int k0, int len, float* xs) {
  if (a.x_vec) {
    StageColumns<T, kPermute, float4>(a, k0, len, xs);
  } else {
    StageColumns<T, kPermute, float>(a, k0, len, xs);
  }
}

// acc[t][r] += x[t, 8c .. 8c + 8) . wf[r] (4 columns for f32) for the lane's vector c of the tile.
template <class W, int T, int R>
__device__ __forceinline__ void FmaVector(const uint4 (&q)[R], const float* xs, int kt, int c,
                                          float (&acc)[T][R]) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(W));
  float wf[R][kVec];
#pragma unroll
  for (int r = 0; r < R; ++r) WidenVector16<W>(q[r], wf[r]);
#pragma unroll
  for (int t = 0; t < T; ++t) {
    const float4* row = reinterpret_cast<const float4*>(xs + t * kt);
    float xv[kVec];
    if constexpr (kVec == 8) {
      const int block = (c >> 5) * (kColumnBlock / 4);
      const float4 lo = row[block + (c & 31)];
      const float4 hi = row[block + 32 + (c & 31)];
      xv[0] = lo.x, xv[1] = lo.y, xv[2] = lo.z, xv[3] = lo.w;
      xv[4] = hi.x, xv[5] = hi.y, xv[6] = hi.z, xv[7] = hi.w;
    } else {
      const float4 v = row[c];
      xv[0] = v.x, xv[1] = v.y, xv[2] = v.z, xv[3] = v.w;
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) acc[t][r] = fmaf(xv[e], wf[r][e], acc[t][r]);
    }
  }
}

// The warp's partial dot products over one tile of len columns with 16-byte weight loads.
// rows[r]: row r of the warp at the tile's first column (16-byte aligned).
template <class W, int T, int R>
__device__ __forceinline__ void DotVector(const uint4* const (&rows)[R], const float* xs, int kt,
                                          int len, int lane, float (&acc)[T][R]) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(W));
  constexpr int kU = kVectorsInFlight / R;
  const int vectors = len / kVec;
  int c = lane;
#pragma unroll 1
  for (; c + kWarpSize * (kU - 1) < vectors; c += kWarpSize * kU) {
    uint4 q[kU][R];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) q[u][r] = __ldg(rows[r] + c + u * kWarpSize);
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) FmaVector<W, T, R>(q[u], xs, kt, c + u * kWarpSize, acc);
  }
#pragma unroll 1
  for (; c < vectors; c += kWarpSize) {
    uint4 q[R];
#pragma unroll
    for (int r = 0; r < R; ++r) q[r] = __ldg(rows[r] + c);
    FmaVector<W, T, R>(q, xs, kt, c, acc);
  }
}

// As DotVector with one element per lane per load (any alignment); x is not permuted.
template <class W, int T, int R>
__device__ __forceinline__ void DotScalar(const W* const (&rows)[R], const float* xs, int kt,
                                          int len, int lane, float (&acc)[T][R]) {
  using Tr = WeightTraits<W>;
  using Bits = WeightBits<W>;
  constexpr int kU = kScalarsInFlight / R;
  int k = lane;
#pragma unroll 1
  for (; k + kWarpSize * (kU - 1) < len; k += kWarpSize * kU) {
    Bits b[kU][R];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        b[u][r] = __ldg(reinterpret_cast<const Bits*>(rows[r]) + k + u * kWarpSize);
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int t = 0; t < T; ++t) {
        const float xv = xs[t * kt + k + u * kWarpSize];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[t][r] = fmaf(xv, Tr::Widen(b[u][r]), acc[t][r]);
      }
    }
  }
#pragma unroll 1
  for (; k < len; k += kWarpSize) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float wv = Tr::Widen(__ldg(reinterpret_cast<const Bits*>(rows[r]) + k));
#pragma unroll
      for (int t = 0; t < T; ++t) acc[t][r] = fmaf(xs[t * kt + k], wv, acc[t][r]);
    }
  }
}

// Sums acc over the warp; lane t * R + r writes y[t, row0 + r] (rows past `out` are not written).
template <int T, int R>
__device__ __forceinline__ void ReduceAndStore(const GemvArgs& a, int64_t row0, int lane,
                                               float (&acc)[T][R]) {
  static_assert(T * R <= kWarpSize, "one output per lane");
#pragma unroll
  for (int t = 0; t < T; ++t) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[t][r];
#pragma unroll
      for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(kFullMask, v, offset);
      }
      if (lane == t * R + r && row0 + r < a.out) {
        float* dst = a.y + static_cast<int64_t>(t) * a.out + row0 + r;
        *dst = a.accumulate ? *dst + v : v;
      }
    }
  }
}

// Brings the first vectors the warp will load for its rows into L2 while x is being staged.
template <class W, int R>
__device__ __forceinline__ void PrefetchRows(const GemvArgs& a, int64_t row0, int lane) {
  if (row0 >= a.out) return;
  const int64_t bytes = static_cast<int64_t>(a.in) * static_cast<int64_t>(sizeof(W));
  const int64_t first = static_cast<int64_t>(lane) * 16;
  const int64_t last = static_cast<int64_t>(kVectorsInFlight / R) * kWarpSize * 16;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t row = min(row0 + r, static_cast<int64_t>(a.out) - 1);
    const char* base = static_cast<const char*>(a.w) + row * bytes;
    for (int64_t off = first; off < bytes && off < last; off += kWarpSize * 16) {
      asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
    }
  }
}

// acc += the warp's rows [row0, row0 + R) . x over the tile [k0, k0 + len) staged in xs.
template <class W, int T, bool kVector>
__device__ __forceinline__ void WarpTile(const GemvArgs& a, int64_t row0, int k0, int len,
                                         const float* xs, int lane,
                                         float (&acc)[T][kRowsPerWarp<T>]) {
  constexpr int R = kRowsPerWarp<T>;
  const W* w = static_cast<const W*>(a.w);
  const int64_t last_row = static_cast<int64_t>(a.out) - 1;
  if constexpr (kVector) {
    const uint4* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t row = min(row0 + r, last_row);  // rows past out: loaded, never stored
      rows[r] = reinterpret_cast<const uint4*>(w + row * a.in + k0);
    }
    DotVector<W, T, R>(rows, xs, a.kt, len, lane, acc);
  } else {
    const W* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = w + min(row0 + r, last_row) * a.in + k0;
    DotScalar<W, T, R>(rows, xs, a.kt, len, lane, acc);
  }
}

template <class W, int T, bool kVector, bool kTiled>
__global__ void __launch_bounds__(kThreads, kMinBlocks<W, T, kVector, kTiled>)
    GemvKernel(GemvArgs a) {
  constexpr int R = kRowsPerWarp<T>;
  constexpr bool kPermute = kVector && sizeof(W) == 2;
  extern __shared__ float4 smem[];
  float* xs = reinterpret_cast<float*>(smem);  // (T, kt)
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;

  int g = blockIdx.x;
  if (g >= a.groups) return;  // the whole block: it then misses no barrier
  if constexpr (!kTiled) {
    PrefetchRows<W, R>(a, (static_cast<int64_t>(g) * kWarps + warp) * R, lane);
    StageX<T, kPermute>(a, 0, a.in, xs);
    __syncthreads();
  }
#pragma unroll 1
  for (; g < a.groups; g += gridDim.x) {
    const int64_t row0 = (static_cast<int64_t>(g) * kWarps + warp) * R;
    const bool active = row0 < a.out;
    float acc[T][R];
#pragma unroll
    for (int t = 0; t < T; ++t) {
#pragma unroll
      for (int r = 0; r < R; ++r) acc[t][r] = 0.0f;
    }
#pragma unroll 1
    for (int k0 = 0; k0 < a.in;) {
      const int len = min(a.kt, a.in - k0);
      if constexpr (kTiled) {
        if (k0 == 0) PrefetchRows<W, R>(a, row0, lane);
        __syncthreads();  // every warp is done with the previous tile
        StageX<T, kPermute>(a, k0, len, xs);
        __syncthreads();
      }
      if (active) WarpTile<W, T, kVector>(a, row0, k0, len, xs, lane, acc);
      k0 += len;  // k0 + len <= in: no overflow
    }
    if (active) ReduceAndStore<T, R>(a, row0, lane, acc);
  }
}

// Columns of x staged per tile: all of `in` (rounded up to a column block) when it fits,
// else balanced tiles under the shared-memory budget.
int TileColumns(int rows, int in) {
  const int64_t padded =
      (static_cast<int64_t>(in) + kColumnBlock - 1) / kColumnBlock * kColumnBlock;
  const int64_t max_cols =
      static_cast<int64_t>(kMaxSmemBytes) / (4 * rows) / kColumnBlock * kColumnBlock;
  if (padded <= max_cols) return static_cast<int>(padded);
  const int64_t tiles = (in + max_cols - 1) / max_cols;
  const int64_t cols = (in + tiles - 1) / tiles;
  return static_cast<int>((cols + kColumnBlock - 1) / kColumnBlock * kColumnBlock);
}

// A failed runtime call is also the thread's last error: clear it (when not sticky) so that the
// next launch's cudaGetLastError does not report it again.
cudaError_t Failed(cudaError_t err) {
  cudaGetLastError();
  return err;
}

// Blocks of Kernel that fit on one SM by registers and threads (shared memory aside), asked once
// per kernel (the devices of one process are assumed alike; a wrong guess only sizes the grid).
template <void (*Kernel)(GemvArgs)>
int BlocksPerSmByRegisters() {
  static const int blocks = [] {
    int n = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, Kernel, kThreads, 0) != cudaSuccess) {
      cudaGetLastError();  // not sticky; fall back to one block per SM
      n = 1;
    }
    return n > 0 ? n : 1;
  }();
  return blocks;
}

// The grid: one block per row group, at most as many as are resident at once (the blocks then
// stride over the groups and stage x once each).
template <void (*Kernel)(GemvArgs)>
cudaError_t GridSize(int groups, size_t smem, int* grid) {
  int device = 0;
  int sms = 0;
  int smem_per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  }
  if (err == cudaSuccess) {
    err = cudaDeviceGetAttribute(&smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device);
  }
  if (err != cudaSuccess) return err;
  int64_t per_sm = BlocksPerSmByRegisters<Kernel>();
  if (smem > 0) {
    const int64_t by_smem = smem_per_sm / static_cast<int64_t>(smem + kSmemReservedPerBlock);
    per_sm = by_smem < per_sm ? by_smem : per_sm;
  }
  const int64_t resident = static_cast<int64_t>(sms) * (per_sm > 0 ? per_sm : 1);
  *grid = static_cast<int>(groups < resident ? groups : resident);
  return cudaSuccess;
}

template <class W, int T, bool kVector, bool kTiled>
cudaError_t LaunchKernel(GemvArgs a, cudaStream_t stream) {
  constexpr auto kKernel = GemvKernel<W, T, kVector, kTiled>;
  constexpr int64_t kRowsPerBlock = static_cast<int64_t>(kWarps) * kRowsPerWarp<T>;
  a.groups = static_cast<int>((a.out + kRowsPerBlock - 1) / kRowsPerBlock);
  const size_t smem = static_cast<size_t>(T) * a.kt * sizeof(float);
  cudaError_t err = cudaSuccess;
  if (smem > kDefaultSmemBytes) {
    err = cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(smem));
    if (err != cudaSuccess) return Failed(err);
  }
  int grid = 0;
  if ((err = GridSize<kKernel>(a.groups, smem, &grid)) != cudaSuccess) return Failed(err);
  kKernel<<<grid, kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

template <class W, int T, bool kVector>
cudaError_t LaunchTyped(GemvArgs a, cudaStream_t stream) {
  a.kt = TileColumns(T, a.in);
  return a.kt < a.in ? LaunchKernel<W, T, kVector, true>(a, stream)
                     : LaunchKernel<W, T, kVector, false>(a, stream);
}

template <class W, int T>
cudaError_t LaunchRows(const GemvArgs& a, cudaStream_t stream) {
  constexpr size_t kVecElems = 16 / sizeof(W);
  const bool vector = reinterpret_cast<uintptr_t>(a.w) % 16 == 0 && a.in % kVecElems == 0;
  return vector ? LaunchTyped<W, T, true>(a, stream) : LaunchTyped<W, T, false>(a, stream);
}

template <class W>
cudaError_t LaunchDtype(const GemvArgs& a, int64_t rows, cudaStream_t stream) {
  switch (rows) {
    case 1:
      return LaunchRows<W, 1>(a, stream);
    case 2:
      return LaunchRows<W, 2>(a, stream);
    case 3:
      return LaunchRows<W, 3>(a, stream);
    case 4:
      return LaunchRows<W, 4>(a, stream);
    case 5:
      return LaunchRows<W, 5>(a, stream);
    case 6:
      return LaunchRows<W, 6>(a, stream);
    case 7:
      return LaunchRows<W, 7>(a, stream);
    case 8:
      return LaunchRows<W, 8>(a, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t LaunchGemv(const float* x, int64_t rows, const WeightView& w, float* y, bool accumulate,
                       cudaStream_t stream) {
  if (rows < 1 || rows > kGemvMaxRows || w.rows < 0 || w.cols < 0 || w.rows > INT_MAX ||
      w.cols > INT_MAX) {
    return cudaErrorInvalidValue;
  }
  if (w.rows == 0) return cudaSuccess;
  if (w.cols == 0) {
    if (accumulate) return cudaSuccess;
    const cudaError_t err =
        cudaMemsetAsync(y, 0, static_cast<size_t>(rows * w.rows) * sizeof(float), stream);
    return err == cudaSuccess ? err : Failed(err);
  }
  const GemvArgs a{.x = x,
                   .w = w.data,
                   .y = y,
                   .out = static_cast<int>(w.rows),
                   .in = static_cast<int>(w.cols),
                   .kt = 0,
                   .groups = 0,
                   .x_vec = reinterpret_cast<uintptr_t>(x) % 16 == 0 && w.cols % 4 == 0,
                   .accumulate = accumulate};
  switch (w.dtype) {
    case DType::kF32:
      return LaunchDtype<float>(a, rows, stream);
    case DType::kF16:
      return LaunchDtype<__half>(a, rows, stream);
    case DType::kBF16:
      return LaunchDtype<__nv_bfloat16>(a, rows, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace cmoe::kernels::cuda
