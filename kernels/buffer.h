// Memory owned through a Backend: host memory for the CPU backends, device memory for CUDA.
//
//   CMOE_ASSIGN_OR_RETURN(Buffer x, backend.Allocate(T * d * sizeof(float)));
//   CMOE_RETURN_IF_ERROR(backend.CopyToBackend(x.data(), host.data(), x.bytes()));
//   CMOE_RETURN_IF_ERROR(backend.RmsNorm(x.as<float>(), T, w, eps, x.as<float>()));
//
// A Buffer frees its memory through the function it was made with; the backend that made it must
// outlive it. Move-only.
#ifndef CMOE_KERNELS_BUFFER_H_
#define CMOE_KERNELS_BUFFER_H_

#include <cstdint>
#include <utility>

namespace cmoe::kernels {

class Buffer {
 public:
  using FreeFn = void (*)(void* context, void* data);

  Buffer() = default;
  Buffer(void* data, int64_t bytes, FreeFn free_fn, void* context)
      : data_(data), bytes_(bytes), free_(free_fn), context_(context) {}
  Buffer(Buffer&& other) noexcept { *this = std::move(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      Reset();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
      free_ = std::exchange(other.free_, nullptr);
      context_ = std::exchange(other.context_, nullptr);
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { Reset(); }

  void* data() const { return data_; }
  int64_t bytes() const { return bytes_; }
  template <class T>
  T* as() const {
    return static_cast<T*>(data_);
  }

  void Reset() {
    if (data_ != nullptr && free_ != nullptr) free_(context_, data_);
    data_ = nullptr;
    bytes_ = 0;
  }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
  FreeFn free_ = nullptr;
  void* context_ = nullptr;
};

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_BUFFER_H_
