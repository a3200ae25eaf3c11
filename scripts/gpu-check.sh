#!/usr/bin/env bash
# The whole GPU check in one command, on a GPU machine that has CUDA 13, the driver, PyTorch and
# compute-sanitizer but none of our Debian packages: it runs the binaries scripts/gpu-bundle.sh
# built and packed into gpu-bundle/. From the repository root (the device tool carries
# gpu-bundle):
#
#   bash gpu-bundle/scripts/gpu-check.sh "$OUT"     # or scripts/gpu-check.sh; default $OUT,
#                                                   # else ./gpu-results
#
# Steps, each under a timeout, none stopping the later ones; the phases have cumulative
# deadlines (seconds from the start, below) so the whole check ends within ~9 minutes:
#   env        nvidia-smi -q and a one-line GPU summary, OS, ldd of the binaries, tool versions
#   tests      every bin/cuda_*_test with --gtest_output=json
#   memcheck   compute-sanitizer --tool memcheck over each test binary and a small
#              cmoe-moe-bench run (--error-exitcode, error counts from its summary line)
#   racecheck  the same with --tool racecheck
#   bench      cmoe-moe-bench at the Llama-2-7B shape (d 4096, d_h 11008): dense, S2A2E16 and
#              S3A3E8, batches 1..2048, uniform and skewed routing (--json)
#   reference  scripts/moe_reference.py (the PyTorch per-expert loop), same shapes and routings
#   summary    scripts/gpu_check_summary.py: pass/fail counts, sanitizer errors, carved/dense and
#              ours/reference ratios per batch, the docs/performance.md targets
# Writes RESULTS/summary.txt (also printed last), RESULTS/summary.json and RESULTS/results.tar.gz
# (every log, gtest JSON, sanitizer report and benchmark JSON): three files, because the device
# tool brings back at most eight.
#
# Without a GPU (a development machine) it runs what it can: the test binaries (they skip), the
# CUDA error path of cmoe-moe-bench and a tiny CPU run of it (so the summary has numbers to
# read, marked as not a measurement), and reports "no GPU"; it exits 0 unless something failed.
# Exit status: 0 when every test passed and no sanitizer error or crash was seen, 1 otherwise.
set -uo pipefail

# Cumulative phase deadlines (seconds from the start).
readonly CAP_ENV=20 CAP_TESTS=75 CAP_MEMCHECK=120 CAP_RACECHECK=75 CAP_BENCH=130 CAP_REFERENCE=90

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $SCRIPT_DIR/../MANIFEST && -d $SCRIPT_DIR/../bin ]]; then
  BUNDLE=$(cd "$SCRIPT_DIR/.." && pwd)  # running the bundle's own copy
else
  BUNDLE=${CMOE_GPU_BUNDLE:-$(cd "$SCRIPT_DIR/.." && pwd)/gpu-bundle}
fi
RESULTS=${1:-${OUT:-./gpu-results}}
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
DETAIL=$RESULTS/detail
rm -rf "$DETAIL" "$RESULTS/summary.txt" "$RESULTS/summary.json" "$RESULTS/results.tar.gz"
mkdir -p "$DETAIL"/{env,tests,sanitizer,bench}
STEPS=$DETAIL/steps.tsv
LOG=$DETAIL/check.log
T0=$(date +%s)
PLAN=0
DEADLINE=$T0
ulimit -c 0

log() { echo "gpu-check: $*" | tee -a "$LOG" >&2; }

# phase NAME CAP: the next steps share the time until T0 + (sum of caps so far).
phase() {
  PLAN=$((PLAN + $2))
  DEADLINE=$((T0 + PLAN))
  log "== $1 (deadline +${PLAN}s, now +$(($(date +%s) - T0))s)"
}

