#!/usr/bin/env bash
# Installs the Debian 12 packages the build and tests need, only those missing
# (`--build-only`: just what building the binaries needs).
# Runs `apt-get update` once, and only when something must be installed. Needs root (or sudo).
set -euo pipefail

# What building the binaries needs (`--build-only`: the Dockerfile's build stage).
BUILD_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libabsl-dev nlohmann-json3-dev liblemon-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler prometheus-cpp-dev
)
# What the tests and checks need on top.
CHECK_PACKAGES=(
  git python3 clang-format
  libsentencepiece-dev libgtest-dev libgmock-dev libbenchmark-dev
  # deploy/: the Helm chart renderer (Go text/template + Sprig), yamllint, Prometheus + promtool
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev yamllint prometheus
)

case "${1:-}" in
  --build-only) PACKAGES=("${BUILD_PACKAGES[@]}") ;;
  "") PACKAGES=("${BUILD_PACKAGES[@]}" "${CHECK_PACKAGES[@]}") ;;
  *) echo "usage: install-deps.sh [--build-only]" >&2; exit 2 ;;
esac

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Debian's prometheus package enables and starts a Prometheus server under systemd; the checks
# only need promtool and start their own on a free port.
if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
