#!/usr/bin/env bash
# Builds the Dockerfile and runs the image where no Docker engine runs: buildah from Debian
# (chroot isolation, vfs storage, as root), with the debian:12 and debian:12-slim base images
# made by debootstrap from the Debian archive, so no registry is needed. Then, as `docker run`
# would, it starts the image's ENTRYPOINT as the image's USER with a shared model mounted at
# /models/model, runs the image's HEALTHCHECK command until it passes, generates text through
# the server, and stops it with SIGTERM (it must drain and exit 0).
#
#   scripts/docker-check.sh [OUT_DIR]      # default OUT_DIR: /tmp/cmoe-docker-check
#   CMOE_DOCKER_REUSE=1 scripts/docker-check.sh   # run the image built last time again
#
# Writes OUT_DIR/summary.txt (also printed) and the logs. Slow (a full Release build inside the
# image: ~20-40 minutes on 2 cores) and heavy (vfs storage copies every layer: ~10 GB under
# /var/lib/containers), so it is a manual check, not part of scripts/test.sh. Installs buildah and
# debootstrap when missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-/tmp/cmoe-docker-check}"
WORK="${CMOE_DOCKER_WORK:-/var/tmp/cmoe-docker}"
MODEL="${CMOE_DOCKER_MODEL:-$ROOT/../shared/models/tinystories-656k}"
IMAGE="localhost/cmoe-serve:check"
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
  buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$ctr"
  buildah commit --quiet "$ctr" docker.io/library/debian:12 > /dev/null
  buildah tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  buildah rm "$ctr" > /dev/null
fi
say "base images: $(buildah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep library/debian | tr '\n' ' ')"

# --- build ---------------------------------------------------------------------------------------
start=$(date +%s)
if [ "${CMOE_DOCKER_REUSE:-0}" = 1 ] && buildah images --quiet "$IMAGE" > /dev/null 2>&1; then
  say "build: reusing $IMAGE (CMOE_DOCKER_REUSE=1)"
elif ! buildah bud --pull-never --format docker --layers=false -t "$IMAGE" -f "$ROOT/Dockerfile" \
      "$ROOT" > "$OUT/build.log" 2>&1; then
  tail -30 "$OUT/build.log"
  fail "buildah bud (see $OUT/build.log)"
else
  say "build: OK in $(( $(date +%s) - start )) s; image $(buildah images --format '{{.Size}}' "$IMAGE")"
  grep -i "warn" "$OUT/build.log" | grep -iv "apt\|debconf" | head -5 \
    | sed 's/^/  build warning: /' | tee -a "$SUMMARY" || true
fi

# --- the image's configuration -------------------------------------------------------------------
buildah inspect --type image "$IMAGE" > "$OUT/inspect.json"
read_config() { python3 -c "import json,sys; c=json.load(open('$OUT/inspect.json'))['Docker']['config']; print(json.dumps(c.get('$1')))"; }
user=$(read_config User | tr -d '"')
entrypoint=$(read_config Entrypoint)
health=$(python3 -c "import json; h=json.load(open('$OUT/inspect.json'))['Docker']['config'].get('Healthcheck') or {}; print(json.dumps(h.get('Test')))")
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
run_in() { buildah run --isolation chroot --user "$user" -v "$MODEL:/models/model:ro" "$ctr" -- "$@"; }
say "runs as: $(run_in id)"
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
