# Warnings, optimisation and sanitizers for every target of the project.
#
# Release builds are -O3 for a portable x86-64 baseline; the SIMD kernels are compiled per
# instruction set (see cmoe_simd_sources in CmoeHelpers) and chosen at run time, so the binaries
# run on any x86-64 CPU and use AVX2 / AVX-512 where present.
# Designated initialisers that leave members at their defaults are our style for parameter
# structs; -Wextra would flag every one of them.
add_compile_options(-Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)
set(CMAKE_CXX_FLAGS_RELEASE "-O3 -DNDEBUG")
set(CMAKE_CXX_FLAGS_RELWITHDEBINFO "-O2 -g -DNDEBUG")

if(CMOE_SANITIZE)
  if(NOT CMOE_SANITIZE MATCHES "^(address,undefined|address|undefined|thread)$")
    message(FATAL_ERROR "CMOE_SANITIZE must be 'address,undefined', 'address', 'undefined' or "
                        "'thread', not '${CMOE_SANITIZE}'")
  endif()
  add_compile_options(-fsanitize=${CMOE_SANITIZE} -fno-omit-frame-pointer -fno-sanitize-recover=all)
  add_link_options(-fsanitize=${CMOE_SANITIZE})
endif()
