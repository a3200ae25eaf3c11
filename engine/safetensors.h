// Reading safetensors files (https://github.com/huggingface/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON header {name: {dtype, shape, data_offsets}, "__metadata__":
// {...}}, then the data section. Files are memory-mapped; tensors are used in place.
//
//   CMOE_ASSIGN_OR_RETURN(std::unique_ptr<TensorStore> store, TensorStore::OpenDir("/models/m"));
//   CMOE_ASSIGN_OR_RETURN(const TensorInfo* t, store->Get("model.norm.weight"));
//   // t->data: t->byte_size bytes of t->dtype, row-major t->shape, inside t->file's mapping.
//
// Validation is strict and every error names the file and the tensor or key: a file shorter than
// 8 bytes, a header length beyond the file or above 100 MB, a header that is not a JSON object,
// an entry without dtype/shape/data_offsets, a dtype other than F32/F16/BF16/I32, negative dims,
// data_offsets that are not [begin, end] with begin <= end, a byte size that disagrees with the
// shape, offsets outside the data section, overlapping tensors. Gaps between tensors are allowed.
// Malformed input is InvalidArgument; missing files or tensors are NotFound.
#ifndef CMOE_ENGINE_SAFETENSORS_H_
#define CMOE_ENGINE_SAFETENSORS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"
#include "kernels/dtype.h"

namespace cmoe::engine {

// One tensor of a safetensors file. `data` points into the mapping of the file that holds it (not
// owned; valid while the SafetensorsFile / TensorStore lives) and need not be aligned.
struct TensorInfo {
  std::string name;
  kernels::DType dtype = kernels::DType::kF32;
  std::vector<int64_t> shape;  // row-major; {} for a scalar
  const uint8_t* data = nullptr;
  int64_t byte_size = 0;
  std::string file;  // path of the file holding it

  int64_t elements() const;
  std::span<const uint8_t> bytes() const { return {data, static_cast<size_t>(byte_size)}; }
  // "[2048, 5632]"
  std::string ShapeString() const;
};

// Header sizes above this are rejected as corrupt (real headers are at most a few MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100ull << 20;

// One memory-mapped safetensors file. Move-only; moving keeps the tensor pointers valid.
class SafetensorsFile {
 public:
  // Maps and validates `path` (see the file comment). NotFound when it does not exist.
  static absl::StatusOr<SafetensorsFile> Open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  // Maps every page of the file now (MappedFile::Populate).
  void Populate() const { file_.Populate(); }
  // Sorted by name.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // The "__metadata__" object's string values (non-string values are skipped).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  MappedFile file_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a model: one safetensors file or several shards, by name. Immutable after
// opening; safe to read from several threads.
class TensorStore {
 public:
  // DIR/model.safetensors when present, else DIR/model.safetensors.index.json and the shards its
  // weight_map names (the Hugging Face order of preference). The index must be a JSON object with
  // a "weight_map" object of tensor name -> shard file name (relative to DIR); every listed tensor
  // must be in its shard, every tensor of a shard must be listed for that shard, and no tensor may
  // be in two shards. NotFound when neither file (or a shard) exists, naming what was looked for.
  static absl::StatusOr<std::unique_ptr<TensorStore>> OpenDir(const std::string& model_dir);

  // The given files, merged by name (no index); a tensor in two files is InvalidArgument.
  static absl::StatusOr<std::unique_ptr<TensorStore>> OpenFiles(
      const std::vector<std::string>& paths);

  // nullptr when absent.
  const TensorInfo* Find(std::string_view name) const;
  // NotFound naming the tensor and the files searched when absent.
  absl::StatusOr<const TensorInfo*> Get(std::string_view name) const;
  // All tensors by name.
  const std::map<std::string, const TensorInfo*, std::less<>>& tensors() const { return by_name_; }
  // Paths of the files, in opening order.
  std::vector<std::string> files() const;
  // A short description of the files for messages: the path, or "N shards in DIR".
  const std::string& description() const { return description_; }
  int64_t total_bytes() const;
  // Maps every page of every file now (MappedFile::Populate).
  void Populate() const {
    for (const SafetensorsFile& f : files_) f.Populate();
  }

 private:
  TensorStore() = default;
  absl::Status AddFile(SafetensorsFile file);

  std::vector<SafetensorsFile> files_;
  std::map<std::string, const TensorInfo*, std::less<>> by_name_;
  std::string description_;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SAFETENSORS_H_
