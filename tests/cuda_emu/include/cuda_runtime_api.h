// Stand-in for CUDA's <cuda_runtime_api.h> in the CPU emulation (tests/cuda_emu/cuda_emu.h).
#pragma once
#include "tests/cuda_emu/cuda_emu.h"
