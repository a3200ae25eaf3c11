package main

// Values the way Helm builds them: values.yaml, then each -f file, then each --set, where a
// null in a later source deletes the key. Numbers from YAML files are float64 (Helm reads YAML
// through JSON), numbers from --set are int64 (Helm's strvals), so templates that compare or
// print numbers must convert them (int64, float64) exactly as they must under Helm.

import (
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Values is a tree of map[string]interface{}, []interface{} and JSON scalars.
type Values = map[string]interface{}

// normalize converts a YAML-decoded tree to its JSON form (float64 numbers, string keys).
func normalize(v interface{}) (interface{}, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var out interface{}
	if err := json.Unmarshal(data, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// parseValues decodes one YAML document holding a mapping (an empty document is {}).
func parseValues(data []byte, what string) (Values, error) {
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	if raw == nil {
		return Values{}, nil
	}
	norm, err := normalize(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err)
	}
	m, ok := norm.(map[string]interface{})
	if !ok {
		return nil, fmt.Errorf("%s: the top level is not a mapping", what)
	}
	return m, nil
}

func readValuesFile(path string) (Values, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return parseValues(data, path)
}

// mergeInto deep-merges src into dst (src wins; maps merge key by key; nulls are kept so that
// coalesce can delete the defaults they override).
func mergeInto(dst, src Values) {
	for k, sv := range src {
		sm, sIsMap := sv.(map[string]interface{})
		dm, dIsMap := dst[k].(map[string]interface{})
		if sIsMap && dIsMap {
			mergeInto(dm, sm)
			continue
		}
		dst[k] = deepCopyValue(sv)
	}
}

// coalesce returns the defaults overridden by user values; a user null deletes the key.
func coalesce(user, defaults Values) Values {
	out := deepCopyValue(defaults).(map[string]interface{})
	for k, uv := range user {
		if uv == nil {
			delete(out, k)
			continue
		}
		um, uIsMap := uv.(map[string]interface{})
		dm, dIsMap := out[k].(map[string]interface{})
		if uIsMap && dIsMap {
			out[k] = coalesce(um, dm)
			continue
		}
		out[k] = deepCopyValue(stripNulls(uv))
	}
	return out
}

// stripNulls drops null map entries of a user value that has no default to delete.
func stripNulls(v interface{}) interface{} {
	m, ok := v.(map[string]interface{})
	if !ok {
		return v
	}
	out := map[string]interface{}{}
	for k, e := range m {
		if e != nil {
			out[k] = stripNulls(e)
		}
	}
	return out
}

func deepCopyValue(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		out := make(map[string]interface{}, len(t))
		for k, e := range t {
			out[k] = deepCopyValue(e)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, e := range t {
			out[i] = deepCopyValue(e)
		}
		return out
	default:
		return v
	}
}

// applySet applies one --set (typed) or --set-string expression: "a.b=1,c[0].d=x,e={p,q}".
// Dots and commas in keys or values are escaped with a backslash.
func applySet(into Values, expr string, typed bool) error {
	for _, pair := range splitUnescaped(expr, ',', true) {
		eq := indexUnescaped(pair, '=')
		if eq <= 0 {
			return fmt.Errorf("--set %q: want key=value", pair)
		}
		key, raw := pair[:eq], pair[eq+1:]
		var val interface{} = unescape(raw)
		if typed {
			val = typedValue(raw)
		}
		if err := setPath(into, splitUnescaped(key, '.', false), val); err != nil {
			return fmt.Errorf("--set %q: %v", pair, err)
		}
	}
	return nil
}

// typedValue follows Helm's strvals: true/false/null, integers as int64, {a,b} as a list,
// everything else (floats included) a string.
func typedValue(raw string) interface{} {
	switch raw {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
		list := []interface{}{}
		if inner := raw[1 : len(raw)-1]; inner != "" {
			for _, item := range splitUnescaped(inner, ',', false) {
				list = append(list, typedValue(item))
			}
		}
		return list
	}
	if n, err := strconv.ParseInt(raw, 10, 64); err == nil && (raw == "0" || !strings.HasPrefix(raw, "0")) {
		return n
	}
	return unescape(raw)
}

// setPath sets a dotted path whose segments may end in [index].
func setPath(node Values, segments []string, val interface{}) error {
	seg := unescape(segments[0])
	last := len(segments) == 1
	name, index, hasIndex, err := splitIndex(seg)
	if err != nil {
		return err
	}
	if !hasIndex {
		if last {
			node[name] = val
			return nil
		}
		child, ok := node[name].(map[string]interface{})
		if !ok {
			child = Values{}
			node[name] = child
		}
		return setPath(child, segments[1:], val)
	}
	list, _ := node[name].([]interface{})
	for len(list) <= index {
		list = append(list, nil)
	}
	node[name] = list
	if last {
		list[index] = val
		return nil
	}
	child, ok := list[index].(map[string]interface{})
	if !ok {
		child = Values{}
		list[index] = child
	}
	return setPath(child, segments[1:], val)
}

func splitIndex(seg string) (name string, index int, hasIndex bool, err error) {
	open := strings.IndexByte(seg, '[')
	if open < 0 || !strings.HasSuffix(seg, "]") {
		return seg, 0, false, nil
	}
	index, err = strconv.Atoi(seg[open+1 : len(seg)-1])
	if err != nil || index < 0 || index > 65535 {
		return "", 0, false, fmt.Errorf("bad list index in %q", seg)
	}
	return seg[:open], index, true, nil
}

// splitUnescaped splits on sep where it is not escaped (and, with braces, not inside {...}),
// keeping escapes for the caller to remove.
func splitUnescaped(s string, sep byte, braces bool) []string {
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\':
			i++
		case braces && s[i] == '{':
			depth++
		case braces && s[i] == '}' && depth > 0:
			depth--
		case s[i] == sep && depth == 0:
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

func indexUnescaped(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' {
			i++
		} else if s[i] == c {
			return i
		}
	}
	return -1
}

func unescape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
