package main

// The template engine: Go's text/template with Sprig's functions and Helm's additions (include,
// tpl, required, fail, toYaml, fromYaml, fromJson, ...), the objects Helm passes to templates,
// and `helm template`'s output (one YAML document per manifest with a "# Source:" comment,
// empty ones dropped, sorted in Helm's install order).

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/semver"
	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

// Release is .Release.
type Release struct {
	Name, Namespace, Service string
	IsInstall, IsUpgrade     bool
	Revision                 int
}

// Capabilities is .Capabilities.
type Capabilities struct {
	APIVersions VersionSet
	KubeVersion KubeVersion
}

// VersionSet is .Capabilities.APIVersions: "group/version" and "group/version/Kind" entries.
type VersionSet []string

// Has reports whether the cluster serves an API version (or version and kind).
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// defaultAPIVersions: the built-in APIs the chart uses plus the CRDs it can create objects of
// (prometheus-operator's and KEDA's), as `helm template --api-versions` would list them.
var defaultAPIVersions = VersionSet{
	"v1", "v1/ConfigMap", "v1/Service", "v1/ServiceAccount",
	"apps/v1", "apps/v1/Deployment",
	"autoscaling/v2", "autoscaling/v2/HorizontalPodAutoscaler",
	"policy/v1", "policy/v1/PodDisruptionBudget",
	"monitoring.coreos.com/v1", "monitoring.coreos.com/v1/ServiceMonitor",
	"keda.sh/v1alpha1", "keda.sh/v1alpha1/ScaledObject",
}

// KubeVersion is .Capabilities.KubeVersion.
type KubeVersion struct{ Version, Major, Minor string }

// String returns the version, e.g. "v1.30.0".
func (k KubeVersion) String() string { return k.Version }

// GitVersion returns the version, e.g. "v1.30.0".
func (k KubeVersion) GitVersion() string { return k.Version }

func parseKubeVersion(s string) (KubeVersion, error) {
	v, err := semver.NewVersion(s)
	if err != nil {
		return KubeVersion{}, fmt.Errorf("--kube-version %q: %v", s, err)
	}
	return KubeVersion{
		Version: "v" + v.String(),
		Major:   fmt.Sprint(v.Major()),
		Minor:   fmt.Sprint(v.Minor()),
	}, nil
}

// Engine renders one chart.
type Engine struct {
	Chart        *Chart
	Release      Release
	Capabilities Capabilities
	Strict       bool // missingkey=error: a template reading a value that does not exist fails
}

// Manifest is one rendered YAML document.
type Manifest struct {
	Source, Kind, Name, Content string
	order                       int
}

// maxIncludeDepth bounds recursive includes (Helm's limit).
const maxIncludeDepth = 1000

// checkKubeVersion applies Chart.yaml's kubeVersion constraint, as helm template does.
func (e *Engine) checkKubeVersion() error {
	constraint, _ := e.Chart.Metadata["KubeVersion"].(string)
	if constraint == "" {
		return nil
	}
	c, err := semver.NewConstraint(constraint)
	if err != nil {
		return fmt.Errorf("Chart.yaml kubeVersion %q: %v", constraint, err)
	}
	v, err := semver.NewVersion(e.Capabilities.KubeVersion.Version)
	if err != nil || !c.Check(v) {
		return fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s",
			constraint, e.Capabilities.KubeVersion.Version)
	}
	return nil
}

// Render executes every template with the given (coalesced) values and returns the manifests
// in install order, and NOTES.txt's text.
func (e *Engine) Render(values Values) ([]Manifest, string, error) {
	if err := e.checkKubeVersion(); err != nil {
		return nil, "", err
	}
	root, err := e.parse()
	if err != nil {
		return nil, "", err
	}
	var manifests []Manifest
	notes := ""
	for _, name := range e.Chart.templateNames() {
		if isPartial(name) {
			continue
		}
		text, err := e.execute(root, name, values)
		if err != nil {
			return nil, "", err
		}
		if isNotes(name) {
			notes = text
			continue
		}
		docs, err := splitManifests(name, text)
		if err != nil {
			return nil, "", err
		}
		manifests = append(manifests, docs...)
	}
	sortManifests(manifests)
	return manifests, notes, nil
}

func (e *Engine) parse() (*template.Template, error) {
	root := template.New("gotpl")
	if e.Strict {
		root.Option("missingkey=error")
	} else {
		root.Option("missingkey=zero")
	}
	root.Funcs(e.funcMap(root))
	for _, name := range e.Chart.templateNames() {
		if _, err := root.New(name).Parse(e.Chart.Templates[name]); err != nil {
			return nil, fmt.Errorf("parse error in %v", strings.TrimPrefix(err.Error(), "template: "))
		}
	}
	return root, nil
}

