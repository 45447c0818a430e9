package flow

import (
	"encoding/json"
	"fmt"
	"strings"
)

// wireMatrix is the serialized form of a Matrix: the domains with their
// roles, and every cell that lets something through. Cells not listed are
// none.
type wireMatrix struct {
	Domains []Domain `json:"domains"`
	Rows    []Row    `json:"rows"`
}

// MarshalJSON encodes the matrix in its serialized form, which plans carry
// to the agents.
func (m *Matrix) MarshalJSON() ([]byte, error) {
	return json.Marshal(wireMatrix{Domains: m.domains, Rows: m.Rows()})
}

// MaxWireSize bounds a serialized matrix accepted by UnmarshalMatrix.
const MaxWireSize = 64 << 20

// UnmarshalMatrix decodes a matrix serialized by MarshalJSON. The input is
// untrusted: every name, index and rule is checked.
func UnmarshalMatrix(b []byte) (*Matrix, error) {
	if len(b) > MaxWireSize {
		return nil, fmt.Errorf("flow matrix: %d bytes; at most %d are accepted", len(b), MaxWireSize)
	}
	var w wireMatrix
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("flow matrix: %w", err)
	}
	for _, d := range w.Domains {
		if d.Name == "" || strings.Contains(d.Name, "/") {
			return nil, fmt.Errorf("flow matrix: invalid domain name %q", d.Name)
		}
		seen := map[string]bool{}
		for _, r := range d.Roles {
			if r == "" || strings.Contains(r, "/") || seen[r] {
				return nil, fmt.Errorf("flow matrix: domain %q: invalid or duplicate role %q", d.Name, r)
			}
			seen[r] = true
		}
	}
	b2, err := NewBuilder(w.Domains)
	if err != nil {
		return nil, fmt.Errorf("flow matrix: %w", err)
	}
	m := b2.m
	for _, r := range w.Rows {
		d, role, ok := strings.Cut(r.From, "/")
		if !ok {
			return nil, fmt.Errorf("flow matrix: row from %q: want domain/role", r.From)
		}
		src, ok := m.Class(d, role)
		if !ok {
			return nil, fmt.Errorf("flow matrix: row from unknown class %q", r.From)
		}
		dst, ok := m.byName[r.To]
		if !ok {
			return nil, fmt.Errorf("flow matrix: row to unknown domain %q", r.To)
		}
		if dst == int(m.classDom[src]) {
			return nil, fmt.Errorf("flow matrix: row %s -> %s is intra-domain", r.From, r.To)
		}
		rule, err := ParseRule(r.Rule)
		if err != nil {
			return nil, fmt.Errorf("flow matrix: row %s -> %s: %w", r.From, r.To, err)
		}
		var mask uint64
		for _, name := range r.Roles {
			c, ok := m.Class(r.To, name)
			if !ok {
				return nil, fmt.Errorf("flow matrix: row %s -> %s: unknown role %q", r.From, r.To, name)
			}
			mask |= 1 << uint(c-m.classOff[dst])
		}
		if rule == RulePointToPoint && mask == 0 {
			return nil, fmt.Errorf("flow matrix: row %s -> %s: point-to-point with no roles", r.From, r.To)
		}
		b2.Set(src, dst, rule, mask)
	}
	return b2.Build(), nil
}
