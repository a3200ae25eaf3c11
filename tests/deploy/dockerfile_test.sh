#!/usr/bin/env bash
# Checks the root Dockerfile without a Docker engine (CI has none):
#  1. the binaries it copies are built by the targets it builds;
#  2. cmoe-serve accepts every flag of its ENTRYPOINT + CMD (only the model directory is wrong);
#  3. the HEALTHCHECK's cmoe-cli command parses and reports an unreachable server as unhealthy;
#  4. the runtime stage's packages (scripts/runtime-packages.sh) provide every shared library the
#     binaries load, checked against the packages' own file lists;
#  5. .dockerignore keeps build trees and .git out of the context.
#
#   tests/deploy/dockerfile_test.sh SOURCE_DIR BIN_DIR
set -euo pipefail
src=$1
bin=$2
dockerfile=$src/Dockerfile
fail() { echo "dockerfile_test: $*" >&2; exit 1; }

# 1. Built targets and copied binaries agree, and exist in this build.
targets=$(sed -n '/cmake --build \/build --target/,/&&/p' "$dockerfile" | tr -s ' \\\n' '\n' |
  grep '^cmoe-' | sort -u)
copied=$(grep -o '/build/bin/cmoe-[a-z-]*' "$dockerfile" | sed 's|/build/bin/||' | sort -u)
[ -n "$targets" ] || fail "no build targets found in the Dockerfile"
[ "$targets" = "$copied" ] || fail "built targets ($targets) differ from copied binaries ($copied)"
for t in $targets; do [ -x "$bin/$t" ] || fail "$bin/$t was not built"; done

# 2. ENTRYPOINT + CMD flags (JSON arrays) against the real binary.
json_array() { grep "^$1 " "$dockerfile" | sed "s/^$1 //"; }
mapfile -t serve_args < <(python3 -c '
import json, sys
entry = json.loads(sys.argv[1]); cmd = json.loads(sys.argv[2])
assert entry[0] == "cmoe-serve", entry
args = entry[1:] + cmd
i = args.index("--model"); args[i + 1] = "/nonexistent/cmoe-dockerfile-test-model"
print("\n".join(args))' "$(json_array ENTRYPOINT)" "$(json_array CMD)")
set +e
err=$("$bin/cmoe-serve" "${serve_args[@]}" 2>&1 >/dev/null)
rc=$?
set -e
[ $rc -eq 1 ] || fail "cmoe-serve ${serve_args[*]}: exit $rc, expected 1 (missing model)"
grep -q "cmoe-dockerfile-test-model" <<<"$err" || fail "cmoe-serve did not reach the model: $err"
grep -qi "unknown command line flag" <<<"$err" && fail "cmoe-serve rejected a flag: $err"

# 3. The HEALTHCHECK command, pointed at a port where nothing listens: exit 1 (unhealthy) with a
#    gRPC error, not a flag error.
mapfile -t health < <(python3 -c '
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"HEALTHCHECK[^\n]*\\\n\s*CMD (\[.*\])", text)
args = json.loads(m.group(1))
assert args[0] == "cmoe-cli", args
i = args.index("--target"); args[i + 1] = "127.0.0.1:1"
print("\n".join(args[1:]))' "$dockerfile")
set +e
err=$("$bin/cmoe-cli" "${health[@]}" 2>&1 >/dev/null)
rc=$?
set -e
[ $rc -eq 1 ] || fail "cmoe-cli ${health[*]}: exit $rc, expected 1 (unhealthy)"
grep -q "UNAVAILABLE\|DEADLINE_EXCEEDED" <<<"$err" || fail "health check error is not a gRPC one: $err"

# 4. Every library the binaries load is a file of one of the runtime packages.
binaries=()
for t in $targets; do binaries+=("$bin/$t"); done
packages=$("$src/scripts/runtime-packages.sh" "${binaries[@]}" 2>/dev/null)
grep -q '^libgrpc++' <<<"$packages" || fail "no gRPC runtime package in: $packages"
files=$(for p in $packages; do dpkg -L "$p"; done)
for b in "${binaries[@]}"; do
  for lib in $(ldd "$b" | awk '$2 == "=>" && $3 ~ /^\// {print $3}'); do
    name=$(basename "$lib")
    grep -q "/$name\$" <<<"$files" || fail "$b loads $lib, which no runtime package provides"
  done
done

# 5. The build context.
for pattern in '^\.git$' '^build\*/$'; do
  grep -q "$pattern" "$src/.dockerignore" || fail ".dockerignore lacks $pattern"
done
echo "dockerfile_test: ok ($(wc -w <<<"$packages") runtime packages: $(tr '\n' ' ' <<<"$packages"))"
