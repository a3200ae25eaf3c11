#include "engine/expert_parallel.h"

#include <algorithm>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status.h"

namespace cmoe::engine {
namespace {

absl::Status CheckSize(const char* op, const char* operand, size_t got, int64_t want) {
  if (static_cast<int64_t>(got) == want) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(op, ": ", operand, " has ", got, " elements, expected ", want));
}

// offsets (n + 1) = exclusive prefix sum of counts (n).
std::vector<int64_t> PrefixSum(const std::vector<int64_t>& counts) {
  std::vector<int64_t> offsets(counts.size() + 1, 0);
  std::partial_sum(counts.begin(), counts.end(), offsets.begin() + 1);
  return offsets;
}

// Row sums of a (W, L) matrix, checking it holds no negative count and no rows past the
// receiver's own experts.
absl::StatusOr<std::vector<int64_t>> SourceCounts(std::span<const int64_t> counts, int32_t width,
                                                  int32_t num_local) {
  std::vector<int64_t> per_source(counts.size() / width, 0);
  for (size_t s = 0; s < per_source.size(); ++s) {
    for (int32_t l = 0; l < width; ++l) {
      const int64_t c = counts[s * width + l];
      if (c < 0 || (l >= num_local && c != 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "BuildExpertRecvPlan: source ", s, " sends ", c, " rows for local expert ", l,
            c < 0 ? "" : absl::StrCat(", but this rank owns ", num_local, " experts")));
      }
      per_source[s] += c;
    }
  }
  return per_source;
}

absl::Status ValidateRunArgs(const kernels::Communicator& comm, const ExpertPlacement& placement,
                             const ExpertParallelArgs& args) {
  constexpr char kOp[] = "RunExpertParallelMoe";
  if (placement.world_size() != comm.world_size()) {
    return absl::InvalidArgumentError(absl::StrCat(kOp, ": placement world size ",
                                                   placement.world_size(), " != communicator's ",
                                                   comm.world_size()));
  }
  if (args.num_tokens < 0) return absl::InvalidArgumentError("RunExpertParallelMoe: T < 0");
  if (args.dim < 1) return absl::InvalidArgumentError("RunExpertParallelMoe: dim < 1");
  if (args.k < 1 || args.k > placement.num_experts()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kOp, ": k ", args.k, " outside [1, ", placement.num_experts(), "]"));
  }
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "h", args.h.size(), args.num_tokens * args.dim));
  CMOE_RETURN_IF_ERROR(CheckSize(kOp, "weights", args.weights.size(), args.num_tokens * args.k));
  return CheckSize(kOp, "x", args.x.size(), args.num_tokens * args.dim);
}

// send[p] = h[slot_token[p]]: (P, dim).
std::vector<float> GatherSendRows(const ExpertParallelArgs& args, const DispatchPlan& dispatch) {
  std::vector<float> send(dispatch.slot_token.size() * args.dim);
  for (size_t p = 0; p < dispatch.slot_token.size(); ++p) {
    const auto src = args.h.begin() + dispatch.slot_token[p] * args.dim;
    std::copy(src, src + args.dim, send.begin() + static_cast<int64_t>(p) * args.dim);
  }
  return send;
}

// Runs every local expert on its received rows; out (R, dim) is in receive-buffer order.
absl::Status RunLocalExperts(const ExpertRecvPlan& recv_plan, std::span<const float> recv,
                             int64_t dim, const LocalExpertFn& expert, std::span<float> out) {
  std::vector<float> rows_in, rows_out;
  for (int32_t l = 0; l < recv_plan.num_local_experts; ++l) {
    const int64_t begin = recv_plan.expert_offsets[l];
    const int64_t n = recv_plan.expert_counts[l];
    if (n == 0) continue;
    rows_in.resize(n * dim);
    rows_out.assign(n * dim, 0.0f);
    for (int64_t i = 0; i < n; ++i) {
      const auto src = recv.begin() + recv_plan.expert_rows[begin + i] * dim;
      std::copy(src, src + dim, rows_in.begin() + i * dim);
    }
    CMOE_RETURN_IF_ERROR(Annotate(expert(l, rows_in, rows_out), absl::StrCat("local expert ", l)));
    for (int64_t i = 0; i < n; ++i) {
      const auto src = rows_out.begin() + i * dim;
      std::copy(src, src + dim, out.begin() + recv_plan.expert_rows[begin + i] * dim);
    }
  }
  return absl::OkStatus();
}

