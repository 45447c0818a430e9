package nft

import (
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/tvd-dev/tvd/flow"
)

// withRemoteMembers returns p plus n remote members (no interface) spread
// over every class, with an IPv4 and an IPv6 address each.
func withRemoteMembers(p *flow.Plan, n int) *flow.Plan {
	q := *p
	q.Members = slices.Clone(p.Members)
	nc := p.Matrix.NumClasses()
	for i := range n {
		q.Members = append(q.Members, remoteMember(i, flow.ClassID(i%nc)))
	}
	return &q
}

func remoteMember(i int, c flow.ClassID) flow.PlanMember {
	v4 := netip.AddrFrom4([4]byte{10, 100 + byte(i>>16), byte(i >> 8), byte(i)})
	var b [16]byte
	b[0], b[1], b[2], b[3] = 0xfd, 0, 0x01, 0
	b[12], b[13], b[14], b[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
	return flow.PlanMember{EE: fmt.Sprintf("remote-%d", i), Class: c, Addrs: []netip.Addr{v4, netip.AddrFrom16(b)}}
}

// ctOnly installs (on=true) or removes a table whose forward chain only
// reads the conntrack direction: the cost of conntrack alone, which the
// tvd table also turns on.
func ctOnly(b *testing.B, c *nftables.Conn, on bool) {
	t := &nftables.Table{Name: "tvdnft-ct", Family: nftables.TableFamilyINet}
	if !on {
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
		return
	}
	c.AddTable(t)
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Name: "forward", Table: t, Hooknum: nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter, Type: nftables.ChainTypeFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{ctDirReply}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := c.Flush(); err != nil {
		b.Fatal(err)
	}
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

func median(d []float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

// BenchmarkForwardTCP measures TCP throughput through the node between
// yellow/gateway and red/gateway (a point-to-point cell) with no table
// (baseline) and with the tvd table holding 10,000 members, alternating in
// the same run. It reports both rates and their ratio (goal >= 0.95).
func BenchmarkForwardTCP(b *testing.B) {
	l := newLab(b)
	for _, m := range table3EEs {
		l.addEE(m.name, m.a4, m.a6)
	}
	m := table3(b, false)
	plan := withRemoteMembers(l.planFor(m, table3EEs), 10000-len(table3EEs))
	p := l.programmer()

	const sinkPort = 7071
	var got atomic.Int64
	var sink net.Listener
	if err := inNS(l.ees["r-gw"].ns, func() error {
		var err error
		sink, err = net.Listen("tcp4", fmt.Sprintf(":%d", sinkPort))
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 1<<20)
				for {
					n, err := c.Read(buf)
					got.Add(int64(n))
					if err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	var conn net.Conn
	if err := inNS(l.ees["y-gw"].ns, func() error {
		var err error
		conn, err = net.Dial("tcp4", netip.AddrPortFrom(l.ees["r-gw"].addr4, sinkPort).String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()

	const chunk = 64 << 20
	buf := make([]byte, 1<<20)
	round := func() float64 {
		runtime.GC()
		start := time.Now()
		target := got.Load() + chunk
		for sent := 0; sent < chunk; sent += len(buf) {
			if _, err := conn.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		for got.Load() < target {
			time.Sleep(50 * time.Microsecond)
		}
		return float64(chunk) / time.Since(start).Seconds() / 1e6
	}
	round() // warm up
	c := nsConn(b, l.nsPath())
	small := l.planFor(m, table3EEs)
	var base, ct, few, tvd []float64
	phases := []func(){
		func() { base = append(base, round()) },
		func() { ctOnly(b, c, true); ct = append(ct, round()); ctOnly(b, c, false) },
		func() { must(b, p.Apply(small)); few = append(few, round()); must(b, p.Remove()) },
		func() {
			must(b, p.Apply(plan))
			tvd = append(tvd, round())
			if cs, err := p.Counters(); err != nil || cs[CounterP2PAllow].Packets == 0 {
				b.Fatalf("the table did not see the flow: %v", err)
			}
			must(b, p.Remove())
		},
	}
	i := 0
	for b.Loop() {
		// Rotate the order so that a burst of outside load does not
		// always land on the same phase.
		for k := range phases {
			phases[(i+k)%len(phases)]()
		}
		i++
	}
	b.ReportMetric(median(base), "MB/s-no-table")
	b.ReportMetric(median(tvd), "MB/s-10k-members")
	b.ReportMetric(median(ct), "MB/s-conntrack-only")
	b.ReportMetric(median(tvd)/median(base), "x-vs-no-table")
	b.ReportMetric(median(tvd)/median(ct), "x-vs-conntrack-only")
	b.ReportMetric(median(tvd)/median(few), "x-10k-vs-6-members")
}

// BenchmarkForwardUDPRate measures the rate of small UDP datagrams
// forwarded by the node (64-byte payload), no table vs 10,000 members, in
// the same run; the per-packet cost of the rules shows most here.
func BenchmarkForwardUDPRate(b *testing.B) {
	l := newLab(b)
	for _, m := range table3EEs {
		l.addEE(m.name, m.a4, m.a6)
	}
	m := table3(b, false)
	plan := withRemoteMembers(l.planFor(m, table3EEs), 10000-len(table3EEs))
	p := l.programmer()

	const port = 7072
	var rx atomic.Int64
	var pc *net.UDPConn
	if err := inNS(l.ees["r-gw"].ns, func() error {
		var err error
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		// Read allocates nothing: the benchmark process must not spend
		// garbage-collection time in proportion to the programmer's
		// (10,000-member) state while measuring.
		buf := make([]byte, 2048)
		for {
			if _, err := pc.Read(buf); err != nil {
				return
			}
			rx.Add(1)
		}
	}()
	var conn net.Conn
	if err := inNS(l.ees["y-gw"].ns, func() error {
		var err error
		conn, err = net.Dial("udp4", netip.AddrPortFrom(l.ees["r-gw"].addr4, port).String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	payload := make([]byte, 64)
	const window = 300 * time.Millisecond
	round := func() float64 {
		runtime.GC()
		start := rx.Load()
		t0 := time.Now()
		for time.Since(t0) < window {
			for range 64 {
				conn.Write(payload) // ENOBUFS under load is expected; only received packets count
			}
		}
		time.Sleep(20 * time.Millisecond)
		return float64(rx.Load()-start) / time.Since(t0).Seconds()
	}
	round()
	c := nsConn(b, l.nsPath())
	small := l.planFor(m, table3EEs)
	var base, ct, few, tvd []float64
	phases := []func(){
		func() { base = append(base, round()) },
		func() { ctOnly(b, c, true); ct = append(ct, round()); ctOnly(b, c, false) },
		func() { must(b, p.Apply(small)); few = append(few, round()); must(b, p.Remove()) },
		func() { must(b, p.Apply(plan)); tvd = append(tvd, round()); must(b, p.Remove()) },
	}
	i := 0
	for b.Loop() {
		// Rotate the order so that a burst of outside load does not
		// always land on the same phase.
		for k := range phases {
			phases[(i+k)%len(phases)]()
		}
		i++
	}
	b.ReportMetric(median(base), "pps-no-table")
	b.ReportMetric(median(tvd), "pps-10k-members")
	b.ReportMetric(median(ct), "pps-conntrack-only")
	b.ReportMetric(median(tvd)/median(base), "x-vs-no-table")
	b.ReportMetric(median(tvd)/median(ct), "x-vs-conntrack-only")
	b.ReportMetric(median(tvd)/median(few), "x-10k-vs-6-members")
}

// BenchmarkApplyMembershipChange measures one membership change (add or
// remove one member) against a table of 10,000 members, applied as one
// transaction. It reports the p50 and p99 of Apply (validation and diff of
// the whole plan included) and of the kernel transaction alone, and, as the
// baseline measured in the same run, the median time to build the whole
// table in one transaction (what a flush-and-reload would cost).
func BenchmarkApplyMembershipChange(b *testing.B) {
	l := newLab(b)
	m := table3(b, false)
	base := withRemoteMembers(&flow.Plan{Matrix: m, EEInterfaces: []string{"ee0"}, OverlayInterfaces: []string{"wg0"}}, 10000)
	grown := withRemoteMembers(base, 0)
	grown.Members = append(grown.Members, remoteMember(20000, 2))

	var full []float64
	for range 5 {
		fp, err := New(Config{NetNS: l.nsPath(), Table: "tvd-full"})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := fp.Apply(base); err != nil {
			b.Fatal(err)
		}
		full = append(full, float64(time.Since(t0).Nanoseconds()))
		if err := fp.Remove(); err != nil {
			b.Fatal(err)
		}
		fp.Close()
	}

	p := l.programmer()
	if err := p.Apply(base); err != nil {
		b.Fatal(err)
	}
	var lat []float64
	i := 0
	for b.Loop() {
		next := grown
		if i%2 == 1 {
			next = base
		}
		i++
		t0 := time.Now()
		if err := p.Apply(next); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, float64(time.Since(t0).Nanoseconds()))
	}
	// The kernel's share: the same changes, timing only the queued
	// transaction's round trip (Flush).
	var kern []float64
	for j := range 200 {
		next := grown
		if (i+j)%2 == 1 {
			next = base
		}
		changes, commit := p.applied.memberDiff(next)
		for _, ch := range changes {
			s := p.sets[ch.name]
			if err := p.sendElems(s, ch.del, p.conn.SetDeleteElements); err != nil {
				b.Fatal(err)
			}
			if err := p.sendElems(s, ch.add, p.conn.SetAddElements); err != nil {
				b.Fatal(err)
			}
		}
		t0 := time.Now()
		if err := p.conn.Flush(); err != nil {
			b.Fatal(err)
		}
		kern = append(kern, float64(time.Since(t0).Nanoseconds()))
		commit()
	}
	slices.Sort(kern)
	b.ReportMetric(kern[len(kern)*99/100]/1e6, "kernel-p99-ms")
	b.ReportMetric(median(kern)/1e6, "kernel-p50-ms")

	slices.Sort(lat)
	p99 := lat[min(len(lat)-1, len(lat)*99/100)]
	b.ReportMetric(p99/1e6, "p99-ms")
	b.ReportMetric(median(lat)/1e6, "p50-ms")
	b.ReportMetric(median(full)/1e6, "full-build-ms")
	b.ReportMetric(p99/median(full), "x-vs-full-build")
}
