#!/usr/bin/env bash
# Prints the distribution packages that own the shared libraries the given binaries load, one per
# line, sorted: what a slim runtime image must install for them (the Dockerfile's runtime stage).
# Libraries no package owns (e.g. /usr/local/cuda's, which the CUDA base image brings) are listed
# on stderr and skipped. Fails when a library does not resolve at all.
#
#   scripts/runtime-packages.sh build/bin/cmoe-serve build/bin/cmoe-cli
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: runtime-packages.sh BINARY..." >&2; exit 2; }

libs=$(for bin in "$@"; do
  [ -x "$bin" ] || { echo "runtime-packages: $bin is not an executable" >&2; exit 1; }
  out=$(ldd "$bin") || { echo "runtime-packages: ldd $bin failed" >&2; exit 1; }
  if grep -q "not found" <<<"$out"; then
    echo "runtime-packages: $bin: $(grep 'not found' <<<"$out" | tr -s ' \t' ' ')" >&2
    exit 1
  fi
  awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$out"
done | sort -u)

for lib in $libs; do
  # Packages register either the /lib or the /usr/lib spelling (merged /usr): match on the
  # multiarch directory and the file name, which also keeps other architectures' copies out.
  path=$(readlink -f "$lib")
  owner=""
  for candidate in "$lib" "$path"; do
    pattern="*/$(basename "$(dirname "$candidate")")/$(basename "$candidate")"
    owner=$(dpkg -S "$pattern" 2>/dev/null | head -1 | cut -d: -f1) && [ -n "$owner" ] && break
  done
  if [ -z "$owner" ]; then
    echo "runtime-packages: no package owns $lib (skipped)" >&2
    continue
  fi
  echo "$owner"
done | sort -u
