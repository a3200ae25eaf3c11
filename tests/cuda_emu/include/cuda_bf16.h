// Stand-in for CUDA's <cuda_bf16.h> in the CPU emulation (tests/cuda_emu/half_types.h).
#pragma once
#include "tests/cuda_emu/half_types.h"
