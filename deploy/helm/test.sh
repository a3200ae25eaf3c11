#!/usr/bin/env bash
# Checks the cmoe-serve chart without a helm binary or a cluster (CTest HelmChartRenders):
#   1. vets, unit-tests and builds the renderer (render/, Helm's engine on text/template + Sprig);
#   2. renders every combination of the documented switches (README.md, "Switches") and every
#      scenario in tests/values/, each with --strict (no template reads a value that does not
#      exist) and --validate (required fields and cross-object references), and checks that each
#      switch adds or removes exactly what it documents;
#   3. renders the invalid combinations below and checks that each fails with its message;
#   4. runs yamllint --strict (.yamllint) on the chart's YAML and on every rendered file;
#   5. checks values.yaml: every value documented, the README table current, and every value
#      changing what renders in some combination.
# Usage: test.sh BUILD_DIR (the renderer, the Go cache and the rendered files go there).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
chart="$here/cmoe-serve"
out="${1:?usage: test.sh BUILD_DIR}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
render="$out/render"
rendered="$out/rendered"
rm -rf "$rendered" "$out/broken-chart"
mkdir -p "$rendered" "$out/tmp"

export GO111MODULE=off GOPATH=/usr/share/gocode GOCACHE="$out/gocache" GOTMPDIR="$out/tmp" GOFLAGS=

for tool in go gofmt yamllint; do
  command -v "$tool" >/dev/null || { echo "FAIL: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[[ -d "$GOPATH/src/github.com/Masterminds/sprig" && -d "$GOPATH/src/gopkg.in/yaml.v3" ]] || {
  echo "FAIL: Sprig or yaml.v3 is missing under $GOPATH (scripts/install-deps.sh)" >&2
  exit 1
}

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# --- 1. the renderer ---
(
  cd "$here/render"
  unformatted="$(gofmt -l .)"
  [[ -z "$unformatted" ]] || { echo "gofmt: $unformatted" >&2; exit 1; }
  go vet .
  go test -count=1 .
  go build -o "$render" .
) || { echo "FAIL: the renderer does not vet, test or build" >&2; exit 1; }

# The dashboard is a link into deploy/grafana; the chart must carry the real file.
[[ "$(readlink "$chart/dashboards/cmoe-serve.json")" == "../../../grafana/cmoe-serve.json" ]] ||
  fail "dashboards/cmoe-serve.json is not the link ../../../grafana/cmoe-serve.json"
[[ -s "$chart/dashboards/cmoe-serve.json" ]] || fail "deploy/grafana/cmoe-serve.json is missing"

# render_ok NAME ARGS...: renders into $rendered/NAME.yaml; fails on any error or problem.
render_ok() {
  local name="$1"
  shift
  if ! "$render" --strict --validate "$@" "$chart" >"$rendered/$name.yaml" 2>"$rendered/$name.err"; then
    fail "$name: $(cat "$rendered/$name.err")"
  fi
}

# count_kind FILE KIND: how many objects of KIND a rendered file holds.
count_kind() { grep -c "^kind: $2\$" "$1" || true; }

# b true|false: 1|0, the number of objects a switch should add.
b() { if [[ $1 == true ]]; then echo 1; else echo 0; fi; }

# expect NAME WHAT WANT GOT
expect() { [[ "$3" == "$4" ]] || fail "$1: $2: want $3, got $4"; }

# --- 2a. every combination of the switches ---
combinations=0
for model in pvc image; do
  for gpu in false true; do
    for monitor in false true; do
      for scaler in none hpa keda; do
        for pdb in true false; do
          for dashboard in true false; do
            name="model-$model.gpu-$gpu.monitor-$monitor.scaler-$scaler.pdb-$pdb.dashboard-$dashboard"
            args=(--set "model.source=$model" --set "gpu.enabled=$gpu"
              --set "serviceMonitor.enabled=$monitor" --set "pdb.enabled=$pdb"
              --set "dashboard.enabled=$dashboard")
            [[ $model == image ]] && args+=(--set model.image.repository=registry.example/models/stories260k)
            [[ $scaler == hpa ]] && args+=(--set autoscaling.hpa.enabled=true)
            [[ $scaler == keda ]] && args+=(--set autoscaling.keda.enabled=true)
            render_ok "$name" "${args[@]}"
            f="$rendered/$name.yaml"
            expect "$name" Deployment 1 "$(count_kind "$f" Deployment)"
            expect "$name" Service 1 "$(count_kind "$f" Service)"
            expect "$name" ServiceAccount 1 "$(count_kind "$f" ServiceAccount)"
            expect "$name" ServiceMonitor "$(b $monitor)" "$(count_kind "$f" ServiceMonitor)"
            expect "$name" PodDisruptionBudget "$(b $pdb)" "$(count_kind "$f" PodDisruptionBudget)"
            expect "$name" "dashboard ConfigMap" "$(b $dashboard)" "$(count_kind "$f" ConfigMap)"
            expect "$name" HorizontalPodAutoscaler "$([[ $scaler == hpa ]] && echo 1 || echo 0)" \
              "$(count_kind "$f" HorizontalPodAutoscaler)"
            expect "$name" ScaledObject "$([[ $scaler == keda ]] && echo 1 || echo 0)" \
              "$(count_kind "$f" ScaledObject)"
            expect "$name" "replicas set" "$([[ $scaler == none ]] && echo 1 || echo 0)" \
              "$(grep -c '^  replicas: ' "$f" || true)"
            expect "$name" "GPU limit" "$(b $gpu)" "$(grep -c '^ *nvidia.com/gpu: 1$' "$f" || true)"
            expect "$name" "GPU toleration" "$(b $gpu)" "$(grep -c 'key: nvidia.com/gpu$' "$f" || true)"
            expect "$name" "init container" "$([[ $model == image ]] && echo 1 || echo 0)" \
              "$(grep -c '^      initContainers:$' "$f" || true)"
            expect "$name" "PVC volume" "$([[ $model == pvc ]] && echo 1 || echo 0)" \
              "$(grep -c '^          persistentVolumeClaim:$' "$f" || true)"
            combinations=$((combinations + 1))
          done
        done
      done
    done
  done
