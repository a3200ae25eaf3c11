#!/usr/bin/env bash
# The test command: installs missing system packages, configures, builds with all cores, and runs
# every test but the `gpu` label (GPU tests skip cleanly without a device anyway); then builds the
# tests marked TSAN (threads that talk to each other: the serving engine, expert-parallel ranks
# and their communicators, the thread pool) with ThreadSanitizer in build-tsan/ and runs them.
# Exits non-zero on any failure.
#
#   scripts/test.sh              # Release build in build/, then the TSAN tests in build-tsan/
#   CMOE_TSAN=0 scripts/test.sh  # without the ThreadSanitizer stage
#   BUILD_DIR=build-asan CMAKE_PRESET=asan scripts/test.sh   # one preset's build, no tsan stage
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD_DIR=${BUILD_DIR:-build}
JOBS=${JOBS:-$(nproc)}

scripts/install-deps.sh

if [ -n "${CMAKE_PRESET:-}" ]; then
  cmake --preset "$CMAKE_PRESET" -B "$BUILD_DIR"
else
  # Tests on explicitly: a build tree first configured by scripts/run.sh has them off.
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMOE_BUILD_TESTS=ON \
    -DCMOE_BUILD_BENCHMARKS=ON
fi
cmake --build "$BUILD_DIR" -j "$JOBS"

# The engine and kernels must not see gRPC or protobuf (architecture rule).
if grep -rlE '#include\s*[<"](grpcpp/|grpc\+\+/|.*\.pb\.h)' engine kernels common; then
  echo "test.sh: gRPC/protobuf included below the server layer" >&2
  exit 1
fi

ctest --test-dir "$BUILD_DIR" -LE gpu -j "$JOBS" --output-on-failure --timeout 900

# ThreadSanitizer: a report fails the test (exit code 66). Without CUDA: the kernels under test
# are the CPU ones, and nvcc's objects would not be instrumented anyway.
if [ "${CMOE_TSAN:-1}" != 0 ] && [ -z "${CMAKE_PRESET:-}" ] && [ "$BUILD_DIR" = build ]; then
  cmake --preset tsan -DCMOE_CUDA=OFF -DCMOE_BUILD_TESTS=ON
  cmake --build build-tsan -j "$JOBS" --target tsan_tests
  while read -r test; do
    echo "ThreadSanitizer: $test"
    (cd build-tsan/tests && timeout 900 "$test" --gtest_brief=1)
  done <build-tsan/tsan_tests.txt
fi
