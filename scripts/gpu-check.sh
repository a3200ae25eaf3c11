#!/usr/bin/env bash
# The whole GPU check in one command, on a GPU machine that has CUDA 13, the driver, PyTorch and
# compute-sanitizer but none of our Debian packages: it runs the binaries scripts/gpu-bundle.sh
# built and packed into gpu-bundle/. From the repository root (the device tool carries
# gpu-bundle):
#
#   bash gpu-bundle/scripts/gpu-check.sh "$OUT"        # kernels check; or scripts/gpu-check.sh;
#                                                      # default $OUT, else ./gpu-results
#   bash gpu-bundle/scripts/gpu-check.sh --e2e "$OUT"  # end to end (below): a second device call,
#                                                      # since the first fills its ~9 minutes
#
# Kernels check. Steps, each under a timeout, none stopping the later ones; the phases have
# cumulative deadlines (seconds from the start, below) so the whole check ends within ~9 minutes:
#   env        nvidia-smi -q and a one-line GPU summary, OS, ldd of the binaries, tool versions
#   tests      every bin/cuda_*_test with --gtest_output=json (the chained MoE layer a second
#              time with CMOE_CUDA_GROUPED_GEMM=tensor-core)
#   memcheck   compute-sanitizer --tool memcheck over each test binary and a small
#              cmoe-moe-bench run (--error-exitcode, error counts from its summary line)
#   racecheck  the same with --tool racecheck
#   bench      cmoe-moe-bench at the Llama-2-7B shape (d 4096, d_h 11008): dense, S2A2E16 and
#              S3A3E8, batches 1..2048, uniform and skewed routing (--json); batches 128, 256
#              and 2048 again on the tensor-core grouped GEMM (CMOE_CUDA_GROUPED_GEMM)
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
#
# End to end (--e2e), within ~10 minutes (cumulative deadlines E2E_CAP_*, below: 580 s of steps,
# then the cleanup and the summary), every step under its own timeout:
#   env        as above, plus df, free memory and the folder chosen for the checkpoints
#   tests      bin/cuda_model_test (gtest JSON): the shared models (gpu-bundle/shared, through
#              CMOE_SHARED_DIR) dense and carved, CUDA vs CPU; at the same time, in the
#              background:
#   synth      cmoe-synth --shape llama2-7b --dtype bf16 (13.5 GB) into the checkpoint folder
#   carve      cmoe-carve of it to S2A2E16 and S3A3E8, the two at once, with the smallest
#              calibration that carves: 1 sequence of 64 tokens of shared/data/tinystories_val.txt
#              (the weights are random: the carve's quality is not what is measured here)
#   decode     cmoe-bench decode --device cuda:0, dense --compare S2A2E16,S3A3E8, batches
#              1,8,32,128,256 in one run (models loaded once; a KV cache per batch; 8 prompt and
#              16 timed steps per sequence, so that batch 256's three caches (3 x 10.5 GiB) and the
#              three models (3 x 12.6 GiB) fit an 80 GB H100), one JSON line per batch; the
#              bandwidth it compares with is the GPU's device-to-device copy bandwidth (bytes read
#              + written) measured in the same run
#              then the dense model alone at batches 1, 8, 32 with CMOE_CUDA_GRAPHS=off (decode
#              steps op by op instead of one CUDA graph each), for the graphs' speed-up
#   prefill    cmoe-bench prefill --device cuda:0 --tokens 2048, dense --compare S2A2E16,S3A3E8,
#              then dense alone with CMOE_CUDA_PREFILL_ATTENTION=cuda-core (attention on the f32
#              kernel instead of the tensor-core tiles), for the tiles' speed-up
#              and dense with CMOE_CUDA_FFN_ACTIVATIONS=f32 (the FFN's gate/up and activations in
#              f32 instead of BF16), for what the BF16 intermediates give
#   expert-parallel  cmoe-bench decode of S2A2E16 alone and over --expert-parallel groups: a
#              world of one on cuda:0 (NCCL to itself: what the exchanges and their host round
#              trips cost per carved layer), and 2 ranks on cuda:0-1 where there are two GPUs;
#              batches 1 and 32 (the group loads a second copy of the model: 40 s leave no room for more)
#   cleanup    the checkpoints are deleted (also when the script is interrupted)
#   summary    the e2e figures and the GPU targets of docs/performance.md: S2A2E16 >= 1.7x dense at
#              decode batch 1, no carved model below 0.95x at any batch, dense batch 1 >= 75 % of
#              the HBM bandwidth (measured copy bandwidth; the datasheet figure is shown too),
#              prefill of 2k tokens S2A2E16 >= 1.6x
# Time and space. A Llama-2-7B checkpoint is 13.5 GB; three need 40.5 GB of the machine's 64 GB
# disk or 128 GB memory. The folder is the first of $CMOE_E2E_DIR, /dev/shm (tmpfs: no disk
# writeback, but it must leave 24 GiB of memory free), /tmp, /var/tmp and the working directory
# with room for all three; failing that, room for dense + S2A2E16 (S3A3E8 is skipped, with a
# message); failing that, the e2e falls back to the tinyllama-1.1b shape (2.2 GB each), and
# with no room even for that it skips the models with a message. Measured on the 2-core
# development machine with the tinyllama-1.1b shape (2.2 GB): cmoe-synth 4.1 s into tmpfs (most
# of it the single-threaded write), cmoe-carve 16.5 s (4 s of per-layer work on 2 threads, 9 s
# writing the carved checkpoint on one thread). Scaled to 7B (6.1x the bytes, 16 threads):
# synth ~20-30 s, each carve ~60-90 s (the write is single-threaded; the two carves run at the
# same time); loading three 7B models onto the GPU ~10-30 s per cmoe-bench run. That fits:
# prepare 95 s (tests and synth together; a slow synth may take a third of the carve phase),
# carve 165 s, decode 160 s, prefill 95 s, expert-parallel 40 s. What does
# not fit is cut by the timeouts, never the whole check: a carve that does not finish is left
# out of the benches (the dense runs alone still give the bandwidth figure), and the summary says
# which steps timed out. CMOE_E2E_SHAPE=tinyllama-1.1b forces the small shape.
# Without a GPU, --e2e runs cuda_model_test (it skips) and the same plumbing on a tiny custom
# shape on the CPU (synth, both carves, decode of every batch, prefill, and the CUDA error path
# of cmoe-bench), marked in the summary as a smoke run, not a measurement.
set -uo pipefail

