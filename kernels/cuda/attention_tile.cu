// Tensor-core attention for prefill chunks (attention_tile.cuh): FlashAttention-2's schedule
// with 16-bit WMMA tiles over the paged KV cache: F16 tiles over an F32 cache (11-bit significands:
// the scores and the weights stay close to f32's, which matters to carved models, whose routing
// turns small differences into different experts), BF16 tiles over a BF16 cache (its values
// copied as they are).
//
// Same result as attention.cu (see there for the formula, the row/position layout and GQA's
// query-vector numbering i * G + g), for sequences with many query vectors. A block of 4 warps
// owns 64 consecutive query vectors of one sequence and kv head (grid: ceil(max vectors / 64),
// n_kv_heads, sequences); warp w owns vectors [16w, 16w + 16). The block walks the keys
// [0, last position of its vectors] in tiles of 64:
//   1. the 128 threads gather the tile's K and V rows through the block table into shared memory
//      as 16-bit values (rounded to F16 from an F32 cache, copied from a BF16 one; keys past the
//      context zero);
//   2. each warp computes its 16 x 64 scores S = Q K^T on the tensor cores (Q pre-scaled by
//      scale * log2 e and rounded once, at the start) and stores them to shared memory;
//   3. two lanes per query vector update its online softmax in f32 (exp2 domain, keys past the
//      vector's position masked), write P = exp2(S - m) rounded to 16 bits, and rescale the
//      vector's running output in shared memory by exp2(m_old - m_new);
//   4. each warp adds P V (16 x head_dim, f32 accumulation) into its running output.
// At the end each vector's output is divided by its softmax sum and written once. The row sums
// add the rounded P, the same values the P V product weights, so the weights sum to 1.
//
// head_dim 64 or 128 (the Llama family's; smaller heads belong to small models, whose attention
// is cheap on the f32 kernel and whose carved routing the 16-bit rounding visibly moves: with
// 16-wide tiles on tinystories-656k's head_dim 16, the emulated end-to-end test measured the
// carved model's perplexity 0.46 % (F16) to 0.82 % (BF16) off the CPU's). Shared memory: 113 KiB
// at 128. Tolerance against the f32 reference: Q, K, V and P carry F16's 11-bit significand over an
// F32 cache (BF16's 8 bits over a BF16 cache), tests/kernels/cuda/attention_test.cc states the
// bounds. F16 holds the pre-scaled queries and the cache's keys and values as long as they stay
// below 65504 in magnitude, far above what Llama-family activations reach.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "kernels/cuda/attention_tile.cuh"

namespace cmoe::kernels::cuda {
namespace {

namespace wmma = nvcuda::wmma;

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kTileQ = 16 * kWarps;  // query vectors per block
constexpr int kTileK = 64;           // keys per iteration
constexpr int kMaxGridYz = 65535;
constexpr float kLog2e = 1.4426950408889634f;

// f32 -> the tile's 16-bit type, rounded to nearest even; and back.
__device__ __forceinline__ void Round(float x, __half& out) { out = __float2half_rn(x); }
__device__ __forceinline__ void Round(float x, __nv_bfloat16& out) { out = __float2bfloat16_rn(x); }
__device__ __forceinline__ float Widen(__half x) { return __half2float(x); }
__device__ __forceinline__ float Widen(__nv_bfloat16 x) { return __bfloat162float(x); }

// Shared-memory layout for head_dim HD (leading dimensions padded against bank conflicts, kept
// multiples of 8 16-bit / 4 f32 elements as WMMA requires; every region 128-byte aligned).
template <int HD>
struct Smem {
  static constexpr int kLdQkv = HD + 8;    // Q, K, V: 16-bit (rows, HD)
  static constexpr int kLdS = kTileK + 4;  // S: f32 (kTileQ, kTileK)
  static constexpr int kLdP = kTileK + 8;  // P: 16-bit (kTileQ, kTileK)
  static constexpr int kLdO = HD + 4;      // O: f32 (kTileQ, HD)
  static constexpr size_t Align(size_t bytes) { return (bytes + 127) / 128 * 128; }
  static constexpr size_t kQ = 0;
  static constexpr size_t kHalf = 2;  // bytes of a 16-bit element
  static constexpr size_t kK = kQ + Align(kHalf * kTileQ * kLdQkv);
  static constexpr size_t kV = kK + Align(kHalf * kTileK * kLdQkv);
  static constexpr size_t kS = kV + Align(kHalf * kTileK * kLdQkv);
  static constexpr size_t kP = kS + Align(sizeof(float) * kTileQ * kLdS);
  static constexpr size_t kO = kP + Align(kHalf * kTileQ * kLdP);
  static constexpr size_t kBytes = kO + Align(sizeof(float) * kTileQ * kLdO);
};

// Gathers keys [first, first + kTileK) of K and V (rows past `end` are zero) as T: a BF16 cache
// (T = BF16) copied, an F32 one rounded.
template <int HD, class T>
__device__ __forceinline__ void LoadKeyTile(const PagedAttentionArgs& a, const int32_t* table,
                                            int kv_head, int first, int end, T* ks, T* vs) {
  constexpr int kLd = Smem<HD>::kLdQkv;
  constexpr int kQuads = HD / 4;  // float4 per row
  const int bs = a.cache.block_size;
  for (int i = static_cast<int>(threadIdx.x); i < kTileK * kQuads; i += kThreads) {
    const int r = i / kQuads;
    const int d = (i % kQuads) * 4;
    T* kd = ks + r * kLd + d;
    T* vd = vs + r * kLd + d;
    const int j = first + r;
    int64_t off = 0;
    if (j < end) {
      const int64_t slot = static_cast<int64_t>(__ldg(table + j / bs)) * bs + j % bs;
      off = (slot * a.cache.n_kv_heads + kv_head) * HD + d;
    }
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {  // a BF16 cache: 4 elements (8 bytes)
      uint2 k2 = make_uint2(0u, 0u);
      uint2 v2 = k2;
      if (j < end) {
        k2 = __ldg(
            reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(a.cache.k) + off));
        v2 = __ldg(
            reinterpret_cast<const uint2*>(static_cast<const __nv_bfloat16*>(a.cache.v) + off));
      }
      *reinterpret_cast<uint2*>(kd) = k2;
      *reinterpret_cast<uint2*>(vd) = v2;
    } else {  // an F32 cache, rounded
      float4 k4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      float4 v4 = k4;
      if (j < end) {
        k4 = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(a.cache.k) + off));
        v4 = __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(a.cache.v) + off));
      }
      Round(k4.x, kd[0]);
      Round(k4.y, kd[1]);
      Round(k4.z, kd[2]);
      Round(k4.w, kd[3]);
      Round(v4.x, vd[0]);
      Round(v4.y, vd[1]);
      Round(v4.z, vd[2]);
      Round(v4.w, vd[3]);
    }
  }
}

