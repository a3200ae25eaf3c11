#include "engine/bpe_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/mapped_file.h"
#include "common/status.h"
#include "engine/utf8.h"

namespace cmoe::engine {
namespace {

using Json = nlohmann::json;
using Spec = BpeTokenizer::Spec;

absl::Status Invalid(std::string_view path, std::string_view message) {
  return absl::InvalidArgumentError(std::string(path) + ": " + std::string(message));
}

// The JSON type name of a component ("Sequence", "BPE"), or "" when it has none.
std::string TypeOf(const Json& node) {
  const auto it = node.find("type");
  return it != node.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string StringOr(const Json& node, const char* key, std::string fallback) {
  const auto it = node.find(key);
  return it != node.end() && it->is_string() ? it->get<std::string>() : fallback;
}

bool BoolOr(const Json& node, const char* key, bool fallback) {
  const auto it = node.find(key);
  return it != node.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  CMOE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  Json json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded()) return Invalid(path, "not valid JSON");
  return json;
}

// Token ids are dense: every id of a valid file is below the number of vocab and added entries.
// Checking that before sizing any table keeps a corrupt id from allocating gigabytes.
int64_t IdLimit(const Json& root) {
  int64_t limit = 0;
  if (const auto model = root.find("model"); model != root.end() && model->is_object()) {
    if (const auto vocab = model->find("vocab"); vocab != model->end()) limit += vocab->size();
  }
  if (const auto added = root.find("added_tokens"); added != root.end() && added->is_array()) {
    limit += static_cast<int64_t>(added->size());
  }
  return limit;
}

absl::Status ParseVocab(const Json& model, std::string_view path, int64_t id_limit, Spec* spec) {
  const auto vocab = model.find("vocab");
  if (vocab == model.end() || !vocab->is_object()) {
    return Invalid(path, "model.vocab is missing or not an object");
  }
  for (const auto& [piece, id] : vocab->items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= id_limit) {
      return Invalid(path, "model.vocab[\"" + piece + "\"] is not a valid id (ids run from 0 to " +
                               std::to_string(id_limit - 1) + ")");
    }
    const auto index = id.get<int32_t>();
    if (spec->pieces.size() <= static_cast<size_t>(index)) spec->pieces.resize(index + 1);
    spec->pieces[index] = piece;
    spec->piece_to_id[piece] = index;
  }
  if (spec->piece_to_id.empty()) return Invalid(path, "model.vocab is empty");
  return absl::OkStatus();
}

// One merge entry: "a b" or ["a", "b"].
absl::StatusOr<std::pair<std::string, std::string>> MergeParts(const Json& merge,
                                                               std::string_view path, size_t i) {
  if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
    return std::pair(merge[0].get<std::string>(), merge[1].get<std::string>());
  }
  if (merge.is_string()) {
    const std::string text = merge.get<std::string>();
    const size_t space = text.find(' ');
    if (space != std::string::npos && text.find(' ', space + 1) == std::string::npos) {
      return std::pair(text.substr(0, space), text.substr(space + 1));
    }
  }
  return Invalid(path, "model.merges[" + std::to_string(i) + "] is not \"a b\" or [\"a\", \"b\"]");
}

absl::Status ParseMerges(const Json& model, std::string_view path, Spec* spec) {
  const auto merges = model.find("merges");
  if (merges == model.end() || !merges->is_array()) {
    return Invalid(path, "model.merges is missing or not an array");
  }
  for (size_t i = 0; i < merges->size(); ++i) {
    CMOE_ASSIGN_OR_RETURN(auto parts, MergeParts((*merges)[i], path, i));
    for (const std::string& token : {parts.first, parts.second, parts.first + parts.second}) {
      if (!spec->piece_to_id.contains(token)) {
        return Invalid(path, "model.merges[" + std::to_string(i) + "] (\"" + parts.first + " " +
                                 parts.second + "\") references \"" + token +
                                 "\", which is not in the vocabulary");
      }
    }
    // Hugging Face collects the merges into a map, so a repeated pair keeps its last rank.
    spec->merges[BpeTokenizer::PairKey(spec->piece_to_id[parts.first],
                                       spec->piece_to_id[parts.second])] =
        PairMerge{static_cast<double>(i), spec->piece_to_id[parts.first + parts.second]};
  }
  return absl::OkStatus();
}

