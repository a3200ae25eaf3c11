#include "engine/safetensors.h"

#include <algorithm>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine {
namespace {

using Json = nlohmann::json;
constexpr int64_t kMaxElements = int64_t{1} << 48;

absl::Status FileError(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors file ", path, ": ", what));
}

absl::Status TensorError(absl::string_view path, absl::string_view name, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("safetensors file ", path, ": tensor '", name, "': ", what));
}

uint64_t ReadLittleEndian64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const Json& j, absl::string_view path,
                                                absl::string_view name) {
  if (!j.is_array()) return TensorError(path, name, "'shape' is not a list");
  std::vector<int64_t> shape;
  int64_t elements = 1;
  for (const Json& d : j) {
    if (!d.is_number_integer()) return TensorError(path, name, "'shape' has a non-integer dim");
    const int64_t dim = d.get<int64_t>();
    if (dim < 0) return TensorError(path, name, absl::StrCat("negative dim ", dim, " in 'shape'"));
    if (dim > 0 && elements > kMaxElements / dim) {
      return TensorError(path, name, absl::StrCat("'shape' ", j.dump(), " is absurdly large"));
    }
    elements *= dim;
    shape.push_back(dim);
  }
  return shape;
}

struct Offsets {
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::StatusOr<Offsets> ParseOffsets(const Json& j, absl::string_view path, absl::string_view name,
                                     uint64_t data_size) {
  const bool pair = j.is_array() && j.size() == 2 && j[0].is_number_integer() &&
                    j[1].is_number_integer() && j[0].get<int64_t>() >= 0 &&
                    j[1].get<int64_t>() >= 0;
  if (!pair) return TensorError(path, name, "'data_offsets' is not [begin, end]: " + j.dump());
  const Offsets o{j[0].get<uint64_t>(), j[1].get<uint64_t>()};
  if (o.begin > o.end) {
    return TensorError(path, name, absl::StrCat("data_offsets begin ", o.begin, " > end ", o.end));
  }
  if (o.end > data_size) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets [", o.begin, ", ", o.end,
                                    "] outside the data section of ", data_size, " bytes"));
  }
  return o;
}

absl::StatusOr<TensorInfo> ParseEntry(const std::string& name, const Json& entry,
                                      absl::string_view path, std::span<const uint8_t> data) {
  if (!entry.is_object()) return TensorError(path, name, "entry is not an object");
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) return TensorError(path, name, absl::StrCat("missing '", key, "'"));
  }
  TensorInfo t;
  t.name = name;
  t.file = std::string(path);
  const Json& dtype = entry["dtype"];
  const std::string dtype_name = dtype.is_string() ? dtype.get<std::string>() : dtype.dump();
  const std::optional<kernels::DType> parsed = kernels::ParseDType(dtype_name);
  if (!parsed) {
    return TensorError(
        path, name,
        absl::StrCat("unsupported dtype '", dtype_name, "' (supported: F32, F16, BF16, I32)"));
  }
  t.dtype = *parsed;
  CMOE_ASSIGN_OR_RETURN(t.shape, ParseShape(entry["shape"], path, name));
  CMOE_ASSIGN_OR_RETURN(Offsets o, ParseOffsets(entry["data_offsets"], path, name, data.size()));
  t.byte_size = static_cast<int64_t>(o.end - o.begin);
  const int64_t expected = t.elements() * static_cast<int64_t>(kernels::DTypeSize(t.dtype));
  if (t.byte_size != expected) {
    return TensorError(path, name,
                       absl::StrCat("data_offsets span ", t.byte_size, " bytes but ", dtype_name,
                                    " shape ", t.ShapeString(), " needs ", expected));
  }
  t.data = data.data() + o.begin;
  return t;
}

// Tensors sorted by their start; each must start at or after the previous one's end.
absl::Status CheckNoOverlap(std::vector<TensorInfo> tensors, absl::string_view path) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.data != b.data ? a.data < b.data : a.byte_size < b.byte_size;
  });
  for (size_t i = 1; i < tensors.size(); ++i) {
    const TensorInfo& prev = tensors[i - 1];
    if (tensors[i].data < prev.data + prev.byte_size) {
      return TensorError(path, tensors[i].name,
                         absl::StrCat("data overlaps tensor '", prev.name, "'"));
    }
  }
  return absl::OkStatus();
}

struct ParsedHeader {
  Json json;
  std::span<const uint8_t> data;  // the data section
};

absl::StatusOr<ParsedHeader> ParseHeader(std::span<const uint8_t> bytes, absl::string_view path) {
  if (bytes.size() < 8) {
    return FileError(
        path, absl::StrCat("only ", bytes.size(), " bytes, shorter than the 8-byte header length"));
  }
  const uint64_t n = ReadLittleEndian64(bytes.data());
  if (n > kMaxSafetensorsHeaderBytes) {
    return FileError(path, absl::StrCat("header length ", n, " exceeds the limit of ",
                                        kMaxSafetensorsHeaderBytes, " bytes (corrupt file?)"));
  }
  if (n > bytes.size() - 8) {
    return FileError(path, absl::StrCat("header length ", n, " goes beyond the end of the ",
                                        bytes.size(), "-byte file (truncated?)"));
  }
  const auto* text = reinterpret_cast<const char*>(bytes.data() + 8);
  ParsedHeader h;
  h.json = Json::parse(text, text + n, nullptr, /*allow_exceptions=*/false);
  if (h.json.is_discarded()) return FileError(path, "header is not valid JSON");
  if (!h.json.is_object()) return FileError(path, "header is not a JSON object");
  h.data = bytes.subspan(8 + n);
  return h;
}

}  // namespace

