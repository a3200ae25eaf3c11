#!/usr/bin/env bash
# Builds the Dockerfile and runs the image where no Docker engine runs: buildah from Debian
# (chroot isolation, vfs storage, as root), with the debian:12 and debian:12-slim base images
# made by debootstrap from the Debian archive, so no registry is needed. Then, as `docker run`
# would, it starts the image's ENTRYPOINT as the image's USER with a shared model mounted at
# /models/model, runs the image's HEALTHCHECK command until it passes, generates text through
# the server, and stops it with SIGTERM (it must drain and exit 0).
#
#   scripts/docker-check.sh [--cuda] [OUT_DIR]    # default OUT_DIR: /tmp/cmoe-docker-check
#   CMOE_DOCKER_REUSE=1 scripts/docker-check.sh   # run the image built last time again
#
# --cuda builds the CUDA variant (CMOE_CUDA=ON) on stand-ins for NVIDIA's images, which no
# registry here serves: the devel base is debian:12 plus this machine's /usr/local/cuda, the
# runtime base debian:12 plus its cuBLAS and NCCL libraries. It checks the image carries the CUDA
# plugin, that the plugin's libraries resolve, and that `--device cuda` without a GPU is a clear
# error, then serves on the CPU as above. (Not the real NVIDIA images: their Ubuntu package names
# are not checked.)
#
# Writes OUT_DIR/summary.txt (also printed) and the logs. Slow (a full Release build inside the
# image: ~20-40 minutes on 2 cores) and heavy (vfs storage copies every layer: ~10 GB under
# /var/lib/containers), so it is a manual check, not part of scripts/test.sh. Installs buildah and
# debootstrap when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CUDA=0
if [ "${1:-}" = --cuda ]; then
  CUDA=1
  shift
fi
OUT="${1:-/tmp/cmoe-docker-check}"
WORK="${CMOE_DOCKER_WORK:-/var/tmp/cmoe-docker}"
MODEL="${CMOE_DOCKER_MODEL:-$ROOT/../shared/models/tinystories-656k}"
IMAGE="localhost/cmoe-serve:check"
BUILD_ARGS=()
if [ "$CUDA" = 1 ]; then
  IMAGE="localhost/cmoe-serve:check-cuda"
  BUILD_ARGS=(--build-arg CMOE_CUDA=ON --build-arg BUILD_IMAGE=localhost/cmoe-cuda-devel:check
              --build-arg RUNTIME_IMAGE=localhost/cmoe-cuda-runtime:check)
fi
GRPC_PORT="${CMOE_DOCKER_PORT:-50051}"
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot

