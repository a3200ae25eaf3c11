// The whole-model carve on the three shared models, end to end: CarveModel -> the carved
// checkpoint directory -> LoadModel -> Forward. With every routed expert active the carved model
// is the dense model (logits equal); the carved tensors are exactly the dense rows and columns;
// carving is deterministic; per-request expert counts in one batch; the FFN step statistics;
// the loader's errors on damaged carved checkpoints; the carve's own preconditions and files;
// the load-balancing bias.
#include "engine/carve/carve_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <numeric>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/carve/calibration.h"
#include "engine/carve/carved_checkpoint_writer.h"
#include "engine/checkpoint.h"
#include "engine/model_loader.h"
#include "engine/safetensors.h"
#include "engine/safetensors_writer.h"
#include "engine/staged_output_dir.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/engine/shared_models.h"
#include "tests/test_util.h"

namespace cmoe::engine::carve {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using Json = nlohmann::json;

constexpr int kThreads = 2;
constexpr int64_t kCalibRangeEnd = 20000;  // calibration bytes [0, 20000) of the val text
constexpr int64_t kPromptOffset = 40000;   // prompts come from elsewhere in the file
constexpr size_t kPromptTokens = 40;

struct Shape {
  int32_t experts, shared, active;
};
constexpr Shape kS2A2E8{8, 2, 2};
constexpr Shape kS0A2E4{4, 0, 2};

std::string ValText() { return testing::SharedData("tinystories_val.txt"); }

std::string DenseDir(const std::string& name) {
  absl::StatusOr<std::string> dir = testing::SharedModelDir(name);
  CMOE_CHECK(dir.ok()) << dir.status();
  return *dir;
}

LoadedModel Load(const std::string& dir) {
  absl::StatusOr<LoadedModel> m =
      LoadModel({.model_dir = dir, .threads = kThreads, .kv_cache_tokens = 1024});
  CMOE_CHECK(m.ok()) << m.status();
  return std::move(*m);
}

CalibrationOptions CalibOptions(uint64_t seed = 0, int64_t seqs = 2, int64_t len = 64) {
  return {.file = ValText(),
          .range_begin = 0,
          .range_end = kCalibRangeEnd,
          .seqs = seqs,
          .len = len,
          .seed = seed};
}

CarveModelOptions Options(Shape s, const CalibrationOptions& calib, double gamma = 0,
                          int threads = kThreads) {
  return {.layer = {.num_experts = s.experts, .num_shared = s.shared, .num_activated = s.active},
          .balance_bias_gamma = gamma,
          .threads = threads,
          .calibration = calib};
}

// LoadCalibration -> CarveModel -> StagedOutputDir -> WriteCarvedCheckpoint -> Commit (the
// cmoe-carve flow).
absl::StatusOr<CarvedModel> CarveInto(LoadedModel& dense, const CarveModelOptions& o,
                                      const std::string& out_dir) {
  CMOE_ASSIGN_OR_RETURN(CalibrationSet calib, LoadCalibration(o.calibration, *dense.tokenizer));
  CMOE_ASSIGN_OR_RETURN(CarvedModel carved, CarveModel(*dense.model, calib, o));
  CMOE_ASSIGN_OR_RETURN(std::unique_ptr<StagedOutputDir> dir,
                        StagedOutputDir::Create(out_dir, /*force=*/false));
  CMOE_RETURN_IF_ERROR(WriteCarvedCheckpoint(dense.model->checkpoint(), carved, *dir));
  CMOE_RETURN_IF_ERROR(dir->Commit());
  return carved;
}

// `n` tokens of the validation text away from the calibration range (BOS first).
std::vector<int32_t> PromptTokens(const Tokenizer& tok, int64_t offset = kPromptOffset,
                                  size_t n = kPromptTokens) {
  absl::StatusOr<std::string> text = ReadFileToString(ValText());
  CMOE_CHECK(text.ok()) << text.status();
  absl::StatusOr<std::vector<int32_t>> ids =
      tok.Encode(text->substr(offset, 600), {.add_dummy_prefix = tok.DefaultDummyPrefix()});
  CMOE_CHECK(ids.ok()) << ids.status();
  CMOE_CHECK(ids->size() >= n) << ids->size();
  ids->resize(n);
  return *ids;
}

// Every row of logits of `tokens` run as one prefill with `k` routed experts per token.
std::vector<std::vector<float>> AllLogits(LoadedModel& m, std::span<const int32_t> tokens,
                                          int32_t k = 0) {
  SequenceBlocks seq;
  CMOE_CHECK(m.cache->Reserve(seq, static_cast<int64_t>(tokens.size())).ok());
  const SequenceChunk c{.tokens = tokens,
                        .start_pos = 0,
                        .blocks = &seq,
                        .all_logits = true,
                        .num_activated_experts = k};
  ForwardOutput out;
  const absl::Status status = m.model->Forward({&c, 1}, *m.cache, out);
  CMOE_CHECK(status.ok()) << status;
  std::vector<std::vector<float>> rows;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const auto row = out.Logits(0, static_cast<int64_t>(i));
    rows.emplace_back(row.begin(), row.end());
  }
  m.cache->Release(seq);
  return rows;
}

// max |a - b| / max |b| over the row (model_test's convention).
double RowRelativeError(std::span<const float> a, std::span<const float> b) {
  CMOE_CHECK(a.size() == b.size());
  double diff = 0, scale = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return diff / scale;
}

double MaxRowError(const std::vector<std::vector<float>>& a,
                   const std::vector<std::vector<float>>& b) {
  CMOE_CHECK(a.size() == b.size());
  double worst = 0;
  for (size_t t = 0; t < a.size(); ++t) worst = std::max(worst, RowRelativeError(a[t], b[t]));
  return worst;
}

std::string ShapeName(Shape s) {
  return absl::StrCat("S", s.shared, "A", s.active, "E", s.experts);
}

class CarvedModelTest : public ::testing::TestWithParam<std::string> {};

// --- 1. Dense equivalence ---------------------------------------------------------------------

