// Expert parallelism's dispatch arithmetic (docs/architecture.md "Scaling out"): the N_r routed
// experts are spread over W ranks; attention and the shared experts are replicated, so every
// rank routes its own T tokens, sends each (token, k-slot) row to the rank owning its expert,
// and gets the expert output back for the weighted scatter-add.
//
// - ExpertPlacement: which rank owns which expert (contiguous blocks).
// - ExpertSendPlan: on the sending rank, the step's DispatchPlan split by destination rank.
//   Because every rank owns a contiguous block of experts, the DispatchPlan's expert order already
//   is destination-rank order, then expert order: send row p is dispatch row p. The same arrays
//   are the combine plan, since outputs come back in the order the rows were sent.
// - ExpertRecvPlan: on the receiving rank, from the per-(source, local expert) counts, where each
//   received row sits and how to group the rows by local expert.
// - RunExpertParallelMoe: the whole round trip over a Communicator with an expert callback.
//
// One step on every rank (the same sequence of collectives on every rank):
//
//   CMOE_ASSIGN_OR_RETURN(ExpertPlacement placement,
//                         ExpertPlacement::Create(n_r, comm.world_size()));
//   CMOE_ASSIGN_OR_RETURN(ExpertSendPlan send,
//                         BuildExpertSendPlan(selected, T, k, placement));
//   std::vector<int64_t> recv_expert_counts(send.expert_counts.size());
//   CMOE_RETURN_IF_ERROR(comm.AllToAllCounts(send.expert_counts, recv_expert_counts,
//                                            placement.MaxLocalExperts()));
//   CMOE_ASSIGN_OR_RETURN(ExpertRecvPlan recv,
//                         BuildExpertRecvPlan(recv_expert_counts, placement, comm.rank()));
//   // rows out: h[send.dispatch.slot_token[p]] for p in order; AllToAllRows with
//   // send.rank_counts / recv.source_counts; per local expert l, the received rows
//   // recv.expert_rows[recv.expert_offsets[l] .. recv.expert_offsets[l + 1]); outputs back in
//   // receive order with the counts swapped; x[slot_token[p]] += w[slot_source[p]] * back[p].
//
// Counts are exchanged per local expert of the receiver (a (W, MaxLocalExperts()) matrix) rather
// than as a per-row expert id: the rows for one rank are already in expert order, so the counts
// say which local expert each row belongs to at a fraction of the traffic.
//
// Everything here is host arithmetic on plain vectors a device path can mirror; nothing keeps
// state between calls, and each function is safe to call from several threads on distinct data.
#ifndef CMOE_ENGINE_EXPERT_PARALLEL_H_
#define CMOE_ENGINE_EXPERT_PARALLEL_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/moe_dispatch.h"
#include "kernels/communicator.h"

namespace cmoe::engine {

// N_r experts over W ranks in contiguous blocks whose sizes differ by at most one; the first
// N_r % W ranks own one more. With W > N_r the last W - N_r ranks own no expert.
class ExpertPlacement {
 public:
  // InvalidArgument for num_experts < 1 or world_size < 1.
  static absl::StatusOr<ExpertPlacement> Create(int32_t num_experts, int32_t world_size);

  int32_t num_experts() const { return num_experts_; }
  int32_t world_size() const { return world_size_; }
  // The rank owning `expert` in [0, N_r) (CHECK).
  int32_t Owner(int32_t expert) const;
  // The position of `expert` among its owner's experts (CHECK on the range).
  int32_t LocalIndex(int32_t expert) const;
  // Rank r owns experts [FirstExpert(r), FirstExpert(r) + NumLocalExperts(r)) (CHECK on r).
  int32_t FirstExpert(int32_t rank) const;
  int32_t NumLocalExperts(int32_t rank) const;
  // ceil(N_r / W): the width of the per-rank count matrices.
  int32_t MaxLocalExperts() const { return base_ + (extra_ > 0 ? 1 : 0); }

 private:
  ExpertPlacement(int32_t num_experts, int32_t world_size);