absl::Status ParseModel(const Json& root, std::string_view path, Spec* spec) {
  const auto model = root.find("model");
  if (model == root.end() || !model->is_object()) return Invalid(path, "no \"model\" object");
  const std::string type = TypeOf(*model);
  if (type != "BPE" && !(type.empty() && model->contains("merges"))) {
    return Invalid(path,
                   "unsupported tokenizer model type \"" + type + "\" (only BPE is supported)");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    const auto it = model->find(key);
    if (it != model->end() && !it->is_null() &&
        !(it->is_string() && it->get<std::string>() == "")) {
      return Invalid(path, std::string("unsupported BPE option model.") + key);
    }
  }
  CMOE_RETURN_IF_ERROR(ParseVocab(*model, path, IdLimit(root), spec));
  CMOE_RETURN_IF_ERROR(ParseMerges(*model, path, spec));
  spec->byte_fallback = BoolOr(*model, "byte_fallback", false);
  spec->fuse_unk = BoolOr(*model, "fuse_unk", false);
  spec->ignore_merges = BoolOr(*model, "ignore_merges", false);
  const std::string unk = StringOr(*model, "unk_token", "");
  if (!unk.empty()) {
    const auto it = spec->piece_to_id.find(unk);
    if (it == spec->piece_to_id.end()) return Invalid(path, "unk_token \"" + unk + "\" unknown");
    spec->unk_id = it->second;
  }
  return absl::OkStatus();
}

absl::Status ParseAddedTokens(const Json& root, std::string_view path, int64_t id_limit,
                              Spec* spec) {
  const auto added = root.find("added_tokens");
  if (added == root.end() || added->is_null()) return absl::OkStatus();
  if (!added->is_array()) return Invalid(path, "added_tokens is not an array");
  for (const Json& token : *added) {
    const auto id = token.find("id");
    const auto content = token.find("content");
    if (id == token.end() || !id->is_number_integer() || id->get<int64_t>() < 0 ||
        id->get<int64_t>() >= id_limit || content == token.end() || !content->is_string()) {
      return Invalid(path, "an added_tokens entry lacks a valid id or content");
    }
    const BpeTokenizer::AddedToken entry{content->get<std::string>(), id->get<int32_t>(),
                                         BoolOr(token, "special", false)};
    if (spec->pieces.size() <= static_cast<size_t>(entry.id)) spec->pieces.resize(entry.id + 1);
    spec->pieces[entry.id] = entry.content;
    if (!entry.content.empty()) spec->added_tokens.push_back(entry);
  }
  return absl::OkStatus();
}

absl::Status ParseNormalizer(const Json& node, std::string_view path, Spec* spec) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(node);
  if (type == "Sequence") {
    const auto list = node.find("normalizers");
    if (list == node.end() || !list->is_array()) return Invalid(path, "bad Sequence normalizer");
    for (const Json& child : *list) CMOE_RETURN_IF_ERROR(ParseNormalizer(child, path, spec));
    return absl::OkStatus();
  }
  if (type == "Prepend") {
    spec->normalizer.push_back({true, "", StringOr(node, "prepend", "")});
    return absl::OkStatus();
  }
  if (type == "Replace") {
    const auto pattern = node.find("pattern");
    if (pattern == node.end() || !pattern->is_object() || !pattern->contains("String") ||
        !(*pattern)["String"].is_string() || (*pattern)["String"].get<std::string>().empty()) {
      return Invalid(path, "unsupported Replace normalizer pattern (only non-empty String)");
    }
    spec->normalizer.push_back(
        {false, (*pattern)["String"].get<std::string>(), StringOr(node, "content", "")});
    return absl::OkStatus();
  }
  return Invalid(path, "unsupported normalizer type \"" + type + "\"");
}

absl::Status ParsePreTokenizer(const Json& node, std::string_view path, Spec* spec) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(node);
  if (type != "Metaspace") return Invalid(path, "unsupported pre_tokenizer type \"" + type + "\"");
  spec->metaspace = StringOr(node, "replacement", std::string(kMetaspace));
  const std::string scheme =
      StringOr(node, "prepend_scheme", BoolOr(node, "add_prefix_space", true) ? "always" : "never");
  spec->metaspace_prepend = scheme != "never";
  spec->metaspace_split = BoolOr(node, "split", true);
  return absl::OkStatus();
}

