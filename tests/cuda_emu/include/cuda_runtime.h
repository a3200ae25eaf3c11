// Stand-in for CUDA's <cuda_runtime.h> in the CPU emulation (tests/cuda_emu/cuda_emu.h).
#pragma once
#include "tests/cuda_emu/cuda_emu.h"
#include "tests/cuda_emu/half_types.h"
