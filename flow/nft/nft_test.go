package nft

import (
	"errors"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"os"
	"reflect"
	"time"

	"github.com/google/nftables"
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
	t.Parallel()
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

func counters(t testing.TB, p *Programmer) map[string]Counter {
	t.Helper()
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestCounters sends one flow per verdict and checks that exactly the
// matching counter grows.
func TestCounters(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	m := table3(t, false)
	// This programmer gets the namespace as an open handle.
	p, err := New(Config{NetNSFd: int(l.node)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Remove(); err != nil {
			t.Errorf("remove table: %v", err)
		}
		p.Close()
	})
	if err := p.Apply(l.planFor(m, table3EEs)); err != nil {
		t.Fatal(err)
	}
	c := counters(t, p)
	for _, n := range CounterNames() {
		if _, ok := c[n]; !ok {
			t.Errorf("counter %s missing", n)
		}
	}
	tests := []struct {
		from, to string
		counter  string
		pass     bool
	}{
		{"y-dc", "y-mc", CounterIntra, true},
		{"y-gw", "r-gw", CounterP2PAllow, true},
		{"y-gw", "r-os", CounterP2PDeny, false},
		{"y-dc", "r-gw", CounterNone, false},
		{"y-mc", "r-os", CounterViaDirect, false},
		{"x", "r-os", CounterNonMember, false},
		{"r-os", "ctl", CounterController, true},
	}
	// settle waits until the counters stop moving (a finished probe's
	// connection teardown is still in flight for a moment).
	settle := func() map[string]Counter {
		prev := counters(t, p)
		for range 50 {
			time.Sleep(60 * time.Millisecond)
			cur := counters(t, p)
			if reflect.DeepEqual(prev, cur) {
				return cur
			}
			prev = cur
		}
		t.Fatal("counters never settled")
		return nil
	}
	for _, tt := range tests {
		before := settle()
		ok, err := dial(l.ees[tt.from].ns, l.ees[tt.to].addr4)
		if err != nil {
			t.Fatal(err)
		}
		if ok != tt.pass {
			t.Errorf("%s -> %s passed=%v, want %v", tt.from, tt.to, ok, tt.pass)
		}
		after := settle()
		for _, n := range CounterNames() {
			grew := after[n].Packets > before[n].Packets
			if n == tt.counter && !grew {
				t.Errorf("%s -> %s: counter %s did not grow (%d)", tt.from, tt.to, n, after[n].Packets)
			}
			if n != tt.counter && grew {
				t.Errorf("%s -> %s: counter %s grew from %d to %d", tt.from, tt.to, n, before[n].Packets, after[n].Packets)
			}
		}
		if after[tt.counter].Bytes <= before[tt.counter].Bytes {
			t.Errorf("%s -> %s: bytes of %s did not grow", tt.from, tt.to, tt.counter)
		}
	}
}

func TestQuarantine(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	m := table3(t, false)
	p := l.programmer()
	if err := p.Apply(l.planFor(m, table3EEs, "y-mc")); err != nil {
		t.Fatal(err)
	}
	d := decide(t, m)
	l.run(l.pairs(table3EEs, func(a, b member) bool {
		if a.name == "y-mc" || b.name == "y-mc" {
			return false
		}
		return d(a, b)
	}))
	before := counters(t, p)[CounterQuarantine]
	// The quarantined EE still reaches the controller; so do the others.
	ctl := l.ees["ctl"].addr4
	l.run([]probe{
		{from: "y-mc", to: "ctl", addr: ctl, want: true},
		{from: "y-dc", to: "ctl", addr: ctl, want: true},
		{from: "ctl", to: "y-mc", addr: l.ees["y-mc"].addr4, want: true},
		{from: "y-mc", to: "y-dc", addr: l.ees["y-dc"].addr4, want: false},
	})
	if after := counters(t, p)[CounterQuarantine]; after.Packets <= before.Packets {
		t.Errorf("quarantine counter did not grow: %d -> %d", before.Packets, after.Packets)
	}
	// Lifting the quarantine restores the matrix.
	if err := p.Apply(l.planFor(m, table3EEs)); err != nil {
		t.Fatal(err)
	}
	l.run(l.pairs(table3EEs, d))
}

// ruleHandles reads the handle of every rule of every chain of the table
// through a connection of the test's own.
func ruleHandles(t testing.TB, c *nftables.Conn, table string) map[string][]uint64 {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]uint64{}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rules, err := c.GetRules(ch.Table, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			out[ch.Name] = append(out[ch.Name], r.Handle)
		}
	}
	return out
}

func nsFd(t testing.TB, path string) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return int(f.Fd())
}

func nsConn(t testing.TB, path string) *nftables.Conn {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(nsFd(t, path)), nftables.AsLasting())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseLasting() })
	return c
}

