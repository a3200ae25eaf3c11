#!/usr/bin/env bash
# Builds the GPU binaries HERE (a CPU machine with CUDA, Abseil, GoogleTest...) and packs them
# with the shared libraries a GPU machine lacks into gpu-bundle/, for scripts/gpu-check.sh to run
# there (the GPU machine has CUDA 13, the driver and PyTorch, but none of our Debian packages).
#
#   scripts/gpu-bundle.sh                 # configure + build build-gpu, then write gpu-bundle/
#   scripts/gpu-bundle.sh --no-build      # pack what build-gpu already holds
#   scripts/gpu-bundle.sh --allow-partial # a gpu test that does not build is left out (listed
#                                         # in MANIFEST as not_built) instead of failing
#
# gpu-bundle/
#   bin/       every gpu GoogleTest binary (the build's targets named cuda_*_test, all labelled
#              gpu: tests/kernels/cuda/*_test.cc and tests/engine/cuda_model_test.cc) and the
#              tools the check runs: cmoe-moe-bench, cmoe-bench, cmoe-synth, cmoe-carve; with
#              RUNPATH $ORIGIN/../lib first
#   lib/       the shared libraries they need per ldd, except those of the base system and of
#              the GPU machine's CUDA install (libc, libm, libdl, librt, libpthread, ld-linux,
#              libgcc_s, libstdc++, linux-vdso, libcuda, libcublas, libcublasLt, libcudart,
#              libnccl). Our own libraries are among them: the build uses BUILD_SHARED_LIBS=ON so
#              that libcmoe_kernels.so, whose CUDA fatbin for sm_80 + sm_90 is ~14 MB, ships once
#              instead of inside every binary (6 static binaries made 94 MB, over the device
#              tool's 64 MiB working tree).
#              Binaries and our libraries are stripped (--strip-unneeded): the kernels keep their
#              names and -lineinfo inside the fatbin and our libraries their exported symbols, so
#              compute-sanitizer reports still name kernels, source lines and host functions.
#   lib/fallback/  this machine's libstdc++ and libgcc_s, used by gpu-check.sh only when the GPU
#              machine's are too old for the binaries (GCC 12's are older than most, so rarely)
#   scripts/   gpu-check.sh, gpu_check_summary.py, moe_reference.py
#   shared/    what the gpu tests and the e2e check read from ../shared, which the device tool
#              does not carry: models/{stories260K,tinystories-656k,babyllama-tok105} and
#              data/tinystories_val.txt (~8 MB); gpu-check.sh points CMOE_SHARED_DIR here.
#              Copied into this ignored folder only, never into the repository.
#   MANIFEST   git revision, build settings, and every file with its size
#
# Environment: BUILD_DIR (default build-gpu), BUNDLE_DIR (default gpu-bundle), CUDA_ARCHS
# (default "80;90"), JOBS (ninja -j, default: ninja's choice), SHARED_DIR (default ../shared
# beside the repository).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-gpu}
BUNDLE_DIR=${BUNDLE_DIR:-$ROOT/gpu-bundle}
CUDA_ARCHS=${CUDA_ARCHS:-80;90}
SHARED_DIR=${SHARED_DIR:-$ROOT/../shared}
SHARED_MODELS=(stories260K tinystories-656k babyllama-tok105)
SHARED_DATA=(tinystories_val.txt)
# The tools gpu-check.sh runs (bin/ of the build); cmoe-moe-bench is required, the others are
# needed by the e2e mode.
TOOLS=(cmoe-moe-bench cmoe-bench cmoe-synth cmoe-carve)
MAX_BUNDLE_MIB=60
BUILD=1
ALLOW_PARTIAL=0
for arg in "$@"; do
  case $arg in
    --no-build) BUILD=0 ;;
    --allow-partial) ALLOW_PARTIAL=1 ;;
    *) echo "gpu-bundle.sh: error: unknown argument '$arg' (--no-build, --allow-partial)" >&2; exit 2 ;;
  esac
done
NOT_BUILT=()
FAILED_TARGETS=()

# Libraries the GPU machine provides itself (base system and its CUDA install).
SYSTEM_LIBS='^(libc|libm|libdl|librt|libpthread|ld-linux[^.]*|libgcc_s|libstdc\+\+|linux-vdso|libcuda|libcublas|libcublasLt|libcudart|libnccl)\.so'

die() { echo "gpu-bundle.sh: error: $*" >&2; exit 1; }

