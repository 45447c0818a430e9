package controller

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/tvd-dev/tvd/policy"
)

// TestStateIndexes: after any sequence of puts, the admission indexes
// equal what a scan of every member gives, and allocAddress returns the
// lowest free address as the scan would.
func TestStateIndexes(t *testing.T) {
	s := newState()
	rng := rand.New(rand.NewPCG(1, 2))
	states := []string{memberAdmitted, memberRevoked, memberMigrating, "refused", "left"}
	dom := &policy.DomainPolicy{Name: "d", Subnet: "10.9.0.0/24"}
	for i := range 3000 {
		ee := fmt.Sprintf("ee%d", rng.IntN(60))
		m := &memberRec{EE: ee, Node: fmt.Sprintf("n%d", rng.IntN(4)), Domain: []string{"d", "e"}[rng.IntN(2)],
			Role: []string{"r1", "r2"}[rng.IntN(2)], State: states[rng.IntN(len(states))]}
		if rng.IntN(4) > 0 {
			m.Address = fmt.Sprintf("10.9.0.%d", 2+rng.IntN(80))
		}
		if old := s.members[ee]; old != nil && rng.IntN(3) == 0 {
			// Changed in place, then put again.
			*old = *m
			m = old
		}
		s.put(m)
		// Brute force.
		roles := map[[2]string]int{}
		used := map[netip.Addr]bool{}
		for _, o := range s.members {
			if o.active() {
				roles[[2]string{o.Domain, o.Role}]++
			}
			if o.Domain == "d" && o.Address != "" && (o.active() || o.State == memberRevoked || o.State == memberMigrating) {
				used[netip.MustParseAddr(o.Address)] = true
			}
		}
		for k, n := range roles {
			if s.roleCount[k] != n {
				t.Fatalf("step %d: role %v: index %d, scan %d", i, k, s.roleCount[k], n)
			}
		}
		want := ""
		for a := netip.MustParseAddr("10.9.0.2"); a.Less(netip.MustParseAddr("10.9.0.255")); a = a.Next() {
			if !used[a] {
				want = a.String()
				break
			}
		}
		got, err := s.allocAddress(dom, nil)
		if err != nil || got != want {
			t.Fatalf("step %d: allocAddress %q, %v; scan %q", i, got, err, want)
		}
	}
}
