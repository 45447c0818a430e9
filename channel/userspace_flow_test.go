package channel

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/channel/filter"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
)

// The userspace matrix test: three "nodes" host one member of every class
// of examples/outsourcing (yellow and red), each member on its own
// userspace interface (its own netstack and WireGuard device, loopback
// underlay, no root). In userspace mode an EE's interface is where its
// traffic is filtered, so a node is only a grouping here.
//
// Every interface is a WireGuard peer of every other one (one flat
// overlay), so WireGuard lets every packet through and the flow filter
// alone decides what passes: each member's filter judges what it sends
// and what it receives.

const (
	probePort = 7100 // answers "ok <name>" to one line, then closes
	echoPort  = 7101 // echoes lines until closed
	// probeWait bounds a connection attempt; a dropped SYN is retried by
	// netstack after 1 s, so a denied flow shows as a timeout.
	probeWait = 3 * time.Second
)

// labAddr is the test overlay address of host h in domain index d (d = 2
// for the controller), IPv4 (10.77+d.0.h) or IPv6 (fd77:d::h).
func labAddr(v6 bool, d, h int) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0xfd, 0x77, 2: 0, 3: byte(d), 15: byte(h)})
	}
	return netip.AddrFrom4([4]byte{10, byte(77 + d), 0, byte(h)})
}

// subnet is the overlay prefix of domain d in this test.
func subnet(v6 bool, d int) netip.Prefix {
	p, _ := labAddr(v6, d, 0).Prefix(map[bool]int{false: 16, true: 32}[v6])
	return p
}

type flowMember struct {
	name  string // EE name, also the interface name
	class flow.ClassID
	node  int
	addr  netip.Addr
	u     *Userspace

	mu   sync.Mutex
	from map[string]int // probes accepted, by sender name
}

type flowLab struct {
	t       *testing.T
	via     bool // cross-domain routes go through the gateways
	v6      bool // the overlay is IPv6
	m       *flow.Matrix
	members []*flowMember
	ctl     *flowMember // the controller: a member of no domain, unfiltered
	rogue   *flowMember // a WireGuard peer that is no member, unfiltered
}

