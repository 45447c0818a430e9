package filter

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/flow"
)

// bigPlan returns a plan with n members spread over the outsourcing
// classes (addresses 10.77.x.y / 10.78.x.y), the first being local
// behind interface "tvdus0".
func bigPlan(tb testing.TB, m *flow.Matrix, n int) *flow.Plan {
	p := &flow.Plan{Matrix: m, Controllers: []netip.Addr{ctl4}, EEInterfaces: []string{"tvdus0"}}
	for i := range n {
		c := flow.ClassID(i % m.NumClasses())
		dom := m.ClassDomain(c)
		mem := flow.PlanMember{EE: fmt.Sprintf("ee%d", i), Class: c,
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, byte(77 + dom), byte(i >> 8), byte(i)})}}
		if i == 0 {
			mem.Iface = "tvdus0"
		}
		p.Members = append(p.Members, mem)
	}
	if err := p.Validate(); err != nil {
		tb.Fatal(err)
	}
	return p
}

// BenchmarkJudge measures the filter's decision for packets of established
// flows (64 flows to members of a 10,000-member plan, each member a
// WireGuard peer, half of the packets replies) against a baseline measured
// in the same run: one plain Go map lookup keyed by the packet's 5-tuple,
// the least any stateful filter does. It reports both costs per packet and
// their ratio.
func BenchmarkJudge(b *testing.B) {
	m := matrix(b)
	p := bigPlan(b, m, 10000)
	f := newFilter(b, "tvdus0", p, nil)
	var peers [][]netip.Prefix
	for _, mem := range p.Members[1:] {
		peers = append(peers, []netip.Prefix{netip.PrefixFrom(mem.Addrs[0], 32)})
	}
	f.SetPeers(peers)
	local := p.Members[0]
	var pkts [][]byte
	var dirs []Direction
	base := map[tuple]int32{}
	for i := 0; len(pkts) < 64; i++ {
		r := p.Members[1+i*149%9999]
		if !m.Decide(local.Class, r.Class).Direct {
			continue
		}
		req := tcp(local.Addrs[0], r.Addrs[0], uint16(30000+i), 443)
		if v := f.Judge(req, Outbound); !v.Allowed() {
			b.Fatalf("set-up flow to %s: %v", r.EE, v)
		}
		var pk packet
		parse(req, &pk)
		base[pk.tuple] = int32(r.Class)
		if len(pkts)%2 == 0 {
			pkts, dirs = append(pkts, req), append(dirs, Outbound)
		} else {
			pkts, dirs = append(pkts, pkt(r.Addrs[0], local.Addrs[0], protoTCP, 443, uint16(30000+i), 0x10)), append(dirs, Inbound)
		}
	}
	keys := make([]tuple, 0, len(base))
	for k := range base {
		keys = append(keys, k)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		if !f.Judge(pkts[i&63], dirs[i&63]).Allowed() {
			b.Fatal("established flow dropped")
		}
	}
	judge := time.Since(start)
	start = time.Now()
	var sum int32
	for i := range b.N {
		sum += base[keys[i&63]]
	}
	lookup := time.Since(start)
	b.StopTimer()
	if sum < 0 {
		b.Fatal(sum)
	}
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / float64(b.N) }
	b.ReportMetric(per(judge), "ns/packet")
	b.ReportMetric(per(lookup), "ns/map-lookup")
	b.ReportMetric(per(judge)/per(lookup), "x-vs-map-lookup")
}

// BenchmarkApply measures compiling and swapping in a 10,000-member plan
// after one membership change (the matrix tables are reused), against the
// plan's own Validate in the same run (which Apply includes).
func BenchmarkApply(b *testing.B) {
	m := matrix(b)
	p := bigPlan(b, m, 10000)
	f := newFilter(b, "tvdus0", p, nil)
	q := *p
	q.Members = append([]flow.PlanMember(nil), p.Members...)
	q.Quarantine = []string{"ee42"}
	plans := []*flow.Plan{p, &q}
	b.ReportAllocs()
	var apply, validate time.Duration
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		if err := f.Apply(plans[i&1]); err != nil {
			b.Fatal(err)
		}
		apply += time.Since(start)
		start = time.Now()
		if err := plans[i&1].Validate(); err != nil {
			b.Fatal(err)
		}
		validate += time.Since(start)
	}
	b.ReportMetric(float64(apply.Microseconds())/float64(b.N), "us/apply")
	b.ReportMetric(float64(validate.Microseconds())/float64(b.N), "us/validate")
	b.ReportMetric(float64(apply)/float64(validate), "x-vs-validate")
}
