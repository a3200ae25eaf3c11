// The hot inner loops of the fast CPU backend, one table of function pointers per instruction
// set. cpu_backend.cc does the validation, threading and blocking and calls these for the
// arithmetic; simd_scalar.cc (portable), simd_avx2.cc (AVX2+FMA+F16C) and simd_avx512.cc
// (AVX-512 F/BW/VL/DQ) fill the tables from one template (simd_kernels_impl.h).
//
//   const SimdKernels& k = Avx512Kernels();  // only after DetectSimdLevel() said it is safe
//   k.gemv[kWeightBf16](args, row_begin, row_end);
//
// Everything here is plain C++ (no intrinsics, no inline code), so the header is safe to include
// from the baseline-compiled files. Weight pointers may be unaligned (any byte offset).
#ifndef CMOE_KERNELS_CPU_SIMD_KERNELS_H_
#define CMOE_KERNELS_CPU_SIMD_KERNELS_H_

#include <cstdint>

namespace cmoe::kernels::cpu {

// Index of a weight dtype in the per-dtype tables; the same order as kernels::DType.
enum WeightType : int { kWeightF32 = 0, kWeightF16 = 1, kWeightBf16 = 2, kNumWeightTypes = 3 };

// y[t * ldy + r] (+)= sum_i x[t * ldx + i] * w[r, i] for the rows r of one call and all tokens.
struct GemvArgs {
  const float* x = nullptr;  // (num_tokens, in) f32, row stride ldx, read
  int64_t ldx = 0;
  int64_t num_tokens = 0;
  const void* w = nullptr;  // (out, in) row-major in the table's dtype, read, unaligned
  int64_t in = 0;
  float* y = nullptr;  // (num_tokens, ldy) f32, written (read too when accumulate)
  // One token with BF16 weights: x rearranged by the table's pair_x, or null (generic path).
  const float* x_pairs = nullptr;
  int64_t ldy = 0;
  bool accumulate = false;
};

// Up to kMaxAttendHeads query heads of one row that share a kv head, over positions
// [0, num_positions) of the paged cache: out_g = softmax(q_g·K^T·scale)·V. Each key and value is
// read once for all the heads.
inline constexpr int kMaxAttendHeads = 16;
struct AttendArgs {
  const float* q = nullptr;  // (num_heads, head_dim) f32, read
  const float* k = nullptr;  // cache keys + kv_head * head_dim; slot s at k + s * slot_stride
  const float* v = nullptr;  // cache values, same layout as k
  int64_t slot_stride = 0;   // n_kv_heads * head_dim
  const int32_t* block_table = nullptr;  // position p lives in block_table[p / block_size]
  int32_t block_size = 0;
  int64_t num_positions = 0;
  int32_t num_heads = 1;  // 1..kMaxAttendHeads
  int32_t head_dim = 0;
  float scale = 0.0f;
  float* scores = nullptr;  // (num_heads, num_positions) f32 scratch, written
  float* out = nullptr;     // (num_heads, head_dim) f32, written
};

// Rows [row_begin, row_end) of y for every token of `args`.
using GemvFn = void (*)(const GemvArgs& args, int64_t row_begin, int64_t row_end);
// dst[i] = float(src[i]) for i < count; src unaligned.
using WidenFn = void (*)(const void* src, int64_t count, float* dst);
// The largest kc a PackWFn accepts.
inline constexpr int64_t kGemmMaxKc = 512;

// Packs rows [row_begin, row_begin + rows) x columns [k_begin, k_begin + kc) of w (row length
// `in`) for the GEMM micro-kernel: dst is (ceil(rows / gemm_nr), kc, gemm_nr) f32, each panel
// k-major, rows past the end zero.
using PackWFn = void (*)(const void* w, int64_t in, int64_t row_begin, int64_t rows,
                         int64_t k_begin, int64_t kc, float* dst);
// Packs `tokens` rows x kc columns of x (row stride ldx) as (ceil(tokens / gemm_mr), kc,
// gemm_mr) f32, tokens past the end zero.
using PackXFn = void (*)(const float* x, int64_t ldx, int64_t tokens, int64_t kc, float* dst);
// One gemm_mr x gemm_nr tile: c[i * ldc + j] (+)= sum_k xp[k * mr + i] * wp[k * nr + j], with
// xp / wp one packed panel each. c is written (read too when accumulate).
using GemmKernelFn = void (*)(int64_t kc, const float* xp, const float* wp, float* c, int64_t ldc,
                              bool accumulate);

struct SimdKernels {
  const char* name;
  GemvFn gemv[kNumWeightTypes];
  WidenFn widen[kNumWeightTypes];
  PackWFn pack_w[kNumWeightTypes];
  PackXFn pack_x;
  // Rearranges one row of x (in floats) for the BF16 one-token GEMV: every block of 2 * lanes
  // becomes [even elements, odd elements]; a shorter tail is copied as is. Null when the level
  // has no such path.
  void (*pair_x)(const float* x, int64_t in, float* dst);
  GemmKernelFn gemm_kernel;
  int gemm_mr;  // tokens per micro-kernel tile
  int gemm_nr;  // output rows per micro-kernel tile
  // sum_i x[i]^2 in f32.
  float (*sum_squares)(const float* x, int64_t n);
  // y[i] = x[i] * s * w[i]; y may alias x.
  void (*scale_mul)(const float* x, float s, const float* w, int64_t n, float* y);
  // out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]; out may alias gate or up.
  void (*silu_mul)(const float* gate, const float* up, int64_t n, float* out);
  void (*attend)(const AttendArgs& args);
  // Reads `bytes` (a multiple of 256) from p with the widest loads; returns a value that
  // depends on every byte so the reads cannot be optimised away.
  float (*read_sum)(const void* p, int64_t bytes);
};

enum class SimdLevel;  // cpu_backend.h

// The table for `level` (kAuto: the best this CPU supports); nullptr when the CPU lacks it.
const SimdKernels* KernelsFor(SimdLevel level);

const SimdKernels& ScalarKernels();
// Call these only when the CPU supports the instruction set (see DetectSimdLevel).
const SimdKernels& Avx2Kernels();
const SimdKernels& Avx512Kernels();

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_SIMD_KERNELS_H_
