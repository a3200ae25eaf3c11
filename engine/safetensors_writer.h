// Writing safetensors files. Tensors are collected first (their bytes owned, borrowed, or produced
// at write time in chunks), then written in one pass: the 8-byte header length, the JSON header
// (names sorted, padded with spaces so the data section starts 8-byte aligned), then each tensor's
// bytes in name order. The file appears atomically (a temporary file beside it, fsync, rename).
//
//   SafetensorsWriter writer;
//   CMOE_RETURN_IF_ERROR(writer.AddF32("model.norm.weight", {d}, norm));  // copies
//   CMOE_RETURN_IF_ERROR(writer.AddProduced("model.embed_tokens.weight", DType::kBF16, {v, d},
//       [&](TensorSink& sink) { ...; return sink.Write(chunk); }));      // streams
//   CMOE_RETURN_IF_ERROR(writer.Write(dir + "/model.safetensors"));
//
// Producers let multi-GB checkpoints be written without holding them in memory. Not thread-safe;
// a producer may use threads internally but must call TensorSink::Write from one thread at a time.
#ifndef CMOE_ENGINE_SAFETENSORS_WRITER_H_
#define CMOE_ENGINE_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kernels/dtype.h"

namespace cmoe::engine {

// Where a producer writes its tensor's bytes, in order, in chunks of any size.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  // Appends `bytes`; writing more than the tensor's byte size is InvalidArgument.
  virtual absl::Status Write(std::span<const uint8_t> bytes) = 0;
};

// Writes exactly the tensor's byte size to the sink (the writer checks the total).
using TensorProducer = std::function<absl::Status(TensorSink& sink)>;

// Optional progress report after each tensor: bytes of tensor data written so far and in total.
using WriteProgress = std::function<void(int64_t done_bytes, int64_t total_bytes)>;

class SafetensorsWriter {
 public:
  // Each Add validates the name (non-empty, unique, not "__metadata__"), the shape (no negative
  // dims) and, where bytes are given, that their size is product(shape) * dtype size.
  // InvalidArgument naming the tensor otherwise.

  // Copies `bytes` (raw little-endian elements of `dtype`, row-major).
  absl::Status AddOwned(const std::string& name, kernels::DType dtype, std::vector<int64_t> shape,
                        std::vector<uint8_t> bytes);
  // Copies float values as an F32 tensor.
  absl::Status AddF32(const std::string& name, std::vector<int64_t> shape,
                      std::span<const float> values);
  // Does not copy: the caller keeps `bytes` alive and unchanged until Write returns.
  absl::Status AddBorrowed(const std::string& name, kernels::DType dtype,
                           std::vector<int64_t> shape, std::span<const uint8_t> bytes);
  // `producer` is called once during Write to stream the bytes.
  absl::Status AddProduced(const std::string& name, kernels::DType dtype,
                           std::vector<int64_t> shape, TensorProducer producer);

  // A "__metadata__" string entry (e.g. {"format": "pt"}).
  void SetMetadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  // Writes all tensors to `path` atomically; on error nothing is left at `path` (an existing file
  // there is untouched). Errors name the path and, for producer failures, the tensor.
  absl::Status Write(const std::string& path, const WriteProgress& progress = nullptr) const;

  size_t num_tensors() const { return tensors_.size(); }
  // Bytes of tensor data (without the header).
  int64_t data_bytes() const;

 private:
  struct Entry {
    kernels::DType dtype = kernels::DType::kF32;
    std::vector<int64_t> shape{};
    int64_t byte_size = 0;
    std::vector<uint8_t> owned{};
    std::span<const uint8_t> borrowed{};
    TensorProducer producer{};  // set for produced tensors
  };

  absl::Status AddEntry(const std::string& name, Entry entry);
  std::string HeaderJson() const;
  absl::Status WriteTensors(int fd, const std::string& path, const WriteProgress& progress) const;

  std::map<std::string, Entry> tensors_;  // sorted by name: the file's tensor order
  std::map<std::string, std::string> metadata_;
};

}  // namespace cmoe::engine

#endif  // CMOE_ENGINE_SAFETENSORS_WRITER_H_
