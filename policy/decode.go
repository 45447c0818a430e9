package policy

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Limits on policy sources. They keep a hostile or broken file from using
// unbounded memory.
const (
	MaxFileSize  = 4 << 20
	MaxDocuments = 10000
	maxDepth     = 32
)

// decoder turns YAML nodes of one file into the source model, collecting
// every problem.
type decoder struct {
	file string
	e    *errs
}

func (d *decoder) pos(n *yaml.Node) Pos { return Pos{File: d.file, Line: n.Line, Col: n.Column} }

func (d *decoder) errf(n *yaml.Node, format string, args ...any) {
	d.e.add(d.pos(n), format, args...)
}

var yamlLine = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parseFile decodes every document of one file into p.
func parseFile(p *Policy, f File, e *errs) {
	d := &decoder{file: f.Name, e: e}
	if len(f.Content) > MaxFileSize {
		e.add(Pos{File: f.Name, Line: 1, Col: 1}, "file is %d bytes; policy files may be at most %d bytes", len(f.Content), MaxFileSize)
		return
	}
	dec := yaml.NewDecoder(bytes.NewReader(f.Content))
	for i := 0; ; i++ {
		if i >= MaxDocuments {
			e.add(Pos{File: f.Name, Line: 1, Col: 1}, "more than %d documents in one file", MaxDocuments)
			return
		}
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			line, msg := 1, err.Error()
			if m := yamlLine.FindStringSubmatch(msg); m != nil {
				line, _ = strconv.Atoi(m[1])
				msg = m[2]
			} else {
				msg = strings.TrimPrefix(msg, "yaml: ")
			}
			e.add(Pos{File: f.Name, Line: line, Col: 1}, "invalid YAML: %s", msg)
			return
		}
		if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document, e.g. after a trailing ---
		}
		if !d.safe(root, 0) {
			continue
		}
		d.document(p, root)
	}
}

// safe rejects aliases and deep nesting before any field is read.
func (d *decoder) safe(n *yaml.Node, depth int) bool {
	if depth > maxDepth {
		d.errf(n, "nesting deeper than %d levels", maxDepth)
		return false
	}
	if n.Kind == yaml.AliasNode {
		d.errf(n, "YAML aliases (*%s) are not supported in policies; write the value out", n.Value)
		return false
	}
	for _, c := range n.Content {
		if !d.safe(c, depth+1) {
			return false
		}
	}
	return true
}

// kinds lists the document kinds and their decoders.
var kinds = []string{"Claims", "Domain", "Issuer", "Mapping", "ReferenceValues", "Tests"}

func (d *decoder) document(p *Policy, n *yaml.Node) {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "a policy document must be a mapping with a kind field; got %s", describe(n))
		return
	}
	var kind *yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == "kind" {
			kind = n.Content[i+1]
		}
	}
	if kind == nil {
		d.errf(n, "document has no kind; expected one of: %s", strings.Join(kinds, ", "))
		return
	}
	switch kind.Value {
	case "Domain":
		p.Domains = append(p.Domains, d.domain(n))
	case "ReferenceValues":
		p.ReferenceValues = append(p.ReferenceValues, d.refValues(n))
	case "Claims":
		p.Claims = append(p.Claims, d.claims(n))
	case "Issuer":
		p.Issuers = append(p.Issuers, d.issuer(n))
	case "Mapping":
		p.Mappings = append(p.Mappings, d.mapping(n))
	case "Tests":
		p.Tests = append(p.Tests, d.tests(n))
	case "Scenario":
		// A lab scenario (package lab) may sit beside the policy it
		// deploys; it is not part of the policy.
	default:
		d.errf(kind, "unknown kind %q; expected one of: %s%s", kind.Value, strings.Join(kinds, ", "), suggest(kind.Value, kinds))
	}
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unsupported YAML node"
}

// fields maps a field name to its decoder.
type fields map[string]func(v *yaml.Node)

// object decodes a mapping node field by field. It reports unknown fields,
// duplicate fields and missing required ones, and returns false when n is
// not a mapping.
func (d *decoder) object(n *yaml.Node, what string, f fields, required ...string) bool {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "%s must be a mapping; got %s", what, describe(n))
		return false
	}
	names := make([]string, 0, len(f))
	for k := range f {
		names = append(names, k)
	}
	sort.Strings(names)
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.errf(k, "%s: field names must be plain strings", what)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errf(k, "%s: field %q given twice (first at line %d)", what, k.Value, first.Line)
			continue
		}
		seen[k.Value] = k
		fn, ok := f[k.Value]
		if !ok {
			d.errf(k, "unknown field %q in %s%s; expected one of: %s", k.Value, what, suggest(k.Value, names), strings.Join(names, ", "))
			continue
		}
		fn(v)
	}
	for _, r := range required {
		if _, ok := seen[r]; !ok {
			d.errf(n, "%s is missing required field %q", what, r)
		}
	}
	return true
}