# Cumulative phase deadlines (seconds from the start).
readonly CAP_ENV=20 CAP_TESTS=75 CAP_MEMCHECK=120 CAP_RACECHECK=75 CAP_BENCH=170 CAP_REFERENCE=90
readonly E2E_CAP_ENV=15 E2E_CAP_PREPARE=95 E2E_CAP_CARVE=165 E2E_CAP_DECODE=160 E2E_CAP_PREFILL=105
readonly E2E_CAP_EP=40

MODE=kernels
RESULTS_ARG=
for arg in "$@"; do
  case $arg in
    --e2e) MODE=e2e ;;
    -h | --help) sed -n '2,/^set -uo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu-check: error: unknown option '$arg' (--e2e, --help)" >&2; exit 2 ;;
    *) [[ -z $RESULTS_ARG ]] || { echo "gpu-check: error: more than one results folder" >&2; exit 2; }
       RESULTS_ARG=$arg ;;
  esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ -f $SCRIPT_DIR/../MANIFEST && -d $SCRIPT_DIR/../bin ]]; then
  BUNDLE=$(cd "$SCRIPT_DIR/.." && pwd)  # running the bundle's own copy
else
  BUNDLE=${CMOE_GPU_BUNDLE:-$(cd "$SCRIPT_DIR/.." && pwd)/gpu-bundle}
fi
RESULTS=${RESULTS_ARG:-${OUT:-./gpu-results}}
mkdir -p "$RESULTS" && RESULTS=$(cd "$RESULTS" && pwd)
DETAIL=$RESULTS/detail
rm -rf "$DETAIL" "$RESULTS/summary.txt" "$RESULTS/summary.json" "$RESULTS/results.tar.gz"
mkdir -p "$DETAIL"/{env,tests,sanitizer,bench,e2e}
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

