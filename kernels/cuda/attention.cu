// Paged grouped-query causal attention (kernels/backend.h Attention) for decode rows and chunked
// prefill, f32 throughout.
//
// Computes, for query row i of each sequence (batch row first_row + i, position
// pos = context_len - num_tokens + i) and each query head h, with G = n_heads / n_kv_heads:
//   out[row, h, :] = sum_{j <= pos} softmax_j(scale * q[row, h, :] . K_j) V_j
// where K_j / V_j = k / v[slot(j), h / G, :] and slot(j) = table[j / block_size] * block_size +
// j % block_size through the sequence's block table. Rows no sequence covers are not written.
//
// Launch geometry: grid (ceil(max_tokens * G / kQ), n_kv_heads, num_sequences), one launch per
// 65535 sequences; blocks of 4, 8 or 16 warps (more when the grid is small and contexts long, so
// that a few long decode rows still spread over many warps). A block owns kQ consecutive query
// vectors of one sequence that share one kv head, numbered row-major (i * G + g): several rows of
// a prefill chunk when G < kQ, part of one row's heads when G > kQ. Blocks past their sequence's
// queries exit at once.
//
// Algorithm (flash-decoding inside the block): the block's warps split the keys [0, last pos] in
// interleaved batches of kKeys positions. A warp reads each key and value row once, coalesced
// (lane l holds dims l, l + 32, ...: D = ceil(head_dim / 32) rounded up to a power of two,
// registers per lane per vector), scores it against its kQ queries with a warp all-reduce, masks
// positions past each query's own position, and keeps an online softmax (running max, sum and
// weighted value sum, exp2 domain) per query in registers. At the end the warps' partial states
// are merged through shared memory and each query's output is written once. head_dim up to 512
// (D in {1, 2, 4, 8, 16}); kQ * D <= 16 keeps the per-thread state in registers.
//
// Tolerance against the CPU reference (double dot products, exp and sums): f32 dot products and
// sums in another order and exp2f (2 ulp) on pre-scaled scores give relative errors of a few
// 1e-7 on the outputs; tests/kernels/cuda/attention_test.cc asserts max NMSE 1e-9 and per element
// |got - want| <= 1e-5 + 1e-4 * |want|.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "kernels/cuda/attention.cuh"

namespace cmoe::kernels::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxWarps = 16;
constexpr int kMaxGridYz = 65535;
constexpr float kLog2e = 1.4426950408889634f;

// Per head-dim class D (registers per lane per head vector): kQ query vectors per block and
// kKeys keys per warp iteration, sized so the per-thread state stays in registers.
template <int D>
struct Tile {
  static constexpr int kQ = (16 / D) < 8 ? (16 / D) : 8;
  static constexpr int kKeys = D >= 16 ? 1 : (D >= 8 ? 2 : 4);
};

// Where the block's queries are: query qi (< nq) is vector first_q + qi of its sequence.
struct BlockQueries {
  int64_t first_q;
  int nq;
  int group;          // G: query heads per kv head
  int64_t first_pos;  // position of the sequence's row 0
};

__device__ __forceinline__ int64_t QueryRow(const BlockQueries& b, int qi) {
  return (b.first_q + qi) / b.group;
}

// Offset of query qi's head vector in q / out (row-major (num_rows, n_heads, head_dim)).
__device__ __forceinline__ int64_t QueryOffset(const PagedAttentionArgs& a,
                                               const DeviceAttentionSequence& seq,
                                               const BlockQueries& b, int kv_head, int qi) {
  const int64_t qg = b.first_q + qi;
  const int64_t head = static_cast<int64_t>(kv_head) * b.group + qg % b.group;
  return ((seq.first_row + qg / b.group) * a.n_heads + head) * a.cache.head_dim;
}

// Offset of position j's (slot, kv head) row in the cache's k / v.
__device__ __forceinline__ int64_t KeyOffset(const PagedAttentionArgs& a, const int32_t* table,
                                             int j, int kv_head) {
  const int bs = a.cache.block_size;
  const int64_t slot = static_cast<int64_t>(__ldg(table + j / bs)) * bs + j % bs;
  return (slot * a.cache.n_kv_heads + kv_head) * a.cache.head_dim;
}