func (d *decoder) str(n *yaml.Node, what string) string {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		d.errf(n, "%s must be a string; got %s", what, describe(n))
		return ""
	}
	return n.Value
}

func (d *decoder) name(n *yaml.Node, what string) Name {
	return Name{Value: d.str(n, what), Pos: d.pos(n)}
}

var labelRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// label decodes a name that becomes part of identities, interface names and
// URIs: lower-case letters, digits and dashes, at most 63 characters.
func (d *decoder) label(n *yaml.Node, what string) Name {
	nm := d.name(n, what)
	if nm.Value != "" && !labelRE.MatchString(nm.Value) {
		d.errf(n, "%s %q is not a valid name; expected lower-case letters, digits and dashes, starting and ending with a letter or digit, at most 63 characters", what, nm.Value)
	}
	return nm
}

func (d *decoder) boolean(n *yaml.Node, what string) bool {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		d.errf(n, "%s must be true or false; got %s", what, describe(n))
		return false
	}
	return n.Value == "true"
}

func (d *decoder) integer(n *yaml.Node, what string) int64 {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!int" {
		v, err := strconv.ParseInt(n.Value, 0, 64)
		if err == nil {
			return v
		}
	}
	d.errf(n, "%s must be a whole number; got %s", what, describe(n))
	return 0
}

func (d *decoder) duration(n *yaml.Node, what string) time.Duration {
	s := d.str(n, what)
	if s == "" {
		return 0
	}
	v, err := time.ParseDuration(s)
	if err != nil || v <= 0 {
		d.errf(n, "%s must be a positive duration such as 10s or 1m30s; got %q", what, s)
		return 0
	}
	return v
}

func (d *decoder) list(n *yaml.Node, what string, each func(*yaml.Node)) {
	if n.Kind != yaml.SequenceNode {
		d.errf(n, "%s must be a list; got %s", what, describe(n))
		return
	}
	for _, c := range n.Content {
		each(c)
	}
}

func (d *decoder) names(n *yaml.Node, what string) []Name {
	var out []Name
	d.list(n, what, func(c *yaml.Node) { out = append(out, d.name(c, what+" entry")) })
	return out
}