absl::Status ParseDecoder(const Json& node, std::string_view path, Spec* spec) {
  if (node.is_null()) return absl::OkStatus();
  const std::string type = TypeOf(node);
  if (type == "Sequence") {
    const auto list = node.find("decoders");
    if (list == node.end() || !list->is_array()) return Invalid(path, "bad Sequence decoder");
    for (const Json& child : *list) CMOE_RETURN_IF_ERROR(ParseDecoder(child, path, spec));
  } else if (type == "Replace") {
    const auto pattern = node.find("pattern");
    const bool metaspace = pattern != node.end() && pattern->is_object() &&
                           pattern->value("String", "") == kMetaspace &&
                           StringOr(node, "content", "") == " ";
    if (!metaspace) return Invalid(path, "unsupported Replace decoder (only \"▁\" -> \" \")");
    spec->decode_metaspace = true;
  } else if (type == "ByteFallback") {
    spec->decode_byte_fallback = true;
  } else if (type == "Strip") {
    spec->decode_strip_leading_space =
        StringOr(node, "content", "") == " " && node.value("start", 0) >= 1;
  } else if (type == "Metaspace") {
    spec->decode_metaspace = true;
    spec->decode_strip_leading_space = StringOr(node, "prepend_scheme", "always") != "never";
  } else if (type != "Fuse") {
    return Invalid(path, "unsupported decoder type \"" + type + "\"");
  }
  return absl::OkStatus();
}

// The id of a model-vocabulary or added-token entry; -1 when there is none.
int32_t SpecPieceToId(const Spec& spec, std::string_view piece) {
  const auto it = spec.piece_to_id.find(std::string(piece));
  if (it != spec.piece_to_id.end()) return it->second;
  for (const auto& added : spec.added_tokens) {
    if (added.content == piece) return added.id;
  }
  return -1;
}

// The id of one template item {"SpecialToken": {"id": "<s>"}}.
absl::StatusOr<int32_t> TemplateSpecialId(const Json& item, std::string_view path,
                                          const Spec& spec) {
  const std::string name = item["SpecialToken"].value("id", "");
  const int32_t id = SpecPieceToId(spec, name);
  if (id >= 0) return id;
  return Invalid(path, "post_processor special token \"" + name + "\" is not in the vocabulary");
}

absl::Status ParsePostProcessor(const Json& node, std::string_view path, Spec* spec) {
  if (node.is_null()) return absl::OkStatus();
  if (TypeOf(node) != "TemplateProcessing") {
    return Invalid(path, "unsupported post_processor type \"" + TypeOf(node) + "\"");
  }
  const auto single = node.find("single");
  if (single == node.end() || !single->is_array()) return Invalid(path, "bad TemplateProcessing");
  bool seen_sequence = false;
  for (const Json& item : *single) {
    if (item.contains("Sequence")) {
      seen_sequence = true;
      continue;
    }
    if (!item.contains("SpecialToken") || !item["SpecialToken"].is_object()) {
      return Invalid(path, "bad TemplateProcessing item " + item.dump());
    }
    CMOE_ASSIGN_OR_RETURN(int32_t id, TemplateSpecialId(item, path, *spec));
    (seen_sequence ? spec->template_suffix : spec->template_prefix).push_back(id);
  }
  return absl::OkStatus();
}

absl::StatusOr<Spec> ParseSpec(const Json& root, std::string_view path) {
  if (!root.is_object()) return Invalid(path, "not a JSON object");
  Spec spec;
  CMOE_RETURN_IF_ERROR(ParseModel(root, path, &spec));
  CMOE_RETURN_IF_ERROR(ParseAddedTokens(root, path, IdLimit(root), &spec));
  CMOE_RETURN_IF_ERROR(ParseNormalizer(root.value("normalizer", Json()), path, &spec));
  CMOE_RETURN_IF_ERROR(ParsePreTokenizer(root.value("pre_tokenizer", Json()), path, &spec));
  CMOE_RETURN_IF_ERROR(ParsePostProcessor(root.value("post_processor", Json()), path, &spec));
  CMOE_RETURN_IF_ERROR(ParseDecoder(root.value("decoder", Json()), path, &spec));
  return spec;
}

// The id of special token `key` ("bos_token") named in a tokenizer_config.json-style file:
// a string or {"content": ...}. -1 when the file or the key is absent or null.
absl::StatusOr<int32_t> SpecialFromFile(const std::string& path, const char* key,
                                        const Spec& spec) {
  if (!std::filesystem::exists(path)) return -1;
  CMOE_ASSIGN_OR_RETURN(Json json, ReadJsonFile(path));
  if (!json.is_object() || !json.contains(key) || json[key].is_null()) return -1;
  const Json& value = json[key];
  const std::string content =
      value.is_string() ? value.get<std::string>() : StringOr(value, "content", "");
  const int32_t id = SpecPieceToId(spec, content);
  if (id < 0)
    return Invalid(path, std::string(key) + " \"" + content + "\" is not in the vocabulary");
  return id;
}