func (e *Engine) execute(root *template.Template, name string, values Values) (string, error) {
	data := map[string]interface{}{
		"Values":       values,
		"Release":      e.Release,
		"Chart":        e.Chart.Metadata,
		"Capabilities": e.Capabilities,
		"Files":        e.Chart.Files,
		"Template":     map[string]interface{}{"Name": name, "BasePath": e.Chart.Name + "/templates"},
	}
	var buf bytes.Buffer
	if err := root.ExecuteTemplate(&buf, name, data); err != nil {
		return "", cleanupExecError(name, err)
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

// calledErr finds the message of the innermost failing function call (the chain nests one
// "error calling include: ..." per include).
var calledErr = regexp.MustCompile(`(?s).*error calling \w+: (.*)$`)

// cleanupExecError turns text/template's nested error chain into Helm's
// "execution error at (LOCATION): MESSAGE".
func cleanupExecError(name string, err error) error {
	var execErr template.ExecError
	if !errors.As(err, &execErr) {
		return fmt.Errorf("execution error in (%s): %v", name, err)
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %v", name, err)
	}
	msg := tokens[2]
	if m := calledErr.FindStringSubmatch(msg); m != nil {
		msg = m[1]
	}
	return fmt.Errorf("execution error at (%s): %s", tokens[1], msg)
}

func (e *Engine) funcMap(root *template.Template) template.FuncMap {
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // Helm removes these: a chart must not depend on the client's environment
	delete(funcs, "expandenv")
	depth := map[string]int{}
	include := func(name string, data interface{}) (string, error) {
		if depth[name] > maxIncludeDepth {
			return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
		}
		depth[name]++
		defer func() { depth[name]-- }()
		var buf strings.Builder
		err := root.ExecuteTemplate(&buf, name, data)
		return buf.String(), err
	}
	extra := template.FuncMap{
		"include":       include,
		"tpl":           func(text string, data interface{}) (string, error) { return e.tpl(root, text, data) },
		"required":      required,
		"fail":          func(msg string) (string, error) { return "", errors.New(msg) },
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil // helm template has no cluster to look in
		},
	}
	for name, fn := range extra {
		funcs[name] = fn
	}
	return funcs
}

// tpl renders a string as a template that sees the chart's named templates.
func (e *Engine) tpl(root *template.Template, text string, data interface{}) (string, error) {
	clone, err := root.Clone()
	if err != nil {
		return "", err
	}
	t, err := clone.New("tpl").Parse(text)
	if err != nil {
		return "", fmt.Errorf("cannot parse template %q: %v", text, err)
	}
	var buf strings.Builder
	if err := t.Execute(&buf, data); err != nil {
		return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
	}
	return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
}

// required fails with the message when the value is missing (null) or an empty string.
func required(msg string, val interface{}) (interface{}, error) {
	if val == nil {
		return val, errors.New(msg)
	}
	if s, ok := val.(string); ok && s == "" {
		return val, errors.New(msg)
	}
	return val, nil
}

// toYAML marshals like Helm's toYaml: block style, 2-space indentation, sorted keys, integral
// numbers without a fraction, no trailing newline.
func toYAML(v interface{}) string {
	norm, err := normalize(v)
	if err != nil {
		return ""
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(integralNumbers(norm)); err != nil {
		return ""
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func integralNumbers(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		for k, e := range t {
			t[k] = integralNumbers(e)
		}
	case []interface{}:
		for i, e := range t {
			t[i] = integralNumbers(e)
		}
	case float64:
		if t == float64(int64(t)) {
			return int64(t)
		}
	}
	return v
}

// fromYAML parses a mapping; on error the result holds the message under "Error" (Helm's way).
func fromYAML(s string) map[string]interface{} {
	m, err := parseValues([]byte(s), "fromYaml")
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	return m
}

func fromYAMLArray(s string) []interface{} {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(s), &raw); err != nil {
		return []interface{}{err.Error()}
	}
	norm, err := normalize(raw)
	if list, ok := norm.([]interface{}); ok && err == nil {
		return list
	}
	return []interface{}{"fromYamlArray: not a list"}
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	var list []interface{}
	if err := json.Unmarshal([]byte(s), &list); err != nil {
		return []interface{}{err.Error()}
	}
	return list
}

// docSeparator is Helm's SplitManifests separator.
var docSeparator = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

// splitManifests splits one template's output into documents, drops empty ones (blank or only
// comments; Helm keeps comment-only ones, which hold no object either) and parses the
// rest (a document that is not YAML is an error here, as under helm template).
func splitManifests(source, text string) ([]Manifest, error) {
	var out []Manifest
	for _, doc := range docSeparator.Split(strings.TrimSpace(text), -1) {
		doc = strings.TrimSpace(doc)
		if onlyComments(doc) {
			continue
		}
		var head struct {
			Kind     string `yaml:"kind"`
			Metadata struct {
				Name string `yaml:"name"`
			} `yaml:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("YAML parse error on %s: %v", source, err)
		}
		out = append(out, Manifest{Source: source, Kind: head.Kind, Name: head.Metadata.Name,
			Content: doc, order: len(out)})
	}
	return out, nil
}

// onlyComments: a document of blank and comment lines holds no object.
func onlyComments(doc string) bool {
	for _, line := range strings.Split(doc, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "#") {
			return false
		}
	}
	return true
}

// installOrder is Helm's kind order (releaseutil.InstallOrder); other kinds come last.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
	"PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
	"ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
	"CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
	"ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
	"DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
	"APIService",
}

func sortManifests(m []Manifest) {
	rank := func(kind string) int {
		for i, k := range installOrder {
			if k == kind {
				return i
			}
		}
		return len(installOrder)
	}
	sort.SliceStable(m, func(i, j int) bool {
		ri, rj := rank(m[i].Kind), rank(m[j].Kind)
		if ri != rj {
			return ri < rj
		}
		if m[i].Kind != m[j].Kind {
			return m[i].Kind < m[j].Kind
		}
		if m[i].Source != m[j].Source {
			return m[i].Source < m[j].Source
		}
		return m[i].order < m[j].order
	})
}

// formatManifests writes manifests as `helm template` does.
func formatManifests(m []Manifest) string {
	var b strings.Builder
	for _, doc := range m {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", doc.Source, doc.Content)
	}
	return b.String()
}