func outsourcingMatrix(t testing.TB) *flow.Matrix {
	t.Helper()
	c, err := policy.LoadAndCompile("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	return c.Matrix
}

// newFlowLab starts the interfaces: one member per class, spread over
// three nodes, plus the controller and the rogue. Gateway members'
// interfaces forward (WithGateway). With via false every interface routes
// every address straight to its owner; with via true a member reaches the
// other domain only through its domain's gateway, and the two gateways
// route each other's domain to each other (see peersOf).
func newFlowLab(t *testing.T, m *flow.Matrix, via, v6 bool) *flowLab {
	l := &flowLab{t: t, m: m, via: via, v6: v6}
	for c := range m.NumClasses() {
		d, r := m.ClassName(flow.ClassID(c))
		dom, _ := m.DomainIndex(d)
		l.members = append(l.members, &flowMember{
			name: fmt.Sprintf("tvdus%d%s%s", c%3, d[:1], shortRole(r)), class: flow.ClassID(c), node: c % 3,
			addr: labAddr(v6, dom, 10+c), from: map[string]int{},
		})
	}
	l.ctl = &flowMember{name: "tvdusctl", addr: labAddr(v6, 2, 1), from: map[string]int{}}
	l.rogue = &flowMember{name: "tvdusrogue", addr: labAddr(v6, 0, 99), from: map[string]int{}} // in the first domain's subnet
	plan := l.plan()
	for _, x := range l.all() {
		var opts []UserspaceOption
		if x != l.ctl && x != l.rogue {
			opts = append(opts, WithFlowPlan(plan))
			if m.IsGateway(x.class) {
				opts = append(opts, WithGateway())
			}
		}
		u, err := NewUserspace(Config{Name: x.name, Domain: "outsourcing", PrivateKey: mustKey(t),
			Address: netip.PrefixFrom(x.addr, x.addr.BitLen()), ListenAddr: netip.MustParseAddr("127.0.0.1"), Logger: testLogger(t)}, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		x.u = u
		l.serve(x)
	}
	// Every interface first learns all peers; then, in each pair, one
	// side turns a keepalive on and so starts the handshake at once (if
	// both did, their initiations would cross and both wait for the 5 s
	// retry). A probe's time then goes to the filter, not to WireGuard.
	all := l.all()
	for _, second := range []bool{false, true} {
		for i, x := range all {
			var peers []Peer
			for j, y := range all {
				ips := l.allowedIPs(x, y)
				if ips == nil {
					continue
				}
				p := loopbackPeer(t, y.u, 0)
				p.AllowedIPs = ips
				if second && j > i {
					p.PersistentKeepalive = 25 * time.Second
				}
				peers = append(peers, p)
			}
			if err := x.u.SetPeers(peers); err != nil {
				t.Fatal(err)
			}
		}
	}
	start := time.Now()
	defer func() { t.Logf("all pairs handshook in %v", time.Since(start)) }()
	deadline := time.Now().Add(30 * time.Second)
	for _, x := range l.all() {
		for {
			st, err := x.u.Peers()
			if err != nil {
				t.Fatal(err)
			}
			done := 0
			for _, p := range st {
				if !p.LastHandshake.IsZero() {
					done++
				}
			}
			if done == len(st) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d of %d peers handshook within 30s", x.name, done, len(st))
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return l
}

// allowedIPs returns what x routes to peer y, or nil when y is no peer of
// x. The controller and the rogue are everyone's peers, by their address.
func (l *flowLab) allowedIPs(x, y *flowMember) []netip.Prefix {
	if x == y {
		return nil
	}
	host := []netip.Prefix{netip.PrefixFrom(y.addr, y.addr.BitLen())}
	if !l.via || x == l.ctl || x == l.rogue || y == l.ctl || y == l.rogue {
		return host
	}
	xd, yd := l.m.ClassDomain(x.class), l.m.ClassDomain(y.class)
	xgw, ygw := l.m.IsGateway(x.class), l.m.IsGateway(y.class)
	other := func(d int) netip.Prefix { return subnet(l.v6, 1-d) }
	switch {
	case xd == yd && ygw && !xgw:
		return append(host, other(xd)) // my gateway: the other domain
	case xd == yd:
		return host
	case xgw && ygw:
		return append(host, subnet(l.v6, yd)) // the other gateway: its domain
	}
	return nil
}

func shortRole(r string) string {
	switch r {
	case "domain-controller":
		return "dc"
	case "gateway":
		return "gw"
	}
	return r[:2]
}

func (l *flowLab) all() []*flowMember {
	return append(append([]*flowMember(nil), l.members...), l.ctl, l.rogue)
}

// plan is the flow plan every member's filter gets: all members, the
// controller, and the given quarantine.
func (l *flowLab) plan(quarantine ...string) *flow.Plan {
	return l.planWith(l.m, quarantine...)
}

func (l *flowLab) planWith(m *flow.Matrix, quarantine ...string) *flow.Plan {
	p := &flow.Plan{Matrix: m, Controllers: []netip.Addr{l.ctl.addr}, Quarantine: quarantine}
	for _, x := range l.members {
		p.EEInterfaces = append(p.EEInterfaces, x.name)
		p.Members = append(p.Members, flow.PlanMember{EE: x.name, Class: x.class, Addrs: []netip.Addr{x.addr}, Iface: x.name})
	}
	return p
}

func (l *flowLab) apply(p *flow.Plan) {
	l.t.Helper()
	for _, x := range l.members {
		if err := x.u.ApplyFlowPlan(p); err != nil {
			l.t.Fatal(err)
		}
	}
}

// serve runs the probe and echo servers of x on its overlay address.
func (l *flowLab) serve(x *flowMember) {
	t := l.t
	for _, port := range []uint16{probePort, echoPort} {
		ln, err := x.u.Net().ListenTCPAddrPort(netip.AddrPortFrom(x.addr, port))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					remote := c.RemoteAddr().String()
					if h, _, err := net.SplitHostPort(remote); err == nil {
						remote = h
					}
					c.SetDeadline(time.Now().Add(time.Minute))
					r := bufio.NewReader(c)
					for {
						line, err := r.ReadString('\n')
						if err != nil {
							return
						}
						if port == probePort {
							x.mu.Lock()
							x.from[strings.TrimSpace(line)+"@"+remote]++
							x.mu.Unlock()
							fmt.Fprintf(c, "ok %s\n", x.name)
							return
						}
						fmt.Fprint(c, line)
					}
				}()
			}
		}()
	}
}

// probe reports whether a TCP connection from a to b carries one exchange.
func probe(a, b *flowMember) bool {
	ctx, cancel := context.WithTimeout(context.Background(), probeWait)
	defer cancel()
	c, err := a.u.Net().DialContextTCPAddrPort(ctx, netip.AddrPortFrom(b.addr, probePort))
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(probeWait))
	fmt.Fprintf(c, "%s\n", a.name)
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && line == "ok "+b.name+"\n"
}

