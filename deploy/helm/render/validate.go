package main

// validate checks rendered manifests the way the API server and the operators reading them
// would, for the kinds this chart renders: required fields, and the references between objects
// (selectors, port names, scale targets) that no schema catches.

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// apiVersionOf lists the kinds the validator knows and the apiVersion each must use.
var apiVersionOf = map[string]string{
	"ConfigMap": "v1", "Service": "v1", "ServiceAccount": "v1", "Deployment": "apps/v1",
	"HorizontalPodAutoscaler": "autoscaling/v2", "PodDisruptionBudget": "policy/v1",
	"ServiceMonitor": "monitoring.coreos.com/v1", "ScaledObject": "keda.sh/v1alpha1",
}

// requiredLabels: every object carries the chart's standard labels.
var requiredLabels = []string{
	"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
	"app.kubernetes.io/managed-by", "helm.sh/chart",
}

var (
	dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)
	dns1035Label     = regexp.MustCompile(`^[a-z]([-a-z0-9]*[a-z0-9])?$`)
	labelValue       = regexp.MustCompile(`^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$`)
	labelName        = regexp.MustCompile(`^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$`)
	configMapKey     = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)
	drainFlag        = regexp.MustCompile(`^--drain-timeout=([0-9.]+)$`)
)

type object struct {
	source, kind, name string
	m                  map[string]interface{}
}

type validator struct {
	objects  []object
	problems []string
}

// validateManifests returns one line per problem; none means the manifests pass.
func validateManifests(manifests []Manifest) []string {
	v := &validator{}
	seen := map[string]bool{}
	for _, man := range manifests {
		var m map[string]interface{}
		if err := yaml.Unmarshal([]byte(man.Content), &m); err != nil {
			v.problems = append(v.problems, fmt.Sprintf("%s: %v", man.Source, err))
			continue
		}
		o := object{source: man.Source, kind: str(m, "kind"), name: str(m, "metadata.name"), m: m}
		key := o.kind + "/" + str(m, "metadata.namespace") + "/" + o.name
		if seen[key] {
			v.addf(o, "a second %s named %q", o.kind, o.name)
		}
		seen[key] = true
		v.objects = append(v.objects, o)
	}
	for _, o := range v.objects {
		v.checkCommon(o)
	}
	for _, o := range v.objects {
		switch o.kind {
		case "Deployment":
			v.checkDeployment(o)
		case "Service":
			v.checkService(o)
		case "HorizontalPodAutoscaler":
			v.checkHPA(o)
		case "ScaledObject":
			v.checkScaledObject(o)
		case "PodDisruptionBudget":
			v.checkPDB(o)
		case "ConfigMap":
			v.checkConfigMap(o)
		case "ServiceMonitor":
			v.checkServiceMonitor(o)
		}
	}
	return v.problems
}

func (v *validator) addf(o object, format string, args ...interface{}) {
	v.problems = append(v.problems,
		fmt.Sprintf("%s: %s %q: %s", o.source, o.kind, o.name, fmt.Sprintf(format, args...)))
}

func (v *validator) checkCommon(o object) {
	want, known := apiVersionOf[o.kind]
	switch {
	case o.kind == "":
		v.addf(o, "no kind")
	case !known:
		v.addf(o, "a kind the validator does not know")
	case str(o.m, "apiVersion") != want:
		v.addf(o, "apiVersion %q, want %q", str(o.m, "apiVersion"), want)
	}
	if len(o.name) == 0 || len(o.name) > 253 || !dns1123Subdomain.MatchString(o.name) {
		v.addf(o, "metadata.name is not a DNS-1123 subdomain")
	}
	if str(o.m, "metadata.namespace") == "" {
		v.addf(o, "no metadata.namespace")
	}
	labels := mapAt(o.m, "metadata.labels")
	for _, l := range requiredLabels {
		if _, ok := labels[l]; !ok {
			v.addf(o, "no label %s", l)
		}
	}
	v.checkLabels(o, "metadata.labels", labels)
}

func (v *validator) checkLabels(o object, where string, labels map[string]interface{}) {
	for k, val := range labels {
		s, isString := val.(string)
		if !labelName.MatchString(k) || !isString || len(s) > 63 || !labelValue.MatchString(s) {
			v.addf(o, "%s: %s: %v is not a valid label", where, k, val)
		}
	}
}

