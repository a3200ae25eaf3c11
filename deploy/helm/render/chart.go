package main

// Loading a chart directory the way Helm's loader does: Chart.yaml, values.yaml, templates/
// (every file, recursively) and every other file as .Files (symbolic links followed).

import (
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// Chart is a loaded chart. Templates are keyed by their Helm name, "<chart>/templates/<file>".
type Chart struct {
	Dir          string
	Name         string
	Metadata     map[string]interface{} // .Chart: Name, Version, AppVersion, ...
	Defaults     Values                 // values.yaml
	ValuesSource []byte                 // values.yaml as written (for its comments)
	Templates    map[string]string
	Files        Files
	Warnings     []string
}

// chartFields maps Chart.yaml keys to the names templates see under .Chart.
var chartFields = map[string]string{
	"apiVersion": "APIVersion", "name": "Name", "version": "Version", "appVersion": "AppVersion",
	"description": "Description", "type": "Type", "kubeVersion": "KubeVersion",
	"keywords": "Keywords", "home": "Home", "sources": "Sources", "icon": "Icon",
	"maintainers": "Maintainers", "annotations": "Annotations", "deprecated": "Deprecated",
}

func loadChart(dir string) (*Chart, error) {
	c := &Chart{Dir: dir, Templates: map[string]string{}, Files: Files{}}
	if err := c.loadMetadata(); err != nil {
		return nil, err
	}
	values, err := os.ReadFile(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return nil, err
	}
	c.ValuesSource = values
	if c.Defaults, err = parseValues(values, "values.yaml"); err != nil {
		return nil, err
	}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		return c.addFile(filepath.ToSlash(rel), p)
	})
	return c, err
}

func (c *Chart) loadMetadata() error {
	data, err := os.ReadFile(filepath.Join(c.Dir, "Chart.yaml"))
	if err != nil {
		return err
	}
	var raw map[string]interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return fmt.Errorf("Chart.yaml: %v", err)
	}
	c.Metadata = map[string]interface{}{}
	for key, field := range chartFields {
		c.Metadata[field] = raw[key]
	}
	for key := range raw {
		if _, known := chartFields[key]; !known {
			return fmt.Errorf("Chart.yaml: unknown field %q", key)
		}
	}
	name, _ := raw["name"].(string)
	version, _ := raw["version"].(string)
	if raw["apiVersion"] != "v2" || name == "" || version == "" {
		return fmt.Errorf("Chart.yaml: needs apiVersion v2, name and version")
	}
	c.Name = name
	return nil
}

// addFile sorts one chart file into templates or .Files; the chart's own metadata files are
// neither, as in Helm.
func (c *Chart) addFile(rel, full string) error {
	switch rel {
	case "Chart.yaml", "Chart.lock", "values.yaml", "values.schema.json":
		return nil
	}
	if strings.HasPrefix(rel, "charts/") {
		return fmt.Errorf("%s: subcharts are not supported", rel)
	}
	data, err := os.ReadFile(full) // follows symbolic links
	if err != nil {
		// A dangling link (a file another change has not added yet) is a warning here; a
		// template that needs the file fails with its own message.
		c.Warnings = append(c.Warnings, fmt.Sprintf("skipping %s: %v", rel, err))
		return nil
	}
	if strings.HasPrefix(rel, "templates/") {
		c.Templates[c.Name+"/"+rel] = string(data)
		return nil
	}
	c.Files[rel] = data
	return nil
}

// templateNames returns the templates in the order Helm renders them (by name).
func (c *Chart) templateNames() []string {
	names := make([]string, 0, len(c.Templates))
	for n := range c.Templates {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// isPartial: files whose name starts with "_" only define templates.
func isPartial(name string) bool { return strings.HasPrefix(path.Base(name), "_") }

// isNotes: NOTES.txt is rendered (so that its errors show) but is not a manifest.
func isNotes(name string) bool { return strings.HasSuffix(name, "/templates/NOTES.txt") }

// Files is .Files: the chart's non-template files by path relative to the chart.
type Files map[string][]byte

// Get returns a file's contents, or "" when there is no such file (as Helm does).
func (f Files) Get(name string) string { return string(f[name]) }

// GetBytes returns a file's contents as bytes.
func (f Files) GetBytes(name string) []byte { return f[name] }

// Glob returns the files whose path matches a shell pattern.
func (f Files) Glob(pattern string) Files {
	out := Files{}
	for name, data := range f {
		if ok, _ := path.Match(pattern, name); ok {
			out[name] = data
		}
	}
	return out
}

// Lines returns a file's lines.
func (f Files) Lines(name string) []string {
	if len(f[name]) == 0 {
		return []string{}
	}
	return strings.Split(strings.TrimSuffix(string(f[name]), "\n"), "\n")
}