type probeCase struct {
	from, to *flowMember
	want     bool
	why      string
}

// run probes every case at once and reports each mismatch; it also checks
// that a denied probe never reached the receiver's application.
func (l *flowLab) run(cases []probeCase) {
	l.t.Helper()
	got := make([]bool, len(cases))
	before := make([]int, len(cases))
	key := func(c probeCase) string { return c.from.name + "@" + c.from.addr.String() }
	for i, c := range cases {
		c.to.mu.Lock()
		before[i] = c.to.from[key(c)]
		c.to.mu.Unlock()
	}
	var wg sync.WaitGroup
	for i, c := range cases {
		wg.Go(func() { got[i] = probe(c.from, c.to) })
	}
	wg.Wait()
	for i, c := range cases {
		if got[i] != c.want {
			l.t.Errorf("%s -> %s: passed %v, want %v (%s)", c.from.name, c.to.name, got[i], c.want, c.why)
		}
		c.to.mu.Lock()
		n := c.to.from[key(c)] - before[i]
		c.to.mu.Unlock()
		if !c.want && n != 0 {
			l.t.Errorf("%s -> %s: denied, yet the receiver accepted %d probes", c.from.name, c.to.name, n)
		}
		// The receiver saw the origin's own address, also through the
		// gateways.
		if got[i] && n != 1 {
			l.t.Errorf("%s -> %s: passed, but the receiver counted %d probes from %s", c.from.name, c.to.name, n, c.from.addr)
		}
	}
}

// counters sums every member filter's counters.
func (l *flowLab) counters() map[string]uint64 {
	l.t.Helper()
	sum := map[string]uint64{}
	for _, x := range l.members {
		c, err := x.u.FlowCounters()
		if err != nil {
			l.t.Fatal(err)
		}
		for n, v := range c {
			sum[n] += v.Packets
		}
	}
	return sum
}

// TestUserspaceFlowMatrix: for every ordered pair of members a TCP
// connection sent directly passes exactly when flow.Matrix.Decide says
// Direct; non-members and the controller are judged as flow/nft judges
// them.
func TestUserspaceFlowMatrix(t *testing.T) {
	forFamilies(t, testUserspaceFlowMatrix)
}

// forFamilies runs test over an IPv4 and over an IPv6 overlay.
func forFamilies(t *testing.T, test func(t *testing.T, v6 bool)) {
	t.Run("ipv4", func(t *testing.T) { test(t, false) })
	t.Run("ipv6", func(t *testing.T) { test(t, true) })
}