# json_step PHASE NAME MAX_SECONDS LOGFILE JSONFILE COMMAND...: step, with the command's stdout
# (its JSON) into JSONFILE and its stderr (progress) into LOGFILE.
json_step() {
  local phase=$1 name=$2 max=$3 logfile=$4 json=$5
  shift 5
  # shellcheck disable=SC2016  # $1 and $@ belong to the inner shell
  step "$phase" "$name" "$max" "$logfile" bash -c 'o=$1; shift; exec "$@" >"$o"' _ "$json" "$@"
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
  if [[ $MODE == e2e ]]; then phase env $E2E_CAP_ENV; else phase env $CAP_ENV; fi
  local e=$DETAIL/env
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -srm)"
    grep PRETTY_NAME /etc/os-release 2>/dev/null
    echo "glibc: $(ldd --version 2>/dev/null | head -1)"
    echo "bundle: $BUNDLE"
    echo "have_gpu: $HAVE_GPU"
    echo "compute-sanitizer: ${SANITIZER:-none}"
    echo "mode: $MODE"
    echo "cpus: $(nproc 2>/dev/null || echo '?')"
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
  if [[ $MODE == e2e ]]; then
    step env df 10 "$e/df.txt" df -hT
    step env free 5 "$e/free.txt" free -g
  fi
  [[ -n $SANITIZER && $MODE == kernels ]] && step env sanitizer-version 10 "$e/compute-sanitizer.txt" "$SANITIZER" --version
  [[ $MODE == kernels ]] && command -v python3 >/dev/null && step env torch 15 "$e/torch.txt" \
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
    # The chained MoE layer once more on the tensor-core grouped GEMM (the backend's other path
    # above the GEMV; its own op tests ran above).
    if [[ $name == cuda_moe_ops_test ]]; then
      step tests "$name-tensor-core" 30 "$DETAIL/tests/$name-tensor-core.log" \
        env CMOE_CUDA_GROUPED_GEMM=tensor-core "$t" --gtest_filter='CudaMoeLayer.*' \
        "--gtest_output=json:$DETAIL/tests/$name-tensor-core.json"
    fi
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
  # Where the grouped GEMM runs (>= 8 rows per expert): cuBLAS per expert (above) against the
  # tensor-core kernel without a host sync, to pick the default.
  if [[ $HAVE_GPU == 1 ]]; then
    step bench cmoe-moe-bench-uniform_tensor_core 40 "$DETAIL/bench/moe_uniform_tensor_core.txt" \
      env CMOE_CUDA_GROUPED_GEMM=tensor-core "$BENCH" --device cuda:0 --dim 4096 --ffn 11008 \
      --config dense,S2A2E16,S3A3E8 --batch 128,256,2048 --reps 20 --warmup 3 --routing uniform \
      --json "$DETAIL/bench/moe_uniform_tensor_core.json"
  fi
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

# ---------------------------------------------------------------------------------------------
# --e2e

readonly GIB=1073741824
# Tests run by --e2e only (the kernels check's time is full): the engine end to end.
readonly E2E_TESTS='cuda_model_test'
readonly SMOKE_SHAPE='custom(hidden=256,ffn=688,layers=4,heads=8,kv_heads=4,vocab=1024,ctx=512)'

# Bytes of one bf16 checkpoint of SHAPE (weights; the carved ones are the same size).
checkpoint_bytes() {
  case $1 in
    llama2-7b) echo 13500000000 ;;
    tinyllama-1.1b) echo 2200000000 ;;
    *) echo 50000000 ;;
  esac
}

free_bytes() { df -PB1 "$1" 2>/dev/null | awk 'NR == 2 { print $4 }'; }
is_tmpfs() { [[ $(df -PT "$1" 2>/dev/null | awk 'NR == 2 { print $2 }') == tmpfs ]]; }
mem_available() { awk '/^MemAvailable:/ { print $2 * 1024 }' /proc/meminfo 2>/dev/null || echo 0; }

# pick_dir NEED: the first candidate folder with NEED bytes free (and 1 GiB to spare); a tmpfs
# must also leave 24 GiB of memory available for the processes.
pick_dir() {
  local need=$1 dir free
  local -a candidates=(/dev/shm /tmp /var/tmp "$PWD")
  [[ -n ${CMOE_E2E_DIR:-} ]] && candidates=("$CMOE_E2E_DIR")
  for dir in "${candidates[@]}"; do
    [[ -d $dir && -w $dir ]] || continue
    free=$(free_bytes "$dir")
    [[ $free =~ ^[0-9]+$ ]] || continue
    ((free >= need + GIB)) || continue
    if is_tmpfs "$dir" && [[ -z ${CMOE_E2E_DIR:-} ]]; then
      (($(mem_available) - need >= 24 * GIB)) || continue
    fi
    echo "$dir"
    return 0
  done
  return 1
}