TEST_P(CarvedModelTest, AllRoutedExpertsReproduceTheDenseLogits) {
  LoadedModel dense = Load(DenseDir(GetParam()));
  const std::vector<int32_t> prompt = PromptTokens(*dense.tokenizer);
  const auto dense_logits = AllLogits(dense, prompt);
  for (const Shape shape : {kS2A2E8, kS0A2E4}) {
    SCOPED_TRACE(ShapeName(shape));
    testing::ScratchDir scratch;
    const std::string out = scratch.Join("carved");
    absl::StatusOr<CarvedModel> carved = CarveInto(dense, Options(shape, CalibOptions()), out);
    ASSERT_TRUE(carved.ok()) << carved.status();
    LoadedModel m = Load(out);
    ASSERT_TRUE(m.model->config().cmoe.has_value());
    const CmoeConfig& cmoe = *m.model->config().cmoe;
    EXPECT_EQ(cmoe.Name(), ShapeName(shape));
    const int32_t n_r = cmoe.num_routed();
    ASSERT_EQ(n_r, shape.experts - shape.shared);
    // k = N_r: every neuron of the dense FFN runs exactly once, with gate weight 1.
    const auto all = AllLogits(m, prompt, n_r);
    ASSERT_EQ(all.size(), dense_logits.size());
    for (size_t t = 0; t < all.size(); ++t) {
      ASSERT_LE(RowRelativeError(all[t], dense_logits[t]), 1e-5) << "token " << t;
    }
    // The default N_k (and an explicit N_k) leave experts out: the logits move.
    const auto sparse = AllLogits(m, prompt);
    const double moved = MaxRowError(sparse, dense_logits);
    std::cout << GetParam() << " " << ShapeName(shape)
              << ": max row error with N_k = " << cmoe.num_activated_experts << ": " << moved
              << "\n";
    EXPECT_GT(moved, 1e-3) << "carving with N_k < N_r changed nothing";
    EXPECT_EQ(MaxRowError(AllLogits(m, prompt, cmoe.num_activated_experts), sparse), 0.0);
    // Fewer experts move them further than more (k = 1 vs N_r - 1), on average over tokens.
    double err_1 = 0, err_most = 0;
    const auto one = AllLogits(m, prompt, 1), most = AllLogits(m, prompt, n_r - 1);
    for (size_t t = 0; t < prompt.size(); ++t) {
      err_1 += RowRelativeError(one[t], dense_logits[t]);
      err_most += RowRelativeError(most[t], dense_logits[t]);
    }
    EXPECT_GT(err_1, err_most);
  }
}

// --- 2. The carved tensors are the dense ones -------------------------------------------------

// Byte-compares expert tensors against the dense gate/up rows and down columns through
// neuron_index; `offset` is the expert's first column in neuron_index.
void ExpectExpertIsDenseSlice(const ExpertWeights& e, const LayerWeights& dense,
                              std::span<const int32_t> index, int64_t offset,
                              const std::string& what) {
  const int64_t m = e.width(), d = dense.w_gate.cols;
  ASSERT_EQ(e.gate.dtype, dense.w_gate.dtype) << what;
  ASSERT_EQ(e.up.dtype, dense.w_up.dtype) << what;
  ASSERT_EQ(e.down.dtype, dense.w_down.dtype) << what;
  ASSERT_EQ(e.gate.cols, d) << what;
  ASSERT_EQ(e.up.rows, m) << what;
  ASSERT_EQ(e.down.rows, d) << what;
  ASSERT_EQ(e.down.cols, m) << what;
  const size_t gs = kernels::DTypeSize(e.gate.dtype), us = kernels::DTypeSize(e.up.dtype),
               ds = kernels::DTypeSize(e.down.dtype);
  const auto* gate = static_cast<const uint8_t*>(e.gate.data);
  const auto* up = static_cast<const uint8_t*>(e.up.data);
  const auto* down = static_cast<const uint8_t*>(e.down.data);
  const auto* dgate = static_cast<const uint8_t*>(dense.w_gate.data);
  const auto* dup = static_cast<const uint8_t*>(dense.w_up.data);
  const auto* ddown = static_cast<const uint8_t*>(dense.w_down.data);
  const int64_t f = dense.w_down.cols;
  for (int64_t r = 0; r < m; ++r) {
    const int64_t n = index[offset + r];
    ASSERT_EQ(std::memcmp(gate + r * d * gs, dgate + n * d * gs, d * gs), 0)
        << what << " gate row " << r << " (neuron " << n << ")";
    ASSERT_EQ(std::memcmp(up + r * d * us, dup + n * d * us, d * us), 0)
        << what << " up row " << r << " (neuron " << n << ")";
    for (int64_t row = 0; row < d; ++row) {
      ASSERT_EQ(std::memcmp(down + (row * m + r) * ds, ddown + (row * f + n) * ds, ds), 0)
          << what << " down[" << row << ", " << r << "] (neuron " << n << ")";
    }
  }
}