mkdir -p "$OUT" "$WORK"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (buildah with chroot isolation and vfs storage)"
[ -f "$MODEL/config.json" ] || fail "no model at $MODEL (set CMOE_DOCKER_MODEL)"
missing=()
command -v buildah >/dev/null || missing+=(buildah)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# --- base images: debootstrap (minbase) committed as docker.io/library/debian:12 and :12-slim ---
if ! buildah images --format '{{.Name}}:{{.Tag}}' | grep -qx 'docker.io/library/debian:12'; then
  rootfs="$WORK/rootfs-bookworm"
  if [ ! -x "$rootfs/usr/bin/apt-get" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian \
      > "$OUT/debootstrap.log" 2>&1 || fail "debootstrap (see $OUT/debootstrap.log)"
  fi
  # What the official image's sources list has, and no cached package lists.
  cat > "$rootfs/etc/apt/sources.list" <<'EOF'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$rootfs/" / > /dev/null
  buildah config --cmd bash \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$ctr"
  buildah commit --quiet "$ctr" docker.io/library/debian:12 > /dev/null
  buildah tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  buildah rm "$ctr" > /dev/null
fi
images() { buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep "$1" | tr -s ' \n' ' '; }
say "base images: $(images library/debian)"

# --- CUDA stand-ins: debian:12 + this machine's CUDA toolkit / cuBLAS ----------------------------
if [ "$CUDA" = 1 ]; then
  cuda_dir=$(readlink -f /usr/local/cuda)
  [ -x "$cuda_dir/bin/nvcc" ] || fail "--cuda needs a CUDA toolkit at /usr/local/cuda"
  if ! buildah images --quiet localhost/cmoe-cuda-devel:check > /dev/null 2>&1; then
    ctr=$(buildah from --pull-never docker.io/library/debian:12)
    buildah copy --quiet "$ctr" "$cuda_dir" /usr/local/cuda > /dev/null
    buildah config \
      --env PATH=/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --env CUDA_HOME=/usr/local/cuda "$ctr"
    buildah commit --quiet "$ctr" localhost/cmoe-cuda-devel:check > /dev/null
    buildah rm "$ctr" > /dev/null
  fi
  if ! buildah images --quiet localhost/cmoe-cuda-runtime:check > /dev/null 2>&1; then
    ctr=$(buildah from --pull-never docker.io/library/debian:12-slim)
    # What NVIDIA's runtime image carries for the plugin: cuBLAS and NCCL (libnccl2).
    for lib in libcublas.so.13 libcublasLt.so.13 libnccl.so.2; do
      src=$(readlink -f "$cuda_dir/lib64/$lib" 2>/dev/null || true)
      [ -f "$src" ] || src=$(readlink -f "$cuda_dir/lib/$lib")
      buildah copy --quiet "$ctr" "$src" "/usr/local/cuda/lib64/$lib" > /dev/null
    done
    buildah run --isolation chroot "$ctr" -- sh -c \
      'echo /usr/local/cuda/lib64 > /etc/ld.so.conf.d/cuda.conf && ldconfig'
    buildah commit --quiet "$ctr" localhost/cmoe-cuda-runtime:check > /dev/null
    buildah rm "$ctr" > /dev/null
  fi
  say "CUDA stand-ins: $(images cmoe-cuda)"
fi

# --- build ---------------------------------------------------------------------------------------
start=$(date +%s)
if [ "${CMOE_DOCKER_REUSE:-0}" = 1 ] && buildah images --quiet "$IMAGE" > /dev/null 2>&1; then
  say "build: reusing $IMAGE (CMOE_DOCKER_REUSE=1)"
elif ! buildah bud --pull-never --format docker --layers=false "${BUILD_ARGS[@]}" -t "$IMAGE" \
      -f "$ROOT/Dockerfile" "$ROOT" > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  fail "buildah bud (see $OUT/build.log)"
else
  size=$(buildah images --format '{{.Size}}' "$IMAGE")
  say "build: OK in $(( $(date +%s) - start )) s; image $size"
  grep -i "warn" "$OUT/build.log" | grep -iv "apt\|debconf" | head -5 \
    | sed 's/^/  build warning: /' | tee -a "$SUMMARY" || true
fi

# --- the image's configuration -------------------------------------------------------------------
buildah inspect --type image "$IMAGE" > "$OUT/inspect.json"
# read_config KEY [SUBKEY]: the image config's value as JSON.
read_config() {
  python3 - "$OUT/inspect.json" "$@" <<'PY'
import json, sys
value = json.load(open(sys.argv[1]))["Docker"]["config"].get(sys.argv[2])
for key in sys.argv[3:]:
    value = (value or {}).get(key)
print(json.dumps(value))
PY
}
user=$(read_config User | tr -d '"')
entrypoint=$(read_config Entrypoint)
health=$(read_config Healthcheck Test)
say "user: $user; entrypoint: $entrypoint; healthcheck: $health"
[ "$user" = "10001:10001" ] || fail "the image runs as '$user', not the non-root 10001:10001"
[ "$health" != "null" ] || fail "no HEALTHCHECK in the image (built with --format docker)"

# --- run: ENTRYPOINT as USER with the model mounted, then the HEALTHCHECK command ---------------
ctr=$(buildah from --pull-never "$IMAGE")
cleanup() {
  [ -n "${server_pid:-}" ] && kill "$server_pid" 2>/dev/null || true
  buildah rm "$ctr" > /dev/null 2>&1 || true
}
trap cleanup EXIT
run_in() {
  buildah run --isolation chroot --user "$user" -v "$MODEL:/models/model:ro" "$ctr" -- "$@"
}
say "runs as: $(run_in id)"
if [ "$CUDA" = 1 ]; then
  run_in sh -c 'ldd /usr/local/lib/libcmoe_kernels_cuda.so' > "$OUT/plugin-ldd.txt" 2>&1 \
    || fail "no CUDA plugin in the image (see $OUT/plugin-ldd.txt)"
  ! grep -q "not found" "$OUT/plugin-ldd.txt" || fail "the plugin's libraries do not all resolve: \
$(grep 'not found' "$OUT/plugin-ldd.txt" | tr -s ' \t' ' ')"
  resolved=$(grep -c '=>' "$OUT/plugin-ldd.txt")
  say "CUDA plugin: /usr/local/lib/libcmoe_kernels_cuda.so, $resolved libraries resolved"
  if timeout 60 buildah run --isolation chroot --user "$user" -v "$MODEL:/models/model:ro" "$ctr" \
      -- cmoe-serve --model /models/model --device cuda --port "$GRPC_PORT" \
      > "$OUT/device-cuda.txt" 2>&1; then
    fail "cmoe-serve --device cuda started without a GPU"
  fi
  say "--device cuda without a GPU: $(grep -i cuda "$OUT/device-cuda.txt" | tail -1)"
fi
mapfile -t entry < <(python3 -c "import json; [print(a) for a in $entrypoint]")
run_in "${entry[@]}" --model /models/model --port "$GRPC_PORT" > "$OUT/server.log" 2>&1 &
server_pid=$!
mapfile -t check < <(python3 -c "import json; [print(a) for a in $health[1:]]")
check=("${check[@]/127.0.0.1:50051/127.0.0.1:$GRPC_PORT}")
healthy=0
for _ in $(seq 1 60); do
  if run_in "${check[@]}" > "$OUT/health.txt" 2>&1; then healthy=1; break; fi
  kill -0 "$server_pid" 2>/dev/null || break
  sleep 1
done
[ "$healthy" = 1 ] || { tail -20 "$OUT/server.log"; fail "the HEALTHCHECK command never passed"; }
say "healthcheck: $(tr '\n' ' ' < "$OUT/health.txt")"
run_in cmoe-cli --target "127.0.0.1:$GRPC_PORT" generate --prompt "Once upon a time" \
  --max_new_tokens 16 > "$OUT/generate.txt" 2>&1 || fail "generate (see $OUT/generate.txt)"
say "generate: $(head -c 200 "$OUT/generate.txt" | tr '\n' ' ')"

# --- SIGTERM: drain and exit 0 -------------------------------------------------------------------
# The server itself (its command line starts with the entrypoint), not `buildah run`: that would
# kill its child rather than pass the signal on.
pkill -TERM -f "^(/usr/local/bin/)?cmoe-serve --host 0.0.0.0 --port $GRPC_PORT " || true
status=0
for _ in $(seq 1 45); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
kill -0 "$server_pid" 2>/dev/null && fail "cmoe-serve still running 45 s after SIGTERM"
wait "$server_pid" || status=$?
server_pid=""
[ "$status" = 0 ] || { tail -20 "$OUT/server.log"; fail "cmoe-serve exited $status after SIGTERM"; }
say "SIGTERM: cmoe-serve drained and exited 0"
say "PASS"