// x[slot_token[p]] += w[slot_source[p]] * back[p], p in dispatch order.
void Combine(const DispatchPlan& dispatch, std::span<const float> back,
             const ExpertParallelArgs& args) {
  for (size_t p = 0; p < dispatch.slot_token.size(); ++p) {
    const float w = args.weights[dispatch.slot_source[p]];
    const float* src = back.data() + static_cast<int64_t>(p) * args.dim;
    float* dst = args.x.data() + static_cast<int64_t>(dispatch.slot_token[p]) * args.dim;
    for (int64_t i = 0; i < args.dim; ++i) dst[i] += w * src[i];
  }
}

}  // namespace

ExpertPlacement::ExpertPlacement(int32_t num_experts, int32_t world_size)
    : num_experts_(num_experts),
      world_size_(world_size),
      base_(num_experts / world_size),
      extra_(num_experts % world_size) {}

absl::StatusOr<ExpertPlacement> ExpertPlacement::Create(int32_t num_experts, int32_t world_size) {
  if (num_experts < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertPlacement: num_experts ", num_experts, " < 1"));
  }
  if (world_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("ExpertPlacement: world_size ", world_size, " < 1"));
  }
  return ExpertPlacement(num_experts, world_size);
}

int32_t ExpertPlacement::Owner(int32_t expert) const {
  CMOE_CHECK(expert >= 0 && expert < num_experts_) << "expert " << expert << " of " << num_experts_;
  // The first extra_ ranks hold base_ + 1 experts each, the rest base_ (>= 1 when reached).
  const int32_t big = extra_ * (base_ + 1);
  if (expert < big) return expert / (base_ + 1);
  return extra_ + (expert - big) / base_;
}

int32_t ExpertPlacement::LocalIndex(int32_t expert) const {
  return expert - FirstExpert(Owner(expert));
}

int32_t ExpertPlacement::FirstExpert(int32_t rank) const {
  CMOE_CHECK(rank >= 0 && rank < world_size_) << "rank " << rank << " of " << world_size_;
  return rank * base_ + std::min(rank, extra_);
}

int32_t ExpertPlacement::NumLocalExperts(int32_t rank) const {
  CMOE_CHECK(rank >= 0 && rank < world_size_) << "rank " << rank << " of " << world_size_;
  return base_ + (rank < extra_ ? 1 : 0);
}

absl::StatusOr<ExpertSendPlan> BuildExpertSendPlan(const DispatchPlan& dispatch,
                                                   const ExpertPlacement& placement) {
  if (dispatch.num_experts != placement.num_experts()) {
    return absl::InvalidArgumentError(absl::StrCat("BuildExpertSendPlan: dispatch plan has ",
                                                   dispatch.num_experts, " experts, placement ",
                                                   placement.num_experts()));
  }
  const int32_t world = placement.world_size();
  const int32_t width = placement.MaxLocalExperts();
  ExpertSendPlan plan{.dispatch = dispatch};
  plan.rank_counts.assign(world, 0);
  plan.expert_counts.assign(static_cast<size_t>(world) * width, 0);
  for (int32_t e = 0; e < dispatch.num_experts; ++e) {
    const int32_t r = placement.Owner(e);
    plan.rank_counts[r] += dispatch.counts[e];
    plan.expert_counts[r * width + placement.LocalIndex(e)] = dispatch.counts[e];
  }
  plan.rank_offsets = PrefixSum(plan.rank_counts);
  plan.row_local_expert.resize(dispatch.slot_token.size());
  for (int32_t e = 0; e < dispatch.num_experts; ++e) {
    std::fill(plan.row_local_expert.begin() + dispatch.offsets[e],
              plan.row_local_expert.begin() + dispatch.offsets[e + 1], placement.LocalIndex(e));
  }
  return plan;
}

absl::StatusOr<ExpertSendPlan> BuildExpertSendPlan(std::span<const int32_t> selected,
                                                   int64_t num_tokens, int32_t k,
                                                   const ExpertPlacement& placement) {
  CMOE_ASSIGN_OR_RETURN(const DispatchPlan dispatch,
                        BuildDispatchPlan(selected, num_tokens, k, placement.num_experts()));
  return BuildExpertSendPlan(dispatch, placement);
}

