package policy

import (
	"fmt"
	"slices"
	"strings"

	"github.com/tvd-dev/tvd"
)

// checkTests reports tests that refer to things that do not exist.
func (c *compiler) checkTests() {
	for _, td := range c.p.Tests {
		for _, t := range td.Tests {
			where := fmt.Sprintf("test %q", t.Name)
			if t.Admit != nil {
				if t.From.Value != "" || t.To.Value != "" || t.Rule.Value != "" || t.ViaSet {
					c.e.add(t.Pos, "%s: an admit test takes no from, to, rule or via", where)
				}
				c.choice(t.Expect, "admission expectation", []string{"admit", "refuse"})
				a := t.Admit
				dp, ok := c.out.byDomain[a.Domain.Value]
				if !ok {
					c.e.add(a.Domain.Pos, "%s: domain %q is not defined%s", where, a.Domain.Value, suggest(a.Domain.Value, sortedKeys(c.domains)))
				} else if _, ok := dp.Role(a.Role.Value); !ok {
					c.e.add(a.Role.Pos, "%s: domain %q has no role %q", where, a.Domain.Value, a.Role.Value)
				}
				if a.Assurance.Value != "" {
					c.choice(a.Assurance, "assurance", append([]string{"none"}, assurances...))
				}
				if a.Isolation.Value != "" {
					c.choice(a.Isolation, "isolation", isolations)
				}
				for _, cv := range a.Claims {
					typ, ok := c.claims[cv.Claim.Value]
					if !ok {
						c.e.add(cv.Claim.Pos, "%s: claim %q is not declared%s", where, cv.Claim.Value, suggest(cv.Claim.Value, sortedKeys(c.claims)))
					} else if cv.Value != nil && !valueMatches(cv.Value, typ) {
						c.e.add(cv.Pos, "%s: claim %q has type %s; got a %s value", where, cv.Claim.Value, typ, typeName(cv.Value))
					}
				}
				continue
			}
			if t.From.Value == "" || t.To.Value == "" {
				c.e.add(t.Pos, "%s: a flow test needs from: DOMAIN/ROLE and to: DOMAIN/ROLE (or admit: for an admission test)", where)
				continue
			}
			c.choice(t.Expect, "flow expectation", []string{"allow", "deny"})
			if t.Rule.Value != "" {
				c.choice(t.Rule, "rule", []string{"unrestricted", "none", "point-to-point", "via-gateway"})
			}
			for _, n := range append([]Name{t.From, t.To}, t.Via...) {
				if c.out.Matrix == nil {
					break
				}
				if _, err := c.out.Class(n.Value); err != nil {
					c.e.add(n.Pos, "%s: %v", where, err)
				}
			}
		}
	}
}

// TestResult is the outcome of one policy test.
type TestResult struct {
	Name string
	Pos  Pos
	Pass bool
	// Got says what the policy does, in the test's terms.
	Got string
}

// RunTests evaluates every test of the policy against its compiled form.
func (c *Compiled) RunTests() []TestResult {
	var out []TestResult
	for _, td := range c.source.Tests {
		for _, t := range td.Tests {
			out = append(out, c.runTest(t))
		}
	}
	return out
}

func (c *Compiled) runTest(t *Test) TestResult {
	r := TestResult{Name: t.Name, Pos: t.Pos}
	if t.Admit != nil {
		a := t.Admit
		dp, _ := c.Domain(a.Domain.Value)
		cand := Candidate{Role: a.Role.Value, Assurance: tvd.AssuranceTPM, Isolation: "strong", Claims: map[string]any{}}
		if a.Assurance.Value != "" {
			cand.Assurance, _ = tvd.ParseAssurance(a.Assurance.Value)
		}
		if a.Isolation.Value != "" {
			cand.Isolation = a.Isolation.Value
		}
		for _, cv := range a.Claims {
			cand.Claims[cv.Claim.Value] = cv.Value
		}
		adm := dp.Admit(cand)
		if adm.Admit {
			r.Got = "admit"
		} else {
			r.Got = "refuse: " + strings.Join(adm.Reasons, "; ")
		}
		r.Pass = adm.Admit == (t.Expect.Value == "admit")
		return r
	}
	q, err := c.Query(t.From.Value, t.To.Value)
	if err != nil {
		r.Got = err.Error()
		return r
	}
	r.Got = fmt.Sprintf("%s (rule %s", q.Direct, q.Rule)
	if len(q.Via) > 0 {
		r.Got += ", via " + strings.Join(q.Via, " -> ")
	}
	r.Got += ")"
	r.Pass = q.Direct == t.Expect.Value
	if t.Rule.Value != "" && t.Rule.Value != q.Rule {
		r.Pass = false
	}
	if t.ViaSet {
		var want []string
		for _, v := range t.Via {
			want = append(want, v.Value)
		}
		if !slices.Equal(want, q.Via) && !(len(want) == 0 && len(q.Via) == 0) {
			r.Pass = false
		}
	}
	return r
}
