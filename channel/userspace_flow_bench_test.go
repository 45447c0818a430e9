package channel

import (
	"context"
	"io"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/flow"
)

// usPair is two userspace interfaces that are each other's peer, with a
// sink on the first.
type usPair struct {
	a, b *Userspace
	sink netip.AddrPort
}

func newUSPair(b *testing.B, filtered bool, x, y netip.Addr) *usPair {
	var opts []UserspaceOption
	if filtered {
		m := outsourcingMatrix(b)
		yc, _ := m.Class("yellow", "management-console")
		yd, _ := m.Class("yellow", "domain-controller")
		p := &flow.Plan{Matrix: m, EEInterfaces: []string{"tvdusbA", "tvdusbB"}, Members: []flow.PlanMember{
			{EE: "a", Class: yc, Addrs: []netip.Addr{x}, Iface: "tvdusbA"},
			{EE: "b", Class: yd, Addrs: []netip.Addr{y}, Iface: "tvdusbB"},
		}}
		opts = append(opts, WithFlowPlan(p))
	}
	mk := func(name string, addr netip.Addr) *Userspace {
		u, err := NewUserspace(Config{Name: name, Domain: "bench", PrivateKey: mustKey(b),
			Address: netip.PrefixFrom(addr, 24), ListenAddr: netip.MustParseAddr("127.0.0.1"), Logger: testLogger(b)}, opts...)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { u.Close() })
		return u
	}
	p := &usPair{a: mk("tvdusbA", x), b: mk("tvdusbB", y), sink: netip.AddrPortFrom(x, 7200)}
	if err := p.a.SetPeers([]Peer{loopbackPeer(b, p.b, 0)}); err != nil {
		b.Fatal(err)
	}
	if err := p.b.SetPeers([]Peer{loopbackPeer(b, p.a, 0)}); err != nil {
		b.Fatal(err)
	}
	ln, err := p.a.Net().ListenTCPAddrPort(p.sink)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(io.Discard, c); c.Close() }()
		}
	}()
	return p
}

// send moves n bytes from b to a over one TCP connection and returns the
// time taken.
func (p *usPair) send(tb testing.TB, buf []byte, n int) time.Duration {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	start := time.Now()
	c, err := p.b.Net().DialContextTCPAddrPort(ctx, p.sink)
	if err != nil {
		tb.Fatal(err)
	}
	for sent := 0; sent < n; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			tb.Fatal(err)
		}
	}
	c.Close()
	return time.Since(start)
}

// BenchmarkUserspaceFilterThroughput measures TCP throughput between two
// userspace interfaces whose flow filters allow the flow (intra-domain)
// against two unfiltered interfaces, alternating in the same run, and
// reports both rates and the median ratio. On a loaded machine single
// transfers of either pair sometimes stall for seconds (netstack TCP
// retransmission back-off after underlay drops), so the aggregate rates
// are noisy and the median ratio is the figure to read.
func BenchmarkUserspaceFilterThroughput(b *testing.B) {
	filtered := newUSPair(b, true, netip.MustParseAddr("198.19.78.1"), netip.MustParseAddr("198.19.78.2"))
	plain := newUSPair(b, false, netip.MustParseAddr("198.19.79.1"), netip.MustParseAddr("198.19.79.2"))
	buf := make([]byte, 64<<10)
	const perIter = 8 << 20
	filtered.send(b, buf, perIter) // warm up: handshakes
	plain.send(b, buf, perIter)
	var tF, tP time.Duration
	var ratios []float64
	iter := 0
	for b.Loop() {
		var f, p time.Duration
		if iter%2 == 0 {
			f, p = filtered.send(b, buf, perIter), plain.send(b, buf, perIter)
		} else {
			p, f = plain.send(b, buf, perIter), filtered.send(b, buf, perIter)
		}
		tF += f
		tP += p
		ratios = append(ratios, p.Seconds()/f.Seconds())
		iter++
	}
	slices.Sort(ratios)
	mb := float64(perIter*iter) / 1e6
	b.ReportMetric(mb/tF.Seconds(), "MB/s-filtered")
	b.ReportMetric(mb/tP.Seconds(), "MB/s-unfiltered")
	b.ReportMetric(ratios[len(ratios)/2], "x-vs-unfiltered")
	for _, u := range []*Userspace{filtered.a, filtered.b} {
		c, err := u.FlowCounters()
		if err != nil {
			b.Fatal(err)
		}
		if c["allow-intra-domain"].Packets == 0 {
			b.Fatal("the filtered pair's filter judged nothing")
		}
		for n, v := range c {
			if n != "allow-intra-domain" && v.Packets != 0 {
				b.Errorf("%s: %s counted %d packets", u.Name(), n, v.Packets)
			}
		}
	}
}
