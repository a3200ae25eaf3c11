# CUDA is on when nvcc is found (CMOE_CUDA=AUTO), forced with ON, skipped with OFF.
# Sets CMOE_HAVE_CUDA. CUDA 13 lives in /usr/local/cuda on our machines.
set(CMOE_HAVE_CUDA OFF)
if(NOT CMOE_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 80 90)
    endif()
    enable_language(CUDA)
    # CMake 3.25 does not know nvcc 12+'s C++20 flag; without it no CUDA target can use C++20.
    if(NOT CMAKE_CUDA20_STANDARD_COMPILE_OPTION)
      set(CMAKE_CUDA20_STANDARD_COMPILE_OPTION "-std=c++20")
      set(CMAKE_CUDA20_EXTENSION_COMPILE_OPTION "-std=c++20")
      list(APPEND CMAKE_CUDA_COMPILE_FEATURES cuda_std_20)
    endif()
    # Debian's CMake 3.25.1 sets a property on CUDA::nvToolsExt without checking that the target
    # exists, and CUDA 13 has no nvToolsExt library (only the header-only nvtx3): configuring
    # fails ("set_property could not find TARGET CUDA::nvToolsExt") unless the target exists.
    # An empty one is enough; nothing here links it. (Some machines carry a patched module.)
    if(CMAKE_VERSION VERSION_LESS 3.26 AND NOT TARGET CUDA::nvToolsExt)
      add_library(CUDA::nvToolsExt INTERFACE IMPORTED)
    endif()
    find_package(CUDAToolkit REQUIRED)
    set(CMOE_HAVE_CUDA ON)
  elseif(CMOE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "CMOE_CUDA=ON but no CUDA compiler (nvcc) was found")
  endif()
endif()