func (d *decoder) domain(n *yaml.Node) *Domain {
	dm := &Domain{Pos: d.pos(n)}
	d.object(n, "Domain", fields{
		"kind":        func(*yaml.Node) {},
		"name":        func(v *yaml.Node) { dm.Name = d.label(v, "domain name") },
		"owner":       func(v *yaml.Node) { dm.Owner = d.str(v, "owner") },
		"description": func(v *yaml.Node) { dm.Description = d.str(v, "description") },
		"subnet": func(v *yaml.Node) {
			dm.SubnetPos = d.pos(v)
			s := d.str(v, "subnet")
			if s == "" {
				return
			}
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				d.errf(v, "subnet %q is not a CIDR prefix; expected e.g. 10.10.0.0/16", s)
				return
			}
			if pfx.Masked() != pfx {
				d.errf(v, "subnet %q has host bits set; expected %s", s, pfx.Masked())
				return
			}
			dm.Subnet = pfx
		},
		"roles": func(v *yaml.Node) {
			d.list(v, "roles", func(c *yaml.Node) {
				r := &Role{Pos: d.pos(c)}
				d.object(c, "role", fields{
					"name":        func(v *yaml.Node) { r.Name = d.label(v, "role name") },
					"description": func(v *yaml.Node) { r.Description = d.str(v, "description") },
					"gateway":     func(v *yaml.Node) { r.Gateway = d.boolean(v, "gateway") },
					"max": func(v *yaml.Node) {
						m := d.integer(v, "max")
						if m < 1 || m > 1<<20 {
							d.errf(v, "max must be between 1 and %d; got %d", 1<<20, m)
						}
						r.Max = int(m)
					},
				}, "name")
				dm.Roles = append(dm.Roles, r)
			})
		},
		"membership": func(v *yaml.Node) {
			m := &dm.Membership
			m.Pos = d.pos(v)
			d.object(v, "membership", fields{
				"minAssurance": func(v *yaml.Node) { m.MinAssurance = d.name(v, "minAssurance") },
				"isolation":    func(v *yaml.Node) { m.Isolation = d.name(v, "isolation") },
				"claims":       func(v *yaml.Node) { m.Claims = d.names(v, "claims") },
			})
		},
		"attestation": func(v *yaml.Node) {
			a := &dm.Attestation
			a.Pos = d.pos(v)
			d.object(v, "attestation", fields{
				"interval":        func(v *yaml.Node) { a.IntervalPos = d.pos(v); a.Interval = d.duration(v, "interval") },
				"deadline":        func(v *yaml.Node) { a.DeadlinePos = d.pos(v); a.Deadline = d.duration(v, "deadline") },
				"integrity":       func(v *yaml.Node) { a.Integrity = d.name(v, "integrity") },
				"referenceValues": func(v *yaml.Node) { a.ReferenceValues = d.names(v, "referenceValues") },
			})
		},
		"onViolation":      func(v *yaml.Node) { dm.OnViolation = d.names(v, "onViolation") },
		"onControllerLoss": func(v *yaml.Node) { dm.OnControllerLoss = d.name(v, "onControllerLoss") },
		"flows":            func(v *yaml.Node) { dm.Flows = d.flows(v) },
		"requirements": func(v *yaml.Node) {
			d.list(v, "requirements", func(c *yaml.Node) { dm.Requirements = append(dm.Requirements, d.requirement(c)) })
		},
		"statements": func(v *yaml.Node) {
			d.list(v, "statements", func(c *yaml.Node) { dm.Statements = append(dm.Statements, d.statement(c)) })
		},
		"administrators": func(v *yaml.Node) {
			d.list(v, "administrators", func(c *yaml.Node) {
				a := &Administrator{Pos: d.pos(c)}
				d.object(c, "administrator", fields{
					"name": func(v *yaml.Node) { a.Name = d.label(v, "administrator name") },
					"role": func(v *yaml.Node) { a.Role = d.name(v, "role") },
				}, "name", "role")
				dm.Administrators = append(dm.Administrators, a)
			})
		},
		"secrets": func(v *yaml.Node) {
			d.list(v, "secrets", func(c *yaml.Node) {
				sc := &Secret{Pos: d.pos(c)}
				d.object(c, "secret", fields{
					"name":       func(v *yaml.Node) { sc.Name = d.label(v, "secret name") },
					"roles":      func(v *yaml.Node) { sc.Roles = d.names(v, "roles") },
					"bytes":      func(v *yaml.Node) { sc.BytesPos = d.pos(v); sc.Bytes = d.integer(v, "bytes") },
					"generation": func(v *yaml.Node) { sc.GenPos = d.pos(v); sc.Generation = d.integer(v, "generation") },
				}, "name")
				dm.Secrets = append(dm.Secrets, sc)
			})
		},
		"storage": func(v *yaml.Node) { dm.Storage = d.name(v, "storage") },
	}, "name", "owner", "roles")
	return dm
}

// flows decodes a domain's row of the flow matrix:
//
//	flows:
//	  ROLE|"*":
//	    DOMAIN|"*": RULE
//	    DOMAIN: {rule: point-to-point, roles: [ROLE, ...]}
func (d *decoder) flows(n *yaml.Node) []*FlowCell {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "flows must be a mapping from source role to destination domain to rule; got %s", describe(n))
		return nil
	}
	var out []*FlowCell
	seenRole := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		rk, rv := n.Content[i], n.Content[i+1]
		from := d.name(rk, "flow source role")
		if l, dup := seenRole[from.Value]; dup {
			d.errf(rk, "flows: source role %q given twice (first at line %d)", from.Value, l)
			continue
		}
		seenRole[from.Value] = rk.Line
		if rv.Kind != yaml.MappingNode {
			d.errf(rv, "flows of role %q must be a mapping from destination domain to rule; got %s", from.Value, describe(rv))
			continue
		}
		seenDom := map[string]int{}
		for j := 0; j+1 < len(rv.Content); j += 2 {
			dk, cv := rv.Content[j], rv.Content[j+1]
			c := &FlowCell{Pos: d.pos(dk), From: from, To: d.name(dk, "flow destination domain")}
			if l, dup := seenDom[c.To.Value]; dup {
				d.errf(dk, "flows of role %q: destination %q given twice (first at line %d)", from.Value, c.To.Value, l)
				continue
			}
			seenDom[c.To.Value] = dk.Line
			switch cv.Kind {
			case yaml.ScalarNode:
				c.Rule = d.name(cv, "flow rule")
			default:
				d.object(cv, "flow cell", fields{
					"rule":  func(v *yaml.Node) { c.Rule = d.name(v, "flow rule") },
					"roles": func(v *yaml.Node) { c.Roles = d.names(v, "roles") },
				}, "rule")
			}
			out = append(out, c)
		}
	}
	return out
}

