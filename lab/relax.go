package lab

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"

	"github.com/tvd-dev/tvd/policy"
)

// Relaxation is one change the lab made to its copy of the policy.
type Relaxation struct {
	File   string `json:"file"`
	Line   int    `json:"line"`
	Domain string `json:"domain"`
	Field  string `json:"field"`
	From   string `json:"from"`
	To     string `json:"to"`
}

func (r Relaxation) String() string {
	return fmt.Sprintf("%s:%d: domain %s: %s %s -> %s", r.File, r.Line, r.Domain, r.Field, r.From, r.To)
}

// RelaxIsolation returns a copy of files in which every Domain whose
// membership asks for strong isolation (explicitly, or by default when it
// names none) asks for eeIsolation instead, when the lab's EEs provide only
// weak isolation. It edits the text in place, so comments, layout and every
// other line stay as they were. With eeIsolation "strong" it returns the
// files unchanged.
func RelaxIsolation(files []policy.File, eeIsolation string) ([]policy.File, []Relaxation, error) {
	out := make([]policy.File, len(files))
	copy(out, files)
	if eeIsolation == "strong" {
		return out, nil, nil
	}
	var changes []Relaxation
	for i, f := range files {
		dec := yaml.NewDecoder(bytes.NewReader(f.Content))
		var edits []textEdit
		for {
			var doc yaml.Node
			err := dec.Decode(&doc)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w", f.Name, cleanYAMLError(err))
			}
			if len(doc.Content) == 0 || doc.Content[0].Kind != yaml.MappingNode || len(doc.Content[0].Content) == 0 {
				continue
			}
			m := doc.Content[0]
			if v := mapValue(m, "kind"); v == nil || v.Value != "Domain" {
				continue
			}
			name := ""
			if v := mapValue(m, "name"); v != nil {
				name = v.Value
			}
			r := Relaxation{File: f.Name, Domain: name, Field: "membership.isolation", From: "strong", To: eeIsolation}
			mem := mapValue(m, "membership")
			switch {
			case mem == nil:
				// No membership: strong by default. Add one before the
				// document's first key.
				k := m.Content[0]
				r.Line, r.From = k.Line, "strong (default)"
				edits = append(edits, textEdit{line: k.Line, col: 1, text: strings.Repeat(" ", k.Column-1) + "membership: {isolation: " + eeIsolation + "}\n"})
			case mem.Kind != yaml.MappingNode:
				continue // the policy checker reports it
			default:
				iso := mapValue(mem, "isolation")
				switch {
				case iso == nil && mem.Style&yaml.FlowStyle != 0:
					r.Line, r.From = mem.Line, "strong (default)"
					text := "isolation: " + eeIsolation
					if len(mem.Content) > 0 {
						text += ", "
					}
					edits = append(edits, textEdit{line: mem.Line, col: mem.Column + 1, text: text})
				case iso == nil && len(mem.Content) > 0:
					k := mem.Content[0]
					r.Line, r.From = k.Line, "strong (default)"
					edits = append(edits, textEdit{line: k.Line, col: 1, text: strings.Repeat(" ", k.Column-1) + "isolation: " + eeIsolation + "\n"})
				case iso != nil && iso.Kind == yaml.ScalarNode && iso.Value == "strong" && iso.Style == 0:
					r.Line = iso.Line
					edits = append(edits, textEdit{line: iso.Line, col: iso.Column, del: len("strong"), text: eeIsolation})
				default:
					continue
				}
			}
			changes = append(changes, r)
		}
		if len(edits) == 0 {
			continue
		}
		b, err := applyEdits(f.Content, edits)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.Name, err)
		}
		out[i] = policy.File{Name: f.Name, Content: b}
	}
	return out, changes, nil
}

// textEdit replaces del bytes at (line, col), both 1-based, col counted
// in characters, with text.
type textEdit struct {
	line, col, del int
	text           string
}

func applyEdits(src []byte, edits []textEdit) ([]byte, error) {
	lines := strings.SplitAfter(string(src), "\n")
	// Last edit first, so earlier positions stay valid.
	sort.Slice(edits, func(i, j int) bool {
		if edits[i].line != edits[j].line {
			return edits[i].line > edits[j].line
		}
		return edits[i].col > edits[j].col
	})
	for _, e := range edits {
		if e.line < 1 || e.line > len(lines) {
			return nil, fmt.Errorf("line %d outside the file", e.line)
		}
		l := lines[e.line-1]
		off := runeOffset(l, e.col-1)
		if off < 0 || off+e.del > len(l) {
			return nil, fmt.Errorf("%d:%d: outside the line", e.line, e.col)
		}
		lines[e.line-1] = l[:off] + e.text + l[off+e.del:]
	}
	return []byte(strings.Join(lines, "")), nil
}

func mapValue(m *yaml.Node, key string) *yaml.Node {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// runeOffset returns the byte offset of the n-th rune of s, or -1.
func runeOffset(s string, n int) int {
	if n < 0 {
		return -1
	}
	off := 0
	for k := 0; k < n; k++ {
		if off >= len(s) {
			return -1
		}
		_, size := utf8.DecodeRuneInString(s[off:])
		off += size
	}
	return off
}
