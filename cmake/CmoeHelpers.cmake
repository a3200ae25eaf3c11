# Small helpers that keep module and test CMakeLists short.

# cmoe_simd_sources(<target> AVX2 <files...> AVX512 <files...>)
# Compiles each group with its instruction-set flags; the code picks one at run time.
function(cmoe_simd_sources target)
  cmake_parse_arguments(ARG "" "" "AVX2;AVX512" ${ARGN})
  target_sources(${target} PRIVATE ${ARG_AVX2} ${ARG_AVX512})
  set_source_files_properties(${ARG_AVX2} PROPERTIES COMPILE_OPTIONS "-mavx2;-mfma;-mf16c")
  set_source_files_properties(${ARG_AVX512} PROPERTIES COMPILE_OPTIONS
    "-mavx512f;-mavx512bw;-mavx512vl;-mavx512dq;-mfma;-mf16c")
endfunction()

# cmoe_add_test(<name> SOURCES <files...> LIBS <targets...> LABELS <labels...>
#               [TIMEOUT <s>] [TEST_PREFIX <prefix>] [TSAN])
# One GoogleTest executable; every TEST becomes a CTest test carrying the labels (one label: CMake
# 3.25's gtest_discover_tests splits a list). TSAN: the executable joins the target tsan_tests
# (tests/CMakeLists.txt), which scripts/test.sh builds and runs under ThreadSanitizer.
function(cmoe_add_test name)
  cmake_parse_arguments(ARG "TSAN" "TIMEOUT;TEST_PREFIX" "SOURCES;LIBS;LABELS" ${ARGN})
  if(ARG_TSAN)
    set_property(GLOBAL APPEND PROPERTY CMOE_TSAN_TESTS ${name})
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} cmoe_test_util GTest::gtest GTest::gmock
                                        GTest::gtest_main)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 600)
  endif()
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST TEST_PREFIX "${ARG_TEST_PREFIX}"
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

# cmoe_add_tool(<name> SOURCES <files...> LIBS <targets...>) -> build/bin/<name>
function(cmoe_add_tool name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS})
endfunction()