# step PHASE NAME MAX_SECONDS LOGFILE COMMAND...: runs COMMAND under a timeout (the smaller of
# MAX_SECONDS and the phase's time left), output to LOGFILE, and records a line in steps.tsv
# (phase, name, exit status or "skipped", seconds, log path relative to detail/). 124 = timeout.
step() {
  local phase=$1 name=$2 max=$3 logfile=$4
  shift 4
  local left=$((DEADLINE - $(date +%s)))
  ((left < max)) && max=$left
  if ((max < 5)); then
    printf '%s\t%s\tskipped\t0\t%s\n' "$phase" "$name" "${logfile#"$DETAIL"/}" >>"$STEPS"
    log "$name: skipped (time budget of the phase spent)"
    return 0
  fi
  local start rc
  start=$(date +%s)
  timeout -k 10 "$max" "$@" >"$logfile" 2>&1
  rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$phase" "$name" "$rc" "$(($(date +%s) - start))" \
    "${logfile#"$DETAIL"/}" >>"$STEPS"
  log "$name: exit $rc in $(($(date +%s) - start)) s"
  return 0
}

# The first directory holding SONAME among the usual CUDA places and the Python wheels' nvidia/
# folders (PyTorch's cuBLAS and NCCL live there on machines without a system NCCL).
find_lib_dir() {
  local soname=$1 dir
  local -a dirs=(/usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda/targets/x86_64-linux/lib
    /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/x86_64-linux/lib /usr/local/nvidia/lib64
    /usr/lib/x86_64-linux-gnu /usr/local/lib)
  if command -v python3 >/dev/null; then
    mapfile -t -O "${#dirs[@]}" dirs < <(timeout 20 python3 -c '
import glob, os, site, sys
roots = set(site.getsitepackages() + [site.getusersitepackages()])
roots |= {p for p in sys.path if p.endswith("-packages")}
for r in sorted(roots):
    for d in sorted(glob.glob(os.path.join(r, "nvidia", "*", "lib")) +
                    glob.glob(os.path.join(r, "nvidia", "*", "*", "lib"))):
        print(d)' 2>/dev/null)
  fi
  dirs+=(/opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib /usr/local/lib/python3*/dist-packages/nvidia/*/lib)
  for dir in "${dirs[@]}"; do
    if [[ -e $dir/$soname ]]; then
      echo "$dir"
      return 0
    fi
  done
  return 1
}

# LD_LIBRARY_PATH: the bundle's libraries first, then the machine's CUDA, cuBLAS and NCCL.
setup_libraries() {
  ORIG_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
  local path=$BUNDLE/lib:/usr/local/cuda/lib64:/usr/local/cuda/lib soname dir
  for soname in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
    if dir=$(find_lib_dir "$soname"); then
      [[ :$path: == *":$dir:"* ]] || path=$path:$dir
      log "$soname: $dir"
    elif /sbin/ldconfig -p 2>/dev/null | grep -q "[[:space:]]$soname "; then
      log "$soname: from the loader cache"
    else
      log "$soname: NOT FOUND (binaries that need it will not start)"
    fi
  done
  export LD_LIBRARY_PATH=$path${ORIG_LD_LIBRARY_PATH:+:$ORIG_LD_LIBRARY_PATH}
  # GCC 12's libstdc++ is older than most machines' own; only if the binaries do not start with
  # the machine's, take the one the bundle carries.
  local probe=$BUNDLE/bin/cmoe-moe-bench
  if [[ -x $probe ]] && "$probe" --helpshort 2>&1 | grep -q "GLIBCXX\|CXXABI\|GCC_[0-9]"; then
    export LD_LIBRARY_PATH=$BUNDLE/lib/fallback:$LD_LIBRARY_PATH
    log "the machine's libstdc++ is too old: using gpu-bundle/lib/fallback"
  fi
  log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" /usr/local/cuda/bin/compute-sanitizer \
    /usr/local/cuda/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    if [[ -n $c && -x $c ]]; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

run_env() {
  phase env $CAP_ENV
  local e=$DETAIL/env
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm)"
    grep PRETTY_NAME /etc/os-release 2>/dev/null
    echo "glibc: $(ldd --version 2>/dev/null | head -1)"
    echo "bundle: $BUNDLE"
    echo "have_gpu: $HAVE_GPU"
    echo "compute-sanitizer: ${SANITIZER:-none}"
  } >"$e/machine.txt"
  cp "$BUNDLE/MANIFEST" "$e/MANIFEST" 2>/dev/null
  if command -v nvidia-smi >/dev/null; then
    step env nvidia-smi-q 15 "$e/nvidia-smi-q.txt" nvidia-smi -q
    step env nvidia-smi 10 "$e/nvidia-smi.txt" nvidia-smi
    step env gpu-query 10 "$e/gpu.csv" nvidia-smi --format=csv \
      --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,compute_cap
  fi
  # shellcheck disable=SC2016  # $1 and $b belong to the inner shell
  step env ldd 10 "$e/ldd.txt" bash -c 'for b in "$1"/bin/*; do echo "== $b"; ldd "$b"; done' _ \
    "$BUNDLE"
  [[ -n $SANITIZER ]] && step env sanitizer-version 10 "$e/compute-sanitizer.txt" "$SANITIZER" --version
  command -v python3 >/dev/null && step env torch 15 "$e/torch.txt" \
    env LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" python3 -c \
    'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'
  return 0
}

run_tests() {
  phase tests $CAP_TESTS
  local t name
  for t in "${TESTS[@]}"; do
    name=$(basename "$t")
    step tests "$name" 60 "$DETAIL/tests/$name.log" "$t" \
      "--gtest_output=json:$DETAIL/tests/$name.json"
  done
}

# sanitize TOOL: compute-sanitizer TOOL over each test binary and a small cmoe-moe-bench run.
sanitize() {
  local tool=$1 cap=$2 t name
  phase "$tool" "$cap"
  if [[ $HAVE_GPU != 1 ]]; then
    log "$tool: skipped (no GPU)"
    return 0
  elif [[ -z $SANITIZER ]]; then
    log "$tool: skipped (no compute-sanitizer found)"
    printf '%s\t%s\tskipped\t0\t-\n' "$tool" compute-sanitizer-missing >>"$STEPS"
    return 0
  fi
  for t in "${TESTS[@]}"; do
    name=$(basename "$t")
    step "$tool" "$name" 90 "$DETAIL/sanitizer/$name.$tool.log" "$SANITIZER" --tool "$tool" \
      --error-exitcode 86 --print-limit 100 "$t" --gtest_brief=1
  done
  step "$tool" cmoe-moe-bench-small 60 "$DETAIL/sanitizer/cmoe-moe-bench.$tool.log" \
    "$SANITIZER" --tool "$tool" --error-exitcode 86 --print-limit 100 "$BENCH" --device cuda:0 \
    --dim 512 --ffn 1376 --config S2A2E16,S3A3E8 --batch 1,37 --reps 1 --warmup 0
}

run_bench() {
  phase bench $CAP_BENCH
  local routing
  for routing in uniform skewed; do
    if [[ $HAVE_GPU == 1 ]]; then
      step bench "cmoe-moe-bench-$routing" 65 "$DETAIL/bench/moe_$routing.txt" "$BENCH" \
        --device cuda:0 --dim 4096 --ffn 11008 --config dense,S2A2E16,S3A3E8 \
        --batch 1,8,32,128,256,2048 --reps 20 --warmup 3 --routing "$routing" \
        --json "$DETAIL/bench/moe_$routing.json"
    else
      # The tool itself and the summary's reading of it, on a tiny layer: not a measurement.
      step bench "cmoe-moe-bench-$routing-cpu-smoke" 30 "$DETAIL/bench/moe_$routing.txt" \
        "$BENCH" --device cpu --threads 1 --dim 256 --ffn 688 --config dense,S2A2E16,S3A3E8 \
        --batch 1,8,32 --reps 3 --warmup 1 --routing "$routing" \
        --json "$DETAIL/bench/moe_$routing.json"
    fi
  done
  if [[ $HAVE_GPU != 1 ]]; then
    step bench cmoe-moe-bench-cuda-no-gpu 20 "$DETAIL/bench/moe_cuda_no_gpu.txt" "$BENCH" \
      --device cuda:0 --dim 64 --ffn 172 --batch 1 --reps 1
  fi
}

run_reference() {
  phase reference $CAP_REFERENCE
  local routing
  if [[ $HAVE_GPU != 1 ]]; then
    log "reference: skipped (no GPU)"
    return 0
  fi
  for routing in uniform skewed; do
    step reference "moe_reference-$routing" 45 "$DETAIL/bench/ref_$routing.txt" \
      env LD_LIBRARY_PATH="$ORIG_LD_LIBRARY_PATH" PYTHONUNBUFFERED=1 python3 "$REFERENCE" \
      --dim 4096 --ffn 11008 --config S2A2E16,S3A3E8 --batch 1,8,32,128,256,2048 --reps 20 \
      --warmup 3 --routing "$routing" --json "$DETAIL/bench/ref_$routing.json"
  done
}

summarize_and_pack() {
  local rc=0
  log "== summary (+$(($(date +%s) - T0))s)"
  echo "$(($(date +%s) - T0))" >"$DETAIL/env/elapsed.txt"
  if command -v python3 >/dev/null; then
    python3 "$SUMMARY_PY" "$DETAIL" "$RESULTS/summary.json" >"$RESULTS/summary.txt" \
      2>"$DETAIL/summary.err"
    rc=$?
    if ((rc > 1)) || [[ ! -s $RESULTS/summary.txt ]]; then  # the summarizer itself broke
      { echo "gpu_check_summary.py failed (exit $rc):"; tail -5 "$DETAIL/summary.err"
        echo "steps (phase, step, exit, seconds, log):"; cat "$STEPS"; } >>"$RESULTS/summary.txt"
      rc=1
    fi
  else
    { echo "python3 missing: raw step list (phase, step, exit, seconds, log)"; cat "$STEPS"; } \
      >"$RESULTS/summary.txt"
    rc=1
  fi
  cp "$RESULTS/summary.txt" "$DETAIL/summary.txt"
  if tar -czf "$RESULTS/results.tar.gz" -C "$RESULTS" detail; then
    rm -rf "$DETAIL"
  else
    log "tar failed: the detail folder stays in $RESULTS"
  fi
  cat "$RESULTS/summary.txt"
  return "$rc"
}

main() {
  [[ -d $BUNDLE/bin ]] || {
    echo "gpu-check: error: no bundle at $BUNDLE (run scripts/gpu-bundle.sh, carry gpu-bundle)" >&2
    exit 1
  }
  HAVE_GPU=0
  if command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    HAVE_GPU=1
  fi
  SANITIZER=$(find_sanitizer || true)
  BENCH=$BUNDLE/bin/cmoe-moe-bench
  REFERENCE=$BUNDLE/scripts/moe_reference.py
  [[ -f $REFERENCE ]] || REFERENCE=$SCRIPT_DIR/moe_reference.py
  SUMMARY_PY=$BUNDLE/scripts/gpu_check_summary.py
  [[ -f $SUMMARY_PY ]] || SUMMARY_PY=$SCRIPT_DIR/gpu_check_summary.py
  mapfile -t TESTS < <(find "$BUNDLE/bin" -maxdepth 1 -name 'cuda_*_test' -type f | sort)
  printf 'phase\tstep\texit\tseconds\tlog\n' >"$STEPS"
  log "bundle $BUNDLE, results $RESULTS, ${#TESTS[@]} test binaries, GPU: $([[ $HAVE_GPU == 1 ]] && echo yes || echo 'no GPU')"
  setup_libraries
  run_env
  run_tests
  sanitize memcheck $CAP_MEMCHECK
  sanitize racecheck $CAP_RACECHECK
  run_bench
  run_reference
  summarize_and_pack
}

main "$@"