template <int HD, class T>
__global__ void __launch_bounds__(kThreads)
    TileAttentionKernel(const PagedAttentionArgs a, int64_t min_queries) {
  using L = Smem<HD>;
  extern __shared__ __align__(128) unsigned char smem[];
  auto* qs = reinterpret_cast<T*>(smem + L::kQ);
  auto* ks = reinterpret_cast<T*>(smem + L::kK);
  auto* vs = reinterpret_cast<T*>(smem + L::kV);
  auto* ss = reinterpret_cast<float*>(smem + L::kS);
  auto* ps = reinterpret_cast<T*>(smem + L::kP);
  auto* os = reinterpret_cast<float*>(smem + L::kO);

  const DeviceAttentionSequence seq = a.sequences[blockIdx.z];
  const int group = a.n_heads / a.cache.n_kv_heads;
  const int64_t total_q = seq.num_tokens * group;
  const int64_t first_q = static_cast<int64_t>(blockIdx.x) * kTileQ;
  // Block-uniform exits, before any barrier.
  if (total_q < min_queries || first_q >= total_q) return;
  const int nq = static_cast<int>(total_q - first_q < kTileQ ? total_q - first_q : kTileQ);
  const int kv_head = static_cast<int>(blockIdx.y);
  const int64_t first_pos = seq.context_len - seq.num_tokens;
  const int key_end = static_cast<int>(first_pos + (first_q + nq - 1) / group) + 1;

  // Q, pre-scaled and rounded once; O zero.
  const float q_scale = a.scale * kLog2e;
  for (int i = static_cast<int>(threadIdx.x); i < kTileQ * HD; i += kThreads) {
    const int v = i / HD;
    const int d = i % HD;
    float x = 0.0f;
    if (v < nq) {
      const int64_t qg = first_q + v;
      const int64_t head = static_cast<int64_t>(kv_head) * group + qg % group;
      x = __ldg(a.q + ((seq.first_row + qg / group) * a.n_heads + head) * HD + d) * q_scale;
    }
    Round(x, qs[v * L::kLdQkv + d]);
    os[v * L::kLdO + d] = 0.0f;
  }

  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int row = warp * 16 + lane / 2;  // this lane's query vector in the tile
  const int half = lane % 2;             // which half of its keys and dims this lane handles
  const int pos = row < nq ? static_cast<int>(first_pos + (first_q + row) / group) : -1;
  float m = -INFINITY;  // running max (exp2 domain)
  float l = 0.0f;       // running sum of the rounded P
  const int32_t* table = a.block_tables + seq.table_offset;

  for (int first = 0; first < key_end; first += kTileK) {
    __syncthreads();  // the last tile's K / V reads are done (and Q / O are written)
    LoadKeyTile<HD, T>(a, table, kv_head, first, key_end, ks, vs);
    __syncthreads();

    // S = Q K^T for this warp's 16 vectors.
    for (int j = 0; j < kTileK / 16; ++j) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> s;
      wmma::fill_fragment(s, 0.0f);
#pragma unroll
      for (int k = 0; k < HD / 16; ++k) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kb;
        wmma::load_matrix_sync(qa, qs + warp * 16 * L::kLdQkv + k * 16, L::kLdQkv);
        wmma::load_matrix_sync(kb, ks + j * 16 * L::kLdQkv + k * 16, L::kLdQkv);
        wmma::mma_sync(s, qa, kb, s);
      }
      wmma::store_matrix_sync(ss + warp * 16 * L::kLdS + j * 16, s, L::kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax: this lane's 32 keys of its vector.
    const float* srow = ss + row * L::kLdS + half * 32;
    float tile_max = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      if (first + half * 32 + c <= pos) tile_max = fmaxf(tile_max, srow[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(kFullMask, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    // No key of this vector so far (a padding vector): nothing to weight or rescale.
    const float alpha = m_new == -INFINITY ? 1.0f : exp2f(m - m_new);
    float sum = 0.0f;
    T* prow = ps + row * L::kLdP + half * 32;
    for (int c = 0; c < 32; ++c) {
      const bool valid = first + half * 32 + c <= pos;
      Round(valid ? exp2f(srow[c] - m_new) : 0.0f, prow[c]);
      sum += Widen(prow[c]);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);
    l = l * alpha + sum;
    m = m_new;
    float* orow = os + row * L::kLdO + half * (HD / 2);
    for (int d = 0; d < HD / 2; ++d) orow[d] *= alpha;
    __syncwarp();

    // O += P V for this warp's 16 vectors.
#pragma unroll
    for (int n = 0; n < HD / 16; ++n) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
      float* otile = os + warp * 16 * L::kLdO + n * 16;
      wmma::load_matrix_sync(o, otile, L::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int k = 0; k < kTileK / 16; ++k) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vb;
        wmma::load_matrix_sync(pa, ps + warp * 16 * L::kLdP + k * 16, L::kLdP);
        wmma::load_matrix_sync(vb, vs + k * 16 * L::kLdQkv + n * 16, L::kLdQkv);
        wmma::mma_sync(o, pa, vb, o);
      }
      wmma::store_matrix_sync(otile, o, L::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }

  if (row >= nq) return;
  const int64_t qg = first_q + row;
  const int64_t head = static_cast<int64_t>(kv_head) * group + qg % group;
  float* out = a.out + ((seq.first_row + qg / group) * a.n_heads + head) * HD + half * (HD / 2);
  const float* orow = os + row * L::kLdO + half * (HD / 2);
  const float inv = 1.0f / l;
  for (int d = 0; d < HD / 2; ++d) out[d] = orow[d] * inv;
}

template <int HD, class T>
cudaError_t Launch(const PagedAttentionArgs& args, int64_t min_queries, cudaStream_t stream) {
  constexpr size_t kSmem = Smem<HD>::kBytes;
  const auto kernel = TileAttentionKernel<HD, T>;
  if (kSmem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(
        kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kSmem));
    if (err != cudaSuccess) return err;
  }
  const int64_t group = args.n_heads / args.cache.n_kv_heads;
  const int64_t grid_x = (args.max_tokens * group + kTileQ - 1) / kTileQ;
  if (grid_x > std::numeric_limits<int32_t>::max()) return cudaErrorInvalidConfiguration;
  for (int32_t first = 0; first < args.num_sequences; first += kMaxGridYz) {
    PagedAttentionArgs chunk = args;
    chunk.sequences = args.sequences + first;
    const int32_t rest = args.num_sequences - first;
    chunk.num_sequences = rest < kMaxGridYz ? rest : kMaxGridYz;
    const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(args.cache.n_kv_heads),
                    static_cast<unsigned>(chunk.num_sequences));
    kernel<<<grid, kThreads, kSmem, stream>>>(chunk, min_queries);
    if (const cudaError_t err = cudaGetLastError(); err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

template <class T>
cudaError_t LaunchForDim(const PagedAttentionArgs& args, int64_t min_queries, cudaStream_t stream) {
  return args.cache.head_dim == 64 ? Launch<64, T>(args, min_queries, stream)
                                   : Launch<128, T>(args, min_queries, stream);
}

}  // namespace

bool TileAttentionSupports(int32_t head_dim) { return head_dim == 64 || head_dim == 128; }

cudaError_t LaunchTileAttention(const PagedAttentionArgs& args, int64_t min_queries,
                                cudaStream_t stream) {
  const PagedKvLayer& c = args.cache;
  if (!TileAttentionSupports(c.head_dim) || c.n_kv_heads <= 0 || c.n_kv_heads > kMaxGridYz ||
      c.block_size <= 0 || args.n_heads <= 0 || args.n_heads % c.n_kv_heads != 0 ||
      args.num_sequences < 0 || args.max_tokens < 0 || args.max_context < args.max_tokens ||
      args.max_context > std::numeric_limits<int32_t>::max() || args.num_splits != 1 ||
      min_queries < 1) {
    return cudaErrorInvalidValue;
  }
  if (args.num_sequences == 0 || args.max_tokens == 0) return cudaSuccess;
  if (c.dtype == DType::kBF16) return LaunchForDim<__nv_bfloat16>(args, min_queries, stream);
  if (c.dtype == DType::kF32) return LaunchForDim<__half>(args, min_queries, stream);
  return cudaErrorInvalidValue;
}

}  // namespace cmoe::kernels::cuda