TEST_P(CarvedModelTest, CarvedTensorsAreExactlyTheDenseRowsAndColumns) {
  LoadedModel dense = Load(DenseDir(GetParam()));
  const ModelConfig& dc = dense.model->config();
  const ModelWeights& dw = dense.model->checkpoint().weights();
  const int64_t f = dc.intermediate_size;
  for (const Shape shape : {kS2A2E8, kS0A2E4}) {
    SCOPED_TRACE(ShapeName(shape));
    testing::ScratchDir scratch;
    const std::string out = scratch.Join("carved");
    const CalibrationOptions calib = CalibOptions(/*seed=*/3);
    absl::StatusOr<CarvedModel> carved = CarveInto(dense, Options(shape, calib), out);
    ASSERT_TRUE(carved.ok()) << carved.status();
    LoadedModel m = Load(out);
    const ModelConfig& c = m.model->config();

    // config.json: the dense config plus a "cmoe" object that round-trips.
    EXPECT_EQ(c.hidden_size, dc.hidden_size);
    EXPECT_EQ(c.intermediate_size, f);
    EXPECT_EQ(c.num_hidden_layers, dc.num_hidden_layers);
    EXPECT_EQ(c.num_attention_heads, dc.num_attention_heads);
    EXPECT_EQ(c.num_key_value_heads, dc.num_key_value_heads);
    EXPECT_EQ(c.vocab_size, dc.vocab_size);
    EXPECT_EQ(c.max_position_embeddings, dc.max_position_embeddings);
    EXPECT_EQ(c.tie_word_embeddings, dc.tie_word_embeddings);
    EXPECT_EQ(c.rms_norm_eps, dc.rms_norm_eps);
    EXPECT_EQ(c.bos_token_id, dc.bos_token_id);
    EXPECT_EQ(c.eos_token_ids, dc.eos_token_ids);
    ASSERT_TRUE(c.cmoe.has_value());
    ASSERT_TRUE(carved->config.cmoe.has_value());
    const CmoeConfig& got = *c.cmoe;
    const CmoeConfig& want = *carved->config.cmoe;
    EXPECT_EQ(got.format_version, CmoeConfig::kFormatVersion);
    EXPECT_EQ(got.num_experts, shape.experts);
    EXPECT_EQ(got.num_shared_experts, shape.shared);
    EXPECT_EQ(got.num_activated_experts, shape.active);
    EXPECT_EQ(got.shared_width, want.shared_width);
    EXPECT_EQ(got.expert_widths, want.expert_widths);
    EXPECT_EQ(got.k_act, 10);
    EXPECT_EQ(got.score, "normalized");
    EXPECT_EQ(got.router, "reference");
    EXPECT_EQ(got.cluster_iters, 1);
    EXPECT_EQ(got.balance_bias_gamma, 0.0);
    EXPECT_EQ(got.calibration.file, ValText());
    EXPECT_EQ(got.calibration.range_begin, 0);
    EXPECT_EQ(got.calibration.range_end, kCalibRangeEnd);
    EXPECT_EQ(got.calibration.seqs, 2);
    EXPECT_EQ(got.calibration.len, 64);
    EXPECT_EQ(got.calibration.seed, 3u);

    // The no-drop width rule.
    const ExpertWidthPlan plan = ExpertWidths(f, shape.experts, shape.shared);
    EXPECT_EQ(got.shared_width, shape.shared * (f / shape.experts));
    EXPECT_EQ(got.shared_width, plan.shared_width);
    EXPECT_EQ(got.expert_widths, plan.routed_widths);
    ASSERT_EQ(static_cast<int32_t>(got.expert_widths.size()), shape.experts - shape.shared);
    const auto [lo, hi] = std::minmax_element(got.expert_widths.begin(), got.expert_widths.end());
    EXPECT_LE(*hi - *lo, 1);
    EXPECT_GE(*lo, f / shape.experts);
    EXPECT_EQ(got.shared_width +
                  std::accumulate(got.expert_widths.begin(), got.expert_widths.end(), int64_t{0}),
              f);

    const ModelWeights& cw = m.model->checkpoint().weights();
    ASSERT_EQ(cw.layers.size(), dw.layers.size());
    for (size_t l = 0; l < cw.layers.size(); ++l) {
      SCOPED_TRACE(absl::StrCat("layer ", l));
      const LayerWeights& cl = cw.layers[l];
      const LayerWeights& dl = dw.layers[l];
      const CarvedLayer& in_memory = carved->layers[l];
      EXPECT_EQ(cl.w_gate.data, nullptr);
      EXPECT_EQ(cl.w_up.data, nullptr);
      EXPECT_EQ(cl.w_down.data, nullptr);
      ASSERT_TRUE(cl.moe.has_value());
      const MoeLayerWeights& moe = *cl.moe;
      ASSERT_EQ(static_cast<int64_t>(moe.experts.size()), got.num_routed());

      // neuron_index: a permutation; shared first, then expert 0, 1, ...; each group sorted and
      // the same as the in-memory carve.
      ASSERT_EQ(static_cast<int64_t>(cl.neuron_index.size()), f);
      std::vector<int32_t> sorted = cl.neuron_index;
      std::sort(sorted.begin(), sorted.end());
      for (int64_t i = 0; i < f; ++i) ASSERT_EQ(sorted[i], i) << "not a permutation";
      std::vector<int32_t> expected_index(in_memory.shared_neurons.begin(),
                                          in_memory.shared_neurons.end());
      for (const auto& e : in_memory.expert_neurons) {
        expected_index.insert(expected_index.end(), e.begin(), e.end());
      }
      EXPECT_EQ(cl.neuron_index, expected_index);

      // Shared expert (width N_s * m, possibly 0), then the routed experts at their offsets.
      ASSERT_EQ(moe.shared.width(), got.shared_width);
      ASSERT_EQ(static_cast<int64_t>(in_memory.shared_neurons.size()), got.shared_width);
      EXPECT_TRUE(std::is_sorted(in_memory.shared_neurons.begin(), in_memory.shared_neurons.end()));
      if (got.shared_width > 0) {
        ExpectExpertIsDenseSlice(moe.shared, dl, cl.neuron_index, 0, "shared expert");
      } else {
        EXPECT_EQ(moe.shared.down.cols, 0);
      }
      int64_t offset = got.shared_width;
      for (size_t j = 0; j < moe.experts.size(); ++j) {
        ASSERT_EQ(moe.experts[j].width(), got.expert_widths[j]) << "expert " << j;
        EXPECT_TRUE(
            std::is_sorted(in_memory.expert_neurons[j].begin(), in_memory.expert_neurons[j].end()));
        ExpectExpertIsDenseSlice(moe.experts[j], dl, cl.neuron_index, offset,
                                 absl::StrCat("expert ", j));
        offset += moe.experts[j].width();
      }
      EXPECT_EQ(offset, f);

      // Router rows: the representative's dense gate/up rows, unit-normalised (reference
      // router); the representative is a member of its expert. Bias 0 (gamma 0), scale 0.
      const int64_t d = dc.hidden_size;
      EXPECT_EQ(moe.router_gate, in_memory.router.gate);
      EXPECT_EQ(moe.router_up, in_memory.router.up);
      const LayerReport& report = carved->report.layers[l];
      ASSERT_EQ(report.representatives.size(), moe.experts.size());
      for (size_t j = 0; j < moe.experts.size(); ++j) {
        const int64_t rep = report.representatives[j];
        EXPECT_TRUE(std::binary_search(in_memory.expert_neurons[j].begin(),
                                       in_memory.expert_neurons[j].end(), rep))
            << "representative " << rep << " of expert " << j << " is not a member";
        for (const auto& [router, w] :
             {std::pair{&moe.router_gate, &dl.w_gate}, std::pair{&moe.router_up, &dl.w_up}}) {
          std::vector<float> row(static_cast<size_t>(d));
          kernels::WidenToFloat(*w, rep * d, d, row.data());
          double norm = 0;
          for (float v : row) norm += static_cast<double>(v) * v;
          norm = std::sqrt(norm);
          for (int64_t i = 0; i < d; ++i) {
            ASSERT_NEAR((*router)[j * d + i], row[i] / norm, 1e-6) << "router row " << j;
          }
        }
      }
      EXPECT_EQ(moe.bias, std::vector<float>(moe.experts.size(), 0.0f));
      EXPECT_EQ(moe.scale, std::vector<float>(moe.experts.size(), 0.0f));
    }

    // Every non-FFN tensor is copied unchanged; no dense FFN tensor remains.
    const TensorStore& dt = dense.model->checkpoint().tensors();
    const TensorStore& ct = m.model->checkpoint().tensors();
    for (const auto& [name, t] : dt.tensors()) {
      if (absl::StrContains(name, ".mlp.")) {
        EXPECT_EQ(ct.Find(name), nullptr) << name;
        continue;
      }
      const TensorInfo* copy = ct.Find(name);
      ASSERT_NE(copy, nullptr) << name;
      EXPECT_EQ(copy->dtype, t->dtype) << name;
      EXPECT_EQ(copy->shape, t->shape) << name;
      ASSERT_EQ(copy->byte_size, t->byte_size) << name;
      EXPECT_EQ(std::memcmp(copy->data, t->data, t->byte_size), 0) << name;
    }
    const TensorInfo* index = ct.Find("model.layers.0.mlp.neuron_index");
    ASSERT_NE(index, nullptr);
    EXPECT_EQ(index->dtype, kernels::DType::kI32);
    const TensorInfo* bias = ct.Find("model.layers.0.mlp.gate.extra_bias");
    ASSERT_NE(bias, nullptr);
    EXPECT_EQ(bias->dtype, kernels::DType::kF32);
    EXPECT_EQ(bias->shape, std::vector<int64_t>{got.num_routed()});
  }
}