# Sets SHAPE, CONFIGS (the carves to make) and WORK (a fresh folder for the checkpoints), or
# SHAPE empty when no folder has room for even a small model. Writes detail/e2e/plan.txt.
plan_e2e() {
  local plan=$DETAIL/e2e/plan.txt shape per dir
  SHAPE='' WORK=''
  CONFIGS=()
  if [[ $HAVE_GPU != 1 ]]; then
    SHAPE=$SMOKE_SHAPE
    CONFIGS=(S2A2E16 S3A3E8)
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/cmoe-e2e.XXXXXX")
    echo "no GPU: a CPU smoke run of the e2e plumbing on $SHAPE in $WORK (not a measurement)" \
      | tee -a "$plan" >>"$LOG"
    return 0
  fi
  local -a shapes=("${CMOE_E2E_SHAPE:-llama2-7b}")
  [[ ${shapes[0]} != tinyllama-1.1b ]] && shapes+=(tinyllama-1.1b)
  for shape in "${shapes[@]}"; do
    per=$(checkpoint_bytes "$shape")
    if dir=$(pick_dir $((3 * per))); then
      CONFIGS=(S2A2E16 S3A3E8)
    elif dir=$(pick_dir $((2 * per))); then
      CONFIGS=(S2A2E16)
      log "e2e: SKIPPED S3A3E8: no folder has room for three $shape checkpoints ($((3 * per / 1000000000)) GB); dense and S2A2E16 only"
      echo "skipped: S3A3E8 (no room for three $shape checkpoints)" >>"$plan"
    else
      log "e2e: SKIPPED the $shape shape: no folder has $((2 * per / 1000000000)) GB free (see detail/env/df.txt)"
      echo "skipped: shape $shape (no room for two checkpoints)" >>"$plan"
      continue
    fi
    SHAPE=$shape
    WORK=$(mktemp -d "$dir/cmoe-e2e.XXXXXX") || { SHAPE=; continue; }
    {
      echo "shape: $SHAPE"
      echo "configs: ${CONFIGS[*]}"
      echo "folder: $WORK ($(is_tmpfs "$dir" && echo tmpfs || echo disk), $(($(free_bytes "$dir") / 1000000000)) GB free before)"
    } >>"$plan"
    log "e2e: $SHAPE (${CONFIGS[*]}) in $WORK"
    return 0
  done
  log "e2e: SKIPPED every model: no folder has room (see detail/env/df.txt)"
  echo "skipped: every model (no room)" >>"$plan"
  return 0
}

cleanup_e2e() {
  if [[ -n ${WORK:-} && -d $WORK ]]; then
    rm -rf "$WORK"
    log "e2e: deleted the checkpoints in $WORK"
  fi
  WORK=
}

# The finished checkpoints among dense and CONFIGS ("dense S2A2E16 ..."): a carve writes its
# folder completely or not at all.
e2e_models() {
  local c
  [[ -f $WORK/dense/config.json ]] || return 0
  echo dense
  for c in "${CONFIGS[@]}"; do
    [[ -f $WORK/$c/config.json ]] && echo "$c"
  done
  return 0
}