// One warp's online softmax state for the block's queries (lane l holds dims l, l + 32, ...).
template <int D, int kQ>
struct WarpState {
  float m[kQ];       // running max of the scores (exp2 domain), -inf before the first key
  float l[kQ];       // running sum of exp2(score - m)
  float acc[kQ][D];  // running sum of exp2(score - m) * v
};

// The block's query vectors, pre-scaled by scale * log2(e), and their positions; vectors past nq
// are zero with position -1.
template <int D, int kQ>
__device__ __forceinline__ void LoadQueries(const PagedAttentionArgs& a,
                                            const DeviceAttentionSequence& seq,
                                            const BlockQueries& b, int kv_head, float (&q)[kQ][D],
                                            int (&pos)[kQ]) {
  const int lane = threadIdx.x % kWarpSize;
  const float q_scale = a.scale * kLog2e;
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    pos[qi] = -1;
#pragma unroll
    for (int i = 0; i < D; ++i) q[qi][i] = 0.0f;
    if (qi < b.nq) {
      pos[qi] = static_cast<int>(b.first_pos + QueryRow(b, qi));
      const float* src = a.q + QueryOffset(a, seq, b, kv_head, qi);
#pragma unroll
      for (int i = 0; i < D; ++i) {
        const int d = i * kWarpSize + lane;
        if (d < a.cache.head_dim) q[qi][i] = __ldg(src + d) * q_scale;
      }
    }
  }
}

// Keys and values of positions [base, base + kKeys), zero past keys_end. Both are loaded up front:
// the values do not depend on the scores.
template <int D, int kKeys>
__device__ __forceinline__ void LoadBatch(const PagedAttentionArgs& a, const int32_t* table,
                                          int base, int keys_end, int kv_head,
                                          float (&kr)[kKeys][D], float (&vr)[kKeys][D]) {
  const int lane = threadIdx.x % kWarpSize;
#pragma unroll
  for (int u = 0; u < kKeys; ++u) {
    const int j = base + u;
    const int64_t off = j < keys_end ? KeyOffset(a, table, j, kv_head) : 0;
#pragma unroll
    for (int i = 0; i < D; ++i) {
      const int d = i * kWarpSize + lane;
      const bool load = j < keys_end && d < a.cache.head_dim;
      kr[u][i] = load ? __ldg(a.cache.k + off + d) : 0.0f;
      vr[u][i] = load ? __ldg(a.cache.v + off + d) : 0.0f;
    }
  }
}

// s[qi][u] = q[qi] . k[u] for the first nq queries, in every lane: per-lane partial dot products
// then a butterfly all-reduce (every lane ends with the bitwise same sums). nq is block-uniform,
// so the whole warp takes the same shuffles.
template <int D, int kQ, int kKeys>
__device__ __forceinline__ void ScoreBatch(const float (&q)[kQ][D], const float (&kr)[kKeys][D],
                                           int nq, float (&s)[kQ][kKeys]) {
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < D; ++i) dot = fmaf(q[qi][i], kr[u][i], dot);
      s[qi][u] = dot;
    }
  }
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
#pragma unroll
    for (int qi = 0; qi < kQ; ++qi) {
      if (qi < nq) {
#pragma unroll
        for (int u = 0; u < kKeys; ++u) s[qi][u] += __shfl_xor_sync(kFullMask, s[qi][u], offset);
      }
    }
  }
}

// Folds the batch at positions [base, base + kKeys) into the online softmax of each query,
// masking positions past the query's own (and so past keys_end).
template <int D, int kQ, int kKeys>
__device__ __forceinline__ void UpdateSoftmax(float (&s)[kQ][kKeys], const float (&vr)[kKeys][D],
                                              int base, const int (&pos)[kQ], int nq,
                                              WarpState<D, kQ>& st) {
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    if (qi >= nq) continue;
    float batch_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      if (base + u > pos[qi]) s[qi][u] = -INFINITY;
      batch_max = fmaxf(batch_max, s[qi][u]);
    }
    if (batch_max == -INFINITY) continue;  // every key of the batch is masked for this query
    const float m_new = fmaxf(st.m[qi], batch_max);
    const float alpha = exp2f(st.m[qi] - m_new);  // 0 while m is still -inf
    float sum = 0.0f;