// --- 3. Determinism ---------------------------------------------------------------------------

TEST_P(CarvedModelTest, CarvingIsDeterministic) {
  LoadedModel dense = Load(DenseDir(GetParam()));
  testing::ScratchDir scratch;
  const auto carve = [&](const std::string& name, uint64_t seed, int threads) {
    const std::string out = scratch.Join(name);
    absl::StatusOr<CarvedModel> c =
        CarveInto(dense, Options(kS2A2E8, CalibOptions(seed), 0, threads), out);
    CMOE_CHECK(c.ok()) << c.status();
    absl::StatusOr<std::string> bytes = ReadFileToString(out + "/model.safetensors");
    CMOE_CHECK(bytes.ok()) << bytes.status();
    return *bytes;
  };
  const std::string a = carve("a", 0, kThreads);
  const std::string b = carve("b", 0, kThreads);
  const std::string single = carve("single", 0, 1);
  EXPECT_TRUE(a == b) << "two carves with the same seed differ";
  EXPECT_TRUE(a == single) << "the carve depends on the thread count";
  EXPECT_EQ(ReadFileToString(scratch.Join("a/config.json")).value(),
            ReadFileToString(scratch.Join("b/config.json")).value());

  // Another seed: other windows, and with them another carve.
  absl::StatusOr<CalibrationSet> w0 = LoadCalibration(CalibOptions(0), *dense.tokenizer);
  absl::StatusOr<CalibrationSet> w1 = LoadCalibration(CalibOptions(1), *dense.tokenizer);
  ASSERT_TRUE(w0.ok() && w1.ok());
  EXPECT_NE(w0->windows, w1->windows);
  const std::string other = carve("other", 1, kThreads);
  EXPECT_FALSE(a == other) << "a different calibration gave the same carve";
}

// --- 4. Per-request k in a batch and the FFN statistics ---------------------------------------

struct StepResult {
  std::vector<std::vector<float>> logits;  // per chunk: its rows
  FfnStepStats stats;
};

// One step with a chunk per prompt (fresh sequences), all logits.
StepResult Step(LoadedModel& m, const std::vector<std::vector<int32_t>>& prompts,
                const std::vector<int32_t>& ks) {
  std::vector<SequenceBlocks> seqs(prompts.size());
  std::vector<SequenceChunk> chunks;
  for (size_t i = 0; i < prompts.size(); ++i) {
    CMOE_CHECK(m.cache->Reserve(seqs[i], static_cast<int64_t>(prompts[i].size())).ok());
    chunks.push_back({.tokens = prompts[i],
                      .start_pos = 0,
                      .blocks = &seqs[i],
                      .all_logits = true,
                      .num_activated_experts = ks[i]});
  }
  ForwardOutput out;
  const absl::Status status = m.model->Forward(chunks, *m.cache, out);
  CMOE_CHECK(status.ok()) << status;
  StepResult run;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<float> rows;
    for (int64_t r = 0; r < out.num_rows[i]; ++r) {
      const auto row = out.Logits(i, r);
      rows.insert(rows.end(), row.begin(), row.end());
    }
    run.logits.push_back(std::move(rows));
    m.cache->Release(seqs[i]);
  }
  run.stats = m.model->last_step_stats();
  return run;
}

double MaxAbsRel(const std::vector<float>& a, const std::vector<float>& b, int64_t vocab) {
  CMOE_CHECK(a.size() == b.size());
  double worst = 0;
  for (size_t r = 0; r * vocab < a.size(); ++r) {
    worst = std::max(worst, RowRelativeError(std::span(a).subspan(r * vocab, vocab),
                                             std::span(b).subspan(r * vocab, vocab)));
  }
  return worst;
}

// The invariants of a carved step's statistics: T * d_h * layers dense neurons; computed =
// shared for every token + each routed (token, expert) pair's width; per layer the routed pairs
// add up to the sum of k over the tokens.
void ExpectConsistentStats(const FfnStepStats& s, const ModelConfig& c, int64_t tokens,
                           int64_t routed_pairs_per_layer) {
  const CmoeConfig& m = *c.cmoe;
  const int64_t layers = c.num_hidden_layers, n_r = m.num_routed();
  EXPECT_EQ(s.tokens, tokens);
  EXPECT_EQ(s.num_routed, n_r);
  EXPECT_EQ(s.neurons_dense, tokens * c.intermediate_size * layers);
  ASSERT_EQ(static_cast<int64_t>(s.tokens_per_expert.size()), layers * n_r);
  int64_t computed = tokens * m.shared_width * layers;
  for (int64_t l = 0; l < layers; ++l) {
    int64_t pairs = 0;
    for (int64_t e = 0; e < n_r; ++e) {
      const int64_t n = s.tokens_per_expert[l * n_r + e];
      EXPECT_GE(n, 0);
      EXPECT_LE(n, tokens);  // an expert sees a token at most once
      pairs += n;
      computed += n * m.expert_widths[e];
    }
    EXPECT_EQ(pairs, routed_pairs_per_layer) << "layer " << l;
  }
  EXPECT_EQ(s.neurons_computed, computed);
  EXPECT_LT(s.neurons_computed, s.neurons_dense + 1);
}