// deploymentsSelectedBy returns the Deployments whose pod template a selector selects.
func (v *validator) deploymentsSelectedBy(selector map[string]interface{}) []object {
	var out []object
	for _, d := range v.objects {
		if d.kind == "Deployment" && len(selector) > 0 &&
			subset(selector, mapAt(d.m, "spec.template.metadata.labels")) {
			out = append(out, d)
		}
	}
	return out
}

func (v *validator) find(kind, name string) (object, bool) {
	for _, o := range v.objects {
		if o.kind == kind && o.name == name {
			return o, true
		}
	}
	return object{}, false
}

func (v *validator) checkDeployment(o object) {
	selector := mapAt(o.m, "spec.selector.matchLabels")
	podLabels := mapAt(o.m, "spec.template.metadata.labels")
	if len(selector) == 0 || !subset(selector, podLabels) {
		v.addf(o, "spec.selector.matchLabels %v do not select the pod template's labels %v",
			selector, podLabels)
	}
	v.checkLabels(o, "spec.template.metadata.labels", podLabels)
	_, hasReplicas := mapAt(o.m, "spec")["replicas"]
	if v.autoscaled(o.name) && hasReplicas {
		v.addf(o, "sets spec.replicas although an autoscaler owns the replica count")
	}
	pod := mapAt(o.m, "spec.template.spec")
	volumes := v.checkVolumes(o, pod)
	containers := listAt(pod, "containers")
	if len(containers) == 0 {
		v.addf(o, "no containers")
	}
	for _, c := range listAt(pod, "initContainers") {
		v.checkContainer(o, pod, asMap(c), volumes, false)
	}
	for _, c := range containers {
		v.checkContainer(o, pod, asMap(c), volumes, true)
	}
}

// autoscaled reports whether an HPA or a ScaledObject scales the Deployment.
func (v *validator) autoscaled(deployment string) bool {
	for _, a := range v.objects {
		if (a.kind == "HorizontalPodAutoscaler" || a.kind == "ScaledObject") &&
			str(a.m, "spec.scaleTargetRef.name") == deployment {
			return true
		}
	}
	return false
}

var volumeSources = []string{"persistentVolumeClaim", "emptyDir", "configMap", "secret",
	"projected", "image", "ephemeral", "hostPath", "csi", "nfs", "downwardAPI"}

func (v *validator) checkVolumes(o object, pod map[string]interface{}) map[string]bool {
	names := map[string]bool{}
	for _, item := range listAt(pod, "volumes") {
		vol := asMap(item)
		name := str(vol, "name")
		if name == "" || names[name] {
			v.addf(o, "volume %q: no name or a second volume of that name", name)
		}
		names[name] = true
		sources := 0
		for _, s := range volumeSources {
			if _, ok := vol[s]; ok {
				sources++
				if vol[s] == nil {
					v.addf(o, "volume %q: %s is null", name, s)
				}
			}
		}
		if sources != 1 {
			v.addf(o, "volume %q: %d sources, want 1", name, sources)
		}
		if _, ok := vol["persistentVolumeClaim"]; ok && str(vol, "persistentVolumeClaim.claimName") == "" {
			v.addf(o, "volume %q: no claimName", name)
		}
	}
	return names
}