// config value, else tokenizer_config.json, else special_tokens_map.json, else `fallback`.
absl::StatusOr<int32_t> ResolveSpecial(int32_t from_config, const std::string& dir, const char* key,
                                       const Spec& spec, int32_t fallback) {
  if (from_config >= 0) return from_config;
  for (const char* file : {"tokenizer_config.json", "special_tokens_map.json"}) {
    CMOE_ASSIGN_OR_RETURN(int32_t id, SpecialFromFile(dir + "/" + file, key, spec));
    if (id >= 0) return id;
  }
  return fallback;
}

}  // namespace

std::vector<int32_t> MergeAdjacentPairs(std::span<const int32_t> symbols, PairMergeLookup lookup) {
  struct Node {
    int32_t id, prev, next;  // id -1: merged into its left neighbour
  };
  struct Candidate {
    double priority;
    int32_t pos, left, right, merged;
  };
  const auto later = [](const Candidate& a, const Candidate& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.pos > b.pos;
  };
  const auto n = static_cast<int32_t>(symbols.size());
  std::vector<Node> nodes(n);
  for (int32_t i = 0; i < n; ++i) nodes[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1};
  std::vector<Candidate> heap;
  const auto add_candidate = [&](int32_t pos) {
    if (pos < 0 || nodes[pos].next < 0) return;
    const Node& left = nodes[pos];
    const std::optional<PairMerge> merge = lookup(left.id, nodes[left.next].id);
    if (merge)
      heap.push_back({merge->priority, pos, left.id, nodes[left.next].id, merge->merged_id});
  };
  for (int32_t i = 0; i < n; ++i) add_candidate(i);
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate c = heap.back();
    heap.pop_back();
    Node& left = nodes[c.pos];
    if (left.id != c.left || left.next < 0 || nodes[left.next].id != c.right) continue;  // stale
    const int32_t right = left.next;
    left.id = c.merged;
    left.next = nodes[right].next;
    if (left.next >= 0) nodes[left.next].prev = c.pos;
    nodes[right].id = -1;
    for (int32_t pos : {left.prev, c.pos}) {
      const size_t before = heap.size();
      add_candidate(pos);
      if (heap.size() != before) std::push_heap(heap.begin(), heap.end(), later);
    }
  }
  std::vector<int32_t> out;
  for (int32_t i = n > 0 ? 0 : -1; i >= 0; i = nodes[i].next) out.push_back(nodes[i].id);
  return out;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Open(const std::string& json_path,
                                                                 const ModelConfig& config) {
  CMOE_ASSIGN_OR_RETURN(Json root, ReadJsonFile(json_path));
  absl::StatusOr<Spec> spec;
  try {  // nlohmann's accessors throw on mistyped values that the explicit checks miss.
    spec = ParseSpec(root, json_path);
  } catch (const Json::exception& e) {
    return Invalid(json_path, e.what());
  }
  if (!spec.ok()) return spec.status();
  const int32_t template_bos = spec->template_prefix.empty() ? -1 : spec->template_prefix[0];
  const std::string dir = std::filesystem::path(json_path).parent_path().string();
  const int32_t config_eos = config.eos_token_ids.empty() ? -1 : config.eos_token_ids[0];
  CMOE_ASSIGN_OR_RETURN(int32_t bos,
                        ResolveSpecial(config.bos_token_id, dir, "bos_token", *spec, template_bos));
  CMOE_ASSIGN_OR_RETURN(int32_t eos, ResolveSpecial(config_eos, dir, "eos_token", *spec, -1));
  const auto size = static_cast<int32_t>(spec->pieces.size());
  if (bos >= size || eos >= size) return Invalid(json_path, "BOS/EOS id outside the vocabulary");
  if (config.vocab_size > 0 && size > config.vocab_size) {
    return Invalid(json_path, "vocabulary of " + std::to_string(size) +
                                  " tokens exceeds the model's vocab_size " +
                                  std::to_string(config.vocab_size));
  }
  return std::make_unique<BpeTokenizer>(*std::move(spec), bos, eos);
}