TEST_P(CarvedModelTest, PerRequestExpertCountsInOneBatch) {
  LoadedModel dense = Load(DenseDir(GetParam()));
  testing::ScratchDir scratch;
  ASSERT_TRUE(CarveInto(dense, Options(kS2A2E8, CalibOptions()), scratch.Join("c")).ok());
  LoadedModel m = Load(scratch.Join("c"));
  const ModelConfig& c = m.model->config();
  const int32_t n_r = c.cmoe->num_routed(), n_k = c.cmoe->num_activated_experts;
  const int64_t vocab = c.vocab_size;
  const std::vector<int32_t> a = PromptTokens(*m.tokenizer, kPromptOffset, 23);
  const std::vector<int32_t> b = PromptTokens(*m.tokenizer, kPromptOffset + 3000, 17);
  const std::vector<int32_t> cc = PromptTokens(*m.tokenizer, kPromptOffset + 6000, 9);
  const int64_t ta = 23, tb = 17, tc = 9;

  const StepResult alone_a = Step(m, {a}, {1});
  const StepResult alone_b = Step(m, {b}, {n_r});
  const StepResult alone_c = Step(m, {cc}, {0});
  ExpectConsistentStats(alone_a.stats, c, ta, ta * 1);
  ExpectConsistentStats(alone_b.stats, c, tb, tb * n_r);
  ExpectConsistentStats(alone_c.stats, c, tc, tc * n_k);
  // k = N_r: every expert sees every token, i.e. the dense count.
  for (int64_t n : alone_b.stats.tokens_per_expert) EXPECT_EQ(n, tb);
  EXPECT_EQ(alone_b.stats.neurons_computed, alone_b.stats.neurons_dense);
  // k = 1: a fraction of the dense work.
  EXPECT_LT(alone_a.stats.neurons_computed, alone_a.stats.neurons_dense);

  // Batched: k = 1, N_r, default, and 1 again (not adjacent to the first 1).
  const StepResult batch = Step(m, {a, b, cc, a}, {1, n_r, 0, 1});
  EXPECT_LE(MaxAbsRel(batch.logits[0], alone_a.logits[0], vocab), 1e-6);
  EXPECT_LE(MaxAbsRel(batch.logits[1], alone_b.logits[0], vocab), 1e-6);
  EXPECT_LE(MaxAbsRel(batch.logits[2], alone_c.logits[0], vocab), 1e-6);
  EXPECT_LE(MaxAbsRel(batch.logits[3], alone_a.logits[0], vocab), 1e-6);
  ExpectConsistentStats(batch.stats, c, 2 * ta + tb + tc, 2 * ta + tb * n_r + tc * n_k);
  // Routing is per token: the batch's per-expert counts are those of the parts.
  for (size_t i = 0; i < batch.stats.tokens_per_expert.size(); ++i) {
    EXPECT_EQ(batch.stats.tokens_per_expert[i], 2 * alone_a.stats.tokens_per_expert[i] +
                                                    alone_b.stats.tokens_per_expert[i] +
                                                    alone_c.stats.tokens_per_expert[i])
        << "entry " << i;
  }
  // k = 1 vs k = N_r on the same prompt: the logits differ (the knob does something).
  const StepResult full_a = Step(m, {a}, {n_r});
  EXPECT_GT(MaxAbsRel(full_a.logits[0], alone_a.logits[0], vocab), 1e-4);

  // Out-of-range k is refused before anything runs, naming the field; stats are zeroed.
  SequenceBlocks seq;
  ASSERT_TRUE(m.cache->Reserve(seq, ta).ok());
  ForwardOutput out;
  for (int32_t bad : {n_r + 1, -1, -100}) {
    const SequenceChunk chunks[2] = {
        {.tokens = a, .start_pos = 0, .blocks = &seq, .num_activated_experts = 1},
        {.tokens = a, .start_pos = 0, .blocks = &seq, .num_activated_experts = bad}};
    const absl::Status status = m.model->Forward(chunks, *m.cache, out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(status.message(), HasSubstr("num_activated_experts")) << status;
    EXPECT_THAT(status.message(), HasSubstr(absl::StrCat(bad))) << status;
    EXPECT_EQ(m.model->last_step_stats().tokens, 0);
    EXPECT_TRUE(m.model->last_step_stats().tokens_per_expert.empty());
  }
  m.cache->Release(seq);
}

TEST_P(CarvedModelTest, DenseModelStatsAndRejectsExpertCounts) {
  LoadedModel dense = Load(DenseDir(GetParam()));
  const ModelConfig& c = dense.model->config();
  const std::vector<int32_t> a = PromptTokens(*dense.tokenizer, kPromptOffset, 19);
  const std::vector<int32_t> b = PromptTokens(*dense.tokenizer, kPromptOffset + 3000, 5);
  const StepResult run = Step(dense, {a, b}, {0, 0});
  EXPECT_EQ(run.stats.tokens, 24);
  EXPECT_EQ(run.stats.num_routed, 0);
  EXPECT_EQ(run.stats.neurons_dense, 24 * c.intermediate_size * c.num_hidden_layers);
  EXPECT_EQ(run.stats.neurons_computed, run.stats.neurons_dense);
  EXPECT_TRUE(run.stats.tokens_per_expert.empty());

  SequenceBlocks seq;
  ASSERT_TRUE(dense.cache->Reserve(seq, 19).ok());
  ForwardOutput out;
  for (int32_t k : {1, 2, -1}) {
    const SequenceChunk chunk{
        .tokens = a, .start_pos = 0, .blocks = &seq, .num_activated_experts = k};
    const absl::Status status = dense.model->Forward({&chunk, 1}, *dense.cache, out);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << k;
    EXPECT_THAT(status.message(), HasSubstr("num_activated_experts")) << status;
    EXPECT_EQ(dense.model->last_step_stats().tokens, 0);
  }
  dense.cache->Release(seq);
}

INSTANTIATE_TEST_SUITE_P(AllSharedModels, CarvedModelTest,
                         ::testing::ValuesIn(testing::SharedModelNames()), [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// --- 5. The loader rejects damaged carved checkpoints -----------------------------------------

// A carve of stories260K (S2A2E8: routed widths 22, 22, 22, 22, 21, 21) written once per test
// binary, copied and damaged per case.
class DamagedCheckpointTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    scratch_ = new testing::ScratchDir();
    LoadedModel dense = Load(DenseDir("stories260K"));
    absl::StatusOr<CarvedModel> carved =
        CarveInto(dense, Options(kS2A2E8, CalibOptions()), scratch_->Join("good"));
    CMOE_CHECK(carved.ok()) << carved.status();
  }
  static void TearDownTestSuite() {
    delete scratch_;
    scratch_ = nullptr;
  }

  static std::string Good() { return scratch_->Join("good"); }

  // A fresh copy of the good checkpoint.
  std::string Copy() {
    const std::string dir = scratch_->Join(absl::StrCat("bad", next_++));
    fs::copy(Good(), dir, fs::copy_options::recursive);
    return dir;
  }

  static void EditConfig(const std::string& dir, const std::function<void(Json&)>& edit) {
    Json j = Json::parse(ReadFileToString(dir + "/config.json").value());
    edit(j);
    testing::WriteFile(dir + "/config.json", j.dump(2));
  }

  // Rewrites DIR/model.safetensors from the good one; `edit` may add a replacement for a tensor
  // (returning true) or drop it (returning true without adding anything).
  static void EditTensors(const std::string& dir,
                          const std::function<bool(const TensorInfo&, SafetensorsWriter&)>& edit) {
    absl::StatusOr<SafetensorsFile> file = SafetensorsFile::Open(Good() + "/model.safetensors");
    CMOE_CHECK(file.ok()) << file.status();
    SafetensorsWriter writer;
    for (const TensorInfo& t : file->tensors()) {
      if (edit(t, writer)) continue;
      CMOE_CHECK(writer.AddBorrowed(t.name, t.dtype, t.shape, t.bytes()).ok());
    }
    const absl::Status status = writer.Write(dir + "/model.safetensors");
    CMOE_CHECK(status.ok()) << status;
  }

  static std::vector<int32_t> I32(const TensorInfo& t) {
    std::vector<int32_t> v(static_cast<size_t>(t.elements()));
    std::memcpy(v.data(), t.data, v.size() * sizeof(int32_t));
    return v;
  }

  static std::vector<uint8_t> Bytes(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    return {p, p + n};
  }

  static absl::Status Open(const std::string& dir) {
    absl::StatusOr<std::unique_ptr<Checkpoint>> ckpt = Checkpoint::Open(dir);
    absl::StatusOr<LoadedModel> m = LoadModel({.model_dir = dir, .threads = 1});
    // The loader reports what Checkpoint::Open found.
    EXPECT_EQ(ckpt.status().code(), m.status().code()) << m.status();
    return ckpt.status();
  }

  static testing::ScratchDir* scratch_;
  static int next_;
};

testing::ScratchDir* DamagedCheckpointTest::scratch_ = nullptr;
int DamagedCheckpointTest::next_ = 0;

TEST_F(DamagedCheckpointTest, TheIntactCopyLoads) {
  const std::string dir = Copy();
  EXPECT_TRUE(Open(dir).ok()) << Open(dir);
  // A copy whose tensors were rewritten without changes loads too (the rewriting is sound).
  EditTensors(dir, [](const TensorInfo&, SafetensorsWriter&) { return false; });
  EXPECT_TRUE(Open(dir).ok()) << Open(dir);
}

TEST_F(DamagedCheckpointTest, WidthsNotSummingToTheFfn) {
  const std::string dir = Copy();
  EditConfig(dir, [](Json& j) { j["cmoe"]["expert_widths"][0] = 23; });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("cmoe.expert_widths"));
  EXPECT_THAT(s.message(), HasSubstr("172"));
}

