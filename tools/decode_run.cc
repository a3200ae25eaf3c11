#include "tools/decode_run.h"

#include <algorithm>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "common/timer.h"
#include "kernels/communicator.h"

namespace cmoe::tools {
namespace {

// Decode steps sample greedily in the model, as the server does on a device: only the token ids
// come back from a GPU, not the logits.
constexpr kernels::RowSampling kGreedy{};

}  // namespace

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

std::vector<int32_t> RandomTokens(int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  // Ids from 3 skip the usual <unk>/BOS/EOS; tiny vocabularies use every id.
  const auto last = static_cast<int32_t>(vocab - 1);
  std::uniform_int_distribution<int32_t> dist(std::min(3, last), last);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& id : ids) id = dist(rng);
  return ids;
}

absl::StatusOr<std::unique_ptr<DecodeRun>> DecodeRun::Create(
    std::vector<engine::LoadedModel>& ranks, std::string label, const DecodeRunOptions& options) {
  if (ranks.empty() || options.batch < 1 || options.prompt_len < 1 || options.steps < 1 ||
      options.kv_block_size < 1) {
    return absl::InvalidArgumentError(
        "DecodeRun: needs a model, batch, prompt, steps and KV block size >= 1");
  }
  const auto world = static_cast<int32_t>(ranks.size());
  auto run = std::unique_ptr<DecodeRun>(new DecodeRun(world));
  run->label_ = std::move(label);
  run->prompt_len_ = options.prompt_len;
  const engine::ModelConfig& config = ranks[0].model->config();
  if (options.prompt_len + options.steps > config.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("--prompt + --tokens exceed the context of ",
                                                   config.max_position_embeddings, " of ",
                                                   run->label_));
  }
  run->ranks_.resize(static_cast<size_t>(world));
  for (int32_t r = 0; r < world; ++r) {
    Rank& rank = run->ranks_[r];
    rank.model = ranks[r].model.get();
    rank.comm = rank.model->expert_parallel();
    if (world > 1 && rank.comm == nullptr) {
      return absl::InvalidArgumentError(
          "DecodeRun: several models that are not the expert-parallel ranks of one group");
    }
    // Sequences r, r + world, ...: the engine's placement (fewest running) gives the same counts.
    const int64_t mine = options.batch / world + (r < options.batch % world ? 1 : 0);
    const int64_t per_seq = options.prompt_len + options.steps;
    kernels::Backend& backend = rank.model->backend();
    CMOE_ASSIGN_OR_RETURN(
        rank.cache,
        engine::KvCache::Create(
            config,
            {.block_size = options.kv_block_size,
             // One block of slack per sequence, and one for a rank without sequences.
             .num_blocks = std::max<int64_t>(
                 1, mine * ((per_seq + options.kv_block_size - 1) / options.kv_block_size + 1)),
             .dtype = options.kv_cache_dtype,
             .memory = backend.IsDevice() ? &backend : nullptr}));
    rank.seqs.resize(static_cast<size_t>(mine));
    rank.next.resize(static_cast<size_t>(mine));
    for (int64_t i = 0; i < mine; ++i) {
      const int64_t b = r + i * world;
      rank.prompts.push_back(RandomTokens(options.prompt_len, config.vocab_size, b));
    }
    for (int64_t i = 0; i < mine; ++i) {
      CMOE_RETURN_IF_ERROR(rank.cache->Reserve(rank.seqs[i], options.prompt_len));
      rank.chunks.push_back(
          {.tokens = rank.prompts[i], .start_pos = 0, .blocks = &rank.seqs[i], .sample = &kGreedy});
    }
  }
  CMOE_RETURN_IF_ERROR(run->ForwardAll());
  return run;
}

