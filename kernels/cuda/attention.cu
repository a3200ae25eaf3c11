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
// Split-K (args.num_splits > 1, chosen by PlanAttentionSplit for decode steps whose grid would
// leave most SMs idle): grid.x also counts splits, and a block handles only keys
// [split * split_keys, (split + 1) * split_keys) of its queries, then writes its unnormalised
// partial state (max, sum, weighted value sum) to args.partial instead of the output. A second
// kernel (CombineSplitsKernel) merges, per query vector, the splits that hold keys at or before
// its position, and writes the output once.
//
// The cache is F32 or BF16 (widened on load; the CPU reference reads the same rounded values).
//
// Tolerance against the CPU reference (double dot products, exp and sums): f32 dot products and
// sums in another order and exp2f (2 ulp) on pre-scaled scores give relative errors of a few
// 1e-7 on the outputs; tests/kernels/cuda/attention_test.cc asserts max NMSE 1e-9 and per element
// |got - want| <= 1e-5 + 1e-4 * |want|.
#include <cuda_runtime.h>

#include <algorithm>
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
constexpr int kMaxSplits = 64;
constexpr int64_t kMinSplitContext = 1024;
constexpr int64_t kMinSplitKeys = 256;
constexpr int kCombineThreads = 128;

// Per head-dim class D (registers per lane per head vector): kQ query vectors per block and
// kKeys keys per warp iteration, sized so the per-thread state stays in registers.
template <int D>
struct Tile {
  static constexpr int kQ = (16 / D) < 8 ? (16 / D) : 8;
  static constexpr int kKeys = D >= 16 ? 1 : (D >= 8 ? 2 : 4);
};

