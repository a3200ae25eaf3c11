// ATopK activation markers (step 3 of the CMoE carving, docs/cmoe-method.md).
//
// A[t, i] = 1 iff neuron i is among the K_a neurons with the largest |H[t, :]| for token t.
// The matrix is stored bit-packed per neuron COLUMN, because everything downstream (activation
// rates, L1/Hamming distances between neuron patterns, centroids) works on columns:
//
//   column i = words [i * W, (i + 1) * W), W = ceil(q / 64); token t is bit (t % 64) of word
//   t / 64. Bits of the last word at positions >= q (the padding) are always zero.
//
//   CMOE_ASSIGN_OR_RETURN(ActivationMarkers markers,
//                         BuildTopKMarkers(scores, {.num_tokens = q, .num_neurons = d_h,
//                                                   .top_k = 10}, &pool));
//   double mu = markers.ActivationRate(i);
//   int64_t d = HammingDistance(markers.Column(i), markers.Column(j));
#ifndef CMOE_ENGINE_CARVE_ACTIVATION_MARKERS_H_
#define CMOE_ENGINE_CARVE_ACTIVATION_MARKERS_H_

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "common/thread_pool.h"

namespace cmoe::engine::carve {

// q tokens x n neurons of bits, column-major and bit-packed (see the file comment). Owns its
// storage. Not thread-safe for writes, except that Set() on tokens in different 64-token blocks
// (different words) may run concurrently.
class ActivationMarkers {
 public:
  ActivationMarkers() = default;
  // All bits zero. Negative sizes are treated as zero.
  ActivationMarkers(int64_t num_tokens, int64_t num_neurons);

  int64_t num_tokens() const { return num_tokens_; }
  int64_t num_neurons() const { return num_neurons_; }
  int64_t words_per_column() const { return words_per_column_; }

  // Preconditions (unchecked): 0 <= t < num_tokens(), 0 <= i < num_neurons().
  void Set(int64_t t, int64_t i) { bits_[Word(t, i)] |= Bit(t); }
  bool Get(int64_t t, int64_t i) const { return (bits_[Word(t, i)] & Bit(t)) != 0; }

  // Σ_t A[t, i] and μ_i = count / q (0 when q == 0).
  int64_t ActivationCount(int64_t i) const;
  double ActivationRate(int64_t i) const;

  // Neuron i's pattern: words_per_column() words, padding bits zero. Valid while *this lives.
  std::span<const uint64_t> Column(int64_t i) const;

 private:
  int64_t Word(int64_t t, int64_t i) const { return i * words_per_column_ + (t >> 6); }
  static uint64_t Bit(int64_t t) { return uint64_t{1} << (t & 63); }

  int64_t num_tokens_ = 0;
  int64_t num_neurons_ = 0;
  int64_t words_per_column_ = 0;
  std::vector<uint64_t> bits_;  // (num_neurons, words_per_column), row-major
};

struct TopKMarkerParams {
  int64_t num_tokens = 0;   // q, rows of the score matrix
  int64_t num_neurons = 0;  // d_h, columns of the score matrix
  int64_t top_k = 10;       // K_a, 0 <= top_k <= num_neurons
};

// Marks, for each token t, the top_k neurons with the largest |scores[t, i]|.
// `scores`: (num_tokens, num_neurons) float32, row-major, host memory, read only.
// Ordering: larger |score| first; equal |score| -> LOWER neuron index wins; NaN ranks below
// every number (so NaNs are marked only when a row has fewer than top_k non-NaN scores).
// Parallel over blocks of 64 tokens on `pool` (nullptr: the calling thread only).
// InvalidArgument on negative sizes, top_k outside [0, num_neurons] or a scores size mismatch.
absl::StatusOr<ActivationMarkers> BuildTopKMarkers(std::span<const float> scores,
                                                   const TopKMarkerParams& params,
                                                   ThreadPool* pool);

// L1 distance between two binary columns of equal length = popcount(a XOR b).
// Both must have zero padding (every Column() has). Precondition (unchecked): equal sizes.
int64_t HammingDistance(std::span<const uint64_t> a, std::span<const uint64_t> b);

// L1 distance between neuron i's binary column and a binary centroid (e.g. a seed's column).
// `centroid`: words_per_column() words with zero padding. Precondition (unchecked): 0 <= i < n.
int64_t L1Distance(const ActivationMarkers& markers, int64_t i, std::span<const uint64_t> centroid);

// L1 distance Σ_t |A[t, i] - centroid[t]| to a real-valued centroid (e.g. a cluster mean).
// `centroid`: num_tokens() floats. Preconditions (unchecked): size matches, 0 <= i < n.
double L1Distance(const ActivationMarkers& markers, int64_t i, std::span<const float> centroid);

// Mean of the member columns: out[t] = (1/|members|) Σ_{i ∈ members} A[t, i] (num_tokens()
// floats; all zero when `members` is empty). Precondition (unchecked): members in [0, n).
std::vector<float> MeanColumn(const ActivationMarkers& markers, std::span<const int64_t> members);

}  // namespace cmoe::engine::carve

#endif  // CMOE_ENGINE_CARVE_ACTIVATION_MARKERS_H_