BpeTokenizer::BpeTokenizer(Spec spec, int32_t bos_id, int32_t eos_id)
    : spec_(std::move(spec)), bos_id_(bos_id), eos_id_(eos_id) {
  byte_ids_.fill(-1);
  ascii_ids_.fill(-1);
  for (int byte = 0; byte < 256; ++byte) {
    const auto ascii = spec_.piece_to_id.find(std::string(1, static_cast<char>(byte)));
    if (byte < 128 && ascii != spec_.piece_to_id.end()) ascii_ids_[byte] = ascii->second;
    const auto it = spec_.piece_to_id.find(BytePiece(static_cast<uint8_t>(byte)));
    if (it != spec_.piece_to_id.end()) byte_ids_[byte] = it->second;
  }
  special_.assign(spec_.pieces.size(), false);
  for (const AddedToken& added : spec_.added_tokens) special_[added.id] = added.special;
  for (int32_t id : {spec_.unk_id, bos_id_, eos_id_}) {
    if (id >= 0) special_[id] = true;
  }
  token_bytes_.resize(spec_.pieces.size());
  for (size_t id = 0; id < spec_.pieces.size(); ++id) {
    const std::string& piece = spec_.pieces[id];
    const std::optional<uint8_t> byte = ParseBytePiece(piece);
    if (special_[id]) continue;
    if (byte && spec_.decode_byte_fallback) {
      token_bytes_[id] = std::string(1, static_cast<char>(*byte));
    } else {
      token_bytes_[id] = spec_.decode_metaspace ? ReplaceAll(piece, kMetaspace, " ") : piece;
    }
  }
  default_dummy_prefix_ = ComputeDefaultDummyPrefix();
}

bool BpeTokenizer::ComputeDefaultDummyPrefix() const {
  bool prepends = spec_.metaspace_prepend;
  for (const NormalizerStep& step : spec_.normalizer) prepends |= step.is_prepend;
  if (!prepends || bos_id_ < 0 || spec_.pieces[bos_id_].empty()) return prepends;
  const std::string& bos = spec_.pieces[bos_id_];
  for (const std::string& piece : spec_.pieces) {
    const size_t at = piece.find(bos);
    if (at == std::string::npos || at + bos.size() == piece.size()) continue;
    if (!std::string_view(piece).substr(at + bos.size()).starts_with(kMetaspace)) return false;
  }
  return true;
}

int32_t BpeTokenizer::PieceToId(std::string_view piece) const {
  return SpecPieceToId(spec_, piece);
}

std::string BpeTokenizer::Piece(int32_t id) const {
  return id >= 0 && id < vocab_size() ? spec_.pieces[id] : std::string();
}

bool BpeTokenizer::IsSpecial(int32_t id) const {
  return id >= 0 && id < vocab_size() && special_[id];
}

absl::StatusOr<std::string> BpeTokenizer::TokenBytes(int32_t previous, int32_t id) const {
  CMOE_RETURN_IF_ERROR(CheckTokenId(id));
  std::string bytes = token_bytes_[id];
  const bool at_start = previous == -1 || (bos_id_ >= 0 && previous == bos_id_);
  if (spec_.decode_strip_leading_space && at_start && !bytes.empty() && bytes[0] == ' ') {
    bytes.erase(0, 1);
  }
  return bytes;
}

std::vector<BpeTokenizer::Segment> BpeTokenizer::SplitAddedTokens(std::string_view text) const {
  std::vector<Segment> segments;
  // next_hit[i]: where added token i next occurs at or after `pos` (cached between rounds).
  std::vector<size_t> next_hit;
  for (const AddedToken& token : spec_.added_tokens) next_hit.push_back(text.find(token.content));
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string_view::npos;
    const AddedToken* match = nullptr;
    for (size_t i = 0; i < spec_.added_tokens.size(); ++i) {
      const AddedToken& token = spec_.added_tokens[i];
      if (next_hit[i] < pos) next_hit[i] = text.find(token.content, pos);
      if (next_hit[i] == std::string_view::npos) continue;
      if (next_hit[i] < best ||
          (next_hit[i] == best && token.content.size() > match->content.size())) {
        best = next_hit[i];
        match = &token;
      }
    }
    if (match == nullptr) break;
    if (best > pos) segments.push_back({text.substr(pos, best - pos), -1, pos});
    segments.push_back({text.substr(best, match->content.size()), match->id, best});
    pos = best + match->content.size();
  }
  if (pos < text.size()) segments.push_back({text.substr(pos), -1, pos});
  return segments;
}