// TestIncrementalUpdate adds a member and changes a cell in one Apply and
// checks that it is one transaction of set-element changes only: the
// rules keep their handles, and the new policy holds for real packets.
func TestIncrementalUpdate(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	p := l.programmer()
	closed := table3(t, false)
	if err := p.Apply(l.planFor(closed, table3EEs)); err != nil {
		t.Fatal(err)
	}
	c := nsConn(t, l.nsPath())
	before := ruleHandles(t, c, TableName)
	if len(before[chainForward]) != 4 || len(before) < 10 {
		t.Fatalf("unexpected rule set before the update: %v", before)
	}
	mon := nftables.NewMonitor(nftables.WithMonitorEventBuffer(64))
	// The monitor gets a connection of its own: it reads every message
	// that arrives on its socket.
	mc, err := nftables.New(nftables.WithNetNSFd(nsFd(t, l.nsPath())))
	if err != nil {
		t.Fatal(err)
	}
	events, err := mc.AddGenerationalMonitor(mon)
	if err != nil {
		t.Fatal(err)
	}
	defer mon.Close()

	open := table3(t, true)
	grown := append(append([]member{}, table3EEs...), outsider)
	if err := p.Apply(l.planFor(open, grown)); err != nil {
		t.Fatal(err)
	}
	select {
	case gen := <-events:
		if len(gen.Changes) == 0 {
			t.Fatal("transaction with no changes")
		}
		for _, ev := range gen.Changes {
			if ev.Type != nftables.MonitorEventTypeNewSetElem && ev.Type != nftables.MonitorEventTypeDelSetElem {
				t.Errorf("update changed more than set elements: event type %d", ev.Type)
			}
		}
		t.Logf("update: one transaction of %d element changes", len(gen.Changes))
	case <-time.After(2 * time.Second):
		t.Fatal("no transaction seen")
	}
	// Applying the same plan again sends nothing.
	if err := p.Apply(l.planFor(open, grown)); err != nil {
		t.Fatal(err)
	}
	select {
	case gen := <-events:
		t.Errorf("idempotent Apply sent a transaction: %d changes", len(gen.Changes))
	case <-time.After(300 * time.Millisecond):
	}
	if after := ruleHandles(t, c, TableName); !reflect.DeepEqual(before, after) {
		t.Errorf("rule handles changed:\nbefore %v\nafter  %v", before, after)
	}
	l.run(l.pairs(grown, decide(t, open)))
}

// steer makes the node send packets that arrive on interface iif for dst
// to the EE behind interface via (policy routing: ip rule iif ... lookup).
func (l *lab) steer(iif, dst, via string, table int) *netlink.Rule {
	l.t.Helper()
	link, err := l.nodeH.LinkByName(via)
	if err != nil {
		l.t.Fatal(err)
	}
	_, dn, err := net.ParseCIDR(dst)
	if err != nil {
		l.t.Fatal(err)
	}
	route(l.t, l.nodeH, &netlink.Route{LinkIndex: link.Attrs().Index, Dst: dn, Gw: l.ees[via].addr4.AsSlice(), Table: table, Flags: int(netlink.FLAG_ONLINK)})
	r := netlink.NewRule()
	r.IifName = iif
	r.Dst = dn
	r.Table = table
	r.Priority = 100 + table
	if err := l.nodeH.RuleAdd(r); err != nil {
		l.t.Fatalf("ip rule iif %s to %s: %v", iif, dst, err)
	}
	return r
}

