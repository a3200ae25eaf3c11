// nvcuda::wmma for the CPU emulation of CUDA (tests/cuda_emu/cuda_emu.h): the semantics of the
// CUDA C++ API for 16x16x16 tiles with f16/bf16 inputs and f32 accumulators. Every lane holds the
// whole tile (the API leaves the distribution over lanes unspecified, and kernels must not depend
// on it); the alignment and leading-dimension rules of the API are checked.
#ifndef CMOE_TESTS_CUDA_EMU_WMMA_H_
#define CMOE_TESTS_CUDA_EMU_WMMA_H_

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "tests/cuda_emu/cuda_emu.h"
#include "tests/cuda_emu/half_types.h"

namespace nvcuda::wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation has 16x16x16 tiles only");
  float x[16 * 16];  // logical (row, col) of the tile, row-major: A (m, k), B (k, n), C (m, n)
  static constexpr int num_elements = 16 * 16;
};

template <class Use, class T, class Layout>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, float v) {
  for (float& e : f.x) e = v;
}

namespace detail {
inline float Widen(__half h) { return __half2float(h); }
inline float Widen(__nv_bfloat16 h) { return __bfloat162float(h); }
inline float Widen(float f) { return f; }
}  // namespace detail

template <class Use, class T, class Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>);
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::load_matrix_sync: pointer not 256-bit aligned");
  }
  if ((ldm * sizeof(T)) % 16 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::load_matrix_sync: ldm not a multiple of 16 bytes");
  }
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      const T e = std::is_same_v<Layout, row_major> ? p[i * ldm + j] : p[j * ldm + i];
      f.x[i * 16 + j] = detail::Widen(e);
    }
  }
}

// An accumulator tile from memory (f32, either layout).
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p,
                             unsigned ldm, layout_t layout) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::load_matrix_sync: pointer not 256-bit aligned");
  }
  if ((ldm * sizeof(float)) % 16 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::load_matrix_sync: ldm not a multiple of 16 bytes");
  }
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      f.x[i * 16 + j] = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
    }
  }
}

// A warp-collective op, as on the device: every lane holds the same tiles, so the lowest live
// lane computes the product once and the others copy it (three warp exchanges instead of 32
// copies of 4096 FMAs).
template <class TA, class LA, class TB, class LB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
              const fragment<matrix_b, 16, 16, 16, TB, LB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  float out[16 * 16];
  const auto posted = ::cmoe::cuda_emu::WarpExchange(reinterpret_cast<uintptr_t>(out), ~0u);
  const int leader = std::countr_zero(posted.live);
  if (::cmoe::cuda_emu::LaneId() == leader) {
    for (int m = 0; m < 16; ++m) {
      for (int n = 0; n < 16; ++n) {
        float s = c.x[m * 16 + n];
        for (int k = 0; k < 16; ++k) s = std::fma(a.x[m * 16 + k], b.x[k * 16 + n], s);
        out[m * 16 + n] = s;
      }
    }
  }
  const auto* product = reinterpret_cast<const float*>(posted.values[leader]);
  ::cmoe::cuda_emu::WarpExchange(0, ~0u);  // the leader has computed
  std::memcpy(d.x, product, sizeof out);
  ::cmoe::cuda_emu::WarpExchange(0, ~0u);  // everyone has copied: the leader's `out` may go
}

inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f,
                              unsigned ldm, layout_t layout) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::store_matrix_sync: pointer not 256-bit aligned");
  }
  if ((ldm * sizeof(float)) % 16 != 0) {
    ::cmoe::cuda_emu::Fault("wmma::store_matrix_sync: ldm not a multiple of 16 bytes");
  }
  if (::cmoe::cuda_emu::LaneId() != 0) return;  // every lane holds the same tile
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      (layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i]) = f.x[i * 16 + j];
    }
  }
}

}  // namespace nvcuda::wmma

#endif  // CMOE_TESTS_CUDA_EMU_WMMA_H_