func (v *validator) checkContainer(o object, pod, c map[string]interface{}, volumes map[string]bool,
	serving bool) {
	name := str(c, "name")
	if name == "" || strings.TrimSpace(str(c, "image")) != str(c, "image") || str(c, "image") == "" {
		v.addf(o, "container %q: no name or no image", name)
	}
	for _, item := range listAt(c, "volumeMounts") {
		mount := asMap(item)
		if !volumes[str(mount, "name")] || !strings.HasPrefix(str(mount, "mountPath"), "/") {
			v.addf(o, "container %q: mount %q names no volume or has a relative path", name,
				str(mount, "name"))
		}
	}
	v.checkSecurity(o, pod, c)
	v.checkResources(o, c)
	if !serving {
		return
	}
	ports := map[int]bool{}
	for _, item := range listAt(c, "ports") {
		p := asMap(item)
		n, ok := p["containerPort"].(int)
		pn := str(p, "name")
		if !ok || n < 1 || n > 65535 || pn == "" || len(pn) > 15 || !dns1035Label.MatchString(pn) {
			v.addf(o, "container %q: port %v needs a name (IANA_SVC_NAME) and a number", name, p)
		}
		ports[n] = true
	}
	if len(ports) == 0 {
		v.addf(o, "container %q: no ports", name)
	}
	for _, probe := range []string{"startupProbe", "readinessProbe", "livenessProbe"} {
		port, ok := mapAt(c, probe+".grpc")["port"].(int)
		if !ok || !ports[port] {
			v.addf(o, "container %q: %s is not a gRPC probe on a container port", name, probe)
		}
	}
	v.checkGracePeriod(o, pod, c)
	v.checkDevice(o, c)
}

// checkDevice: a server that asks for a GPU serves on it (--device=cuda...), and one told to
// serve on CUDA has a GPU to serve on.
func (v *validator) checkDevice(o object, c map[string]interface{}) {
	gpus := false
	for k := range mapAt(c, "resources.limits") {
		gpus = gpus || strings.HasSuffix(k, "/gpu")
	}
	cuda := false
	for _, a := range listAt(c, "args") {
		cuda = cuda || strings.HasPrefix(fmt.Sprint(a), "--device=cuda")
	}
	if gpus != cuda {
		v.addf(o, "container %q: a GPU limit (%v) without --device=cuda, or the reverse (%v)",
			str(c, "name"), gpus, cuda)
	}
}

func (v *validator) checkSecurity(o object, pod, c map[string]interface{}) {
	name := str(c, "name")
	sc := mapAt(c, "securityContext")
	nonRoot := sc["runAsNonRoot"] == true ||
		(sc["runAsNonRoot"] == nil && mapAt(pod, "securityContext")["runAsNonRoot"] == true)
	if !nonRoot || sc["readOnlyRootFilesystem"] != true || sc["allowPrivilegeEscalation"] != false {
		v.addf(o, "container %q: needs runAsNonRoot, readOnlyRootFilesystem and no privilege "+
			"escalation", name)
	}
	for _, ctx := range []map[string]interface{}{sc, mapAt(pod, "securityContext")} {
		if uid, ok := ctx["runAsUser"].(int); ok && uid == 0 {
			v.addf(o, "container %q: runAsUser 0", name)
		}
	}
}

// checkResources: quantities are strings or numbers; extended resources (GPUs) cannot be
// overcommitted, so a request must equal the limit.
func (v *validator) checkResources(o object, c map[string]interface{}) {
	limits, requests := mapAt(c, "resources.limits"), mapAt(c, "resources.requests")
	for _, group := range []map[string]interface{}{limits, requests} {
		for k, q := range group {
			switch q.(type) {
			case string, int, float64:
			default:
				v.addf(o, "container %q: resource %s: %v is not a quantity", str(c, "name"), k, q)
			}
		}
	}
	for k, q := range requests {
		if strings.Contains(k, "/") && fmt.Sprint(limits[k]) != fmt.Sprint(q) {
			v.addf(o, "container %q: %s request %v differs from its limit", str(c, "name"), k, q)
		}
	}
}

// checkGracePeriod: the pod's grace period must outlast the server's drain (and a preStop sleep).
func (v *validator) checkGracePeriod(o object, pod, c map[string]interface{}) {
	drain := -1.0
	for _, a := range listAt(c, "args") {
		if m := drainFlag.FindStringSubmatch(fmt.Sprint(a)); m != nil {
			drain, _ = strconv.ParseFloat(m[1], 64)
		}
	}
	if drain < 0 {
		v.addf(o, "container %q: no --drain-timeout=SECONDS argument", str(c, "name"))
		return
	}
	sleep, _ := mapAt(c, "lifecycle.preStop.sleep")["seconds"].(int)
	grace, ok := pod["terminationGracePeriodSeconds"].(int)
	if !ok || float64(grace) <= drain+float64(sleep) {
		v.addf(o, "terminationGracePeriodSeconds %v does not exceed the preStop sleep %d s + "+
			"--drain-timeout %g s", pod["terminationGracePeriodSeconds"], sleep, drain)
	}
}

