// A read-only memory mapping of a whole file. Checkpoint weights are used in place from the
// mapping, so a model is never copied into a second buffer.
//
//   CMOE_ASSIGN_OR_RETURN(MappedFile file, MappedFile::Open("model.safetensors"));
//   std::span<const uint8_t> bytes = file.bytes();
//
// Move-only. The mapping lives until the object is destroyed; spans into it dangle afterwards.
#ifndef CMOE_COMMON_MAPPED_FILE_H_
#define CMOE_COMMON_MAPPED_FILE_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "absl/status/statusor.h"

namespace cmoe {

class MappedFile {
 public:
  // Maps `path` read-only. Errors name the path: NotFound, PermissionDenied, or Internal.
  // An empty file maps to an empty span.
  static absl::StatusOr<MappedFile> Open(const std::string& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const uint8_t> bytes() const { return {data_, size_}; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

  // Maps every page now (reading the file into the page cache if it is not there), so that the
  // first requests do not pay page faults: a carved model touches experts as tokens route to
  // them. Best effort: a failure only costs those faults later.
  void Populate() const;

 private:
  void Reset();

  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

// Reads a whole (small) file into a string. Errors name the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Writes `contents` to `path` atomically: a temporary file beside it, fsync, then rename.
absl::Status WriteFileAtomically(const std::string& path, std::string_view contents);

}  // namespace cmoe

#endif  // CMOE_COMMON_MAPPED_FILE_H_
