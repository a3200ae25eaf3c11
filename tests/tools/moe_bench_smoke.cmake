# Smoke test of cmoe-moe-bench (CTest, label unit): a tiny layer on the CPU backend, one timed
# step, must exit 0 and write JSON with the keys scripts/gpu-check.sh reads; a bad flag must exit
# 2 and name the flag. Plain CMake (string(JSON)), so it needs nothing but the binary.
#
#   cmake -DBENCH=build/bin/cmoe-moe-bench -DOUT=/tmp/moe.json -P moe_bench_smoke.cmake
if(NOT BENCH OR NOT OUT)
  message(FATAL_ERROR "usage: cmake -DBENCH=<cmoe-moe-bench> -DOUT=<json file> -P ${CMAKE_CURRENT_LIST_FILE}")
endif()
file(REMOVE "${OUT}")
execute_process(
  COMMAND "${BENCH}" --device cpu --threads 1 --dim 64 --ffn 172 --config S2A2E16,S3A3E8
          --batch 1,3 --reps 1 --warmup 0 --routing skewed --json "${OUT}"
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "cmoe-moe-bench exited ${rc}\n${out}\n${err}")
endif()
file(READ "${OUT}" json)

# Each key path must exist; numbers must be finite and positive where they are times or bytes.
function(expect_number)
  string(JSON value ERROR_VARIABLE error GET "${json}" ${ARGN})
  if(error)
    message(FATAL_ERROR "${OUT}: missing ${ARGN}: ${error}")
  endif()
  if(NOT value MATCHES "^[0-9.eE+-]+$" OR value LESS_EQUAL 0)
    message(FATAL_ERROR "${OUT}: ${ARGN} = '${value}' is not a positive number")
  endif()
endfunction()

string(JSON tool ERROR_VARIABLE error GET "${json}" tool)
if(error OR NOT tool STREQUAL "cmoe-moe-bench")
  message(FATAL_ERROR "${OUT}: not cmoe-moe-bench JSON (${error})\n${json}")
endif()
foreach(batch 1 3)
  expect_number(dense results ${batch} ms)
  expect_number(dense results ${batch} weight_bytes)
  expect_number(dense results ${batch} gbps)
  foreach(config S2A2E16 S3A3E8)
    foreach(key ms dense_ms ratio_dense_over_carved weight_bytes dense_weight_bytes gbps
                touched_experts touched_fraction touched_fraction_expected max_expert_share)
      expect_number(configs ${config} results ${batch} ${key})
    endforeach()
  endforeach()
endforeach()

execute_process(COMMAND "${BENCH}" --no-such-flag=1 RESULT_VARIABLE rc ERROR_VARIABLE err
                OUTPUT_QUIET)
if(NOT rc EQUAL 2 OR NOT err MATCHES "no-such-flag")
  message(FATAL_ERROR "a bad flag: exit ${rc} (want 2), stderr '${err}' (want the flag named)")
endif()
execute_process(COMMAND "${BENCH}" --config S2A9E4 RESULT_VARIABLE rc ERROR_VARIABLE err
                OUTPUT_QUIET)
if(NOT rc EQUAL 2 OR NOT err MATCHES "--config")
  message(FATAL_ERROR "a bad --config: exit ${rc} (want 2), stderr '${err}'")
endif()
message(STATUS "cmoe-moe-bench smoke test passed")
