#include "engine/safetensors_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace cmoe::engine {
namespace {

using Json = nlohmann::json;

absl::Status ErrnoError(absl::string_view what, absl::string_view path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

// Appends to a file descriptor through a buffer; large chunks bypass it.
class BufferedFile {
 public:
  BufferedFile(int fd, std::string path) : fd_(fd), path_(std::move(path)) {
    buffer_.reserve(kBufferBytes);
  }

  absl::Status Append(std::span<const uint8_t> bytes) {
    if (buffer_.size() + bytes.size() <= kBufferBytes) {
      buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
      return absl::OkStatus();
    }
    CMOE_RETURN_IF_ERROR(Flush());
    if (bytes.size() >= kBufferBytes) return WriteAll(bytes);
    buffer_.assign(bytes.begin(), bytes.end());
    return absl::OkStatus();
  }

  absl::Status Flush() {
    CMOE_RETURN_IF_ERROR(WriteAll(buffer_));
    buffer_.clear();
    return absl::OkStatus();
  }

 private:
  static constexpr size_t kBufferBytes = 8 << 20;

  absl::Status WriteAll(std::span<const uint8_t> bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::write(fd_, bytes.data(), bytes.size());
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return ErrnoError("cannot write", path_);
      bytes = bytes.subspan(static_cast<size_t>(n));
    }
    return absl::OkStatus();
  }

  int fd_;
  std::string path_;
  std::vector<uint8_t> buffer_;
};

// Passes at most `remaining` bytes of one tensor to the file.
class BoundedSink : public TensorSink {
 public:
  BoundedSink(BufferedFile& out, int64_t size) : out_(out), remaining_(size) {}
  absl::Status Write(std::span<const uint8_t> bytes) override {
    if (static_cast<int64_t>(bytes.size()) > remaining_) {
      return absl::InvalidArgumentError("producer wrote more bytes than the tensor holds");
    }
    remaining_ -= static_cast<int64_t>(bytes.size());
    return out_.Append(bytes);
  }
  int64_t remaining() const { return remaining_; }

 private:
  BufferedFile& out_;
  int64_t remaining_;
};

std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

absl::Status SafetensorsWriter::AddEntry(const std::string& name, Entry entry) {
  auto error = [&](absl::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors writer: tensor '", name, "': ", what));
  };
  if (name.empty() || name == "__metadata__") return error("invalid tensor name");
  if (tensors_.contains(name)) return error("added twice");
  int64_t elements = 1;
  for (int64_t d : entry.shape) {
    if (d < 0) return error(absl::StrCat("negative dim ", d));
    elements *= d;
  }
  entry.byte_size = elements * static_cast<int64_t>(kernels::DTypeSize(entry.dtype));
  if (!entry.producer) {
    const size_t given = entry.owned.empty() ? entry.borrowed.size() : entry.owned.size();
    if (static_cast<int64_t>(given) != entry.byte_size) {
      return error(absl::StrCat(given, " bytes given but the shape needs ", entry.byte_size));
    }
  }
  tensors_.emplace(name, std::move(entry));
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::AddOwned(const std::string& name, kernels::DType dtype,
                                         std::vector<int64_t> shape, std::vector<uint8_t> bytes) {
  Entry entry{.dtype = dtype, .shape = std::move(shape)};
  entry.owned = std::move(bytes);
  return AddEntry(name, std::move(entry));
}

absl::Status SafetensorsWriter::AddF32(const std::string& name, std::vector<int64_t> shape,
                                       std::span<const float> values) {
  std::vector<uint8_t> bytes(values.size_bytes());
  if (!values.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return AddOwned(name, kernels::DType::kF32, std::move(shape), std::move(bytes));
}

absl::Status SafetensorsWriter::AddBorrowed(const std::string& name, kernels::DType dtype,
                                            std::vector<int64_t> shape,
                                            std::span<const uint8_t> bytes) {
  Entry entry{.dtype = dtype, .shape = std::move(shape)};
  entry.borrowed = bytes;
  return AddEntry(name, std::move(entry));
}

absl::Status SafetensorsWriter::AddProduced(const std::string& name, kernels::DType dtype,
                                            std::vector<int64_t> shape, TensorProducer producer) {
  if (!producer) return absl::InvalidArgumentError("safetensors writer: null producer for " + name);
  Entry entry{.dtype = dtype, .shape = std::move(shape)};
  entry.producer = std::move(producer);
  return AddEntry(name, std::move(entry));
}

int64_t SafetensorsWriter::data_bytes() const {
  int64_t total = 0;
  for (const auto& [name, e] : tensors_) total += e.byte_size;
  return total;
}

std::string SafetensorsWriter::HeaderJson() const {
  Json header = Json::object();
  int64_t offset = 0;
  for (const auto& [name, e] : tensors_) {
    header[name] = {{"dtype", std::string(kernels::DTypeName(e.dtype))},
                    {"shape", e.shape},
                    {"data_offsets", {offset, offset + e.byte_size}}};
    offset += e.byte_size;
  }
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  std::string text = header.dump();
  // The data section starts at 8 + text.size(); pad with spaces to an 8-byte boundary.
  text.append((8 - text.size() % 8) % 8, ' ');
  return text;
}

absl::Status SafetensorsWriter::WriteTensors(int fd, const std::string& path,
                                             const WriteProgress& progress) const {
  BufferedFile out(fd, path);
  const std::string header = HeaderJson();
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<uint8_t>(uint64_t{header.size()} >> (8 * i));
  CMOE_RETURN_IF_ERROR(out.Append(length));
  CMOE_RETURN_IF_ERROR(out.Append(AsBytes(header)));
  const int64_t total = data_bytes();
  int64_t done = 0;
  for (const auto& [name, e] : tensors_) {
    if (!e.producer) {
      CMOE_RETURN_IF_ERROR(out.Append(e.owned.empty() ? e.borrowed : std::span(e.owned)));
    } else {
      BoundedSink sink(out, e.byte_size);
      const std::string context = absl::StrCat("writing ", path, ": tensor '", name, "'");
      CMOE_RETURN_IF_ERROR(Annotate(e.producer(sink), context));
      if (sink.remaining() != 0) {
        return absl::InternalError(absl::StrCat(context, ": producer wrote ",
                                                e.byte_size - sink.remaining(), " of ", e.byte_size,
                                                " bytes"));
      }
    }
    done += e.byte_size;
    if (progress) progress(done, total);
  }
  return out.Flush();
}

absl::Status SafetensorsWriter::Write(const std::string& path,
                                      const WriteProgress& progress) const {
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkstemp(tmp.data());
  if (fd < 0) return ErrnoError("cannot create a temporary file beside", path);
  absl::Status status = WriteTensors(fd, path, progress);
  if (status.ok() && ::fchmod(fd, 0644) != 0) status = ErrnoError("cannot chmod", tmp);
  if (status.ok() && ::fsync(fd) != 0) status = ErrnoError("cannot fsync", tmp);
  if (::close(fd) != 0 && status.ok()) status = ErrnoError("cannot close", tmp);
  if (status.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) {
    status = ErrnoError("cannot rename the temporary file to", path);
  }
  if (!status.ok()) ::unlink(tmp.c_str());
  return status;
}

}  // namespace cmoe::engine