// Where a split launch keeps its partial states: for query vector slot (sequence, kv head, q,
// split), index ((sequence * n_kv_heads + kv_head) * q_slots + q) * num_splits + split into acc
// (head_dim floats each) and ml (max and sum, 2 floats each). first_sequence: the launch chunk's
// first sequence.
struct SplitArgs {
  int32_t first_sequence;
  int64_t q_slots;  // max_tokens * G
  float* acc;
  float* ml;
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

// Element i of a cache tensor, widened to f32 (a BF16 cache: its bits are the top half of the
// f32's; the branch is uniform over the launch).
__device__ __forceinline__ float LoadCache(const PagedKvLayer& c, const void* base, int64_t i) {
  if (c.dtype == DType::kBF16) {
    const unsigned bits = __ldg(static_cast<const unsigned short*>(base) + i);
    return __uint_as_float(bits << 16);
  }
  return __ldg(static_cast<const float*>(base) + i);
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
      kr[u][i] = load ? LoadCache(a.cache, a.cache.k, off + d) : 0.0f;
      vr[u][i] = load ? LoadCache(a.cache, a.cache.v, off + d) : 0.0f;
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
// partial < 0: normalise and write the outputs. Otherwise a split launch: write query qi's
// unnormalised state to SplitArgs slot partial + qi * num_splits.
template <int D, int kQ>
__device__ void MergeAndStore(const PagedAttentionArgs& a, const DeviceAttentionSequence& seq,
                              const BlockQueries& b, int kv_head, const WarpState<D, kQ>& st,
                              const SplitArgs& split, int64_t partial) {
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
    // Without splits warp 0 saw position 0, which every query attends to: max_m is finite and
    // total >= 1. A split may hold no key at or before a query's position: max_m is then -inf,
    // every weight 0, and the combine never reads that state.
    float total = 0.0f;
    for (int w = 0; w < num_warps; ++w) {
      const float mw = s_m[w * kQ + qi];
      const float weight = mw == -INFINITY ? 0.0f : exp2f(mw - max_m);
      s_weight[w * kQ + qi] = weight;
      total += weight * s_l[w * kQ + qi];
    }
    if (partial >= 0) {
      const int64_t slot = partial + static_cast<int64_t>(qi) * a.num_splits;
      split.ml[slot * 2] = max_m;
      split.ml[slot * 2 + 1] = total;
    } else {
      const float inv_total = 1.0f / total;
      for (int w = 0; w < num_warps; ++w) s_weight[w * kQ + qi] *= inv_total;
    }
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
    if (partial >= 0) {
      split.acc[(partial + static_cast<int64_t>(qi) * a.num_splits) * head_dim + d] = o;
    } else {
      a.out[QueryOffset(a, seq, b, kv_head, qi) + d] = o;
    }
  }
}

template <int D>
__global__ void __launch_bounds__(kMaxWarps* kWarpSize)
    PagedAttentionKernel(const PagedAttentionArgs a, const SplitArgs split) {
  constexpr int kQ = Tile<D>::kQ;
  constexpr int kKeys = Tile<D>::kKeys;
  const DeviceAttentionSequence seq = a.sequences[blockIdx.z];
  BlockQueries b;
  b.group = a.n_heads / a.cache.n_kv_heads;
  const int split_index = static_cast<int>(blockIdx.x % static_cast<unsigned>(a.num_splits));
  b.first_q = static_cast<int64_t>(blockIdx.x / static_cast<unsigned>(a.num_splits)) * kQ;
  const int64_t total_q = seq.num_tokens * b.group;
  // Block-uniform, before any barrier: past the sequence's queries, or the tile kernel's.
  if (b.first_q >= total_q || (a.tile_min_queries > 0 && total_q >= a.tile_min_queries)) return;
  b.nq = static_cast<int>(total_q - b.first_q < kQ ? total_q - b.first_q : kQ);
  b.first_pos = seq.context_len - seq.num_tokens;
  const int kv_head = static_cast<int>(blockIdx.y);
  // Rows are in position order: the block's last query has the largest position.
  const int keys_end = static_cast<int>(b.first_pos + QueryRow(b, b.nq - 1)) + 1;
  int key_begin = 0;
  int key_end = keys_end;
  int64_t partial = -1;
  if (a.num_splits > 1) {
    key_begin = split_index * a.split_keys;
    if (key_begin >= keys_end) return;  // no query of the block reaches this split (uniform)
    key_end = keys_end - key_begin < a.split_keys ? keys_end : key_begin + a.split_keys;
    partial =
        ((static_cast<int64_t>(split.first_sequence) + blockIdx.z) * a.cache.n_kv_heads + kv_head) *
            split.q_slots +
        b.first_q;
    partial = partial * a.num_splits + split_index;
  }

  float q[kQ][D];
  int pos[kQ];
  LoadQueries<D, kQ>(a, seq, b, kv_head, q, pos);
  // The softmax masks keys past pos: past key_end too (LoadBatch reads them as zeros, whose
  // score 0 must not count), which only a split's range can cut below a query's position.
#pragma unroll
  for (int qi = 0; qi < kQ; ++qi) pos[qi] = pos[qi] < key_end - 1 ? pos[qi] : key_end - 1;

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
  for (int base = key_begin + warp * kKeys; base < key_end; base += num_warps * kKeys) {
    float kr[kKeys][D], vr[kKeys][D], s[kQ][kKeys];
    LoadBatch<D, kKeys>(a, table, base, key_end, kv_head, kr, vr);
    ScoreBatch<D, kQ, kKeys>(q, kr, b.nq, s);
    UpdateSoftmax<D, kQ, kKeys>(s, vr, base, pos, b.nq, st);
  }
  MergeAndStore<D, kQ>(a, seq, b, kv_head, st, split, partial);
}

// The merge of a split launch: one block per (query vector, kv head, sequence); the splits that
// hold keys at or before the query's position (each has a finite max: it holds its first key),
// weighted by exp2(m_s - max) and normalised by the weighted sums.
__global__ void __launch_bounds__(kCombineThreads)
    CombineSplitsKernel(const PagedAttentionArgs a, const SplitArgs split) {
  __shared__ float s_weight[kMaxSplits];
  const DeviceAttentionSequence seq = a.sequences[blockIdx.z];
  const int group = a.n_heads / a.cache.n_kv_heads;
  const int64_t q = blockIdx.x;
  const int64_t total_q = seq.num_tokens * group;
  // Block-uniform, before the barrier: past the sequence's queries, or the tile kernel's.
  if (q >= total_q || (a.tile_min_queries > 0 && total_q >= a.tile_min_queries)) return;
  const int kv_head = static_cast<int>(blockIdx.y);
  const int64_t pos = seq.context_len - seq.num_tokens + q / group;
  const int used = static_cast<int>(pos / a.split_keys) + 1;
  const int64_t first =
      ((static_cast<int64_t>(split.first_sequence) + blockIdx.z) * a.cache.n_kv_heads + kv_head) *
          split.q_slots +
      q;
  const int64_t slot0 = first * a.num_splits;
  if (threadIdx.x == 0) {
    float max_m = -INFINITY;
    for (int s = 0; s < used; ++s) max_m = fmaxf(max_m, split.ml[(slot0 + s) * 2]);
    float total = 0.0f;
    for (int s = 0; s < used; ++s) {
      s_weight[s] = exp2f(split.ml[(slot0 + s) * 2] - max_m);
      total += s_weight[s] * split.ml[(slot0 + s) * 2 + 1];
    }
    const float inv_total = 1.0f / total;
    for (int s = 0; s < used; ++s) s_weight[s] *= inv_total;
  }
  __syncthreads();
  const int head_dim = a.cache.head_dim;
  const int64_t head = static_cast<int64_t>(kv_head) * group + q % group;
  float* out = a.out + ((seq.first_row + q / group) * a.n_heads + head) * head_dim;
  for (int d = static_cast<int>(threadIdx.x); d < head_dim; d += kCombineThreads) {
    float o = 0.0f;
    for (int s = 0; s < used; ++s) o += s_weight[s] * split.acc[(slot0 + s) * head_dim + d];
    out[d] = o;
  }
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
  const int64_t grid_x = (args.max_tokens * group + kQ - 1) / kQ * args.num_splits;
  if (grid_x > std::numeric_limits<int32_t>::max()) return cudaErrorInvalidConfiguration;
  const int64_t first_chunk = args.num_sequences < kMaxGridYz ? args.num_sequences : kMaxGridYz;
  const int64_t block_keys = args.num_splits > 1 ? args.split_keys : args.max_context;
  const int warps = WarpsPerBlock(grid_x * args.cache.n_kv_heads * first_chunk, block_keys);
  const size_t smem =
      static_cast<size_t>(warps) * kQ * (kWarpSize * D + 3) * sizeof(float);  // <= 35 KiB
  const int64_t q_slots = args.max_tokens * group;
  SplitArgs split{.first_sequence = 0, .q_slots = q_slots, .acc = nullptr, .ml = nullptr};
  if (args.num_splits > 1) {
    split.acc = args.partial;
    split.ml = args.partial + static_cast<int64_t>(args.num_sequences) * args.cache.n_kv_heads *
                                  q_slots * args.num_splits * args.cache.head_dim;
  }
  for (int32_t first = 0; first < args.num_sequences; first += kMaxGridYz) {
    PagedAttentionArgs chunk = args;
    chunk.sequences = args.sequences + first;
    const int32_t rest = args.num_sequences - first;
    chunk.num_sequences = rest < kMaxGridYz ? rest : kMaxGridYz;
    split.first_sequence = first;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(args.cache.n_kv_heads),
                    static_cast<unsigned>(chunk.num_sequences));
    PagedAttentionKernel<D><<<grid, warps * kWarpSize, smem, stream>>>(chunk, split);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    if (args.num_splits > 1) {
      const dim3 combine(static_cast<unsigned>(q_slots),
                         static_cast<unsigned>(args.cache.n_kv_heads),
                         static_cast<unsigned>(chunk.num_sequences));
      CombineSplitsKernel<<<combine, kCombineThreads, 0, stream>>>(chunk, split);
      if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
    }
  }
  return cudaSuccess;
}

