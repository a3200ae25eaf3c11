// The plain-loop reference backend: every op written the obvious way with double accumulation,
// single-threaded. It is the ground truth that the fast CPU path and the CUDA kernels are tested
// against; it is not meant to be fast.
#ifndef CMOE_KERNELS_CPU_REFERENCE_BACKEND_H_
#define CMOE_KERNELS_CPU_REFERENCE_BACKEND_H_

#include <memory>

#include "kernels/backend.h"

namespace cmoe::kernels::cpu {

std::unique_ptr<Backend> MakeReferenceBackend();

}  // namespace cmoe::kernels::cpu

#endif  // CMOE_KERNELS_CPU_REFERENCE_BACKEND_H_