func (d *decoder) requirement(n *yaml.Node) *Requirement {
	r := &Requirement{Pos: d.pos(n)}
	d.object(n, "requirement", fields{
		"id":   func(v *yaml.Node) { r.ID = d.label(v, "requirement id") },
		"kind": func(v *yaml.Node) { r.Kind = d.name(v, "requirement kind") },
		"text": func(v *yaml.Node) { r.Text = d.str(v, "text") },
		"expr": func(v *yaml.Node) {
			r.Expr = d.str(v, "expr")
			r.ExprPos = d.pos(v)
			if v.Style&(yaml.DoubleQuotedStyle|yaml.SingleQuotedStyle) != 0 {
				r.exprQuoted = 1
			}
		},
	}, "id", "kind", "expr")
	return r
}

func (d *decoder) statement(n *yaml.Node) *Statement {
	s := &Statement{Pos: d.pos(n)}
	d.object(n, "statement", fields{
		"id":   func(v *yaml.Node) { s.ID = d.label(v, "statement id") },
		"type": func(v *yaml.Node) { s.Type = d.name(v, "statement type") },
		"text": func(v *yaml.Node) { s.Text = d.str(v, "text") },
		"verify": func(v *yaml.Node) {
			vf := &Verify{Pos: d.pos(v)}
			d.object(v, "verify", fields{
				"by":              func(v *yaml.Node) { vf.By = d.name(v, "verifier") },
				"requirements":    func(v *yaml.Node) { vf.Requirements = d.names(v, "requirements") },
				"referenceValues": func(v *yaml.Node) { vf.ReferenceValues = d.names(v, "referenceValues") },
				"owner":           func(v *yaml.Node) { vf.Owner = d.name(v, "owner") },
				"issuers":         func(v *yaml.Node) { vf.Issuers = d.names(v, "issuers") },
			}, "by")
			s.Verify = vf
		},
	}, "id", "type", "text")
	return s
}

var hexRE = regexp.MustCompile(`^[0-9a-fA-F]{64}$`)

func (d *decoder) refValues(n *yaml.Node) *ReferenceValues {
	r := &ReferenceValues{Pos: d.pos(n)}
	d.object(n, "ReferenceValues", fields{
		"kind":        func(*yaml.Node) {},
		"name":        func(v *yaml.Node) { r.Name = d.label(v, "reference value set name") },
		"description": func(v *yaml.Node) { r.Description = d.str(v, "description") },
		"entries": func(v *yaml.Node) {
			d.list(v, "entries", func(c *yaml.Node) {
				e := &RefEntry{Pos: d.pos(c)}
				d.object(c, "reference value", fields{
					"name": func(v *yaml.Node) { e.Name = d.str(v, "name") },
					"sha256": func(v *yaml.Node) {
						s := strings.TrimPrefix(d.str(v, "sha256"), "sha256:")
						if !hexRE.MatchString(s) {
							d.errf(v, "sha256 must be 64 hexadecimal digits; got %q", s)
							return
						}
						b, _ := hex.DecodeString(s) // hexRE has checked it
						copy(e.SHA256[:], b)
					},
				}, "name", "sha256")
				r.Entries = append(r.Entries, e)
			})
		},
	}, "name", "entries")
	return r
}

var claimTypes = []string{"bool", "double", "int", "list(string)", "string"}

func (d *decoder) claims(n *yaml.Node) *ClaimsDoc {
	c := &ClaimsDoc{Pos: d.pos(n)}
	d.object(n, "Claims", fields{
		"kind": func(*yaml.Node) {},
		"name": func(v *yaml.Node) { c.Name = d.label(v, "claims name") },
		"claims": func(v *yaml.Node) {
			d.list(v, "claims", func(e *yaml.Node) {
				cd := &ClaimDecl{Pos: d.pos(e)}
				d.object(e, "claim", fields{
					"name":        func(v *yaml.Node) { cd.Name = d.name(v, "claim name") },
					"type":        func(v *yaml.Node) { cd.Type = d.name(v, "claim type") },
					"description": func(v *yaml.Node) { cd.Description = d.str(v, "description") },
				}, "name", "type")
				c.Claims = append(c.Claims, cd)
			})
		},
	}, "name", "claims")
	return c
}

func (d *decoder) issuer(n *yaml.Node) *Issuer {
	is := &Issuer{Pos: d.pos(n)}
	d.object(n, "Issuer", fields{
		"kind":        func(*yaml.Node) {},
		"name":        func(v *yaml.Node) { is.Name = d.label(v, "issuer name") },
		"description": func(v *yaml.Node) { is.Description = d.str(v, "description") },
		"publicKey":   func(v *yaml.Node) { is.PublicKey = d.str(v, "publicKey") },
	}, "name")
	return is
}