int64_t TensorInfo::elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  SafetensorsFile f;
  CMOE_ASSIGN_OR_RETURN(f.file_, MappedFile::Open(path));
  CMOE_ASSIGN_OR_RETURN(ParsedHeader h, ParseHeader(f.file_.bytes(), path));
  for (const auto& [name, entry] : h.json.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return TensorError(path, name, "'__metadata__' is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (v.is_string()) f.metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    CMOE_ASSIGN_OR_RETURN(TensorInfo t, ParseEntry(name, entry, path, h.data));
    f.tensors_.push_back(std::move(t));
  }
  CMOE_RETURN_IF_ERROR(CheckNoOverlap(f.tensors_, path));
  // json objects iterate in key order, so tensors_ is sorted by name.
  return f;
}

const TensorInfo* SafetensorsFile::Find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  return it != tensors_.end() && it->name == name ? &*it : nullptr;
}

absl::Status TensorStore::AddFile(SafetensorsFile file) {
  files_.push_back(std::move(file));
  const SafetensorsFile& f = files_.back();
  for (const TensorInfo& t : f.tensors()) {
    auto [it, inserted] = by_name_.emplace(t.name, &t);
    if (!inserted) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.name, "' is present in two files: ", it->second->file, " and ", t.file));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::OpenFiles(
    const std::vector<std::string>& paths) {
  std::unique_ptr<TensorStore> store(new TensorStore());
  store->files_.reserve(paths.size());
  for (const std::string& path : paths) {
    CMOE_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::Open(path));
    CMOE_RETURN_IF_ERROR(store->AddFile(std::move(file)));
  }
  store->description_ = paths.size() == 1 ? paths[0] : absl::StrJoin(paths, ", ");
  return store;
}

namespace {

absl::Status IndexError(absl::string_view path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("index file ", path, ": ", what));
}

// weight_map of an index file: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadWeightMap(const std::string& path) {
  CMOE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  const Json root = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return IndexError(path, "not valid JSON");
  if (!root.is_object()) return IndexError(path, "not a JSON object");
  if (!root.contains("weight_map") || !root["weight_map"].is_object()) {
    return IndexError(path, "key 'weight_map' missing or not an object");
  }
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : root["weight_map"].items()) {
    const std::string file = shard.is_string() ? shard.get<std::string>() : "";
    if (file.empty() || absl::StrContains(file, '/') || file == "..") {
      return IndexError(path,
                        absl::StrCat("weight_map entry for tensor '", name,
                                     "' is not a file name in the directory: ", shard.dump()));
    }
    weight_map[name] = file;
  }
  if (weight_map.empty()) return IndexError(path, "key 'weight_map' is empty");
  return weight_map;
}

// Every tensor of the store is listed in `weight_map` for the shard that holds it, and every
// listed tensor exists.
absl::Status CheckWeightMap(const std::map<std::string, std::string>& weight_map,
                            const std::map<std::string, const TensorInfo*, std::less<>>& by_name,
                            const std::string& dir, const std::string& index_path) {
  for (const auto& [name, shard] : weight_map) {
    if (!by_name.contains(name)) {
      return IndexError(index_path, absl::StrCat("tensor '", name, "' listed for shard ", dir, "/",
                                                 shard, " is absent from that shard"));
    }
  }
  for (const auto& [name, info] : by_name) {
    auto it = weight_map.find(name);
    if (it == weight_map.end()) {
      return IndexError(index_path, absl::StrCat("tensor '", name, "' in shard ", info->file,
                                                 " is not listed in the weight_map"));
    }
    if (dir + "/" + it->second != info->file) {
      return IndexError(index_path, absl::StrCat("tensor '", name, "' is listed for shard ",
                                                 it->second, " but stored in ", info->file));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::OpenDir(const std::string& model_dir) {
  const std::string single = model_dir + "/model.safetensors";
  const std::string index = model_dir + "/model.safetensors.index.json";
  std::error_code ec;
  if (std::filesystem::exists(single, ec)) return OpenFiles({single});
  if (!std::filesystem::exists(index, ec)) {
    return absl::NotFoundError(
        absl::StrCat("no weights in ", model_dir, ": neither ", single, " nor ", index, " exists"));
  }
  CMOE_ASSIGN_OR_RETURN(auto weight_map, ReadWeightMap(index));
  std::set<std::string> shards;
  for (const auto& [name, shard] : weight_map) shards.insert(shard);
  std::vector<std::string> paths;
  paths.reserve(shards.size());
  for (const std::string& shard : shards) paths.push_back(absl::StrCat(model_dir, "/", shard));
  auto store = OpenFiles(paths);
  if (!store.ok()) return Annotate(store.status(), absl::StrCat("shards listed in ", index));
  CMOE_RETURN_IF_ERROR(CheckWeightMap(weight_map, (*store)->by_name_, model_dir, index));
  (*store)->description_ = absl::StrCat(shards.size(), " shards listed in ", index);
  return store;
}

const TensorInfo* TensorStore::Find(std::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

absl::StatusOr<const TensorInfo*> TensorStore::Get(std::string_view name) const {
  const TensorInfo* t = Find(name);
  if (t == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", std::string(name), "' not found in ", description_));
  }
  return t;
}

std::vector<std::string> TensorStore::files() const {
  std::vector<std::string> paths;
  for (const SafetensorsFile& f : files_) paths.push_back(f.path());
  return paths;
}

int64_t TensorStore::total_bytes() const {
  int64_t total = 0;
  for (const auto& [name, t] : by_name_) total += t->byte_size;
  return total;
}

}  // namespace cmoe::engine