#pragma unroll
    for (int u = 0; u < kKeys; ++u) {
      s[qi][u] = exp2f(s[qi][u] - m_new);  // masked: exp2(-inf) = 0
      sum += s[qi][u];
    }
    st.m[qi] = m_new;
    st.l[qi] = fmaf(st.l[qi], alpha, sum);
#pragma unroll
    for (int i = 0; i < D; ++i) {
      float o = st.acc[qi][i] * alpha;
#pragma unroll
      for (int u = 0; u < kKeys; ++u) o = fmaf(s[qi][u], vr[u][i], o);
      st.acc[qi][i] = o;
    }
  }
}

// The merge of the warps' partial states: shared memory, written by every warp, then per query
// the weight each warp's sum gets (exp2(m_w - max) / total), then the outputs.
template <int D, int kQ>
__device__ void MergeAndStore(const PagedAttentionArgs& a, const DeviceAttentionSequence& seq,
                              const BlockQueries& b, int kv_head, const WarpState<D, kQ>& st) {
  extern __shared__ float smem[];
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  constexpr int kWidth = kWarpSize * D;
  float* s_acc = smem;                           // (num_warps, kQ, kWidth)
  float* s_m = s_acc + num_warps * kQ * kWidth;  // (num_warps, kQ)
  float* s_l = s_m + num_warps * kQ;             // (num_warps, kQ)
  float* s_weight = s_l + num_warps * kQ;        // (num_warps, kQ)
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    if (qi < b.nq) {
#pragma unroll
      for (int i = 0; i < D; ++i)
        s_acc[(warp * kQ + qi) * kWidth + i * kWarpSize + lane] = st.acc[qi][i];
      if (lane == 0) {
        s_m[warp * kQ + qi] = st.m[qi];
        s_l[warp * kQ + qi] = st.l[qi];
      }
    }
  }
  __syncthreads();
  if (threadIdx.x < b.nq) {
    const int qi = threadIdx.x;
    float max_m = -INFINITY;
    for (int w = 0; w < num_warps; ++w) max_m = fmaxf(max_m, s_m[w * kQ + qi]);
    // Warp 0 saw position 0, which every query attends to: max_m is finite and total >= 1.
    float total = 0.0f;
    for (int w = 0; w < num_warps; ++w) {
      const float mw = s_m[w * kQ + qi];
      const float weight = mw == -INFINITY ? 0.0f : exp2f(mw - max_m);
      s_weight[w * kQ + qi] = weight;
      total += weight * s_l[w * kQ + qi];
    }
    const float inv_total = 1.0f / total;
    for (int w = 0; w < num_warps; ++w) s_weight[w * kQ + qi] *= inv_total;
  }
  __syncthreads();
  const int head_dim = a.cache.head_dim;
  for (int e = threadIdx.x; e < b.nq * head_dim; e += blockDim.x) {
    const int qi = e / head_dim;
    const int d = e % head_dim;
    float o = 0.0f;
    for (int w = 0; w < num_warps; ++w) {
      o += s_weight[w * kQ + qi] * s_acc[(w * kQ + qi) * kWidth + d];
    }
    a.out[QueryOffset(a, seq, b, kv_head, qi) + d] = o;
  }
}

