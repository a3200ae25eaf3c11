// Stand-in for <cublas_v2.h> in the CPU emulation (tests/cuda_emu/cublas.h).
#pragma once
#include "tests/cuda_emu/cublas.h"