func (v *validator) checkService(o object) {
	spec := mapAt(o.m, "spec")
	if len(o.name) > 63 || !dns1035Label.MatchString(o.name) {
		v.addf(o, "a Service name must be a DNS-1035 label")
	}
	switch t := str(spec, "type"); t {
	case "ClusterIP", "NodePort", "LoadBalancer":
		if str(spec, "clusterIP") == "None" && t != "ClusterIP" {
			v.addf(o, "a headless Service must be of type ClusterIP")
		}
	default:
		v.addf(o, "type %q", t)
	}
	targets := v.deploymentsSelectedBy(mapAt(spec, "selector"))
	if len(targets) == 0 {
		v.addf(o, "spec.selector selects no rendered Deployment's pods")
	}
	names := map[string]bool{}
	for _, item := range listAt(spec, "ports") {
		p := asMap(item)
		port, ok := p["port"].(int)
		if !ok || port < 1 || port > 65535 || str(p, "name") == "" || names[str(p, "name")] {
			v.addf(o, "port %v needs a unique name and a number", p)
		}
		names[str(p, "name")] = true
		for _, d := range targets {
			if !hasContainerPort(d, p["targetPort"]) {
				v.addf(o, "port %q: targetPort %v is no container port of %s", str(p, "name"),
					p["targetPort"], d.name)
			}
		}
	}
	if len(names) == 0 {
		v.addf(o, "no ports")
	}
}

func hasContainerPort(d object, target interface{}) bool {
	for _, c := range listAt(mapAt(d.m, "spec.template.spec"), "containers") {
		for _, item := range listAt(asMap(c), "ports") {
			p := asMap(item)
			if target == p["name"] || target == p["containerPort"] {
				return true
			}
		}
	}
	return false
}

func (v *validator) checkScaleTarget(o object, path string) {
	ref := mapAt(o.m, path)
	if str(ref, "kind") != "Deployment" || str(ref, "apiVersion") != "apps/v1" {
		v.addf(o, "%s must name an apps/v1 Deployment", path)
	}
	if _, ok := v.find("Deployment", str(ref, "name")); !ok {
		v.addf(o, "%s.name %q is no rendered Deployment", path, str(ref, "name"))
	}
}

func (v *validator) checkReplicaRange(o object, minKey, maxKey string) {
	lo, okLo := mapAt(o.m, "spec")[minKey].(int)
	hi, okHi := mapAt(o.m, "spec")[maxKey].(int)
	if !okLo || !okHi || lo < 1 || lo > hi {
		v.addf(o, "want 1 <= spec.%s <= spec.%s", minKey, maxKey)
	}
}

func (v *validator) checkHPA(o object) {
	v.checkScaleTarget(o, "spec.scaleTargetRef")
	v.checkReplicaRange(o, "minReplicas", "maxReplicas")
	metrics := listAt(mapAt(o.m, "spec"), "metrics")
	if len(metrics) == 0 {
		v.addf(o, "no metrics")
	}
	for _, item := range metrics {
		m := asMap(item)
		if str(m, "type") != "Pods" || str(m, "pods.metric.name") == "" ||
			str(m, "pods.target.type") != "AverageValue" || str(m, "pods.target.averageValue") == "" {
			v.addf(o, "metric %v: want a Pods metric with an AverageValue target (a quoted quantity)", m)
		}
	}
	for _, a := range v.objects {
		if a.kind == "ScaledObject" && str(a.m, "spec.scaleTargetRef.name") == str(o.m, "spec.scaleTargetRef.name") {
			v.addf(o, "ScaledObject %q scales the same Deployment", a.name)
		}
	}
}