func (d *decoder) mapping(n *yaml.Node) *Mapping {
	m := &Mapping{Pos: d.pos(n)}
	d.object(n, "Mapping", fields{
		"kind":     func(*yaml.Node) {},
		"name":     func(v *yaml.Node) { m.Name = d.label(v, "mapping name") },
		"issuer":   func(v *yaml.Node) { m.Issuer = d.name(v, "issuer") },
		"text":     func(v *yaml.Node) { m.Text = d.str(v, "text") },
		"measured": func(v *yaml.Node) { m.Measured = d.names(v, "measured") },
		"establishes": func(v *yaml.Node) {
			m.Establishes = d.claimValues(v, "establishes")
		},
	}, "name", "issuer", "measured", "establishes")
	return m
}

// claimValues decodes a mapping from claim name to value.
func (d *decoder) claimValues(n *yaml.Node, what string) []*ClaimValue {
	if n.Kind != yaml.MappingNode {
		d.errf(n, "%s must be a mapping from claim name to value; got %s", what, describe(n))
		return nil
	}
	var out []*ClaimValue
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		cv := &ClaimValue{Pos: d.pos(k), Claim: d.name(k, "claim name")}
		if l, dup := seen[cv.Claim.Value]; dup {
			d.errf(k, "%s: claim %q given twice (first at line %d)", what, cv.Claim.Value, l)
			continue
		}
		seen[cv.Claim.Value] = k.Line
		cv.Value = d.claimValue(v)
		out = append(out, cv)
	}
	return out
}

func (d *decoder) claimValue(v *yaml.Node) any {
	switch {
	case v.Kind == yaml.ScalarNode && v.Tag == "!!bool":
		return v.Value == "true"
	case v.Kind == yaml.ScalarNode && v.Tag == "!!int":
		return d.integer(v, "claim value")
	case v.Kind == yaml.ScalarNode && v.Tag == "!!float":
		f, err := strconv.ParseFloat(v.Value, 64)
		if err != nil {
			d.errf(v, "claim value %q is not a number", v.Value)
		}
		return f
	case v.Kind == yaml.ScalarNode && v.Tag == "!!str":
		return v.Value
	case v.Kind == yaml.SequenceNode:
		var out []string
		for _, c := range v.Content {
			out = append(out, d.str(c, "list claim entry"))
		}
		return out
	}
	d.errf(v, "claim value must be a boolean, number, string or list of strings; got %s", describe(v))
	return nil
}

func (d *decoder) tests(n *yaml.Node) *TestsDoc {
	td := &TestsDoc{Pos: d.pos(n)}
	d.object(n, "Tests", fields{
		"kind": func(*yaml.Node) {},
		"name": func(v *yaml.Node) { td.Name = d.label(v, "tests name") },
		"tests": func(v *yaml.Node) {
			d.list(v, "tests", func(c *yaml.Node) {
				t := &Test{Pos: d.pos(c)}
				d.object(c, "test", fields{
					"name":   func(v *yaml.Node) { t.Name = d.str(v, "test name") },
					"from":   func(v *yaml.Node) { t.From = d.name(v, "from") },
					"to":     func(v *yaml.Node) { t.To = d.name(v, "to") },
					"expect": func(v *yaml.Node) { t.Expect = d.name(v, "expect") },
					"rule":   func(v *yaml.Node) { t.Rule = d.name(v, "rule") },
					"via":    func(v *yaml.Node) { t.ViaSet = true; t.Via = d.names(v, "via") },
					"admit": func(v *yaml.Node) {
						a := &AdmitCase{Pos: d.pos(v)}
						d.object(v, "admit", fields{
							"domain":    func(v *yaml.Node) { a.Domain = d.name(v, "domain") },
							"role":      func(v *yaml.Node) { a.Role = d.name(v, "role") },
							"assurance": func(v *yaml.Node) { a.Assurance = d.name(v, "assurance") },
							"isolation": func(v *yaml.Node) { a.Isolation = d.name(v, "isolation") },
							"claims":    func(v *yaml.Node) { a.Claims = d.claimValues(v, "claims") },
						}, "domain", "role")
						t.Admit = a
					},
				}, "name", "expect")
				td.Tests = append(td.Tests, t)
			})
		},
	}, "name", "tests")
	return td
}

// isOneOf reports whether s is in options.
func isOneOf(s string, options ...string) bool { return slices.Contains(options, s) }