std::string BpeTokenizer::Normalize(std::string_view text, bool prepend) const {
  std::string out(text);
  for (const NormalizerStep& step : spec_.normalizer) {
    if (!step.is_prepend) {
      out = ReplaceAll(out, step.from, step.to);
    } else if (prepend && !out.empty()) {
      out.insert(0, step.to);
    }
  }
  if (spec_.metaspace) {
    out = ReplaceAll(out, " ", *spec_.metaspace);
    const bool add = prepend && spec_.metaspace_prepend && !out.empty();
    if (add && !std::string_view(out).starts_with(*spec_.metaspace))
      out.insert(0, *spec_.metaspace);
  }
  return out;
}

absl::Status BpeTokenizer::EncodeSegment(std::string_view text, bool at_start,
                                         const EncodeOptions& options,
                                         std::vector<int32_t>* ids) const {
  const std::string normalized = Normalize(text, at_start && options.add_dummy_prefix);
  if (!spec_.metaspace || !spec_.metaspace_split) return EncodeWord(normalized, ids);
  // Metaspace with split: each word starts at a replacement symbol (MergedWithNext).
  const std::string_view view(normalized);
  size_t start = 0;
  while (start < view.size()) {
    size_t end = view.find(*spec_.metaspace, start + 1);
    if (end == std::string_view::npos) end = view.size();
    CMOE_RETURN_IF_ERROR(EncodeWord(view.substr(start, end - start), ids));
    start = end;
  }
  return absl::OkStatus();
}

absl::Status BpeTokenizer::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return absl::OkStatus();
  if (spec_.ignore_merges) {
    const auto it = spec_.piece_to_id.find(std::string(word));
    if (it != spec_.piece_to_id.end()) {
      ids->push_back(it->second);
      return absl::OkStatus();
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = std::max<size_t>(1, Utf8CharLength(word, pos));
    CMOE_RETURN_IF_ERROR(AppendCharSymbols(word, pos, len, &symbols));
    pos += len;
  }
  const std::vector<int32_t> merged =
      MergeAdjacentPairs(symbols, [this](int32_t left, int32_t right) -> std::optional<PairMerge> {
        const auto it = spec_.merges.find(PairKey(left, right));
        if (it == spec_.merges.end()) return std::nullopt;
        return it->second;
      });
  ids->insert(ids->end(), merged.begin(), merged.end());
  return absl::OkStatus();
}

absl::Status BpeTokenizer::AppendCharSymbols(std::string_view word, size_t pos, size_t len,
                                             std::vector<int32_t>* symbols) const {
  const auto first = static_cast<uint8_t>(word[pos]);
  if (len == 1 && first < ascii_ids_.size() && ascii_ids_[first] >= 0) {  // the common case
    symbols->push_back(ascii_ids_[first]);
    return absl::OkStatus();
  }
  const std::string character(word.substr(pos, len));
  const auto it = spec_.piece_to_id.find(character);
  if (it != spec_.piece_to_id.end()) {
    symbols->push_back(it->second);
    return absl::OkStatus();
  }
  const bool bytes_known = std::all_of(character.begin(), character.end(), [this](char c) {
    return byte_ids_[static_cast<uint8_t>(c)] >= 0;
  });
  if (spec_.byte_fallback && bytes_known) {
    for (char c : character) symbols->push_back(byte_ids_[static_cast<uint8_t>(c)]);
    return absl::OkStatus();
  }
  if (spec_.unk_id < 0) {
    return absl::InvalidArgumentError("character \"" + character +
                                      "\" is not in the vocabulary and there is no unk token");
  }
  if (!(spec_.fuse_unk && !symbols->empty() && symbols->back() == spec_.unk_id)) {
    symbols->push_back(spec_.unk_id);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> BpeTokenizer::Encode(std::string_view text,
                                                          const EncodeOptions& options) const {
  if (!IsValidUtf8(text)) return absl::InvalidArgumentError("Encode: text is not valid UTF-8");
  std::vector<int32_t> ids;
  if (options.add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  for (const Segment& segment : SplitAddedTokens(text)) {
    if (segment.id >= 0) {
      ids.push_back(segment.id);
    } else {
      CMOE_RETURN_IF_ERROR(EncodeSegment(segment.text, segment.offset == 0, options, &ids));
    }
  }
  if (options.add_bos)
    ids.insert(ids.end(), spec_.template_suffix.begin(), spec_.template_suffix.end());
  return ids;
}

}  // namespace cmoe::engine
