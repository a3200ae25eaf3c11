# Rewrites one CUDA source into C++ for the CPU emulation (tests/cuda_emu/cuda_emu.h):
#   cmake -DIN=kernels/cuda/x.cu -DOUT=build/.../x.cu.cc -P translate.cmake
# - k<<<grid, block, smem, stream>>>(args)  ->  k | LaunchConfig(grid, block, smem, stream) |
#   KernelArgs(args)   (the launch runs on the calling thread; see cuda_emu.h)
# - extern __shared__ [__align__(N)] T name[];  ->  T* name = DynamicShared<T>();  (the emulated
#   dynamic shared memory is 128-byte aligned)
# - the L2 prefetch hint (inline PTX) -> a no-op
# Lines stay where they were, so compiler messages and fault reports point at the .cu line.
# Anything else the emulation cannot run (other inline PTX) is an error naming the file.
file(READ "${IN}" text)
string(REGEX MATCHALL "<<<" opens "${text}")
string(REGEX MATCHALL ">>>\\(" closes "${text}")
list(LENGTH opens n_opens)
list(LENGTH closes n_closes)
if(NOT n_opens EQUAL n_closes)
  message(FATAL_ERROR "${IN}: ${n_opens} '<<<' but ${n_closes} '>>>(': cannot translate the launches")
endif()
string(REPLACE "<<<" " | ::cmoe::cuda_emu::LaunchConfig(" text "${text}")
string(REPLACE ">>>(" ") | ::cmoe::cuda_emu::KernelArgs(" text "${text}")
string(REGEX REPLACE
       "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z0-9_: ]*[A-Za-z0-9_]) ([A-Za-z_][A-Za-z0-9_]*)\\[\\];"
       "\\2* \\3 = ::cmoe::cuda_emu::DynamicShared<\\2>();" text "${text}")
string(REGEX REPLACE
       "asm volatile\\(\"prefetch\\.global\\.L2 \\[%0\\];\" ::\"l\"\\(([^;]*)\\)\\);"
       "::cmoe::cuda_emu::PrefetchL2(\\1);" text "${text}")
if(text MATCHES "extern __shared__")
  message(FATAL_ERROR "${IN}: an extern __shared__ declaration the translation does not know")
endif()
if(text MATCHES "asm[ \t]*(volatile)?[ \t]*\\(")
  message(FATAL_ERROR "${IN}: inline PTX the CPU emulation cannot run (tests/cuda_emu)")
endif()
file(WRITE "${OUT}.tmp" "${text}")
file(RENAME "${OUT}.tmp" "${OUT}")