absl::StatusOr<ExpertRecvPlan> BuildExpertRecvPlan(std::span<const int64_t> recv_expert_counts,
                                                   const ExpertPlacement& placement, int32_t rank) {
  const int32_t world = placement.world_size();
  const int32_t width = placement.MaxLocalExperts();
  if (rank < 0 || rank >= world) {
    return absl::InvalidArgumentError(
        absl::StrCat("BuildExpertRecvPlan: rank ", rank, " outside [0, ", world, ")"));
  }
  CMOE_RETURN_IF_ERROR(CheckSize("BuildExpertRecvPlan", "recv_expert_counts",
                                 recv_expert_counts.size(), int64_t{world} * width));
  ExpertRecvPlan plan{.rank = rank, .num_local_experts = placement.NumLocalExperts(rank)};
  CMOE_ASSIGN_OR_RETURN(plan.source_counts,
                        SourceCounts(recv_expert_counts, width, plan.num_local_experts));
  plan.source_offsets = PrefixSum(plan.source_counts);
  plan.expert_counts.assign(plan.num_local_experts, 0);
  for (int32_t s = 0; s < world; ++s) {
    for (int32_t l = 0; l < plan.num_local_experts; ++l) {
      plan.expert_counts[l] += recv_expert_counts[s * width + l];
    }
  }
  plan.expert_offsets = PrefixSum(plan.expert_counts);
  plan.expert_rows.resize(plan.source_offsets[world]);
  // Within source s, local expert l's rows start after the rows of its experts before l.
  std::vector<int64_t> cursor(plan.expert_offsets.begin(), plan.expert_offsets.end() - 1);
  for (int32_t s = 0; s < world; ++s) {
    int64_t row = plan.source_offsets[s];
    for (int32_t l = 0; l < plan.num_local_experts; ++l) {
      for (int64_t i = 0; i < recv_expert_counts[s * width + l]; ++i) {
        plan.expert_rows[cursor[l]++] = row++;
      }
    }
  }
  return plan;
}

absl::Status RunExpertParallelMoe(kernels::Communicator& comm, const ExpertPlacement& placement,
                                  const ExpertParallelArgs& args, const LocalExpertFn& expert,
                                  ExpertParallelStats* stats) {
  CMOE_RETURN_IF_ERROR(ValidateRunArgs(comm, placement, args));
  CMOE_ASSIGN_OR_RETURN(const ExpertSendPlan send_plan,
                        BuildExpertSendPlan(args.selected, args.num_tokens, args.k, placement));
  const int64_t dim = args.dim;
  std::vector<int64_t> recv_expert_counts(send_plan.expert_counts.size());
  CMOE_RETURN_IF_ERROR(comm.AllToAllCounts(send_plan.expert_counts, recv_expert_counts,
                                           placement.MaxLocalExperts()));
  CMOE_ASSIGN_OR_RETURN(const ExpertRecvPlan recv_plan,
                        BuildExpertRecvPlan(recv_expert_counts, placement, comm.rank()));
  const std::vector<float> send = GatherSendRows(args, send_plan.dispatch);
  const int64_t num_recv = recv_plan.source_offsets.back();
  std::vector<float> recv(num_recv * dim), out(num_recv * dim);
  CMOE_RETURN_IF_ERROR(comm.AllToAllRows({.send = send,
                                          .send_counts = send_plan.rank_counts,
                                          .recv = recv,
                                          .recv_counts = recv_plan.source_counts,
                                          .row_width = dim}));
  CMOE_RETURN_IF_ERROR(RunLocalExperts(recv_plan, recv, dim, expert, out));
  std::vector<float> back(send.size());
  CMOE_RETURN_IF_ERROR(comm.AllToAllRows({.send = out,
                                          .send_counts = recv_plan.source_counts,
                                          .recv = back,
                                          .recv_counts = send_plan.rank_counts,
                                          .row_width = dim}));
  Combine(send_plan.dispatch, back, args);
  if (stats != nullptr) {
    stats->sent_per_rank = send_plan.rank_counts;
    stats->received_per_rank = recv_plan.source_counts;
    stats->received_per_local_expert = recv_plan.expert_counts;
  }
  return absl::OkStatus();
}

}  // namespace cmoe::engine
