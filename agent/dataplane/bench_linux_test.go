package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
)

// addRemote registers a member on a simulated remote node: the node's
// keys are published, but nothing runs there (benchmarks only).
func (l *lab) addRemote(name, node, domain string, role string) {
	n := l.nodes[node]
	if n == nil {
		n = &labNode{name: node, keys: map[string]*tvdv1.ChannelKey{}}
		l.nodes[node] = n
		l.order = append(l.order, node)
	}
	if n.keys[domain] == nil {
		k, err := channel.GenerateKey()
		if err != nil {
			l.t.Fatal(err)
		}
		pub := k.PublicKey()
		n.keys[domain] = &tvdv1.ChannelKey{Domain: domain, WireguardPublicKey: pub[:], Endpoint: fmt.Sprintf("10.254.1.%d:51820", len(l.order))}
	}
	a, ok := l.nextAddr[domain]
	if !ok {
		a = netip.MustParsePrefix(l.subnetOf(domain)).Masked().Addr().Next().Next()
	}
	l.nextAddr[domain] = a.Next()
	l.ees[name] = &labEE{name: name, node: node, domain: domain, role: role, addr: a}
	l.eeOrder = append(l.eeOrder, name)
}

// BenchmarkMembershipChange measures what a node pays when one member
// joins or leaves elsewhere in its domain (a peer's allowed IPs and the
// flow sets change), against applying the same plan from scratch (new
// interfaces, veths and nftables table) in the same run. The node hosts
// the case study's four members of node a and sees 100 remote members on
// 10 other nodes.
func BenchmarkMembershipChange(b *testing.B) {
	l := newLab(b)
	l.noWarm = true
	na := l.addNode("a", 1)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	l.addEE("y-gw", "a", "yellow", "gateway")
	l.addEE("r-gw", "a", "red", "gateway")
	l.addEE("r-dc", "a", "red", "domain-controller")
	for i := 0; i < 100; i++ {
		node := fmt.Sprintf("n%d", i%10)
		if i%2 == 0 {
			l.addRemote(fmt.Sprintf("y-mc-%d", i), node, "yellow", "management-console")
		} else {
			l.addRemote(fmt.Sprintf("r-cl-%d", i), node, "red", "client-os")
		}
	}
	l.addRemote("toggled", "n3", "yellow", "management-console")
	ctx := context.Background()
	cfg := na.dp.cfg

	// Baseline: the same plan applied from scratch, then torn down.
	na.dp.Close()
	var full []time.Duration
	for i := 0; i < 5; i++ {
		cfg.DataDir = b.TempDir()
		dp, err := New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		p := l.plan("a")
		start := time.Now()
		if _, _, err := dp.Apply(ctx, p); err != nil {
			b.Fatal(err)
		}
		full = append(full, time.Since(start))
		if err := dp.Close(); err != nil {
			b.Fatal(err)
		}
	}
	dp, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dp.Close() })
	na.dp = dp
	l.apply("a")

	changes := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.removed["toggled"] = !l.removed["toggled"]
		p := l.plan("a")
		start := time.Now()
		if _, _, err := dp.Apply(ctx, p); err != nil {
			b.Fatal(err)
		}
		changes = append(changes, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(changes)
	slices.Sort(full)
	p50 := changes[len(changes)/2]
	p99 := changes[min(len(changes)-1, len(changes)*99/100)]
	f50 := full[len(full)/2]
	b.ReportMetric(float64(p50.Nanoseconds()), "p50-ns/change")
	b.ReportMetric(float64(p99.Nanoseconds()), "p99-ns/change")
	b.ReportMetric(float64(f50.Nanoseconds()), "ns/full-apply")
	b.ReportMetric(float64(p50)/float64(f50), "x-vs-full-apply")
}
