// The CUDA plugin (libcmoe_kernels_cuda.so): programs never link CUDA, cuBLAS or NCCL at start
// (kernels/CMakeLists.txt says why); the factories that need the GPU look their entry points up
// here.
//
//   CMOE_ASSIGN_OR_RETURN(void* fn, CudaPluginSymbol("CmoeMakeCudaBackend"));
#ifndef CMOE_KERNELS_CUDA_PLUGIN_LOADER_H_
#define CMOE_KERNELS_CUDA_PLUGIN_LOADER_H_

#include "absl/status/statusor.h"

namespace cmoe::kernels {

// The address of `name` (an extern "C" entry point) in the plugin, loaded once from next to the
// program (<bin>/../lib), else from the library path, and never unloaded. Unavailable, naming the
// reason, when the plugin cannot be loaded, lacks the symbol, or this build has no CUDA.
absl::StatusOr<void*> CudaPluginSymbol(const char* name);

}  // namespace cmoe::kernels

#endif  // CMOE_KERNELS_CUDA_PLUGIN_LOADER_H_
