#include "kernels/cuda_plugin_loader.h"

#include "absl/strings/str_cat.h"
#if defined(CMOE_HAVE_CUDA)
#include <dlfcn.h>
#include <unistd.h>

#include <mutex>
#include <string>
#endif

namespace cmoe::kernels {

#if defined(CMOE_HAVE_CUDA)

namespace {

constexpr char kPlugin[] = "libcmoe_kernels_cuda.so";

absl::StatusOr<void*> LoadPlugin() {
  static std::once_flag once;
  static absl::StatusOr<void*>* loaded = nullptr;
  std::call_once(once, [] {
    std::string error;
    void* handle = nullptr;
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
      std::string path(exe, static_cast<size_t>(n));
      path = path.substr(0, path.rfind('/')) + "/../lib/" + kPlugin;
      handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) error = dlerror();
    }
    if (handle == nullptr) handle = dlopen(kPlugin, RTLD_NOW | RTLD_LOCAL);
    loaded = handle != nullptr
                 ? new absl::StatusOr<void*>(handle)
                 : new absl::StatusOr<void*>(absl::UnavailableError(absl::StrCat(
                       "cannot load the CUDA backend (", kPlugin, "): ", dlerror(), "; ", error)));
  });
  return *loaded;
}

}  // namespace

absl::StatusOr<void*> CudaPluginSymbol(const char* name) {
  absl::StatusOr<void*> handle = LoadPlugin();
  if (!handle.ok()) return handle.status();
  dlerror();  // clear
  void* symbol = dlsym(*handle, name);
  if (symbol == nullptr) {
    return absl::UnavailableError(absl::StrCat(kPlugin, " has no ", name));
  }
  return symbol;
}

#else

absl::StatusOr<void*> CudaPluginSymbol(const char* name) {
  return absl::UnavailableError(
      absl::StrCat("this build has no CUDA (configure with -DCMOE_CUDA=ON), so no ", name));
}

#endif

}  // namespace cmoe::kernels
