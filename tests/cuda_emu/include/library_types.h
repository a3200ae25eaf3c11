// Stand-in for CUDA's <library_types.h> in the CPU emulation (tests/cuda_emu/cublas.h).
#pragma once
#include "tests/cuda_emu/cublas.h"
