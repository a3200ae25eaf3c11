package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeChart creates a chart directory from path -> content.
func writeChart(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	base := map[string]string{
		"Chart.yaml":  "apiVersion: v2\nname: demo\nversion: 1.2.3\nappVersion: \"4.5\"\n",
		"values.yaml": "# -- A port.\nport: 80\n",
	}
	for name, content := range files {
		base[name] = content
	}
	for name, content := range base {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func renderChart(t *testing.T, dir string, strict bool, user Values) ([]Manifest, error) {
	t.Helper()
	chart, err := loadChart(dir)
	if err != nil {
		t.Fatal(err)
	}
	e, err := newEngine(chart, options{release: "rel", namespace: "ns", kubeVersion: "v1.30.0", strict: strict})
	if err != nil {
		t.Fatal(err)
	}
	manifests, _, err := e.Render(coalesce(user, chart.Defaults))
	return manifests, err
}

func TestSetTypesValuesAsHelmDoes(t *testing.T) {
	got := Values{}
	for _, expr := range []string{"a.b=1,a.c=true,a.d=null,a.e=1.5,a.f=007", `g={x,2}`, `h\.i.j=k\,l`, "m[1].n=o"} {
		if err := applySet(got, expr, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := applySet(got, "s=10", false); err != nil {
		t.Fatal(err)
	}
	want := Values{
		"a":   Values{"b": int64(1), "c": true, "d": nil, "e": "1.5", "f": "007"},
		"g":   []interface{}{"x", int64(2)},
		"h.i": Values{"j": "k,l"},
		"m":   []interface{}{nil, Values{"n": "o"}},
		"s":   "10",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %#v\nwant %#v", got, want)
	}
	if err := applySet(got, "novalue", true); err == nil {
		t.Error("a --set without '=' was accepted")
	}
}

func TestCoalesceMergesMapsAndNullDeletes(t *testing.T) {
	defaults := Values{"a": Values{"x": 1.0, "y": 2.0}, "b": "keep", "c": "drop"}
	user := Values{"a": Values{"y": 3.0}, "c": nil, "d": Values{"e": nil, "f": 1.0}}
	want := Values{"a": Values{"x": 1.0, "y": 3.0}, "b": "keep", "d": Values{"f": 1.0}}
	if got := coalesce(user, defaults); !reflect.DeepEqual(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if _, ok := defaults["c"]; !ok {
		t.Error("coalesce changed the defaults")
	}
}

func TestToYAMLIsBlockStyleSortedIntegral(t *testing.T) {
	got := toYAML(map[string]interface{}{"b": []interface{}{1.0, "on"}, "a": 2.5, "c": map[string]interface{}{}})
	want := "a: 2.5\nb:\n  - 1\n  - \"on\"\nc: {}"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRenderLikeHelmTemplate(t *testing.T) {
	dir := writeChart(t, map[string]string{
		"templates/_helpers.tpl": `{{- define "demo.name" -}}{{ .Chart.Name }}-{{ .Release.Name }}{{- end }}`,
		"templates/svc.yaml": "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ include \"demo.name\" . }}\n" +
			"  annotations:\n    tpl: {{ tpl \"{{ .Values.port }}\" . | quote }}\n    file: {{ .Files.Get \"data/x.txt\" | trim }}\n" +
			"    api: {{ .Capabilities.APIVersions.Has \"keda.sh/v1alpha1\" | quote }}\n---\n# only a comment\n---\n",
		"templates/dep.yaml":  "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n",
		"templates/NOTES.txt": "port {{ .Values.port }}\n",
		"data/x.txt":          "from a file\n",
	})
	manifests, err := renderChart(t, dir, true, Values{"port": int64(8080)})
	if err != nil {
		t.Fatal(err)
	}
	got := formatManifests(manifests)
	want := "---\n# Source: demo/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: demo-rel\n" +
		"  annotations:\n    tpl: \"8080\"\n    file: from a file\n    api: \"true\"\n" +
		"---\n# Source: demo/templates/dep.yaml\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\n"
	if got != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}
}

func TestRenderErrorsCarryTheMessage(t *testing.T) {
	cases := map[string]string{
		`{{ required "port is required" (index .Values "none") }}`:    "port is required",
		`{{ include "x" . }}{{ define "x" }}{{ fail "no" }}{{ end }}`: "no",
		`{{ .Values.typo }}`: "map has no entry for key \"typo\"",
		"a: b\nc: [":         "YAML parse error on demo/templates/t.yaml",
	}
	for text, want := range cases {
		dir := writeChart(t, map[string]string{"templates/t.yaml": text})
		_, err := renderChart(t, dir, true, Values{})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got error %v, want one containing %q", text, err, want)
		}
		if err != nil && strings.Contains(text, "fail") && !strings.HasPrefix(err.Error(), "execution error at (") {
			t.Errorf("%q: error %q is not Helm's form", text, err)
		}
	}
}

func TestKubeVersionConstraint(t *testing.T) {
	dir := writeChart(t, map[string]string{
		"Chart.yaml": "apiVersion: v2\nname: demo\nversion: 1.0.0\nkubeVersion: \">=1.31.0-0\"\n",
	})
	if _, err := renderChart(t, dir, false, Values{}); err == nil || !strings.Contains(err.Error(), "incompatible") {
		t.Errorf("got %v, want a kubeVersion error", err)
	}
}

// labels are the chart's standard labels, in every object of goodManifests.
const labels = `{app.kubernetes.io/name: a, app.kubernetes.io/instance: r, app.kubernetes.io/version: "1", ` +
	`app.kubernetes.io/managed-by: Helm, helm.sh/chart: c-1}`

var goodManifests = strings.ReplaceAll(`apiVersion: apps/v1
kind: Deployment
metadata: {name: d, namespace: ns, labels: LABELS}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: a}}
  template:
    metadata: {labels: LABELS}
    spec:
      terminationGracePeriodSeconds: 40
      securityContext: {runAsNonRoot: true}
      volumes: [{name: m, emptyDir: {}}]
      containers:
        - name: s
          image: i:1
          args: ["--drain-timeout=30"]
          ports: [{name: grpc, containerPort: 50051}, {name: metrics, containerPort: 9464}]
          startupProbe: {grpc: {port: 50051}}
          readinessProbe: {grpc: {port: 50051}}
          livenessProbe: {grpc: {port: 50051}}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          volumeMounts: [{name: m, mountPath: /models/x}]
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: ns, labels: LABELS}
spec:
  type: ClusterIP
  selector: {app.kubernetes.io/name: a}
  ports: [{name: grpc, port: 50051, targetPort: grpc}, {name: metrics, port: 9464, targetPort: metrics}]
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: s, namespace: ns, labels: LABELS}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: a}}
  namespaceSelector: {matchNames: [ns]}
  endpoints: [{port: metrics}]
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata: {name: h, namespace: ns, labels: LABELS}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: d}
  minReplicas: 1
  maxReplicas: 2
  metrics: [{type: Pods, pods: {metric: {name: q}, target: {type: AverageValue, averageValue: "4"}}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: c, namespace: ns, labels: LABELS}
data: {d.json: '{"a": 1}'}
`, "LABELS", labels)

func manifestsOf(t *testing.T, text string) []Manifest {
	t.Helper()
	m, err := splitManifests("t.yaml", text)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestValidateAcceptsConsistentObjects(t *testing.T) {
	if problems := validateManifests(manifestsOf(t, goodManifests)); len(problems) != 0 {
		t.Errorf("problems in good manifests: %q", problems)
	}
}

func TestValidateFindsBrokenReferences(t *testing.T) {
	cases := map[string][2]string{
		"service targetPort":    {"targetPort: grpc}", "targetPort: grcp}"},
		"servicemonitor port":   {"endpoints: [{port: metrics}]", "endpoints: [{port: metric}]"},
		"hpa target":            {"kind: Deployment, name: d}", "kind: Deployment, name: e}"},
		"replicas with hpa":     {"  selector: {matchLabels: {app.kubernetes.io/name: a}}\n  template", "  replicas: 1\n  selector: {matchLabels: {app.kubernetes.io/name: a}}\n  template"},
		"grace period":          {"terminationGracePeriodSeconds: 40", "terminationGracePeriodSeconds: 30"},
		"probe port":            {"livenessProbe: {grpc: {port: 50051}}", "livenessProbe: {grpc: {port: 8080}}"},
		"dashboard json":        {`'{"a": 1}'`, `'{"a": '`},
		"selector":              {"spec:\n  selector: {matchLabels: {app.kubernetes.io/name: a}}\n  template", "spec:\n  selector: {matchLabels: {app.kubernetes.io/name: b}}\n  template"},
		"read-only root":        {"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false"},
		"volume mount":          {"volumeMounts: [{name: m,", "volumeMounts: [{name: n,"},
		"missing label":         {"helm.sh/chart: c-1}}\ndata:", "helm.sh/chartx: c-1}}\ndata:"},
		"quantity not a string": {`averageValue: "4"`, "averageValue: 4"},
	}
	for name, edit := range cases {
		if !strings.Contains(goodManifests, edit[0]) {
			t.Fatalf("%s: %q is not in the manifests", name, edit[0])
		}
		broken := strings.Replace(goodManifests, edit[0], edit[1], 1)
		if problems := validateManifests(manifestsOf(t, broken)); len(problems) == 0 {
			t.Errorf("%s: no problem found", name)
		}
	}
}

func TestValuesDocumentationAndUse(t *testing.T) {
	dir := writeChart(t, map[string]string{
		"values.yaml": "# -- Used.\nused: 1\n# -- Never read.\nunused: 2\nundocumented: 3\n" +
			"# A section.\nsec:\n  # -- A map as a whole.\n  labels: {a: b}\n",
		"templates/t.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n  labels: {{ toJson .Values.sec.labels }}\n" +
			"data:\n  u: {{ .Values.used | quote }}\n",
	})
	chart, err := loadChart(dir)
	if err != nil {
		t.Fatal(err)
	}
	table, problems, err := valuesTable(chart)
	if err != nil {
		t.Fatal(err)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "undocumented") {
		t.Errorf("problems %q, want one naming undocumented", problems)
	}
	if !strings.Contains(table, "| `sec.labels` | `{\"a\":\"b\"}` | A map as a whole. |\n") {
		t.Errorf("table lacks sec.labels:\n%s", table)
	}
	e, err := newEngine(chart, options{release: "r", namespace: "n", kubeVersion: "v1.30.0", strict: true})
	if err != nil {
		t.Fatal(err)
	}
	unused, err := unusedValues(e, []Values{{}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(unused, []string{"undocumented", "unused"}) {
		t.Errorf("unused %q", unused)
	}
}
