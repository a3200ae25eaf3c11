// Stand-in for CUDA's <mma.h> (WMMA) in the CPU emulation (tests/cuda_emu/wmma.h).
#pragma once
#include "tests/cuda_emu/wmma.h"