TEST_F(DamagedCheckpointTest, WidthsThatSumButDisagreeWithTheTensors) {
  // 22 <-> 21: the sum still matches intermediate_size, the tensor shapes do not.
  const std::string dir = Copy();
  EditConfig(dir, [](Json& j) {
    j["cmoe"]["expert_widths"][0] = 21;
    j["cmoe"]["expert_widths"][5] = 22;
  });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("model.layers.0.mlp.experts.0."));
  EXPECT_THAT(s.message(), HasSubstr("shape"));
}

TEST_F(DamagedCheckpointTest, MoreActivatedExpertsThanRouted) {
  const std::string dir = Copy();
  EditConfig(dir, [](Json& j) { j["cmoe"]["num_activated_experts"] = 7; });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("cmoe.num_activated_experts"));
}

TEST_F(DamagedCheckpointTest, UnknownFormatVersion) {
  const std::string dir = Copy();
  EditConfig(dir, [](Json& j) { j["cmoe"]["format_version"] = 2; });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("cmoe.format_version"));
  EXPECT_THAT(s.message(), HasSubstr("2"));
}

TEST_F(DamagedCheckpointTest, MissingExpertTensor) {
  const std::string dir = Copy();
  const std::string gone = "model.layers.3.mlp.experts.5.down_proj.weight";
  EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter&) { return t.name == gone; });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr(gone));
}

TEST_F(DamagedCheckpointTest, MissingSharedExpertAndRouterTensors) {
  for (const std::string gone :
       {"model.layers.0.mlp.shared_experts.up_proj.weight", "model.layers.4.mlp.gate.gate.weight",
        "model.layers.1.mlp.gate.classifier.weight", "model.layers.2.mlp.gate.extra_bias",
        "model.layers.2.mlp.gate.extra_scale", "model.layers.1.mlp.neuron_index"}) {
    const std::string dir = Copy();
    EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter&) { return t.name == gone; });
    const absl::Status s = Open(dir);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_THAT(s.message(), HasSubstr(gone));
  }
}

TEST_F(DamagedCheckpointTest, NeuronIndexWithADuplicate) {
  const std::string dir = Copy();
  const std::string name = "model.layers.2.mlp.neuron_index";
  EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name != name) return false;
    std::vector<int32_t> v = I32(t);
    v[10] = v[11];
    CMOE_CHECK(w.AddOwned(t.name, t.dtype, t.shape, Bytes(v.data(), v.size() * 4)).ok());
    return true;
  });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(name));
  EXPECT_THAT(s.message(), HasSubstr("permutation"));
}

TEST_F(DamagedCheckpointTest, NeuronIndexOutOfRange) {
  for (const int32_t bad : {172, -1}) {
    const std::string dir = Copy();
    const std::string name = "model.layers.0.mlp.neuron_index";
    EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter& w) {
      if (t.name != name) return false;
      std::vector<int32_t> v = I32(t);
      v[100] = bad;
      CMOE_CHECK(w.AddOwned(t.name, t.dtype, t.shape, Bytes(v.data(), v.size() * 4)).ok());
      return true;
    });
    const absl::Status s = Open(dir);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr(name));
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(bad)));
  }
}

TEST_F(DamagedCheckpointTest, NeuronIndexStoredAsF32) {
  const std::string dir = Copy();
  const std::string name = "model.layers.1.mlp.neuron_index";
  EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name != name) return false;
    const std::vector<int32_t> v = I32(t);
    const std::vector<float> f(v.begin(), v.end());
    CMOE_CHECK(w.AddF32(t.name, t.shape, f).ok());
    return true;
  });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(name));
  EXPECT_THAT(s.message(), HasSubstr("I32"));
}