func testUserspaceFlowMatrix(t *testing.T, v6 bool) {
	m := outsourcingMatrix(t)
	l := newFlowLab(t, m, false, v6)
	var cases []probeCase
	allowed := 0
	for _, a := range l.members {
		for _, b := range l.members {
			if a == b {
				continue
			}
			d := m.Decide(a.class, b.class)
			cases = append(cases, probeCase{a, b, d.Direct, d.Rule.String()})
			if d.Direct {
				allowed++
			}
		}
		cases = append(cases,
			probeCase{a, l.ctl, true, "member to controller"},
			probeCase{l.ctl, a, true, "controller to member"},
			probeCase{a, l.rogue, false, "member to non-member"},
			probeCase{l.rogue, a, false, "non-member to member (judged by the receiver's filter)"},
		)
	}
	if allowed == 0 || allowed == len(l.members)*(len(l.members)-1) {
		t.Fatalf("%d of the pairs allowed: the matrix test needs both outcomes", allowed)
	}
	l.run(cases)
	c := l.counters()
	for _, n := range []string{filter.CounterIntra, filter.CounterP2PAllow, filter.CounterController,
		filter.CounterP2PDeny, filter.CounterNone, filter.CounterViaDirect, filter.CounterNonMember} {
		if c[n] == 0 {
			t.Errorf("counter %s did not move: %v", n, c)
		}
	}
	for _, n := range []string{filter.CounterSpoof, filter.CounterMisroute, filter.CounterMalformed, filter.CounterQuarantine} {
		if c[n] != 0 {
			t.Errorf("counter %s = %d, want 0", n, c[n])
		}
	}
}

func (l *flowLab) member(domain, role string) *flowMember {
	l.t.Helper()
	c, ok := l.m.Class(domain, role)
	if !ok {
		l.t.Fatalf("no class %s/%s", domain, role)
	}
	for _, x := range l.members {
		if x.class == c {
			return x
		}
	}
	l.t.Fatalf("no member of %s/%s", domain, role)
	return nil
}

// TestUserspaceFlowQuarantine: a quarantined member reaches and is reached
// by nobody but the controller, everyone else is unaffected.
func TestUserspaceFlowQuarantine(t *testing.T) {
	m := outsourcingMatrix(t)
	l := newFlowLab(t, m, false, false)
	q := l.member("yellow", "management-console")
	l.apply(l.plan(q.name))
	var cases []probeCase
	for _, x := range l.members {
		if x == q {
			continue
		}
		cases = append(cases, probeCase{q, x, false, "from the quarantined member"}, probeCase{x, q, false, "to the quarantined member"})
	}
	cases = append(cases,
		probeCase{q, l.ctl, true, "quarantined member to controller"},
		probeCase{l.ctl, q, true, "controller to quarantined member"},
		probeCase{l.member("yellow", "gateway"), l.member("red", "gateway"), true, "unaffected pair"},
		probeCase{l.member("yellow", "domain-controller"), l.member("yellow", "gateway"), true, "unaffected pair"},
	)
	l.run(cases)
	if c := l.counters(); c[filter.CounterQuarantine] == 0 {
		t.Errorf("deny-quarantine did not move: %v", c)
	}
}

