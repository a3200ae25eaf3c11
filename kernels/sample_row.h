// The arithmetic of Backend::SampleTokens (kernels/sampling.h), shared by the host version
// (kernels/cpu/sampling_host.cc) and the CUDA kernel (kernels/cuda/sample_tokens.cu) so that both
// make the same decisions bit for bit. Plain header: compiled by nvcc and by the host compiler.
//
// The candidates of a row are totally ordered by a 64-bit key: the orderable bits of the scaled
// logit above, vocab - 1 - id below, so a larger key is a larger logit with ties to the lower id
// (the order of the host Sampler's sort). Every filter keeps a prefix of that order -- the keys
// at or above a threshold -- and every threshold is found by a radix descent over the key's
// bytes, most significant first: each step totals the candidates that match the bytes chosen so
// far by their next byte (a count, or a probability mass) and takes the byte whose bin makes the
// running total reach the target. After the last byte the chosen bytes are one candidate's key.
//
//   top_k:  the k-th candidate by count                        -> keys >= K1 are kept
//   min_p:  exp(s) >= min_p (a prefix too: exp is monotone)
//   top_p:  the first candidate where the kept mass reaches ceil(top_p * kept total)  -> K2
//   draw:   the first candidate where the mass reaches floor(uniform * total) + 1     -> token
//
// Masses are fixed point, round(exp(s) * 2^40) with s <= 0, so totals are exact integers (at most
// vocab * 2^40 < 2^64 for vocab <= kMaxVocab) and the order of summation (threads, atomics)
// cannot change a decision.
#ifndef CMOE_KERNELS_SAMPLE_ROW_H_
#define CMOE_KERNELS_SAMPLE_ROW_H_

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define CMOE_SAMPLE_FN __host__ __device__ __forceinline__
#else
#define CMOE_SAMPLE_FN inline
#endif

namespace cmoe::kernels::sample_row {

constexpr int kMassBits = 40;
constexpr int kRadixBins = 256;                  // one byte of the key per descent step
constexpr int64_t kMaxVocab = int64_t{1} << 23;  // mass totals fit in uint64

// A monotone map of floats to uint32 (a < b gives OrderedBits(a) < OrderedBits(b); -0 and +0
// are equal); NaN maps to 0, below -inf.
CMOE_SAMPLE_FN uint32_t OrderedBits(float f) {
  if (f != f) return 0;
  if (f == 0.0f) f = 0.0f;
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

// The key of token `id` with (scaled) logit `value`.
CMOE_SAMPLE_FN uint64_t Key(float value, int64_t id, int64_t vocab) {
  return (static_cast<uint64_t>(OrderedBits(value)) << 32) | static_cast<uint64_t>(vocab - 1 - id);
}

CMOE_SAMPLE_FN int32_t TokenOf(uint64_t key, int64_t vocab) {
  return static_cast<int32_t>(vocab - 1 - static_cast<int64_t>(key & 0xffffffffu));
}

// (logit - best) / temperature in double, as the host Sampler scales; below the float range it
// is -inf (probability 0).
CMOE_SAMPLE_FN float ScaledLogit(float logit, float best, float temperature) {
  const double s =
      (static_cast<double>(logit) - static_cast<double>(best)) / static_cast<double>(temperature);
  return s < -static_cast<double>(FLT_MAX) ? -INFINITY : static_cast<float>(s);
}

// round(exp(s) * 2^40); 0 for NaN and -inf.
CMOE_SAMPLE_FN uint64_t FixedMass(float s) {
  const double p = exp(static_cast<double>(s));
  if (!(p > 0.0)) return 0;
  return static_cast<uint64_t>(p * static_cast<double>(uint64_t{1} << kMassBits) + 0.5);
}

// min_p keeps tokens with p / p_max = exp(s) >= min_p (0: every token).
CMOE_SAMPLE_FN bool PassesMinP(float s, float min_p) {
  return min_p <= 0.0f || exp(static_cast<double>(s)) >= static_cast<double>(min_p);
}

// The mass the top-p prefix must reach: ceil(top_p * total), within [1, total].
CMOE_SAMPLE_FN uint64_t TopPNeed(float top_p, uint64_t total) {
  const double want = ceil(static_cast<double>(top_p) * static_cast<double>(total));
  if (!(want >= 1.0)) return 1;
  if (want >= static_cast<double>(total)) return total;
  return static_cast<uint64_t>(want);
}

// The mass the drawn token's prefix must reach: floor(uniform * total) + 1, within [1, total].
CMOE_SAMPLE_FN uint64_t DrawNeed(double uniform, uint64_t total) {
  const double r = floor(uniform * static_cast<double>(total));
  if (!(r >= 0.0)) return 1;
  if (r >= static_cast<double>(total - 1)) return total;
  return static_cast<uint64_t>(r) + 1;
}

// Bytes of the key a descent walks: the 4 of the logit bits, then those of the id part that can
// be non-zero (ids below vocab need IdBytes(vocab) bytes).
CMOE_SAMPLE_FN int NumDigits(int64_t vocab) {
  int digits = 4;
  for (uint64_t v = static_cast<uint64_t>(vocab - 1); v != 0; v >>= 8) ++digits;
  return digits;
}

// Shift of digit d in [0, NumDigits(vocab)): the 4 bytes of the logit bits (shifts 56 to 32),
// then the id part's bytes from its highest non-zero one down to shift 0.
CMOE_SAMPLE_FN int DigitShift(int d, int64_t vocab) {
  return d < 4 ? 56 - 8 * d : 8 * (NumDigits(vocab) - 1 - d);
}

// One step of a descent. bins[b] totals the candidates that match the bytes chosen so far and
// have b as their next byte; `above` totals the candidates already passed (larger keys). Walks
// the bins from the largest byte down and returns the byte where above + bins[b] reaches `need`,
// with `above` then covering the larger bins only; -1 when the bins fall short (cannot happen
// when `need` is at most the total of the candidates).
// Bin is any 64-bit unsigned type (the CUDA kernel's shared bins are unsigned long long, for its
// atomics).
template <class Bin>
CMOE_SAMPLE_FN int DescendDigit(const Bin* bins, uint64_t need, uint64_t& above) {
  for (int b = kRadixBins - 1; b >= 0; --b) {
    if (above + bins[b] >= need) return b;
    above += bins[b];
  }
  return -1;
}

}  // namespace cmoe::kernels::sample_row

#undef CMOE_SAMPLE_FN

#endif  // CMOE_KERNELS_SAMPLE_ROW_H_