TEST_F(DamagedCheckpointTest, NonFiniteRouterBias) {
  const std::string dir = Copy();
  const std::string name = "model.layers.3.mlp.gate.extra_bias";
  EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name != name) return false;
    std::vector<float> v(static_cast<size_t>(t.elements()), 0.0f);
    v[2] = std::nanf("");
    CMOE_CHECK(w.AddF32(t.name, t.shape, v).ok());
    return true;
  });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(name));
}

TEST_F(DamagedCheckpointTest, LeftoverDenseFfnTensor) {
  const std::string dir = Copy();
  const std::string extra = "model.layers.1.mlp.gate_proj.weight";
  EditTensors(dir, [&](const TensorInfo& t, SafetensorsWriter& w) {
    if (t.name == "model.layers.1.mlp.experts.0.gate_proj.weight") {
      CMOE_CHECK(w.AddBorrowed(extra, t.dtype, t.shape, t.bytes()).ok());
    }
    return false;
  });
  const absl::Status s = Open(dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("unexpected tensor " + extra));
}

TEST_F(DamagedCheckpointTest, CarvedTensorsWithoutTheCmoeConfig) {
  const std::string dir = Copy();
  EditConfig(dir, [](Json& j) { j.erase("cmoe"); });
  const absl::Status s = Open(dir);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("mlp.gate_proj.weight"));
}

// --- 6. Preconditions and the output directory ------------------------------------------------

TEST(CarveModelTest, RefusesCarvedModelsAndInvalidConfigs) {
  LoadedModel dense = Load(DenseDir("stories260K"));  // d_h = 172, context 512
  absl::StatusOr<CalibrationSet> calib = LoadCalibration(CalibOptions(), *dense.tokenizer);
  ASSERT_TRUE(calib.ok()) << calib.status();
  struct Bad {
    CarveConfig config;
    const char* why;
  };
  for (const Bad& bad : {
           Bad{{.num_experts = 8, .num_shared = 2, .num_activated = 7}, "S + K > N"},
           Bad{{.num_experts = 173, .num_shared = 1, .num_activated = 1}, "N > d_h"},
           Bad{{.num_experts = 4, .num_shared = 4, .num_activated = 1}, "no routed expert"},
           Bad{{.num_experts = 4, .num_shared = 1, .num_activated = 0}, "K = 0"},
           Bad{{.num_experts = 0, .num_shared = 0, .num_activated = 1}, "N = 0"},
           Bad{{.num_experts = 8, .num_shared = 2, .num_activated = 2, .k_act = 0}, "K_a = 0"},
           Bad{{.num_experts = 8, .num_shared = 2, .num_activated = 2, .k_act = 173}, "K_a > d_h"},
       }) {
    absl::StatusOr<CarvedModel> r =
        CarveModel(*dense.model, *calib, {.layer = bad.config, .threads = kThreads});
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << bad.why << r.status();
  }
  const CarveModelOptions good = Options(kS2A2E8, CalibOptions());
  CarveModelOptions negative = good;
  negative.balance_bias_gamma = -0.5;
  EXPECT_EQ(CarveModel(*dense.model, *calib, negative).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Calibration windows longer than the context, or none.
  CalibrationSet too_long = *calib;
  too_long.windows[1].resize(513, too_long.windows[1][0]);
  absl::StatusOr<CarvedModel> r = CarveModel(*dense.model, too_long, good);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("513"));
  EXPECT_EQ(CarveModel(*dense.model, CalibrationSet{}, good).status().code(),
            absl::StatusCode::kInvalidArgument);

  // A carved model cannot be carved again.
  testing::ScratchDir scratch;
  ASSERT_TRUE(CarveInto(dense, good, scratch.Join("c")).ok());
  LoadedModel carved = Load(scratch.Join("c"));
  r = CarveModel(*carved.model, *calib, good);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("already carved"));
  EXPECT_THAT(r.status().message(), HasSubstr("S2A2E8"));
}