// TestUserspaceFlowUpdate: a new plan is applied without cutting an
// established flow it still allows; a plan that denies the flow cuts it,
// and the flow resumes when the plan allows it again.
func TestUserspaceFlowUpdate(t *testing.T) {
	m := outsourcingMatrix(t)
	l := newFlowLab(t, m, false, false)
	yg, rg, ro := l.member("yellow", "gateway"), l.member("red", "gateway"), l.member("red", "client-os")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := yg.u.Net().DialContextTCPAddrPort(ctx, netip.AddrPortFrom(rg.addr, echoPort))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	echo := func(msg string, wait time.Duration) error {
		c.SetDeadline(time.Now().Add(wait))
		if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
			return err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return err
		}
		if line != msg+"\n" {
			return fmt.Errorf("echo %q, want %q", line, msg)
		}
		return nil
	}
	if err := echo("before", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	// An unrelated change: quarantine the red client.
	l.apply(l.plan(ro.name))
	if err := echo("after an unrelated change", 5*time.Second); err != nil {
		t.Fatalf("established flow cut by an unrelated plan change: %v", err)
	}
	// The yellow gateway may no longer reach red, nor red's gateway
	// yellow: the established flow stops at its next packet.
	b, err := flow.NewBuilder(m.Domains())
	if err != nil {
		t.Fatal(err)
	}
	for s := range m.NumClasses() {
		for d := range m.Domains() {
			rule, mask := m.Cell(flow.ClassID(s), d)
			if flow.ClassID(s) == yg.class || flow.ClassID(s) == rg.class {
				rule, mask = flow.RuleNone, 0
			}
			b.Set(flow.ClassID(s), d, rule, mask)
		}
	}
	closed := b.Build()
	before := l.counters()[filter.CounterNone]
	l.apply(l.planWith(closed, ro.name))
	c.SetDeadline(time.Now().Add(1500 * time.Millisecond))
	fmt.Fprintf(c, "while denied\n")
	if line, err := r.ReadString('\n'); err == nil {
		t.Fatalf("established flow still answered (%q) after the plan denied it", line)
	}
	if after := l.counters()[filter.CounterNone]; after == before {
		t.Fatal("deny-none did not move while the flow was denied")
	}
	// Allowed again: TCP retransmits the pending line and the flow goes on.
	l.apply(l.plan())
	c.SetDeadline(time.Now().Add(10 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil || line != "while denied\n" {
		t.Fatalf("flow did not resume once allowed again: %q %v", line, err)
	}
	if err := echo("after", 5*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestUserspaceFlowMatrixViaGateways: with the cross-domain routes through
// the gateways, for every ordered pair of members a TCP connection passes
// exactly when the matrix lets it through at all: straight
// (flow.Matrix.Decide) or through the gateways (flow.Matrix.Via). The
// gateways forward with the origin address kept, and refuse flows whose
// origin may not cross (flow.Matrix.MayCross).
func TestUserspaceFlowMatrixViaGateways(t *testing.T) {
	forFamilies(t, testUserspaceFlowMatrixViaGateways)
}

func testUserspaceFlowMatrixViaGateways(t *testing.T, v6 bool) {
	m := outsourcingMatrix(t)
	l := newFlowLab(t, m, true, v6)
	var cases []probeCase
	through := 0
	for _, a := range l.members {
		for _, b := range l.members {
			if a == b {
				continue
			}
			d, via := m.Decide(a.class, b.class), m.Via(a.class, b.class)
			why := d.Rule.String()
			if !d.Direct && len(via) > 0 {
				through++
				var names []string
				for _, g := range via {
					dn, rn := m.ClassName(g)
					names = append(names, dn+"/"+rn)
				}
				why += " via " + strings.Join(names, ", ")
			}
			cases = append(cases, probeCase{a, b, d.Direct || len(via) > 0, why})
		}
	}
	if through == 0 {
		t.Fatal("no pair of the matrix goes through the gateways")
	}
	l.run(cases)
	c := l.counters()
	if c[filter.CounterGatewayRefused] == 0 {
		t.Errorf("deny-gateway-refused did not move: %v", c)
	}
	for _, n := range []string{filter.CounterSpoof, filter.CounterMisroute, filter.CounterViaDirect} {
		if c[n] != 0 {
			t.Errorf("counter %s = %d, want 0", n, c[n])
		}
	}
}

// TestUserspaceFlowQuarantinedGateway: with the routes through the
// gateways, quarantining the yellow gateway cuts every flow it forwards,
// while flows inside each domain go on and the gateway still reaches the
// controller.
func TestUserspaceFlowQuarantinedGateway(t *testing.T) {
	m := outsourcingMatrix(t)
	l := newFlowLab(t, m, true, false)
	yg, ym := l.member("yellow", "gateway"), l.member("yellow", "management-console")
	rg, ro, rd := l.member("red", "gateway"), l.member("red", "client-os"), l.member("red", "domain-controller")
	l.run([]probeCase{{ym, ro, true, "via-gateway, before the quarantine"}})
	l.apply(l.plan(yg.name))
	l.run([]probeCase{
		{ym, ro, false, "through the quarantined gateway"},
		{rd, ym, false, "through the quarantined gateway"},
		{rg, ym, false, "through the quarantined gateway"},
		{yg, rg, false, "from the quarantined gateway"},
		{yg, l.ctl, true, "quarantined gateway to controller"},
		{rd, ro, true, "inside red"},
		{ym, l.member("yellow", "domain-controller"), true, "inside yellow"},
	})
}
