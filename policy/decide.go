package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/flow"
)

// QueryResult is the answer to a flow question, in the shape `tvd policy
// query -o json` prints.
type QueryResult struct {
	// Rule is the matrix cell that governs the pair ("unrestricted" inside
	// one domain).
	Rule string `json:"rule"`
	// Direct is "allow" when a packet sent straight from the source to the
	// destination passes, and "deny" otherwise.
	Direct string `json:"direct"`
	// Via lists the gateways, as domain/role, a flow that may not go
	// straight passes through; empty when it goes straight or not at all.
	Via []string `json:"via"`
}

// splitClass parses "domain/role".
func splitClass(s string) (domain, role string, err error) {
	d, r, ok := strings.Cut(s, "/")
	if !ok || d == "" || r == "" || strings.Contains(r, "/") {
		return "", "", fmt.Errorf("%q is not DOMAIN/ROLE", s)
	}
	return d, r, nil
}

// Class resolves "domain/role" to a matrix class, with an error that says
// what exists.
func (c *Compiled) Class(s string) (flow.ClassID, error) {
	d, r, err := splitClass(s)
	if err != nil {
		return 0, err
	}
	dp, ok := c.byDomain[d]
	if !ok {
		names := make([]string, 0, len(c.Domains))
		for _, x := range c.Domains {
			names = append(names, x.Name)
		}
		return 0, fmt.Errorf("%q: no domain %q; the policy has: %s", s, d, strings.Join(names, ", "))
	}
	cl, ok := c.Matrix.Class(d, r)
	if !ok {
		var roles []string
		for _, x := range dp.Roles {
			roles = append(roles, x.Name)
		}
		return 0, fmt.Errorf("%q: domain %q has no role %q; it has: %s", s, d, r, strings.Join(roles, ", "))
	}
	return cl, nil
}

// Query answers whether traffic from one class may reach another.
func (c *Compiled) Query(from, to string) (QueryResult, error) {
	src, err := c.Class(from)
	if err != nil {
		return QueryResult{}, fmt.Errorf("from: %w", err)
	}
	dst, err := c.Class(to)
	if err != nil {
		return QueryResult{}, fmt.Errorf("to: %w", err)
	}
	d := c.Matrix.Decide(src, dst)
	res := QueryResult{Rule: d.Rule.String(), Direct: "deny", Via: []string{}}
	if d.Direct {
		res.Direct = "allow"
	}
	for _, g := range c.Matrix.Via(src, dst) {
		dn, rn := c.Matrix.ClassName(g)
		res.Via = append(res.Via, dn+"/"+rn)
	}
	return res, nil
}

// Candidate describes an EE asking to join a domain, as far as admission
// needs to know.
type Candidate struct {
	Role      string
	Assurance tvd.Assurance
	Isolation string // "strong" or "weak"
	// Claims holds the node's and EE's claims by name (node.x, ee.x).
	Claims map[string]any
	// InRole is how many members the role already has.
	InRole int
}

// Admission is the outcome of an admission check.
type Admission struct {
	Admit   bool
	Reasons []string // why it was refused; empty when admitted
}

// Admit applies the domain's membership rules (minimum assurance,
// isolation, required claims, role limits) to a candidate. It does not
// evaluate requirements or appraise evidence: those yield verdicts once the
// member runs.
func (d *DomainPolicy) Admit(c Candidate) Admission {
	var reasons []string
	role, ok := d.Role(c.Role)
	if !ok {
		var roles []string
		for _, r := range d.Roles {
			roles = append(roles, r.Name)
		}
		reasons = append(reasons, fmt.Sprintf("domain %q has no role %q (it has: %s)", d.Name, c.Role, strings.Join(roles, ", ")))
	} else if role.Max > 0 && c.InRole >= role.Max {
		reasons = append(reasons, fmt.Sprintf("role %q of domain %q is full (%d of %d)", c.Role, d.Name, c.InRole, role.Max))
	}
	if c.Assurance < d.assurance {
		reasons = append(reasons, fmt.Sprintf("domain %q requires assurance %s; the node has %s", d.Name, d.assurance, c.Assurance))
	}
	if d.Isolation == "strong" && c.Isolation != "strong" {
		reasons = append(reasons, fmt.Sprintf("domain %q requires strong isolation; the EE has %q isolation", d.Name, c.Isolation))
	}
	for _, cl := range d.RequiredClaims {
		v, ok := c.Claims[cl]
		if b, isBool := v.(bool); !ok || !isBool || !b {
			reasons = append(reasons, fmt.Sprintf("domain %q requires claim %s to be true", d.Name, cl))
		}
	}
	return Admission{Admit: len(reasons) == 0, Reasons: reasons}
}

// RequirementResult is the outcome of one requirement for one member.
type RequirementResult struct {
	ID     string
	Status tvd.Status
	// Detail says why the result is not verified: the missing claim or the
	// evaluation error.
	Detail string
}

// EvalRequirements evaluates every requirement of the domain over the
// member's claims. A requirement whose claims are missing, or that fails to
// evaluate, is unknown, never verified.
func (d *DomainPolicy) EvalRequirements(claims map[string]any) []RequirementResult {
	out := make([]RequirementResult, len(d.Requirements))
	for i, r := range d.Requirements {
		out[i] = RequirementResult{ID: r.ID}
		prg := d.programs[i]
		if prg == nil {
			out[i].Detail = "requirement did not compile"
			continue
		}
		v, _, err := prg.Eval(claims)
		if err != nil {
			out[i].Detail = err.Error()
			continue
		}
		b, ok := v.Value().(bool)
		switch {
		case !ok:
			out[i].Detail = fmt.Sprintf("evaluated to %v, not a bool", v.Value())
		case b:
			out[i].Status = tvd.StatusVerified
		default:
			out[i].Status = tvd.StatusViolated
			out[i].Detail = "expression is false: " + r.Expr
		}
	}
	return out
}

// Establish returns the claims that the policy's mappings establish, given
// the reference value sets of which the node's evidence contains at least
// one measurement.
func (c *Compiled) Establish(measuredSets []string) map[string]any {
	out := map[string]any{}
	for _, m := range c.Mappings {
		for _, s := range m.Measured {
			if slices.Contains(measuredSets, s) {
				for k, v := range m.Establishes {
					out[k] = v
				}
				break
			}
		}
	}
	return out
}