absl::Status DecodeRun::ForwardAll() {
  threads_.Run([this](int32_t r) {
    Rank& rank = ranks_[r];
    rank.status = rank.chunks.empty() && rank.comm != nullptr
                      ? rank.model->ForwardIdle()
                      : rank.model->Forward(rank.chunks, *rank.cache, rank.out);
    if (!rank.status.ok()) {
      for (Rank& peer : ranks_) {
        if (peer.comm != nullptr) peer.comm->Abort();
      }
    }
  });
  for (size_t r = 0; r < ranks_.size(); ++r) {
    if (!ranks_[r].status.ok()) {
      return ranks_.size() == 1 ? ranks_[r].status
                                : Annotate(ranks_[r].status, absl::StrCat("rank ", r));
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeRun::Step(bool timed) {
  for (Rank& rank : ranks_) {
    for (size_t i = 0; i < rank.seqs.size(); ++i) {
      rank.next[i] = rank.out.tokens[i];
      CMOE_RETURN_IF_ERROR(rank.cache->Reserve(rank.seqs[i], prompt_len_ + pos_ + 1));
      rank.chunks[i] = {.tokens = {&rank.next[i], 1},
                        .start_pos = prompt_len_ + pos_,
                        .blocks = &rank.seqs[i],
                        .sample = &kGreedy};
    }
  }
  Timer timer;
  CMOE_RETURN_IF_ERROR(ForwardAll());
  const double seconds = timer.Seconds();
  ++pos_;
  if (!timed) return absl::OkStatus();
  step_seconds_.push_back(seconds);
  step_bytes_.push_back(static_cast<double>(ranks_[0].model->LastStepWeightBytes()));
  // The union of the experts every rank's tokens were routed to, per layer.
  const engine::FfnStepStats& first = ranks_[0].model->last_step_stats();
  std::vector<int64_t> per_expert(first.tokens_per_expert.size(), 0);
  for (const Rank& rank : ranks_) {
    const engine::FfnStepStats& st = rank.model->last_step_stats();
    for (size_t i = 0; i < per_expert.size() && i < st.tokens_per_expert.size(); ++i) {
      per_expert[i] += st.tokens_per_expert[i];
    }
    neurons_ += st.neurons_computed;
    neurons_dense_ += st.neurons_dense;
  }
  if (!per_expert.empty()) {
    const int64_t touched =
        std::count_if(per_expert.begin(), per_expert.end(), [](int64_t c) { return c > 0; });
    touched_.push_back(static_cast<double>(touched) /
                       static_cast<double>(ranks_[0].model->config().num_hidden_layers));
  }
  return absl::OkStatus();
}

int64_t DecodeRun::carved_layers() const {
  int64_t carved = 0;
  for (const auto& layer : ranks_[0].model->checkpoint().weights().layers) {
    carved += layer.moe.has_value() ? 1 : 0;
  }
  return carved;
}

nlohmann::json DecodeRun::Result() const {
  int64_t batch = 0;
  for (const Rank& rank : ranks_) batch += static_cast<int64_t>(rank.seqs.size());
  double total = 0.0;
  for (double t : step_seconds_) total += t;
  const double median = Median(step_seconds_);
  nlohmann::json j{{"model", label_},
                   {"ranks", ranks()},
                   {"tokens_per_second", static_cast<double>(batch) * step_seconds_.size() / total},
                   {"median_step_ms", median * 1e3},
                   {"median_tokens_per_second", static_cast<double>(batch) / median},
                   {"ffn_activation_ratio",
                    neurons_dense_ > 0 ? static_cast<double>(neurons_) / neurons_dense_ : 0.0}};
  if (ranks_.size() == 1) {
    const double bytes = Median(step_bytes_);
    j["weight_bytes_per_step"] = bytes;
    j["weight_bytes_per_token"] = bytes / static_cast<double>(batch);
    j["achieved_gbps"] = bytes / median / 1e9;
  }
  if (const auto& cmoe = ranks_[0].model->config().cmoe; cmoe.has_value()) {
    j["cmoe"] = cmoe->Name();
    j["routed_experts"] = cmoe->num_routed();
    j["experts_touched_per_layer"] = Median(touched_);
  }
  return j;
}

}  // namespace cmoe::tools
