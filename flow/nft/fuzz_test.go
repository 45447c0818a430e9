package nft

import (
	"fmt"
	"net/netip"
	"reflect"
	"testing"

	"github.com/tvd-dev/tvd/flow"
)

// planFromBytes decodes fuzz input into a plan over the Table 3 matrix:
// each 4-byte group is one member (class, address, interface, flags), drawn
// from small pools so that collisions (which Validate must reject) happen.
func planFromBytes(m *flow.Matrix, data []byte) *flow.Plan {
	p := &flow.Plan{Matrix: m, EEInterfaces: []string{"e0", "e1", "e2", "e3"}, OverlayInterfaces: []string{"wg0"},
		Controllers: []netip.Addr{netip.MustParseAddr("10.9.0.1")}}
	for i := 0; i+4 <= len(data) && i < 4*64; i += 4 {
		c, a, f, g := data[i], data[i+1], data[i+2], data[i+3]
		mem := flow.PlanMember{EE: fmt.Sprintf("ee%d", g%32), Class: flow.ClassID(int(c%8) - 1)}
		mem.Addrs = append(mem.Addrs, netip.AddrFrom4([4]byte{10, 0, a >> 4, a & 15}))
		if f&1 != 0 {
			mem.Addrs = append(mem.Addrs, netip.AddrFrom16([16]byte{0xfd, 15: a}))
		}
		if f&2 != 0 {
			mem.Iface = fmt.Sprintf("e%d", (f>>2)%5)
		}
		if f&32 != 0 {
			p.Quarantine = append(p.Quarantine, mem.EE)
		}
		p.Members = append(p.Members, mem)
	}
	return p
}

// FuzzPlanUpdate checks, for arbitrary pairs of plans, that Validate never
// panics, and that for valid plans the member-level update computes the
// same changes as a full compile and diff and records the same state.
func FuzzPlanUpdate(f *testing.F) {
	f.Add([]byte{1, 1, 3, 1, 2, 2, 7, 2}, []byte{1, 1, 3, 1})
	f.Add([]byte{0, 0, 0, 0}, []byte{0, 0, 0, 0, 1, 1, 35, 1})
	f.Add([]byte{3, 9, 2, 4, 3, 9, 2, 5}, []byte{})
	f.Fuzz(func(t *testing.T, a, b []byte) {
		m := table3(t, false)
		pa, pb := planFromBytes(m, a), planFromBytes(m, b)
		if pa.Validate() != nil || pb.Validate() != nil {
			return
		}
		rec := record(pa, compile(pa))
		fast, commit := rec.memberDiff(pb)
		full := diff(rec.st, compile(pb))
		if fmt.Sprint(fast) != fmt.Sprint(full) {
			t.Fatalf("member diff %v, full diff %v", fast, full)
		}
		commit()
		if !reflect.DeepEqual(rec.st, compile(pb)) {
			t.Fatal("recorded state differs from the new plan's")
		}
	})
}
