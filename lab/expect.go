package lab

import (
	"fmt"

	"github.com/tvd-dev/tvd/policy"
)

// Pair is one ordered pair of the lab's EEs and what the policy says about
// a packet sent from one to the other. It is the seam for `tvd lab check`:
// once EEs are containers with overlay addresses and the agents program
// the data plane, check sends a real packet for every Pair (straight, and
// through the gateways in Via) from Target.Command of From, and compares
// what arrived with Allow.
type Pair struct {
	From      string   `json:"from"`
	To        string   `json:"to"`
	FromClass string   `json:"fromClass"` // domain/role
	ToClass   string   `json:"toClass"`
	Rule      string   `json:"rule"`
	Allow     bool     `json:"allow"`         // a packet sent straight passes
	Via       []string `json:"via,omitempty"` // gateway classes a flow must cross instead
}

// Expect lists every ordered pair of distinct EEs of the lab with the
// policy's decision for it.
func Expect(c *policy.Compiled, st *State) ([]Pair, error) {
	type ee struct{ name, class string }
	var ees []ee
	for _, n := range st.Nodes {
		for _, e := range n.EEs {
			ees = append(ees, ee{e.Name, e.Domain + "/" + e.Role})
		}
	}
	var out []Pair
	for _, a := range ees {
		for _, b := range ees {
			if a.name == b.name {
				continue
			}
			q, err := c.Query(a.class, b.class)
			if err != nil {
				return nil, fmt.Errorf("%s -> %s: %w", a.name, b.name, err)
			}
			out = append(out, Pair{From: a.name, To: b.name, FromClass: a.class, ToClass: b.class,
				Rule: q.Rule, Allow: q.Direct == "allow", Via: q.Via})
		}
	}
	return out, nil
}

// LoadPolicy compiles the copy of the policy the lab applied
// (LABDIR/policy).
func LoadPolicy(st *State) (*policy.Compiled, error) {
	if st.PolicyDir == "" {
		return nil, fmt.Errorf("the lab in %s has not applied a policy yet", st.Dir)
	}
	return policy.LoadAndCompile(st.PolicyDir)
}
