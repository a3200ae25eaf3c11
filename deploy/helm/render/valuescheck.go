package main

// Checks on values.yaml: every value documented, the chart README's table in step with the
// comments, and no value the templates ignore.
//
// Documentation follows helm-docs: a key whose comment starts with "# --" is a documented value
// (its whole subtree, for free-form maps such as resources); other keys are sections and carry a
// plain comment; every leaf lies under a documented key.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"

	"gopkg.in/yaml.v3"
)

// docValue is one documented value: a row of the README table.
type docValue struct {
	path        []string
	description string
}

func joinPath(path []string) string { return strings.Join(path, ".") }

// documentedValues walks values.yaml's comments; problems name undocumented keys.
func documentedValues(source []byte) ([]docValue, []string, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(source, &doc); err != nil {
		return nil, nil, err
	}
	if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode {
		return nil, nil, fmt.Errorf("values.yaml: the top level is not a mapping")
	}
	var docs []docValue
	var problems []string
	var walk func(node *yaml.Node, prefix []string)
	walk = func(node *yaml.Node, prefix []string) {
		for i := 0; i+1 < len(node.Content); i += 2 {
			key, value := node.Content[i], node.Content[i+1]
			path := append(append([]string{}, prefix...), key.Value)
			if desc, ok := descriptionOf(key.HeadComment); ok {
				docs = append(docs, docValue{path: path, description: desc})
				continue
			}
			switch {
			case value.Kind != yaml.MappingNode || len(value.Content) == 0:
				problems = append(problems, fmt.Sprintf("values.yaml: %s has no \"# --\" description",
					joinPath(path)))
			case strings.TrimSpace(key.HeadComment) == "":
				problems = append(problems, fmt.Sprintf("values.yaml: section %s has no comment",
					joinPath(path)))
			default:
				walk(value, path)
			}
		}
	}
	walk(doc.Content[0], nil)
	return docs, problems, nil
}

// descriptionOf returns the text from a comment's "# --" line on, as one line.
func descriptionOf(comment string) (string, bool) {
	lines := strings.Split(comment, "\n")
	for i, line := range lines {
		if !strings.HasPrefix(line, "# --") {
			continue
		}
		words := []string{strings.TrimSpace(strings.TrimPrefix(line, "# --"))}
		for _, more := range lines[i+1:] {
			words = append(words, strings.TrimSpace(strings.TrimPrefix(more, "#")))
		}
		return strings.TrimSpace(strings.Join(words, " ")), true
	}
	return "", false
}

// valueAt follows path through a values tree.
func valueAt(v interface{}, path []string) (interface{}, bool) {
	for _, key := range path {
		m, ok := v.(map[string]interface{})
		if !ok {
			return nil, false
		}
		if v, ok = m[key]; !ok {
			return nil, false
		}
	}
	return v, true
}

func compactJSON(v interface{}) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return "?"
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

// valuesTable renders the README's table of values from values.yaml.
func valuesTable(c *Chart) (string, []string, error) {
	docs, problems, err := documentedValues(c.ValuesSource)
	if err != nil {
		return "", nil, err
	}
	cell := func(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
	var b strings.Builder
	b.WriteString("| Key | Default | Description |\n| --- | --- | --- |\n")
	for _, d := range docs {
		def, _ := valueAt(c.Defaults, d.path)
		fmt.Fprintf(&b, "| `%s` | `%s` | %s |\n", joinPath(d.path), cell(compactJSON(def)),
			cell(d.description))
	}
	return b.String(), problems, nil
}

// checkReadme: the chart README holds the table exactly as values.yaml generates it.
func checkReadme(c *Chart, table string) []string {
	readme := string(c.Files["README.md"])
	if strings.Contains(readme, table) {
		return nil
	}
	var problems []string
	for _, row := range strings.Split(strings.TrimSuffix(table, "\n"), "\n") {
		if !strings.Contains(readme, row+"\n") {
			problems = append(problems, "README.md: missing or stale row: "+row)
		}
	}
	if len(problems) == 0 {
		problems = append(problems, "README.md: the values table has rows values.yaml lacks or "+
			"rows out of order")
	}
	return append(problems, "README.md: regenerate the table with `render values-table CHART`")
}

// leafPaths lists every scalar, list and empty map of a values tree.
func leafPaths(v interface{}, prefix []string) [][]string {
	m, ok := v.(map[string]interface{})
	if !ok || len(m) == 0 {
		return [][]string{prefix}
	}
	var out [][]string
	for _, k := range sortedKeys(m) {
		out = append(out, leafPaths(m[k], append(append([]string{}, prefix...), k))...)
	}
	return out
}

// mutated returns a different value of the same shape.
func mutated(v interface{}) interface{} {
	switch t := v.(type) {
	case bool:
		return !t
	case float64:
		return t + 1
	case int64:
		return t + 1
	case string:
		return t + "probe"
	case []interface{}:
		return append(append([]interface{}{}, t...), "probe")
	case map[string]interface{}:
		return map[string]interface{}{"probe": "probe"}
	default:
		return "probe"
	}
}

func setAt(values Values, path []string, v interface{}) {
	m := values
	for _, key := range path[:len(path)-1] {
		m = m[key].(map[string]interface{})
	}
	m[path[len(path)-1]] = v
}

// renderText is everything a user sees of a rendering: the manifests, NOTES.txt, or the error.
func renderText(e *Engine, values Values) string {
	manifests, notes, err := e.Render(values)
	if err != nil {
		return "error: " + err.Error()
	}
	return formatManifests(manifests) + notes
}

// unusedValues returns the leaves of values.yaml that change nothing rendered, whatever they
// are set to, in every combination of user values given (each coalesced over the defaults).
func unusedValues(e *Engine, combos []Values) ([]string, error) {
	type combo struct {
		values Values
		base   string
	}
	var prepared []combo
	for i, user := range combos {
		values := coalesce(user, e.Chart.Defaults)
		base := renderText(e, values)
		if strings.HasPrefix(base, "error: ") {
			return nil, fmt.Errorf("combination %d does not render: %s", i, base)
		}
		prepared = append(prepared, combo{values, base})
	}
	var unused []string
	for _, path := range leafPaths(e.Chart.Defaults, nil) {
		used := false
		for _, c := range prepared {
			current, ok := valueAt(c.values, path)
			if !ok {
				continue
			}
			values := deepCopyValue(c.values).(map[string]interface{})
			setAt(values, path, mutated(current))
			if renderText(e, values) != c.base {
				used = true
				break
			}
		}
		if !used {
			unused = append(unused, joinPath(path))
		}
	}
	return unused, nil
}