func (v *validator) checkScaledObject(o object) {
	v.checkScaleTarget(o, "spec.scaleTargetRef")
	v.checkReplicaRange(o, "minReplicaCount", "maxReplicaCount")
	triggers := listAt(mapAt(o.m, "spec"), "triggers")
	if len(triggers) == 0 {
		v.addf(o, "no triggers")
	}
	for _, item := range triggers {
		t := asMap(item)
		meta := mapAt(t, "metadata")
		for k, val := range meta {
			if _, ok := val.(string); !ok {
				v.addf(o, "trigger metadata %s: %v is not a string (KEDA reads strings only)", k, val)
			}
		}
		if str(t, "type") != "prometheus" || !strings.HasPrefix(str(meta, "serverAddress"), "http") ||
			str(meta, "query") == "" || str(meta, "threshold") == "" {
			v.addf(o, "trigger %v: want a prometheus trigger with serverAddress, query, threshold", t)
		}
	}
}

func (v *validator) checkPDB(o object) {
	spec := mapAt(o.m, "spec")
	_, hasMin := spec["minAvailable"]
	_, hasMax := spec["maxUnavailable"]
	if hasMin == hasMax {
		v.addf(o, "needs exactly one of minAvailable and maxUnavailable")
	}
	if len(v.deploymentsSelectedBy(mapAt(spec, "selector.matchLabels"))) == 0 {
		v.addf(o, "spec.selector.matchLabels select no rendered Deployment's pods")
	}
}

func (v *validator) checkConfigMap(o object) {
	data := mapAt(o.m, "data")
	if len(data) == 0 {
		v.addf(o, "no data")
	}
	for k, val := range data {
		s, ok := val.(string)
		if !ok || !configMapKey.MatchString(k) {
			v.addf(o, "data key %q: not a valid key with a string value", k)
			continue
		}
		var parsed map[string]interface{}
		if strings.HasSuffix(k, ".json") && json.Unmarshal([]byte(s), &parsed) != nil {
			v.addf(o, "data %q is not a JSON object", k)
		}
	}
}

func (v *validator) checkServiceMonitor(o object) {
	spec := mapAt(o.m, "spec")
	var services []object
	for _, s := range v.objects {
		if s.kind == "Service" && subset(mapAt(spec, "selector.matchLabels"), mapAt(s.m, "metadata.labels")) {
			services = append(services, s)
		}
	}
	if len(mapAt(spec, "selector.matchLabels")) == 0 || len(services) == 0 {
		v.addf(o, "spec.selector.matchLabels select no rendered Service")
	}
	endpoints := listAt(spec, "endpoints")
	if len(endpoints) == 0 {
		v.addf(o, "no endpoints")
	}
	for _, item := range endpoints {
		port := str(asMap(item), "port")
		for _, s := range services {
			if !serviceHasPort(s, port) {
				v.addf(o, "endpoint port %q is no port name of Service %s", port, s.name)
			}
		}
	}
	for _, s := range services {
		ns := listAt(spec, "namespaceSelector.matchNames")
		if !contains(ns, str(s.m, "metadata.namespace")) {
			v.addf(o, "namespaceSelector.matchNames %v misses Service %s's namespace", ns, s.name)
		}
	}
}

func serviceHasPort(s object, name string) bool {
	for _, item := range listAt(mapAt(s.m, "spec"), "ports") {
		if str(asMap(item), "name") == name {
			return true
		}
	}
	return false
}

// --- access to decoded YAML ---

func asMap(v interface{}) map[string]interface{} {
	m, _ := v.(map[string]interface{})
	return m
}

// mapAt follows a dotted path of mapping keys; nil when anything on the way is missing.
func mapAt(m map[string]interface{}, path string) map[string]interface{} {
	for _, key := range strings.Split(path, ".") {
		m = asMap(m[key])
	}
	return m
}

func str(m map[string]interface{}, path string) string {
	keys := strings.Split(path, ".")
	last := keys[len(keys)-1]
	if len(keys) > 1 {
		m = mapAt(m, strings.Join(keys[:len(keys)-1], "."))
	}
	s, _ := m[last].(string)
	return s
}

func listAt(m map[string]interface{}, path string) []interface{} {
	keys := strings.Split(path, ".")
	if len(keys) > 1 {
		m = mapAt(m, strings.Join(keys[:len(keys)-1], "."))
	}
	l, _ := m[keys[len(keys)-1]].([]interface{})
	return l
}

func subset(small, big map[string]interface{}) bool {
	for k, v := range small {
		if big[k] != v {
			return false
		}
	}
	return true
}

func contains(list []interface{}, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