run_e2e() {
  local e=$DETAIL/e2e t c synth_pid=
  plan_e2e
  # The checkpoints go however the script ends (a signal first becomes an exit).
  trap cleanup_e2e EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  local threads
  threads=$(nproc 2>/dev/null || echo 2)
  phase prepare $E2E_CAP_PREPARE
  if [[ -n $SHAPE ]]; then
    # In the background, while the test runs: the synthetic checkpoint. On a slow disk it may
    # run into the carve phase's first third (the carves then have that much less time).
    (
      DEADLINE=$((DEADLINE + E2E_CAP_CARVE / 3))
      step synth cmoe-synth $((E2E_CAP_PREPARE + E2E_CAP_CARVE / 3)) "$e/synth.log" \
        "$BIN/cmoe-synth" --shape "$SHAPE" --dtype bf16 --seed 1 --threads "$threads" \
        --out "$WORK/dense"
    ) &
    synth_pid=$!
  fi
  for t in "${E2E_TEST_BINS[@]}"; do
    step tests "$(basename "$t")" 75 "$DETAIL/tests/$(basename "$t").log" "$t" \
      "--gtest_output=json:$DETAIL/tests/$(basename "$t").json"
  done
  [[ -n $synth_pid ]] && wait "$synth_pid"
  [[ -z $SHAPE ]] && return 0
  phase carve $E2E_CAP_CARVE
  if [[ ! -f $WORK/dense/config.json ]]; then
    log "e2e: no synthetic checkpoint: carves and benches skipped"
    return 0
  fi
  # The carves at the same time (writing a checkpoint is single-threaded), the cores shared.
  local carve_threads=$(((threads + ${#CONFIGS[@]} - 1) / ${#CONFIGS[@]}))
  local -a pids=()
  for c in "${CONFIGS[@]}"; do
    json_step carve "cmoe-carve-$c" "$E2E_CAP_CARVE" "$e/carve_$c.log" "$e/carve_$c.json" \
      "$BIN/cmoe-carve" --model "$WORK/dense" --calib "$SHARED/data/tinystories_val.txt" \
      --calib-seqs 1 --calib-len 64 --config "$c" --out "$WORK/$c" --threads "$carve_threads" \
      --json &
    pids+=($!)
  done
  ((${#pids[@]} > 0)) && wait "${pids[@]}"
  local -a models
  mapfile -t models < <(e2e_models)
  local compare=
  for c in "${models[@]:1}"; do compare+=${compare:+,}$WORK/$c; done
  echo "benchmarked: ${models[*]}" >>"$e/plan.txt"
  log "e2e: benchmarking ${models[*]}"
  local -a common=(--model "$WORK/dense")
  [[ -n $compare ]] && common+=(--compare "$compare")
  phase decode $E2E_CAP_DECODE
  if [[ $HAVE_GPU == 1 ]]; then
    json_step decode cmoe-bench-decode "$E2E_CAP_DECODE" "$e/decode.log" "$e/decode.jsonl" \
      "$BIN/cmoe-bench" decode --device cuda:0 "${common[@]}" --batch 1,8,32,128,256 \
      --prompt 8 --tokens 16 --json
    # The same dense decode op by op (CUDA graphs off): what the step graphs are worth.
    json_step decode cmoe-bench-decode-no-graphs 45 "$e/decode_no_graphs.log" \
      "$e/decode_no_graphs.jsonl" env CMOE_CUDA_GRAPHS=off "$BIN/cmoe-bench" decode \
      --device cuda:0 --model "$WORK/dense" --batch 1,8,32 --prompt 8 --tokens 16 --json
  else
    json_step decode cmoe-bench-decode-cpu-smoke 60 "$e/decode.log" "$e/decode.jsonl" \
      "$BIN/cmoe-bench" decode --device cpu --threads 2 "${common[@]}" --batch 1,8,32,128,256 \
      --prompt 8 --tokens 4 --bandwidth-mib 64 --json
    step decode cmoe-bench-cuda-no-gpu 20 "$e/decode_cuda_no_gpu.log" "$BIN/cmoe-bench" decode \
      --device cuda:0 --model "$WORK/dense" --batch 1 --tokens 2
  fi
  phase prefill $E2E_CAP_PREFILL
  if [[ $HAVE_GPU == 1 ]]; then
    json_step prefill cmoe-bench-prefill "$E2E_CAP_PREFILL" "$e/prefill.log" "$e/prefill.json" \
      "$BIN/cmoe-bench" prefill --device cuda:0 "${common[@]}" --tokens 2048 --repeats 5 --json
    # The dense prefill again with attention on the f32 kernel: what the tensor-core tiles give.
    json_step prefill cmoe-bench-prefill-cuda-core-attention 30 "$e/prefill_cuda_core.log" \
      "$e/prefill_cuda_core.json" env CMOE_CUDA_PREFILL_ATTENTION=cuda-core "$BIN/cmoe-bench" \
      prefill --device cuda:0 --model "$WORK/dense" --tokens 2048 --repeats 3 --json
    # The dense prefill again with the FFN's intermediates in f32: what the BF16 ones give.
    json_step prefill cmoe-bench-prefill-f32-ffn 30 "$e/prefill_f32_ffn.log" \
      "$e/prefill_f32_ffn.json" env CMOE_CUDA_FFN_ACTIVATIONS=f32 "$BIN/cmoe-bench" prefill \
      --device cuda:0 --model "$WORK/dense" --tokens 2048 --repeats 3 --json
  else
    json_step prefill cmoe-bench-prefill-cpu-smoke 60 "$e/prefill.log" "$e/prefill.json" \
      "$BIN/cmoe-bench" prefill --device cpu --threads 2 "${common[@]}" --tokens 256 \
      --repeats 2 --json
  fi
  # S2A2E16 on one GPU and over expert-parallel groups (a world of one: the exchanges' own cost;
  # one rank per GPU up to 2 where the machine has them), in one run.
  phase expert-parallel $E2E_CAP_EP
  if [[ -f $WORK/S2A2E16/config.json ]]; then
    if [[ $HAVE_GPU == 1 ]]; then
      local worlds=1 gpus
      gpus=$(timeout 20 nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
      ((gpus >= 2)) && worlds=1,2
      json_step expert-parallel cmoe-bench-decode-expert-parallel "$E2E_CAP_EP" \
        "$e/expert_parallel.log" "$e/expert_parallel.jsonl" "$BIN/cmoe-bench" decode \
        --device cuda:0 --model "$WORK/S2A2E16" --expert-parallel "$worlds" --batch 1,32 \
        --prompt 8 --tokens 16 --json
    else
      json_step expert-parallel cmoe-bench-decode-expert-parallel-cpu-smoke 40 \
        "$e/expert_parallel.log" "$e/expert_parallel.jsonl" "$BIN/cmoe-bench" decode \
        --device cpu --threads 2 --model "$WORK/S2A2E16" --expert-parallel 1,2 --batch 1,8 \
        --prompt 8 --tokens 4 --bandwidth-mib 64 --json
    fi
  fi
  cleanup_e2e
  df -hT >"$e/df_after.txt" 2>&1
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
  BIN=$BUNDLE/bin
  # The shared models and data the tests and the e2e read: the bundle's copy (../shared is not
  # carried to the GPU machine); a CMOE_SHARED_DIR already set wins.
  SHARED=${CMOE_SHARED_DIR:-$BUNDLE/shared}
  [[ -d $SHARED ]] || SHARED=$(cd "$SCRIPT_DIR/../.." && pwd)/shared
  export CMOE_SHARED_DIR=$SHARED
  local -a all_tests
  mapfile -t all_tests < <(find "$BUNDLE/bin" -maxdepth 1 -name 'cuda_*_test' \
    ! -name 'cuda_emu_*' -type f | sort)
  TESTS=() E2E_TEST_BINS=()
  local t
  for t in "${all_tests[@]}"; do
    if [[ " $E2E_TESTS " == *" $(basename "$t") "* ]]; then E2E_TEST_BINS+=("$t"); else TESTS+=("$t"); fi
  done
  printf 'phase\tstep\texit\tseconds\tlog\n' >"$STEPS"
  if [[ $MODE == e2e ]]; then
    log "e2e: bundle $BUNDLE, results $RESULTS, shared data $SHARED, GPU: $([[ $HAVE_GPU == 1 ]] && echo yes || echo 'no GPU')"
  else
    log "bundle $BUNDLE, results $RESULTS, ${#TESTS[@]} test binaries, GPU: $([[ $HAVE_GPU == 1 ]] && echo yes || echo 'no GPU')"
  fi
  setup_libraries
  if [[ $MODE == e2e ]]; then
    local tool
    for tool in cmoe-synth cmoe-carve cmoe-bench; do
      [[ -x $BIN/$tool ]] || log "e2e: $tool is not in the bundle (rebuild it with scripts/gpu-bundle.sh)"
    done
    ((${#E2E_TEST_BINS[@]} > 0)) || log "e2e: cuda_model_test is not in the bundle"
    [[ -f $SHARED/data/tinystories_val.txt ]] || log "e2e: no $SHARED/data/tinystories_val.txt"
    run_env
    run_e2e
  else
    run_env
    run_tests
    sanitize memcheck $CAP_MEMCHECK
    sanitize racecheck $CAP_RACECHECK
    run_bench
    run_reference
  fi
  summarize_and_pack
}

main "$@"