done

# --- 2b. the scenarios: values away from their defaults ---
scenario_args=()
for values in "$here"/tests/values/*.yaml; do
  render_ok "scenario-$(basename "$values" .yaml)" -f "$values"
  scenario_args+=(-f "$values")
done
# The default KEDA query, rendered by tpl, names the release's namespace and Service.
render_ok kv-cache-bf16 --set server.kvCacheDtype=bf16
grep -qF -- '- "--kv-cache-dtype=bf16"' "$rendered/kv-cache-bf16.yaml" ||
  fail "kv-cache-bf16: server.kvCacheDtype does not reach --kv-cache-dtype"
render_ok expert-parallel --set gpu.enabled=true --set gpu.count=4 --set server.expertParallel=4
grep -qF -- '- "--expert-parallel=4"' "$rendered/expert-parallel.yaml" ||
  fail "expert-parallel: server.expertParallel does not reach --expert-parallel"
grep -qF -- '"--expert-parallel=' "$rendered/kv-cache-bf16.yaml" &&
  fail "kv-cache-bf16: --expert-parallel given with server.expertParallel 1"
# NCCL needs more than a container's 64 MiB of /dev/shm: a memory-backed one comes with the ranks.
shm_mount() { grep -A1 -- '- name: dshm' "$1" | grep -qF 'mountPath: /dev/shm'; }
shm_volume() { grep -A3 -- '- name: dshm' "$1" | grep -qF "sizeLimit: \"$2\""; }
shm_mount "$rendered/expert-parallel.yaml" && shm_volume "$rendered/expert-parallel.yaml" 1Gi ||
  fail "expert-parallel: no memory-backed /dev/shm of server.sharedMemorySize (1Gi)"
grep -qF 'medium: Memory' "$rendered/expert-parallel.yaml" ||
  fail "expert-parallel: /dev/shm is not memory-backed"
grep -qF -- 'dshm' "$rendered/kv-cache-bf16.yaml" &&
  fail "kv-cache-bf16: /dev/shm mounted with server.expertParallel 1"
render_ok expert-parallel-shm --set gpu.enabled=true --set gpu.count=2 \
  --set server.expertParallel=2 --set server.sharedMemorySize=2Gi
shm_mount "$rendered/expert-parallel-shm.yaml" && shm_volume "$rendered/expert-parallel-shm.yaml" 2Gi ||
  fail "expert-parallel-shm: server.sharedMemorySize does not size /dev/shm"
render_ok expert-parallel-no-shm --set gpu.enabled=true --set gpu.count=2 \
  --set server.expertParallel=2 --set server.sharedMemorySize=
grep -qF -- 'dshm' "$rendered/expert-parallel-no-shm.yaml" &&
  fail "expert-parallel-no-shm: /dev/shm mounted with server.sharedMemorySize \"\""
render_ok release-in-namespace --name prod --namespace inference --set autoscaling.keda.enabled=true
grep -qF 'query: "sum(cmoe_waiting_requests{namespace=\"inference\", service=\"prod-cmoe-serve\"})"' \
  "$rendered/release-in-namespace.yaml" ||
  fail "release-in-namespace: the KEDA query does not select the release's Service"

# --- 3. invalid combinations: each must fail, print nothing, and say why ---
# name | text the error must contain | arguments
invalid=(
  "hpa and keda|autoscaling.hpa.enabled and autoscaling.keda.enabled are exclusive|--set autoscaling.hpa.enabled=true --set autoscaling.keda.enabled=true"
  "grace equal to drain|terminationGracePeriodSeconds (30) must exceed preStopSleepSeconds (0) + server.drainTimeoutSeconds (30)|--set terminationGracePeriodSeconds=30"
  "grace below drain|terminationGracePeriodSeconds (20) must exceed|--set terminationGracePeriodSeconds=20"
  "grace below sleep and drain|terminationGracePeriodSeconds (40) must exceed preStopSleepSeconds (15)|--set terminationGracePeriodSeconds=40 --set preStopSleepSeconds=15"
  "preStop sleep before 1.30|preStopSleepSeconds needs Kubernetes 1.30|--set preStopSleepSeconds=5 --kube-version v1.29.4"
  "no model source|model.source \"\": set it to pvc|--set model.source="
  "unknown model source|model.source \"s3\"|--set model.source=s3"
  "pvc without a claim|model.pvc.claimName is required|--set model.pvc.claimName="
  "image without a repository|model.image.repository is required|--set model.source=image"
  "no model name|model.name is required|--set model.name="
  "model name with a slash|model.name \"../etc\" must be one path component|--set model.name=../etc"
  "kv cache twice|server.kvCacheTokens and server.kvCacheBytes are exclusive|--set server.kvCacheTokens=4096 --set server.kvCacheBytes=1GiB"
  "kv cache in Kubernetes units|server.kvCacheBytes \"2Gi\"|--set server.kvCacheBytes=2Gi"
  "kv cache dtype|server.kvCacheDtype \"fp8\": f32 or bf16|--set server.kvCacheDtype=fp8"
  "no GPU|gpu.count must be at least 1|--set gpu.enabled=true --set gpu.count=0"
  "expert parallel without GPUs|server.expertParallel 2 needs gpu.enabled and gpu.count >= 2|--set server.expertParallel=2"
  "expert parallel over too few GPUs|server.expertParallel 4 needs gpu.enabled|--set gpu.enabled=true --set gpu.count=2 --set server.expertParallel=4"
  "expert parallel zero|server.expertParallel 0: between 1 and 64|--set server.expertParallel=0"
  "shared memory size|server.sharedMemorySize \"lots\": a Kubernetes quantity|--set server.sharedMemorySize=lots"
  "shared memory in kv units|server.sharedMemorySize \"1GiB\"|--set server.sharedMemorySize=1GiB"
  "autoscaling range|want 1 <= minReplicas (5) <= maxReplicas (2)|--set autoscaling.hpa.enabled=true --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=2"
  "autoscaling from zero|want 1 <= minReplicas (0)|--set autoscaling.keda.enabled=true --set autoscaling.minReplicas=0"
  "pdb both|pdb.maxUnavailable and pdb.minAvailable are exclusive|--set pdb.minAvailable=1"
  "pdb neither|pdb: set one of pdb.maxUnavailable and pdb.minAvailable|--set pdb.maxUnavailable="
  "old cluster|incompatible with Kubernetes v1.26.0|--kube-version v1.26.0"
)
for case in "${invalid[@]}"; do
  IFS='|' read -r name want args <<<"$case"
  read -r -a argv <<<"$args"
  if "$render" --strict --validate "${argv[@]}" "$chart" >"$out/tmp/stdout" 2>"$out/tmp/stderr"; then
    fail "invalid '$name' rendered"
  elif ! grep -qF -- "$want" "$out/tmp/stderr"; then
    fail "invalid '$name': want an error containing '$want', got: $(cat "$out/tmp/stderr")"
  elif [[ -s "$out/tmp/stdout" ]]; then
    fail "invalid '$name': printed manifests although it failed"
  fi
done

# A chart without the dashboard file, and one with a broken dashboard.
cp -R "$chart" "$out/broken-chart"
rm "$out/broken-chart/dashboards/cmoe-serve.json"
if "$render" "$out/broken-chart" >/dev/null 2>"$out/tmp/stderr" ||
  ! grep -q "dashboards/cmoe-serve.json is missing" "$out/tmp/stderr"; then
  fail "a chart without its dashboard rendered or said nothing useful: $(cat "$out/tmp/stderr")"
fi
"$render" --set dashboard.enabled=false --validate "$out/broken-chart" >/dev/null ||
  fail "dashboard.enabled=false still needs the dashboard file"
echo '{"title": "cut short",' >"$out/broken-chart/dashboards/cmoe-serve.json"
if "$render" --validate "$out/broken-chart" >/dev/null 2>"$out/tmp/stderr" ||
  ! grep -q 'data "cmoe-serve.json" is not a JSON object' "$out/tmp/stderr"; then
  fail "a broken dashboard passed validation: $(cat "$out/tmp/stderr")"
fi

# --- 4. yamllint ---
yamllint --strict -c "$here/.yamllint" "$here/.yamllint" "$chart/Chart.yaml" "$chart/values.yaml" \
  "$here"/tests/values/*.yaml "$rendered"/*.yaml || fail "yamllint"

# --- 5. values.yaml: documented, in the README, each one used ---
"$render" check-values --strict "${scenario_args[@]}" "$chart" || fail "check-values"

renders=$(find "$rendered" -name '*.yaml' | wc -l)
if ((failures > 0)); then
  echo "helm chart: $failures failure(s)" >&2
  exit 1
fi
echo "helm chart: $combinations switch combinations and $((renders - combinations)) other renders" \
  "valid, ${#invalid[@]} invalid combinations refused, yamllint clean, every value documented and used"