template <int D>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize)
    PagedAttentionKernel(const PagedAttentionArgs a) {
  constexpr int kQ = Tile<D>::kQ;
  constexpr int kKeys = Tile<D>::kKeys;
  const DeviceAttentionSequence seq = a.sequences[blockIdx.z];
  BlockQueries b;
  b.group = a.n_heads / a.cache.n_kv_heads;
  b.first_q = static_cast<int64_t>(blockIdx.x) * kQ;
  const int64_t total_q = seq.num_tokens * b.group;
  if (b.first_q >= total_q) return;  // block-uniform: before any barrier
  b.nq = static_cast<int>(total_q - b.first_q < kQ ? total_q - b.first_q : kQ);
  b.first_pos = seq.context_len - seq.num_tokens;
  const int kv_head = static_cast<int>(blockIdx.y);

  float q[kQ][D];
  int pos[kQ];
  LoadQueries<D, kQ>(a, seq, b, kv_head, q, pos);
  // Rows are in position order: the block's last query has the largest position.
  const int keys_end = static_cast<int>(b.first_pos + QueryRow(b, b.nq - 1)) + 1;

  WarpState<D, kQ> st;
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) {
    st.m[qi] = -INFINITY;
    st.l[qi] = 0.0f;
#pragma unroll
    for (int i = 0; i < D; ++i) st.acc[qi][i] = 0.0f;
  }
  const int32_t* table = a.block_tables + seq.table_offset;
  const int warp = threadIdx.x / kWarpSize;
  const int num_warps = blockDim.x / kWarpSize;
  for (int base = warp * kKeys; base < keys_end; base += num_warps * kKeys) {
    float kr[kKeys][D], vr[kKeys][D], s[kQ][kKeys];
    LoadBatch<D, kKeys>(a, table, base, keys_end, kv_head, kr, vr);
    ScoreBatch<D, kQ, kKeys>(q, kr, b.nq, s);
    UpdateSoftmax<D, kQ, kKeys>(s, vr, base, pos, b.nq, st);
  }
  MergeAndStore<D, kQ>(a, seq, b, kv_head, st);
}

// Warps per block: 4 when the grid alone fills the GPU, more for a few long rows (decode).
int WarpsPerBlock(int64_t blocks, int64_t max_context) {
  if (max_context >= 1024 && blocks < 64) return 16;
  if (max_context >= 256 && blocks < 256) return 8;
  return 4;
}

template <int D>
cudaError_t Launch(const PagedAttentionArgs& args, cudaStream_t stream) {
  constexpr int kQ = Tile<D>::kQ;
  const int64_t group = args.n_heads / args.cache.n_kv_heads;
  const int64_t grid_x = (args.max_tokens * group + kQ - 1) / kQ;
  if (grid_x > std::numeric_limits<int32_t>::max()) return cudaErrorInvalidConfiguration;
  const int64_t first_chunk = args.num_sequences < kMaxGridYz ? args.num_sequences : kMaxGridYz;
  const int warps = WarpsPerBlock(grid_x * args.cache.n_kv_heads * first_chunk, args.max_context);
  const size_t smem =
      static_cast<size_t>(warps) * kQ * (kWarpSize * D + 3) * sizeof(float);  // <= 35 KiB
  for (int32_t first = 0; first < args.num_sequences; first += kMaxGridYz) {
    PagedAttentionArgs chunk = args;
    chunk.sequences = args.sequences + first;
    const int32_t rest = args.num_sequences - first;
    chunk.num_sequences = rest < kMaxGridYz ? rest : kMaxGridYz;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(args.cache.n_kv_heads),
                    static_cast<unsigned>(chunk.num_sequences));
    PagedAttentionKernel<D><<<grid, warps * kWarpSize, smem, stream>>>(chunk);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t LaunchPagedAttention(const PagedAttentionArgs& args, cudaStream_t stream) {
  const PagedKvLayer& c = args.cache;
  if (c.n_kv_heads <= 0 || c.n_kv_heads > kMaxGridYz || c.head_dim <= 0 || c.block_size <= 0 ||
      args.n_heads <= 0 || args.n_heads % c.n_kv_heads != 0 || args.num_sequences < 0 ||
      args.max_tokens < 0 || args.max_context < args.max_tokens ||
      args.max_context > std::numeric_limits<int32_t>::max()) {
    return cudaErrorInvalidValue;
  }
  if (args.num_sequences == 0 || args.max_tokens == 0) return cudaSuccess;
  const int dims_per_lane = (c.head_dim + kWarpSize - 1) / kWarpSize;
  if (dims_per_lane <= 1) return Launch<1>(args, stream);
  if (dims_per_lane <= 2) return Launch<2>(args, stream);
  if (dims_per_lane <= 4) return Launch<4>(args, stream);
  if (dims_per_lane <= 8) return Launch<8>(args, stream);
  if (dims_per_lane <= 16) return Launch<16>(args, stream);
  return cudaErrorInvalidValue;  // head_dim > kMaxPagedAttentionHeadDim
}

}  // namespace cmoe::kernels::cuda
