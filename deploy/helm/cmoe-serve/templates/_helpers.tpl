{{/* Names, labels and the checks on values every manifest relies on. */}}

{{/* The chart name (nameOverride), 63 characters at most. */}}
{{- define "cmoe-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-NAME, or RELEASE when it already contains NAME, or fullnameOverride. */}}
{{- define "cmoe-serve.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* CHART-VERSION for the helm.sh/chart label. */}}
{{- define "cmoe-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select the pods (never change them on an installed release). */}}
{{- define "cmoe-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cmoe-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The labels of every object. */}}
{{- define "cmoe-serve.labels" -}}
helm.sh/chart: {{ include "cmoe-serve.chart" . }}
{{ include "cmoe-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: cmoe
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "cmoe-serve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "cmoe-serve.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where the checkpoint is mounted: the image's convention, /models/<name>. */}}
{{- define "cmoe-serve.modelDir" -}}
{{- printf "/models/%s" .Values.model.name }}
{{- end }}

{{/* The server image, tagged with the appVersion unless image.tag is set. */}}
{{- define "cmoe-serve.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* cmoe-serve's command line (the image's entrypoint is cmoe-serve), one quoted item a line. */}}
{{- define "cmoe-serve.args" -}}
{{- $s := .Values.server -}}
- {{ printf "--model=%s" (include "cmoe-serve.modelDir" .) | quote }}
- {{ printf "--model-name=%s" .Values.model.name | quote }}
- {{ printf "--host=%s" $s.host | quote }}
- {{ printf "--port=%d" (int64 $s.port) | quote }}
- {{ printf "--metrics-port=%d" (int64 $s.metricsPort) | quote }}
- {{ printf "--threads=%d" (int64 $s.threads) | quote }}
{{- if .Values.gpu.enabled }}
- "--device=cuda"
{{- end }}
- {{ printf "--max-batch-tokens=%d" (int64 $s.maxBatchTokens) | quote }}
- {{ printf "--max-running=%d" (int64 $s.maxRunning) | quote }}
- {{ printf "--max-waiting=%d" (int64 $s.maxWaiting) | quote }}
{{- if gt (int64 $s.kvCacheTokens) 0 }}
- {{ printf "--kv-cache-tokens=%d" (int64 $s.kvCacheTokens) | quote }}
{{- end }}
{{- with $s.kvCacheBytes }}
- {{ printf "--kv-cache-bytes=%s" . | quote }}
{{- end }}
- {{ printf "--kv-cache-dtype=%s" ($s.kvCacheDtype | default "f32") | quote }}
{{- if gt (int64 (dig "expertParallel" 1 $s)) 1 }}
- {{ printf "--expert-parallel=%d" (int64 $s.expertParallel) | quote }}
{{- end }}
- {{ printf "--drain-timeout=%v" (float64 $s.drainTimeoutSeconds) | quote }}
{{- range $s.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Every container's security context: not negotiable, so not a value. */}}
{{- define "cmoe-serve.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop:
    - ALL
{{- end }}

{{/* The server's resources, with the GPU limit when gpu.enabled. */}}
{{- define "cmoe-serve.resources" -}}
{{- $resources := deepCopy .Values.resources }}
{{- if .Values.gpu.enabled }}
{{- $limits := default (dict) (get $resources "limits") }}
{{- $_ := set $limits .Values.gpu.resourceName (int64 .Values.gpu.count) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* Pod labels: podLabels under the chart's labels (which win). */}}
{{- define "cmoe-serve.podLabels" -}}
{{- $labels := fromYaml (include "cmoe-serve.labels" .) }}
{{- toYaml (merge $labels .Values.podLabels) }}
{{- end }}

{{/*
Checks on combinations of values that would render objects Kubernetes accepts but that cannot
work; rendered (as nothing) by the Deployment, so every install runs them.
*/}}
{{- define "cmoe-serve.validate" -}}
{{- include "cmoe-serve.validateModel" . }}
{{- include "cmoe-serve.validateServer" . }}
{{- include "cmoe-serve.validateScaling" . }}
{{- end }}

{{- define "cmoe-serve.validateModel" -}}
{{- $m := .Values.model }}
{{- $name := required "model.name is required: the checkpoint's directory name under /models" $m.name }}
{{- if or (not (regexMatch "^[A-Za-z0-9._-]+$" $name)) (eq $name ".") (eq $name "..") }}
{{- fail (printf "model.name %q must be one path component (letters, digits, '.', '_', '-')" $name) }}
{{- end }}
{{- if eq $m.source "pvc" }}
{{- $_ := required "model.pvc.claimName is required with model.source pvc: the PersistentVolumeClaim holding the checkpoint" $m.pvc.claimName }}
{{- else if eq $m.source "image" }}
{{- $_ := required "model.image.repository is required with model.source image: the image holding the checkpoint" $m.image.repository }}
{{- else }}
{{- fail (printf "model.source %q: set it to pvc (model.pvc.claimName) or image (model.image.repository)" (toString $m.source)) }}
{{- end }}
{{- end }}

{{- define "cmoe-serve.validateServer" -}}
{{- $s := .Values.server -}}
{{- $grace := float64 .Values.terminationGracePeriodSeconds }}
{{- $drain := float64 $s.drainTimeoutSeconds }}
{{- $sleep := float64 .Values.preStopSleepSeconds }}
{{- if le $grace (addf $sleep $drain) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed preStopSleepSeconds (%v) + server.drainTimeoutSeconds (%v), or Kubernetes kills requests that are still draining" $grace $sleep $drain) }}
{{- end }}
{{- if and (gt $sleep 0.0) (semverCompare "<1.30.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "preStopSleepSeconds needs Kubernetes 1.30 or later (the preStop sleep action), not %s" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- if and (gt (int64 $s.kvCacheTokens) 0) $s.kvCacheBytes }}
{{- fail "server.kvCacheTokens and server.kvCacheBytes are exclusive: set one" }}
{{- end }}
{{- if and $s.kvCacheBytes (not (regexMatch "^[0-9]+(B|K|KB|KiB|M|MB|MiB|G|GB|GiB)?$" (toString $s.kvCacheBytes))) }}
{{- fail (printf "server.kvCacheBytes %q: a number with an optional K, KiB, M, MiB, G or GiB suffix, e.g. 2GiB" (toString $s.kvCacheBytes)) }}
{{- end }}
{{- if not (has (toString ($s.kvCacheDtype | default "f32")) (list "f32" "bf16")) }}
{{- fail (printf "server.kvCacheDtype %q: f32 or bf16" (toString $s.kvCacheDtype)) }}
{{- end }}
{{- if and .Values.gpu.enabled (lt (int64 .Values.gpu.count) 1) }}
{{- fail "gpu.count must be at least 1 with gpu.enabled" }}
{{- end }}
{{- $ep := int64 (dig "expertParallel" 1 $s) }}
{{- if or (lt $ep 1) (gt $ep 64) }}
{{- fail (printf "server.expertParallel %v: between 1 and 64" $s.expertParallel) }}
{{- end }}
{{- if and (gt $ep 1) (or (not .Values.gpu.enabled) (lt (int64 .Values.gpu.count) $ep)) }}
{{- fail (printf "server.expertParallel %d needs gpu.enabled and gpu.count >= %d (one GPU per rank)" $ep $ep) }}
{{- end }}
{{- $shm := toString (dig "sharedMemorySize" "" $s) }}
{{- if and $shm (not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$" $shm)) }}
{{- fail (printf "server.sharedMemorySize %q: a Kubernetes quantity such as 1Gi or 512Mi, or \"\" for none" $shm) }}
{{- end }}
{{- end }}

{{- define "cmoe-serve.validateScaling" -}}
{{- $a := .Values.autoscaling }}
{{- if and $a.hpa.enabled $a.keda.enabled }}
{{- fail "autoscaling.hpa.enabled and autoscaling.keda.enabled are exclusive: KEDA creates its own HorizontalPodAutoscaler, and two would fight over the replica count" }}
{{- end }}
{{- if and (or $a.hpa.enabled $a.keda.enabled) (or (lt (int64 $a.minReplicas) 1) (gt (int64 $a.minReplicas) (int64 $a.maxReplicas))) }}
{{- fail (printf "autoscaling: want 1 <= minReplicas (%v) <= maxReplicas (%v)" $a.minReplicas $a.maxReplicas) }}
{{- end }}
{{- if .Values.pdb.enabled }}
{{- if and (eq (toString .Values.pdb.minAvailable) "") (eq (toString .Values.pdb.maxUnavailable) "") }}
{{- fail "pdb: set one of pdb.maxUnavailable and pdb.minAvailable" }}
{{- end }}
{{- if and (ne (toString .Values.pdb.minAvailable) "") (ne (toString .Values.pdb.maxUnavailable) "") }}
{{- fail "pdb.maxUnavailable and pdb.minAvailable are exclusive: set the other one to \"\"" }}
{{- end }}
{{- end }}
{{- end }}
