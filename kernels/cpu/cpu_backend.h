// The fast CPU backend: the reference ops re-written for speed with a thread pool and SIMD
// (AVX2+FMA or AVX-512, picked at run time from the CPU's features; a portable scalar path
// otherwise). F16/BF16 weights stay 16-bit in memory and are widened in registers, because decode
// is bound by the bytes of weights read.
#ifndef CMOE_KERNELS_CPU_CPU_BACKEND_H_
#define CMOE_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "kernels/backend.h"

namespace cmoe::kernels::cpu {

// Instruction sets the fast path can use; kAuto picks the best the CPU supports.
enum class SimdLevel { kAuto, kScalar, kAvx2, kAvx512 };

struct CpuBackendOptions {
  int threads = 0;  // <= 0: all cores available to the process
  SimdLevel simd = SimdLevel::kAuto;
};

// Fails (InvalidArgument) only when `options.simd` names an instruction set this CPU lacks. The
// backend's Name() is "cpu-" + SimdLevelName(level in use), e.g. "cpu-avx512". It owns a pool of
// options.threads threads (the calling thread included) used inside each call; like every
// Backend it is called from one thread at a time.
absl::StatusOr<std::unique_ptr<Backend>> MakeCpuBackend(const CpuBackendOptions& options);

// The best instruction set this CPU supports, and its name ("avx512", "avx2", "scalar").
SimdLevel DetectSimdLevel();
std::string_view SimdLevelName(SimdLevel level);

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_CPU_BACKEND_H_