// TestGatewayForwarding routes cross-domain flows through the gateway EEs,
// which forward them (ip_forward=1) keeping the origin's source address:
// yellow/management-console reaches red/client-os via yellow/gateway and
// red/gateway (Rule G), while red/client-os (none towards yellow) and
// yellow/domain-controller (none towards red) are refused at the gateway.
func TestGatewayForwarding(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	for _, gw := range []string{"y-gw", "r-gw"} {
		ns := l.ees[gw].ns
		l.sysctl(ns, "net/ipv4/ip_forward", "1")
		l.sysctl(ns, "net/ipv4/conf/all/rp_filter", "0")
		l.sysctl(ns, "net/ipv4/conf/eth0/rp_filter", "0")
		l.sysctl(ns, "net/ipv4/conf/all/send_redirects", "0")
		l.sysctl(ns, "net/ipv4/conf/eth0/send_redirects", "0")
	}
	const yellowNet, redNet = "10.71.1.0/24", "10.71.2.0/24"
	// Yellow EEs reach red through y-gw, which hands over to r-gw; and the
	// other way round for red EEs.
	mcRule := l.steer("y-mc", redNet, "y-gw", 101)
	l.steer("y-dc", redNet, "y-gw", 102)
	l.steer("y-gw", redNet, "r-gw", 103)
	l.steer("r-os", yellowNet, "r-gw", 104)
	l.steer("r-dc", yellowNet, "r-gw", 105)
	l.steer("r-gw", yellowNet, "y-gw", 106)

	m := table3(t, false)
	p := l.programmer()
	if err := p.Apply(l.planFor(m, table3EEs)); err != nil {
		t.Fatal(err)
	}
	addr := func(n string) netip.Addr { return l.ees[n].addr4 }
	before := counters(t, p)
	l.run([]probe{
		// Rule G: through both gateways.
		{from: "y-mc", to: "r-os", addr: addr("r-os"), want: true},
		{from: "y-mc", to: "r-dc", addr: addr("r-dc"), want: true},
		{from: "r-dc", to: "y-mc", addr: addr("y-mc"), want: true},
		// None: refused at the gateway too.
		{from: "r-os", to: "y-mc", addr: addr("y-mc"), want: false},
		{from: "y-dc", to: "r-os", addr: addr("r-os"), want: false},
		// The gateways themselves talk point-to-point.
		{from: "y-gw", to: "r-gw", addr: addr("r-gw"), want: true},
	})
	after := counters(t, p)
	if got := after[CounterGatewayRefused].Packets - before[CounterGatewayRefused].Packets; got < 2 {
		t.Errorf("gateway-refused counter grew by %d, want at least 2", got)
	}
	if after[CounterViaDirect].Packets != before[CounterViaDirect].Packets {
		t.Error("a via-gateway flow was seen going direct")
	}

	// A non-gateway EE is not handed someone else's flow: make the node
	// send y-mc's red traffic to y-dc instead.
	l.sysctl(l.ees["y-dc"].ns, "net/ipv4/ip_forward", "1")
	l.sysctl(l.ees["y-dc"].ns, "net/ipv4/conf/all/rp_filter", "0")
	l.sysctl(l.ees["y-dc"].ns, "net/ipv4/conf/all/send_redirects", "0")
	l.sysctl(l.ees["y-dc"].ns, "net/ipv4/conf/eth0/send_redirects", "0")
	if err := l.nodeH.RuleDel(mcRule); err != nil {
		t.Fatal(err)
	}
	l.steer("y-mc", redNet, "y-dc", 107)
	misBefore := counters(t, p)[CounterMisroute]
	l.run([]probe{{from: "y-mc", to: "r-os", addr: addr("r-os"), want: false}})
	if got := counters(t, p)[CounterMisroute]; got.Packets <= misBefore.Packets {
		t.Error("misrouted counter did not grow for a flow handed to a non-gateway EE")
	}

	// A non-gateway EE that sends with an address it does not own is
	// dropped, even towards a destination its own class may reach.
	h, err := netlink.NewHandleAt(l.ees["y-dc"].ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	forged := addr("y-mc").Next().Next().Next() // in yellow's subnet, no member's
	addAddr(t, h, eth, forged)
	spoofBefore := counters(t, p)[CounterSpoof]
	ok, err := dialFrom(l.ees["y-dc"].ns, forged, addr("y-mc"))
	if err != nil {
		t.Fatal(err)
	}
	if ok {
		t.Error("y-dc reached y-mc with a forged source address")
	}
	if got := counters(t, p)[CounterSpoof]; got.Packets <= spoofBefore.Packets {
		t.Error("spoofed-source counter did not grow")
	}
	if ok, err := dial(l.ees["y-dc"].ns, addr("y-mc")); err != nil || !ok {
		t.Errorf("y-dc -> y-mc with its own address: passed=%v err=%v, want pass", ok, err)
	}
}

// TestRestartAndDrift: a table left by an earlier programmer (an agent
// restart) is replaced atomically by the first Apply of a new one; and a
// table deleted behind the programmer's back is rebuilt after the failed
// update is reported.
func TestRestartAndDrift(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	m := table3(t, false)
	first, err := New(Config{NetNS: l.nsPath()})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Apply(l.planFor(m, table3EEs, "y-dc")); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil { // leaves the table in place
		t.Fatal(err)
	}
	if err := first.Apply(l.planFor(m, table3EEs)); !errors.Is(err, ErrClosed) {
		t.Errorf("Apply after Close: %v, want ErrClosed", err)
	}
	yDC, rOS := l.ees["y-dc"], l.ees["r-os"]
	l.run([]probe{{from: "y-dc", to: "y-mc", addr: l.ees["y-mc"].addr4, want: false}})

	left, err := New(Config{NetNS: l.nsPath()})
	if err != nil {
		t.Fatal(err)
	}
	leftCounts, err := left.Counters()
	left.Close()
	if err != nil {
		t.Fatal(err)
	}
	if leftCounts[CounterQuarantine].Packets == 0 {
		t.Fatal("the quarantine counter saw nothing")
	}
	p := l.programmer()
	if err := p.Apply(l.planFor(m, table3EEs)); err != nil {
		t.Fatalf("replace leftover table: %v", err)
	}
	if got := counters(t, p)[CounterQuarantine]; got.Packets < leftCounts[CounterQuarantine].Packets {
		t.Errorf("quarantine counter not carried over: %d, was %d", got.Packets, leftCounts[CounterQuarantine].Packets)
	}
	l.run([]probe{{from: "y-dc", to: "y-mc", addr: l.ees["y-mc"].addr4, want: true}})

	// Someone deletes the table: the next update fails (its elements'
	// sets are gone) and the one after rebuilds the whole table.
	c := nsConn(t, l.nsPath())
	c.DelTable(&nftables.Table{Name: TableName, Family: nftables.TableFamilyINet})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	grown := append(append([]member{}, table3EEs...), outsider)
	if err := p.Apply(l.planFor(m, grown)); err == nil {
		t.Fatal("update of a deleted table reported success")
	}
	if err := p.Apply(l.planFor(m, grown)); err != nil {
		t.Fatalf("rebuild: %v", err)
	}
	l.run([]probe{
		{from: "x", to: "r-os", addr: rOS.addr4, want: true},
		{from: "r-os", to: "y-dc", addr: yDC.addr4, want: false},
	})
}

// remotePlan is the Table 3 plan with the red EEs as members on another
// node: their interfaces are overlay interfaces, and they have no local
// interface of their own.
func (l *lab) remotePlan(m *flow.Matrix) *flow.Plan {
	plan := l.planFor(m, table3EEs)
	remote := map[string]bool{"r-dc": true, "r-gw": true, "r-os": true}
	plan.EEInterfaces = slices.DeleteFunc(plan.EEInterfaces, func(n string) bool { return remote[n] })
	for n := range remote {
		plan.OverlayInterfaces = append(plan.OverlayInterfaces, n)
	}
	for i := range plan.Members {
		if remote[plan.Members[i].EE] {
			plan.Members[i].Iface = ""
		}
	}
	return plan
}

// TestRemoteMembers treats the red EEs as members on another node, reached
// through overlay interfaces: they are classified by address only, and
// every ordered pair still follows Decide (the remote-end rule paths).
func TestRemoteMembers(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	m := table3(t, false)
	plan := l.remotePlan(m)
	p := l.programmer()
	if err := p.Apply(plan); err != nil {
		t.Fatal(err)
	}
	all := append(append([]member{}, table3EEs...), outsider)
	d := decide(t, m)
	l.run(l.pairs(all, func(a, b member) bool {
		if a.name == outsider.name || b.name == outsider.name {
			return false
		}
		return d(a, b)
	}))
}

// TestReach: an address reached over an overlay interface through the
// peer's gateway is judged as that gateway, in both directions and for
// both families, and only on that interface; removing the entry restores
// the plain verdict without rebuilding the chains.
func TestReach(t *testing.T) {
	t.Parallel()
	l := table3Lab(t)
	m := table3(t, false)
	plan := l.remotePlan(m)
	p := l.programmer()
	if err := p.Apply(plan); err != nil {
		t.Fatal(err)
	}
	d := decide(t, m)
	plain := l.pairs(table3EEs, d)
	l.run(plain)

	// r-os stands behind red's gateway as far as its overlay interface is
	// concerned: yellow's gateway may reach it (point-to-point to red's
	// gateway), and it may reach yellow's gateway (red's gateway row).
	rgw, _ := m.Class("red", "gateway")
	var ros member
	for _, e := range table3EEs {
		if e.name == "r-os" {
			ros = e
		}
	}
	with := *plan
	with.Reach = []flow.Reach{
		{Iface: "r-os", Addr: netip.MustParseAddr(ros.a4), Class: rgw},
		{Iface: "r-os", Addr: netip.MustParseAddr(ros.a6), Class: rgw},
		// An entry on another interface changes nothing for r-os.
		{Iface: "r-dc", Addr: netip.MustParseAddr("10.71.1.12"), Class: rgw},
	}
	if err := p.Apply(&with); err != nil {
		t.Fatal(err)
	}
	asGW := member{name: "r-os", domain: "red", role: "gateway"}
	l.run(l.pairs(table3EEs, func(a, b member) bool {
		switch {
		case a.name == "r-os":
			return d(asGW, b)
		case b.name == "r-os":
			return d(a, asGW)
		}
		return d(a, b)
	}))
	if !d(member{name: "y-gw", domain: "yellow", role: "gateway"}, asGW) || d(member{name: "y-gw", domain: "yellow", role: "gateway"}, ros) {
		t.Fatal("the test needs y-gw -> r-os to change with the reach entry")
	}
	if err := p.Apply(plan); err != nil {
		t.Fatal(err)
	}
	l.run(plain)
}
