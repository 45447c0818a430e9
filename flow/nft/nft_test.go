package nft

import (
	"testing"

	"github.com/tvd-dev/tvd/flow"
)

// pairs returns a probe for every ordered pair of the given EEs, over IPv4
// and IPv6, expecting what want says.
func (l *lab) pairs(ms []member, want func(from, to member) bool) []probe {
	var out []probe
	for _, a := range ms {
		for _, b := range ms {
			if a.name == b.name {
				continue
			}
			w := want(a, b)
			out = append(out, probe{from: a.name, to: b.name, addr: l.ees[b.name].addr4, want: w})
			if l.ees[b.name].addr6.IsValid() {
				out = append(out, probe{from: a.name, to: b.name, addr: l.ees[b.name].addr6, want: w})
			}
		}
	}
	return out
}

func decide(t testing.TB, m *flow.Matrix) func(a, b member) bool {
	return func(a, b member) bool {
		ca, ok1 := m.Class(a.domain, a.role)
		cb, ok2 := m.Class(b.domain, b.role)
		if !ok1 || !ok2 {
			t.Fatalf("no class for %s or %s", a.name, b.name)
		}
		return m.Decide(ca, cb).Direct
	}
}

func TestTable3EveryPair(t *testing.T) {
	l := table3Lab(t)
	m := table3(t, false)
	all := append(append([]member{}, table3EEs...), outsider)
	everything := func(a, b member) bool { return true }
	// Without the table every pair connects: the topology works.
	l.run(l.pairs(all, everything))

	p := l.programmer()
	if err := p.Apply(l.planFor(m, table3EEs)); err != nil {
		t.Fatal(err)
	}
	members := map[string]bool{}
	for _, mem := range table3EEs {
		members[mem.name] = true
	}
	d := decide(t, m)
	l.run(l.pairs(all, func(a, b member) bool {
		if !members[a.name] || !members[b.name] {
			return false // the outsider is no member yet
		}
		return d(a, b)
	}))

	// Removing the table lifts every restriction.
	if err := p.Remove(); err != nil {
		t.Fatal(err)
	}
	l.run(l.pairs(all, everything))
}