# The gpu test targets: every target of the build named cuda_*_test (tests/CMakeLists.txt names
# the gpu-labelled tests so: cuda_<file> for tests/kernels/cuda/*_test.cc, and cuda_model_test)
# but the CPU emulation's cuda_emu_* (they run in CI; the bundle is configured without them).
# A tests/kernels/cuda/*_test.cc without its target is reported (the build predates it).
gpu_test_targets() {
  local src name all
  all=$(ninja -C "$BUILD_DIR" -t targets all)
  sed -n 's/^\(cuda_[A-Za-z0-9_]*_test\): phony$/\1/p' <<<"$all" | grep -v '^cuda_emu_' | sort -u
  for src in "$ROOT"/tests/kernels/cuda/*_test.cc; do
    [[ -e $src ]] || continue
    name=cuda_$(basename "$src" .cc)
    grep -q "^$name: phony" <<<"$all" ||
      echo "gpu-bundle.sh: warning: no target $name in $BUILD_DIR (reconfigure?)" >&2
  done
  return 0
}

configure_and_build() {
  command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]] || die "nvcc not found"
  mkdir -p "$BUILD_DIR"
  # $ORIGIN is for the dynamic loader, not the shell.
  # shellcheck disable=SC2016
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMOE_CUDA=ON \
    "-DCMAKE_CUDA_ARCHITECTURES=$CUDA_ARCHS" -DCMOE_BUILD_TESTS=ON -DCMOE_BUILD_BENCHMARKS=OFF \
    -DCMOE_CUDA_EMULATION=OFF \
    -DBUILD_SHARED_LIBS=ON '-DCMAKE_BUILD_RPATH=$ORIGIN/../lib' \
    >"$BUILD_DIR/gpu-bundle-configure.log" 2>&1 ||
    { tail -30 "$BUILD_DIR/gpu-bundle-configure.log"; die "cmake failed"; }
  local target
  FAILED_TARGETS=()
  # One target at a time: a gpu test that does not compile (work in progress) fails alone and
  # is known by name; the shared libraries are built once, by the first.
  for target in "${TOOLS[@]}" $(gpu_test_targets); do
    echo "gpu-bundle.sh: building $target in $BUILD_DIR"
    ninja -C "$BUILD_DIR" ${JOBS:+-j "$JOBS"} "$target" || FAILED_TARGETS+=("$target")
  done
}

# The full path of every binary to ship; a target that failed to build or is missing is
# printed as "NOT_BUILT name" (an older binary of a failed target is never shipped).
binaries() {
  local name path
  for name in "${TOOLS[@]}" $(gpu_test_targets); do
    path=$BUILD_DIR/tests/$name
    [[ " ${TOOLS[*]} " == *" $name "* ]] && path=$BUILD_DIR/bin/$name
    if [[ -x $path && " ${FAILED_TARGETS[*]} " != *" $name "* ]]; then
      echo "$path"
    else
      echo "gpu-bundle.sh: $name is not built" >&2
      echo "NOT_BUILT $name"
    fi
  done
}

# Copies every non-system library the binaries load (ldd lists the transitive ones) into lib/.
copy_libraries() {
  local bin lib path
  for bin in "$@"; do
    ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }'
  done | sort -u | while read -r lib path; do
    if [[ $lib =~ $SYSTEM_LIBS ]]; then
      continue
    fi
    cp -L "$path" "$BUNDLE_DIR/lib/$lib"
  done
  local missing
  missing=$(ldd "$@" | grep 'not found' || true)
  [[ -z $missing ]] || die "unresolved libraries: $missing"
  local fallback
  for fallback in libstdc++.so.6 libgcc_s.so.1; do
    path=$(ldd "$1" | awk -v l="$fallback" '$1 == l { print $3 }')
    [[ -n $path ]] && cp -L "$path" "$BUNDLE_DIR/lib/fallback/$fallback"
  done
  return 0
}

# Proves lib/ is complete: with only lib/ on the search path, every library that is not the
# GPU machine's own must resolve inside the bundle.
verify_libraries() {
  local bin bad
  for bin in "$BUNDLE_DIR"/bin/*; do
    bad=$(env -i LD_LIBRARY_PATH="$BUNDLE_DIR/lib" ldd "$bin" |
      awk '$2 == "=>" { print $1, $3 }' |
      while read -r lib path; do
        [[ $lib =~ $SYSTEM_LIBS ]] && continue
        [[ $path == "$BUNDLE_DIR/lib/"* ]] || echo "$lib => $path"
      done)
    [[ -z $bad ]] || die "$(basename "$bin") loads libraries from outside the bundle: $bad"
  done
}

# The shared models and data the gpu tests and the e2e check read (../shared is not carried to
# the GPU machine), into the bundle's shared/ (made writable, so that rm -rf works).
copy_shared() {
  local name
  mkdir -p "$BUNDLE_DIR/shared/models" "$BUNDLE_DIR/shared/data"
  for name in "${SHARED_MODELS[@]}"; do
    [[ -d $SHARED_DIR/models/$name ]] || die "missing $SHARED_DIR/models/$name (SHARED_DIR?)"
    cp -r --no-preserve=mode "$SHARED_DIR/models/$name" "$BUNDLE_DIR/shared/models/"
  done
  for name in "${SHARED_DATA[@]}"; do
    [[ -f $SHARED_DIR/data/$name ]] || die "missing $SHARED_DIR/data/$name (SHARED_DIR?)"
    cp --no-preserve=mode "$SHARED_DIR/data/$name" "$BUNDLE_DIR/shared/data/"
  done
  chmod -R u+w "$BUNDLE_DIR/shared"
}

write_manifest() {
  local rev dirty
  rev=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
  dirty=$(git -C "$ROOT" status --porcelain 2>/dev/null | wc -l)
  {
    echo "cmoe gpu-bundle"
    echo "git_revision: $rev"
    echo "git_uncommitted_paths: $dirty"
    echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
    echo "cuda: $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo '?')"
    echo "cuda_architectures: $CUDA_ARCHS"
    echo "not_built: ${NOT_BUILT[*]:-none}"
    echo "shared: models ${SHARED_MODELS[*]}; data ${SHARED_DATA[*]} (from $SHARED_DIR)"
    echo "build_type: Release"
    echo "needs_from_machine: libcuda.so.1 (driver), libcublas.so.13, libcublasLt.so.13, libnccl.so.2, glibc >= $(ldd --version | head -1 | grep -o '[0-9.]*$')"
    echo "files (bytes path):"
    (cd "$BUNDLE_DIR" && find . -type f ! -name MANIFEST -printf '%s %P\n' | sort -k2)
  } >"$BUNDLE_DIR/MANIFEST"
}

main() {
  [[ $BUILD == 1 ]] && configure_and_build
  local line
  BINS=()
  while read -r line; do
    if [[ $line == "NOT_BUILT "* ]]; then NOT_BUILT+=("${line#NOT_BUILT }"); else BINS+=("$line"); fi
  done < <(binaries)
  if ((${#NOT_BUILT[@]} > 0)); then
    [[ $ALLOW_PARTIAL == 1 && " ${NOT_BUILT[*]} " != *" cmoe-moe-bench "* ]] ||
      die "not built: ${NOT_BUILT[*]} (fix the build, or --allow-partial to leave gpu tests out)"
    echo "gpu-bundle.sh: warning: leaving out ${NOT_BUILT[*]} (--allow-partial)" >&2
  fi
  [[ -d $BUNDLE_DIR ]] && chmod -R u+w "$BUNDLE_DIR"
  rm -rf "$BUNDLE_DIR"
  mkdir -p "$BUNDLE_DIR"/{bin,lib/fallback,scripts}
  copy_libraries "${BINS[@]}"
  local bin
  for bin in "${BINS[@]}"; do
    cp "$bin" "$BUNDLE_DIR/bin/"
  done
  strip --strip-unneeded "$BUNDLE_DIR"/bin/* "$BUNDLE_DIR"/lib/libcmoe_*
  cp "$ROOT"/scripts/{gpu-check.sh,gpu_check_summary.py,moe_reference.py} "$BUNDLE_DIR/scripts/"
  copy_shared
  verify_libraries
  write_manifest
  local bytes mib
  bytes=$(du -sb "$BUNDLE_DIR" | cut -f1)
  mib=$(( (bytes + 1048575) / 1048576 ))
  echo "gpu-bundle.sh: $BUNDLE_DIR: ${#BINS[@]} binaries, $(find "$BUNDLE_DIR/lib" -maxdepth 1 -type f | wc -l) libraries, shared data $(du -sb "$BUNDLE_DIR/shared" | cut -f1) bytes; $bytes bytes in all (~$mib MiB)"
  ((mib < MAX_BUNDLE_MIB)) || die "the bundle is $mib MiB, over the $MAX_BUNDLE_MIB MiB limit"
  echo "gpu-bundle.sh: on the GPU machine, from the repository root: bash gpu-bundle/scripts/gpu-check.sh \"\$OUT\""
  echo "gpu-bundle.sh: and in a second call (end to end, 7B-shaped): bash gpu-bundle/scripts/gpu-check.sh --e2e \"\$OUT\""
}

main "$@"
