// Command render renders a Helm chart as `helm template` does, for charts that keep to the part
// of Helm's engine it implements, and checks the result. Debian packages no helm binary, but
// Helm's engine is text/template with the Sprig functions, which Debian does package.
//
//	render [flags] CHART                 the manifests on stdout, as `helm template` prints them
//	render values-table CHART            the README table of values.yaml's documented values
//	render check-values [-f FILE]... CHART
//	                                     values.yaml documented, README table current, and every
//	                                     value changing the output of some combination (each -f
//	                                     file is one combination; the defaults are another)
//
// Flags of the first form: -f/--values FILE, --set a.b=c, --set-string a.b=c (each repeatable),
// --name RELEASE, --namespace NS, --kube-version v1.30.0, --api-versions group/version
// (repeatable), --strict (a template reading a value that does not exist fails), --validate
// (check the objects' required fields and references; exit 1 on any problem), --notes.
//
// Supported: the Sprig functions (less env and expandenv, as in Helm), include, tpl, required,
// fail, toYaml, fromYaml, fromYamlArray, toJson, fromJson, fromJsonArray, lookup (always empty);
// .Values, .Release (Name, Namespace, Service, IsInstall, IsUpgrade, Revision), .Chart (Chart.yaml
// fields by Helm's names), .Files (Get, GetBytes, Glob, Lines), .Capabilities (APIVersions.Has,
// KubeVersion), .Template (Name, BasePath); Chart.yaml's kubeVersion constraint. Not supported:
// subcharts and dependencies, hooks, values.schema.json, .helmignore, --set-json, --set-file.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

type options struct {
	valuesFiles, sets, setStrings, apiVersions listFlag
	release, namespace, kubeVersion            string
	strict, validate, notes                    bool
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	mode := "template"
	if len(args) > 0 && (args[0] == "values-table" || args[0] == "check-values") {
		mode, args = args[0], args[1:]
	}
	opts, chartDir, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "render:", err)
		return 2
	}
	chart, err := loadChart(chartDir)
	if err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return 1
	}
	for _, w := range chart.Warnings {
		fmt.Fprintln(stderr, "render: warning:", w)
	}
	var problems []string
	switch mode {
	case "values-table":
		var table string
		table, problems, err = valuesTable(chart)
		fmt.Fprint(stdout, table)
	case "check-values":
		problems, err = checkValues(chart, opts)
	default:
		problems, err = renderTemplate(chart, opts, stdout)
	}
	if err != nil {
		fmt.Fprintln(stderr, "Error:", err)
		return 1
	}
	for _, p := range problems {
		fmt.Fprintln(stderr, "render: problem:", p)
	}
	if len(problems) > 0 {
		return 1
	}
	return 0
}

func parseFlags(args []string, stderr io.Writer) (options, string, error) {
	var o options
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Var(&o.valuesFiles, "f", "values file (repeatable)")
	fs.Var(&o.valuesFiles, "values", "values file (repeatable)")
	fs.Var(&o.sets, "set", "a.b=value (repeatable; typed as Helm types them)")
	fs.Var(&o.setStrings, "set-string", "a.b=value (repeatable; always a string)")
	fs.Var(&o.apiVersions, "api-versions", "an extra API version for .Capabilities (repeatable)")
	fs.StringVar(&o.release, "name", "release-name", "release name")
	fs.StringVar(&o.namespace, "namespace", "default", "release namespace")
	fs.StringVar(&o.kubeVersion, "kube-version", "v1.30.0", "Kubernetes version for .Capabilities")
	fs.BoolVar(&o.strict, "strict", false, "fail on a template reading a value that does not exist")
	fs.BoolVar(&o.validate, "validate", false, "check the rendered objects")
	fs.BoolVar(&o.notes, "notes", false, "print NOTES.txt after the manifests")
	if err := fs.Parse(args); err != nil {
		return o, "", err
	}
	if fs.NArg() != 1 {
		return o, "", fmt.Errorf("want exactly one chart directory after the flags, got %q", fs.Args())
	}
	return o, fs.Arg(0), nil
}

func newEngine(chart *Chart, o options) (*Engine, error) {
	kube, err := parseKubeVersion(o.kubeVersion)
	if err != nil {
		return nil, err
	}
	apis := append(append(VersionSet{}, defaultAPIVersions...), o.apiVersions...)
	return &Engine{
		Chart:        chart,
		Release:      Release{Name: o.release, Namespace: o.namespace, Service: "Helm", IsInstall: true, Revision: 1},
		Capabilities: Capabilities{APIVersions: apis, KubeVersion: kube},
		Strict:       o.strict,
	}, nil
}

// userValues merges the -f files and then the --set expressions, in order.
func userValues(o options) (Values, error) {
	user := Values{}
	for _, f := range o.valuesFiles {
		v, err := readValuesFile(f)
		if err != nil {
			return nil, err
		}
		mergeInto(user, v)
	}
	sets := Values{}
	for _, s := range o.sets {
		if err := applySet(sets, s, true); err != nil {
			return nil, err
		}
	}
	for _, s := range o.setStrings {
		if err := applySet(sets, s, false); err != nil {
			return nil, err
		}
	}
	mergeInto(user, sets)
	return user, nil
}

func renderTemplate(chart *Chart, o options, stdout io.Writer) ([]string, error) {
	engine, err := newEngine(chart, o)
	if err != nil {
		return nil, err
	}
	user, err := userValues(o)
	if err != nil {
		return nil, err
	}
	manifests, notes, err := engine.Render(coalesce(user, chart.Defaults))
	if err != nil {
		return nil, err
	}
	fmt.Fprint(stdout, formatManifests(manifests))
	if o.notes {
		fmt.Fprint(stdout, "\nNOTES:\n"+notes)
	}
	if !o.validate {
		return nil, nil
	}
	return validateManifests(manifests), nil
}

func checkValues(chart *Chart, o options) ([]string, error) {
	if len(o.sets) > 0 || len(o.setStrings) > 0 {
		return nil, fmt.Errorf("check-values takes combinations as -f files, not --set")
	}
	table, problems, err := valuesTable(chart)
	if err != nil {
		return nil, err
	}
	problems = append(problems, checkReadme(chart, table)...)
	engine, err := newEngine(chart, o)
	if err != nil {
		return nil, err
	}
	combos := []Values{{}}
	for _, f := range o.valuesFiles {
		v, err := readValuesFile(f)
		if err != nil {
			return nil, err
		}
		combos = append(combos, v)
	}
	unused, err := unusedValues(engine, combos)
	if err != nil {
		return nil, err
	}
	for _, u := range unused {
		problems = append(problems, fmt.Sprintf("values.yaml: %s changes nothing rendered in any "+
			"combination (unused, or no combination exercises it)", u))
	}
	return problems, nil
}

func sortedKeys(m map[string]interface{}) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