// Query vectors per block for a head_dim (Tile<D>::kQ of the D the launch picks).
int QueriesPerBlock(int head_dim) {
  const int dims_per_lane = (head_dim + kWarpSize - 1) / kWarpSize;
  if (dims_per_lane <= 1) return Tile<1>::kQ;
  if (dims_per_lane <= 2) return Tile<2>::kQ;
  if (dims_per_lane <= 4) return Tile<4>::kQ;
  if (dims_per_lane <= 8) return Tile<8>::kQ;
  return Tile<16>::kQ;
}

}  // namespace

AttentionSplit PlanAttentionSplit(const PagedAttentionArgs& args, int sm_count,
                                  int32_t split_keys) {
  AttentionSplit plan;
  const PagedKvLayer& c = args.cache;
  if (split_keys < 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 || args.n_heads <= 0 ||
      args.n_heads % c.n_kv_heads != 0 || args.num_sequences <= 0 || args.max_tokens <= 0 ||
      args.max_context <= 1) {
    return plan;
  }
  const int64_t group = args.n_heads / c.n_kv_heads;
  const int64_t q_slots = args.max_tokens * group;
  const int64_t kq = QueriesPerBlock(c.head_dim);
  const int64_t chunk = args.num_sequences < kMaxGridYz ? args.num_sequences : kMaxGridYz;
  const int64_t blocks = (q_slots + kq - 1) / kq * c.n_kv_heads * chunk;
  int64_t keys = split_keys;
  if (keys == 0) {
    if (args.max_context < kMinSplitContext || blocks >= sm_count) return plan;
    const int64_t want = (2 * static_cast<int64_t>(sm_count) + blocks - 1) / blocks;
    keys = std::max(kMinSplitKeys, (args.max_context + want - 1) / want);
  }
  keys = std::max(keys, (args.max_context + kMaxSplits - 1) / kMaxSplits);
  const int64_t splits = (args.max_context + keys - 1) / keys;
  if (splits <= 1) return plan;
  plan.num_splits = static_cast<int32_t>(splits);
  plan.split_keys = static_cast<int32_t>(keys);
  plan.partial_floats =
      static_cast<int64_t>(args.num_sequences) * c.n_kv_heads * q_slots * splits * (c.head_dim + 2);
  return plan;
}

cudaError_t LaunchPagedAttention(const PagedAttentionArgs& args, cudaStream_t stream) {
  const PagedKvLayer& c = args.cache;
  if (c.n_kv_heads <= 0 || c.n_kv_heads > kMaxGridYz || c.head_dim <= 0 || c.block_size <= 0 ||
      args.n_heads <= 0 || args.n_heads % c.n_kv_heads != 0 || args.num_sequences < 0 ||
      args.max_tokens < 0 || args.max_context < args.max_tokens ||
      args.max_context > std::numeric_limits<int32_t>::max()) {
    return cudaErrorInvalidValue;
  }
  if (args.num_splits < 1 || args.num_splits > kMaxSplits ||
      (args.num_splits > 1 &&
       (args.partial == nullptr || args.split_keys < 1 ||
        static_cast<int64_t>(args.num_splits) * args.split_keys < args.max_context ||
        args.max_tokens * (args.n_heads / c.n_kv_heads) > 0x7fffffff))) {
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