TEST(CarveModelTest, WritesTheCheckpointDirectory) {
  const std::string dense_dir = DenseDir("tinystories-656k");  // has tokenizer.json & friends
  LoadedModel dense = Load(dense_dir);
  testing::ScratchDir scratch;
  const std::string out = scratch.Join("out");
  int layers_seen = 0;
  CarveModelOptions o = Options(kS2A2E8, CalibOptions());
  o.on_layer = [&](const LayerReport& r) { EXPECT_EQ(r.layer, layers_seen++); };
  absl::StatusOr<CarvedModel> carved = CarveInto(dense, o, out);
  ASSERT_TRUE(carved.ok()) << carved.status();
  const int64_t layers = dense.model->config().num_hidden_layers;
  EXPECT_EQ(layers_seen, layers);

  std::set<std::string> want = {"config.json", "model.safetensors", "carve_report.json",
                                "carve_report.html"};
  int tokenizer_files = 0;
  for (const char* name : kTokenizerFiles) {
    if (!fs::exists(dense_dir + "/" + name)) continue;
    ++tokenizer_files;
    want.insert(name);
    EXPECT_EQ(ReadFileToString(out + "/" + name).value_or("<missing>"),
              ReadFileToString(dense_dir + "/" + name).value())
        << name;
  }
  EXPECT_GE(tokenizer_files, 3);  // tokenizer.json, tokenizer_config.json, special_tokens_map.json
  std::set<std::string> got;
  for (const auto& entry : fs::directory_iterator(out)) got.insert(entry.path().filename());
  EXPECT_EQ(got, want);
  // Nothing staged is left beside the output.
  for (const auto& entry : fs::directory_iterator(scratch.path())) {
    EXPECT_EQ(entry.path().filename(), "out");
  }

  const Json report = Json::parse(ReadFileToString(out + "/carve_report.json").value());
  EXPECT_EQ(report["num_layers"], layers);
  ASSERT_TRUE(report["layers"].is_array());
  ASSERT_EQ(static_cast<int64_t>(report["layers"].size()), layers);
  EXPECT_EQ(report["config_name"], "S2A2E8");
  EXPECT_EQ(report["out_dir"], out);
  EXPECT_EQ(report["calib_tokens"], 128);
  EXPECT_EQ(report["calib_file"], ValText());
  const CmoeConfig& cmoe = *carved->config.cmoe;
  for (int64_t l = 0; l < layers; ++l) {
    const Json& lr = report["layers"][l];
    EXPECT_EQ(lr["layer"], l);
    EXPECT_EQ(lr["shared_width"], cmoe.shared_width);
    EXPECT_EQ(lr["expert_widths"].get<std::vector<int64_t>>(), cmoe.expert_widths);
    // Every calibration token went to N_k routed experts.
    const auto tpe = lr["tokens_per_expert"].get<std::vector<int64_t>>();
    ASSERT_EQ(static_cast<int32_t>(tpe.size()), cmoe.num_routed());
    EXPECT_EQ(std::accumulate(tpe.begin(), tpe.end(), int64_t{0}),
              128 * cmoe.num_activated_experts);
  }
  const std::string html = ReadFileToString(out + "/carve_report.html").value();
  EXPECT_TRUE(absl::StartsWithIgnoreCase(html, "<!doctype html")) << html.substr(0, 80);
  EXPECT_THAT(html, HasSubstr("</html>"));
  EXPECT_THAT(html, HasSubstr("S2A2E8"));

  // A carve that does not match the checkpoint is refused before anything is written.
  CarvedModel broken = *carved;
  broken.layers[1].expert_neurons[0][0] = broken.layers[1].expert_neurons[1][0];
  absl::StatusOr<std::unique_ptr<StagedOutputDir>> dir =
      StagedOutputDir::Create(scratch.Join("broken"), false);
  ASSERT_TRUE(dir.ok());
  absl::Status s = WriteCarvedCheckpoint(dense.model->checkpoint(), broken, **dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("layer 1"));
  EXPECT_FALSE(fs::exists((*dir)->Join("model.safetensors")));
  LoadedModel other = Load(DenseDir("stories260K"));
  s = WriteCarvedCheckpoint(other.model->checkpoint(), *carved, **dir);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

// --- 7. The load-balancing bias ---------------------------------------------------------------

TEST(CarveModelTest, BalanceBiasFollowsTheLoadOfTheCalibrationBatches) {
  LoadedModel dense = Load(DenseDir("stories260K"));
  const float gamma = 0.01f;
  const std::vector<int32_t> prompt = PromptTokens(*dense.tokenizer);
  const auto dense_logits = AllLogits(dense, prompt);
  testing::ScratchDir scratch;

  // One calibration sequence = one batch = one update: b_j = -gamma above the mean load,
  // +gamma below, 0 at it (the counts are exactly the report's tokens_per_expert).
  {
    absl::StatusOr<CarvedModel> carved =
        CarveInto(dense, Options(kS2A2E8, CalibOptions(0, 1, 64), gamma), scratch.Join("one"));
    ASSERT_TRUE(carved.ok()) << carved.status();
    LoadedModel m = Load(scratch.Join("one"));
    EXPECT_DOUBLE_EQ(m.model->config().cmoe->balance_bias_gamma, gamma);
    int nonzero = 0;
    for (size_t l = 0; l < carved->layers.size(); ++l) {
      const LayerReport& r = carved->report.layers[l];
      const std::vector<float>& saved = m.model->checkpoint().weights().layers[l].moe->bias;
      const int64_t n_r = static_cast<int64_t>(r.tokens_per_expert.size());
      const int64_t total =
          std::accumulate(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), int64_t{0});
      EXPECT_EQ(total, 64 * 2);
      ASSERT_EQ(static_cast<int64_t>(saved.size()), n_r);
      for (int64_t j = 0; j < n_r; ++j) {
        const int64_t scaled = r.tokens_per_expert[j] * n_r;
        const float want = scaled > total ? -gamma : scaled < total ? gamma : 0.0f;
        EXPECT_EQ(saved[j], want) << "layer " << l << " expert " << j << " load "
                                  << r.tokens_per_expert[j] << " of " << total;
        EXPECT_EQ(r.balance_bias[j], saved[j]);
        EXPECT_EQ(carved->layers[l].bias[j], saved[j]);
        nonzero += saved[j] != 0 ? 1 : 0;
      }
    }
    EXPECT_GT(nonzero, 0);
    // The bias only reorders the choice: with every expert chosen the model is still dense.
    EXPECT_LE(MaxRowError(AllLogits(m, prompt, 6), dense_logits), 1e-5);
  }

  // Two sequences = two updates: b_j in {0, ±gamma, ±2 gamma}; ±2 gamma only for experts that
  // were above (below) the mean both times, hence above (below) it in total.
  {
    absl::StatusOr<CarvedModel> carved =
        CarveInto(dense, Options(kS2A2E8, CalibOptions(0, 2, 64), gamma), scratch.Join("two"));
    ASSERT_TRUE(carved.ok()) << carved.status();
    LoadedModel m = Load(scratch.Join("two"));
    int nonzero = 0;
    for (size_t l = 0; l < carved->layers.size(); ++l) {
      const LayerReport& r = carved->report.layers[l];
      const std::vector<float>& saved = m.model->checkpoint().weights().layers[l].moe->bias;
      const int64_t n_r = static_cast<int64_t>(saved.size());
      const int64_t total =
          std::accumulate(r.tokens_per_expert.begin(), r.tokens_per_expert.end(), int64_t{0});
      EXPECT_EQ(total, 128 * 2);
      for (int64_t j = 0; j < n_r; ++j) {
        const float steps = saved[j] / gamma;
        EXPECT_NEAR(steps, std::round(steps), 1e-3) << "layer " << l << " expert " << j;
        EXPECT_LE(std::abs(std::round(steps)), 2);
        if (std::round(steps) == -2) {
          EXPECT_GT(r.tokens_per_expert[j] * n_r, total) << "layer " << l << " expert " << j;
        }
        if (std::round(steps) == 2) {
          EXPECT_LT(r.tokens_per_expert[j] * n_r, total) << "layer " << l << " expert " << j;
        }
        EXPECT_EQ(r.balance_bias[j], saved[j]);
        nonzero += saved[j] != 0 ? 1 : 0;
      }
    }
    EXPECT_GT(nonzero, 0);
  }

  // gamma = 0: no updates.
  {
    absl::StatusOr<CarvedModel> carved =
        CarveInto(dense, Options(kS2A2E8, CalibOptions(0, 2, 64), 0), scratch.Join("off"));
    ASSERT_TRUE(carved.ok()) << carved.status();
    LoadedModel m = Load(scratch.Join("off"));
    EXPECT_EQ(m.model->config().cmoe->balance_bias_gamma, 0.0);
    for (size_t l = 0; l < carved->layers.size(); ++l) {
      EXPECT_EQ(m.model->checkpoint().weights().layers[l].moe->bias, std::vector<float>(6, 0.0f));
      EXPECT_EQ(carved->report.layers[l].balance_bias, std::vector<double>(6, 0.0));
    }
  }
}

}  // namespace
}  // namespace cmoe::engine::carve