  int32_t num_experts_;
  int32_t world_size_;
  int32_t base_;   // N_r / W
  int32_t extra_;  // N_r % W: ranks [0, extra_) own base_ + 1 experts
};

// One rank's rows of a step, by destination. P = T * k rows (one per (token, k-slot)).
struct ExpertSendPlan {
  // Rows in expert order = destination-rank order, then expert order, then token order. Send row
  // p carries h[dispatch.slot_token[p]]; the output returned in position p belongs to token
  // dispatch.slot_token[p], k-slot dispatch.slot_source[p] % k, gate weight
  // w[dispatch.slot_source[p]] (the combine plan).
  DispatchPlan dispatch;
  std::vector<int64_t> rank_counts;   // (W) rows sent to each rank
  std::vector<int64_t> rank_offsets;  // (W + 1) exclusive prefix sum; rows of r: [off[r], off[r+1])
  // (W, MaxLocalExperts()) row-major: rows sent to rank r for its local expert l; zero for
  // l >= NumLocalExperts(r). The matrix AllToAllCounts exchanges.
  std::vector<int64_t> expert_counts;
  std::vector<int32_t> row_local_expert;  // (P) local index on the receiver of send row p's expert
};

// From an existing plan (dispatch.num_experts must equal placement.num_experts(), else
// InvalidArgument). The plan is copied into the result.
absl::StatusOr<ExpertSendPlan> BuildExpertSendPlan(const DispatchPlan& dispatch,
                                                   const ExpertPlacement& placement);
// From the routing: selected (T, k) int32 expert ids, read, as RouteTokens writes them.
// InvalidArgument as BuildDispatchPlan (sizes, k, ids outside [0, N_r), duplicates).
absl::StatusOr<ExpertSendPlan> BuildExpertSendPlan(std::span<const int32_t> selected,
                                                   int64_t num_tokens, int32_t k,
                                                   const ExpertPlacement& placement);

// What one rank receives. The receive buffer holds the rows of source 0, then source 1, ...; each
// source's rows are in its local-expert order. R = total rows received.
struct ExpertRecvPlan {
  int32_t rank = 0;
  int32_t num_local_experts = 0;        // L = placement.NumLocalExperts(rank)
  std::vector<int64_t> source_counts;   // (W) rows from each source rank
  std::vector<int64_t> source_offsets;  // (W + 1) exclusive prefix sum over the receive buffer
  std::vector<int64_t> expert_counts;   // (L) rows for each local expert, over all sources
  std::vector<int64_t> expert_offsets;  // (L + 1) exclusive prefix sum
  // (R) receive-buffer row of the q-th row grouped by local expert: rows of expert l are
  // expert_rows[expert_offsets[l] .. expert_offsets[l + 1]), by source rank, then send order.
  std::vector<int64_t> expert_rows;
};

// recv_expert_counts: (W, MaxLocalExperts()) int64, read: what AllToAllCounts returned for the
// senders' expert_counts. InvalidArgument for a size mismatch, a negative count, a rank outside
// [0, W), or rows for a local expert this rank does not own (the senders used another placement).
absl::StatusOr<ExpertRecvPlan> BuildExpertRecvPlan(std::span<const int64_t> recv_expert_counts,
                                                   const ExpertPlacement& placement, int32_t rank);

// Computes one local expert on the rows routed to it. rows_in, rows_out: (n, dim) f32 row-major
// host memory, n >= 1; rows_in read, rows_out written. Called on the rank's own thread.
using LocalExpertFn = std::function<absl::Status(
    int32_t local_expert, std::span<const float> rows_in, std::span<float> rows_out)>;

struct ExpertParallelArgs {
  std::span<const float> h;           // (T, dim) f32 host, read: this rank's FFN input
  std::span<const int32_t> selected;  // (T, k) int32, read: expert ids
  std::span<const float> weights;     // (T, k) f32, read: gate weights of the selected experts
  int64_t num_tokens = 0;             // T >= 0 on this rank (ranks may differ)
  int32_t k = 0;                      // in [1, N_r], the same on every rank
  int64_t dim = 0;                    // >= 1, the same on every rank
  std::span<float> x;                 // (T, dim) f32 host, read/written: x += sum_j w_j E_j(h)
};

// Rows each rank exchanged in one round trip (metrics: per-rank load).
struct ExpertParallelStats {
  std::vector<int64_t> sent_per_rank;              // (W) rows this rank sent to each rank
  std::vector<int64_t> received_per_rank;          // (W) rows this rank got from each rank
  std::vector<int64_t> received_per_local_expert;  // (L) rows each local expert computed
};

// The whole round trip on one rank; every rank of `comm` calls it for the step. Dispatches the
// rows, calls `expert` once per local expert with rows (in expert-grouped order), returns the
// outputs, and adds w * out into x in the dispatch plan's order (expert, then token): the same
// order as the single-rank MoeLayer, so W = 1 matches it exactly.
// InvalidArgument (before any collective) for sizes, k, ids, or a placement whose world size is
// not comm.world_size(); x is untouched then. Errors from the communicator or the callback
// propagate; x is untouched then too, but peers may be left inside a collective (see
// kernels/communicator.h). stats may be null; when given it is overwritten.
// Allocates its buffers per call: a reference and test path, not the fast one.
absl::Status RunExpertParallelMoe(kernels::Communicator& comm, const ExpertPlacement& placement,
                                  const ExpertParallelArgs& args, const LocalExpertFn& expert,
                                  ExpertParallelStats* stats);

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_EXPERT_PARALLEL_H_
