package filter

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
)

// outsourcing compiles examples/outsourcing once.
var outsourcing = sync.OnceValues(func() (*flow.Matrix, error) {
	c, err := policy.LoadAndCompile("../../examples/outsourcing")
	if err != nil {
		return nil, err
	}
	return c.Matrix, nil
})

func matrix(t testing.TB) *flow.Matrix {
	t.Helper()
	m, err := outsourcing()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// member is one test EE: a class of the outsourcing matrix, an IPv4 and an
// IPv6 overlay address, and the interface it sits behind.
type member struct {
	name      string
	domain    string
	role      string
	addr4     netip.Addr
	addr6     netip.Addr
	iface     string
	class     flow.ClassID
	isGateway bool
}

var (
	ctl4 = netip.MustParseAddr("10.99.0.1")
	ctl6 = netip.MustParseAddr("fd99::1")
	out4 = netip.MustParseAddr("10.77.9.9") // in yellow's subnet, no member
)

// members returns one member per class of the outsourcing matrix.
func members(t testing.TB, m *flow.Matrix) []member {
	var out []member
	for c := range m.NumClasses() {
		d, r := m.ClassName(flow.ClassID(c))
		dom, _ := m.DomainIndex(d)
		out = append(out, member{
			name: fmt.Sprintf("%s-%s", d[:1], r), domain: d, role: r,
			addr4: netip.AddrFrom4([4]byte{10, byte(77 + dom), 0, byte(10 + c)}),
			addr6: netip.AddrFrom16([16]byte{0xfd, 0x77, 2: byte(dom), 15: byte(10 + c)}),
			iface: fmt.Sprintf("tvdus%d", c), class: flow.ClassID(c), isGateway: m.IsGateway(flow.ClassID(c)),
		})
	}
	return out
}

func planOf(m *flow.Matrix, mems []member, quarantine ...string) *flow.Plan {
	p := &flow.Plan{Matrix: m, Controllers: []netip.Addr{ctl4, ctl6}, Quarantine: quarantine}
	for _, mem := range mems {
		p.EEInterfaces = append(p.EEInterfaces, mem.iface)
		p.Members = append(p.Members, flow.PlanMember{EE: mem.name, Class: mem.class,
			Addrs: []netip.Addr{mem.addr4, mem.addr6}, Iface: mem.iface})
	}
	return p
}

// clock is an injectable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newFilter(t testing.TB, iface string, p *flow.Plan, clk *clock) *Filter {
	t.Helper()
	cfg := Config{Iface: iface}
	if clk != nil {
		cfg.Now = clk.now
	}
	f, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		if err := f.Apply(p); err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// pkt builds an IPv4 or IPv6 packet (by the family of src) of protocol
// proto with a TCP, UDP or ICMP echo header and 8 bytes of payload.
func pkt(src, dst netip.Addr, proto uint8, sport, dport uint16, flags uint8) []byte {
	var l4 []byte
	switch proto {
	case protoTCP:
		l4 = make([]byte, 20+8)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		l4[12] = 5 << 4
		l4[13] = flags
	case protoUDP:
		l4 = make([]byte, 8+8)
		binary.BigEndian.PutUint16(l4[0:], sport)
		binary.BigEndian.PutUint16(l4[2:], dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(len(l4)))
	default: // ICMP echo request with identifier sport
		l4 = make([]byte, 8+8)
		l4[0] = 8
		if src.Is6() {
			l4[0] = 128
		}
		binary.BigEndian.PutUint16(l4[4:], sport)
	}
	if src.Is4() {
		b := make([]byte, 20+len(l4))
		b[0] = 0x45
		binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
		b[8] = 64
		b[9] = proto
		s, d := src.As4(), dst.As4()
		copy(b[12:], s[:])
		copy(b[16:], d[:])
		copy(b[20:], l4)
		return b
	}
	b := make([]byte, 40+len(l4))
	b[0] = 0x60
	binary.BigEndian.PutUint16(b[4:], uint16(len(l4)))
	b[6] = proto
	b[7] = 64
	s, d := src.As16(), dst.As16()
	copy(b[8:], s[:])
	copy(b[24:], d[:])
	copy(b[40:], l4)
	return b
}

func tcp(src, dst netip.Addr, sport, dport uint16) []byte {
	return pkt(src, dst, protoTCP, sport, dport, 0x02)
}

// expect returns the verdict flow/nft gives a hop between two members.
func expect(m *flow.Matrix, from, to member) Verdict {
	return hopVerdict(m, int32(from.class), int32(to.class))
}

// TestDecisionsFollowMatrix judges, at every member's interface, a new
// flow to and from every other member, over IPv4 and IPv6 and for TCP,
// UDP and ICMP: it passes exactly when flow.Matrix.Decide says Direct, and
// is counted under flow/nft's counter for the cell.
func TestDecisionsFollowMatrix(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	p := planOf(m, mems)
	for _, l := range mems {
		f := newFilter(t, l.iface, p, nil)
		port := uint16(1000)
		for _, r := range mems {
			if r.name == l.name {
				continue
			}
			for _, proto := range []uint8{protoTCP, protoUDP, protoICMP} {
				for _, v6 := range []bool{false, true} {
					ls, rs := l.addr4, r.addr4
					if v6 {
						ls, rs = l.addr6, r.addr6
					}
					port++
					ip := proto
					if v6 && proto == protoICMP {
						ip = protoICMPv6
					}
					out := f.Judge(pkt(ls, rs, ip, port, 80, 0x02), Outbound)
					if want := expect(m, l, r); out != want || out.Allowed() != m.Decide(l.class, r.class).Direct {
						t.Errorf("%s -> %s (proto %d, v6 %v) outbound: %v, want %v", l.name, r.name, ip, v6, out, want)
					}
					port++
					in := f.Judge(pkt(rs, ls, ip, port, 80, 0x02), Inbound)
					if want := expect(m, r, l); in != want || in.Allowed() != m.Decide(r.class, l.class).Direct {
						t.Errorf("%s -> %s (proto %d, v6 %v) inbound: %v, want %v", r.name, l.name, ip, v6, in, want)
					}
				}
			}
		}
	}
}

func byName(t testing.TB, mems []member, name string) member {
	t.Helper()
	for _, m := range mems {
		if m.name == name {
			return m
		}
	}
	t.Fatalf("no member %s", name)
	return member{}
}

// oneWay returns the outsourcing matrix with red's gateway row towards
// yellow set to none: the yellow gateway may reach the red gateway
// (point-to-point) but not the other way round.
func oneWay(t testing.TB) *flow.Matrix {
	m := matrix(t)
	rg, _ := m.Class("red", "gateway")
	m2 := withCell(t, m, rg, "yellow", flow.RuleNone, 0)
	yg, _ := m2.Class("yellow", "gateway")
	if !m2.Decide(yg, rg).Direct || m2.Decide(rg, yg).Direct {
		t.Fatalf("outsourcing changed: yellow gateway -> red gateway %v, back %v", m2.Decide(yg, rg), m2.Decide(rg, yg))
	}
	return m2
}

// TestReplies: a reply is judged as the flow it answers. With oneWay's
// matrix the red gateway's answers pass and its own new flows do not.
func TestReplies(t *testing.T) {
	m := oneWay(t)
	mems := members(t, m)
	yg, rg := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway")
	p := planOf(m, mems)
	for _, c := range []struct {
		name   string
		iface  string
		req    Direction // the direction of the request at this interface
		a4, b4 netip.Addr
	}{
		{"at the yellow gateway", yg.iface, Outbound, yg.addr4, rg.addr4},
		{"at the red gateway", rg.iface, Inbound, yg.addr4, rg.addr4},
		{"at the yellow gateway, v6", yg.iface, Outbound, yg.addr6, rg.addr6},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFilter(t, c.iface, p, nil)
			rep := Inbound
			if c.req == Inbound {
				rep = Outbound
			}
			if v := f.Judge(tcp(c.a4, c.b4, 40000, 443), c.req); v != VerdictP2PAllow {
				t.Fatalf("request: %v", v)
			}
			if v := f.Judge(pkt(c.b4, c.a4, protoTCP, 443, 40000, 0x12), rep); v != VerdictP2PAllow {
				t.Fatalf("reply: %v, want it judged as the request (%v)", v, VerdictP2PAllow)
			}
			// The red gateway's own new flow to the yellow gateway.
			if v := f.Judge(tcp(c.b4, c.a4, 443, 40001), rep); v != VerdictNone {
				t.Fatalf("new flow from the red gateway: %v, want %v", v, VerdictNone)
			}
			if f.Flows() != 1 {
				t.Fatalf("%d flows, want the one allowed", f.Flows())
			}
		})
	}
}

// TestQuarantineControllerNonMember covers the reserved classes and the
// ends that are no member.
func TestQuarantineControllerNonMember(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yc, ym := byName(t, mems, "y-management-console"), byName(t, mems, "y-domain-controller")
	f := newFilter(t, yc.iface, planOf(m, mems, yc.name), nil)
	for _, c := range []struct {
		name string
		pkt  []byte
		dir  Direction
		want Verdict
	}{
		{"quarantined to intra-domain peer", tcp(yc.addr4, ym.addr4, 1, 2), Outbound, VerdictQuarantine},
		{"intra-domain peer to quarantined", tcp(ym.addr6, yc.addr6, 1, 2), Inbound, VerdictQuarantine},
		{"quarantined to controller", tcp(yc.addr4, ctl4, 3, 443), Outbound, VerdictController},
		{"controller to quarantined", tcp(ctl6, yc.addr6, 4, 22), Inbound, VerdictController},
		{"non-member to quarantined", tcp(out4, yc.addr4, 5, 22), Inbound, VerdictNonMember},
	} {
		if v := f.Judge(c.pkt, c.dir); v != c.want {
			t.Errorf("%s: %v, want %v", c.name, v, c.want)
		}
	}
	// A remote quarantined member, seen from its peer.
	g := newFilter(t, ym.iface, planOf(m, mems, yc.name), nil)
	if v := g.Judge(tcp(ym.addr4, yc.addr4, 1, 2), Outbound); v != VerdictQuarantine {
		t.Errorf("to a remote quarantined member: %v", v)
	}
	if v := g.Judge(tcp(out4, ym.addr4, 1, 2), Inbound); v != VerdictNonMember {
		t.Errorf("from a non-member: %v", v)
	}
	if v := g.Judge(tcp(ym.addr4, out4, 1, 2), Outbound); v != VerdictNonMember {
		t.Errorf("to a non-member: %v", v)
	}
	// An interface no member is behind, and a filter with no plan, drop
	// everything, controller traffic included.
	for name, h := range map[string]*Filter{
		"unknown interface": newFilter(t, "tvdus-none", planOf(m, mems), nil),
		"no plan":           newFilter(t, ym.iface, nil, nil),
	} {
		if v := h.Judge(tcp(ym.addr4, ctl4, 1, 443), Outbound); v != VerdictNonMember {
			t.Errorf("%s: %v, want %v", name, v, VerdictNonMember)
		}
	}
}

// TestSpoofAndGateway: a member that sends from or receives for an address
// it does not own is a spoofer unless it is a gateway, and a gateway
// forwards only flows whose origin may cross (flow.Matrix.MayCross).
func TestSpoofAndGateway(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yc, yd := byName(t, mems, "y-management-console"), byName(t, mems, "y-domain-controller")
	yg, rg, ro := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway"), byName(t, mems, "r-client-os")
	p := planOf(m, mems)
	f := newFilter(t, yc.iface, p, nil)
	if v := f.Judge(tcp(yd.addr4, yc.addr4, 1, 2), Outbound); v != VerdictSpoof {
		t.Errorf("console sending as the domain controller: %v", v)
	}
	if v := f.Judge(tcp(yc.addr4, yd.addr4, 1, 2), Inbound); v != VerdictMisroute {
		t.Errorf("console receiving for the domain controller: %v", v)
	}
	if v := f.Judge(tcp(out4, yd.addr4, 1, 2), Outbound); v != VerdictSpoof {
		t.Errorf("console sending as a non-member: %v", v)
	}

	// The yellow gateway forwards the console's flow to red (origin may
	// cross: via-gateway) and refuses the domain controller's (none).
	g := newFilter(t, yg.iface, p, nil)
	if !m.MayCross(yc.class, m.ClassDomain(ro.class)) || m.MayCross(yd.class, m.ClassDomain(ro.class)) {
		t.Fatal("outsourcing changed: MayCross")
	}
	// Hop gateway -> red gateway: allowed point-to-point.
	if v := g.Judge(tcp(yc.addr4, rg.addr4, 1, 2), Outbound); v != VerdictP2PAllow {
		t.Errorf("yellow gateway forwarding the console's flow to the red gateway: %v", v)
	}
	// Hop gateway -> red client: point-to-point does not reach it.
	if v := g.Judge(tcp(yc.addr4, ro.addr4, 1, 3), Outbound); v != VerdictP2PDeny {
		t.Errorf("yellow gateway forwarding the console's flow to a red client: %v", v)
	}
	if v := g.Judge(tcp(yd.addr4, rg.addr4, 1, 4), Outbound); v != VerdictGatewayRefused {
		t.Errorf("yellow gateway forwarding the domain controller's flow: %v", v)
	}
	if v := g.Judge(tcp(out4, rg.addr4, 1, 5), Outbound); v != VerdictGatewayRefused {
		t.Errorf("yellow gateway forwarding a non-member's flow: %v", v)
	}
	// The red gateway receives the forwarded flow for the red client: the
	// hop yellow console -> red gateway... is judged at the red gateway's
	// interface as inbound for an address it does not own.
	r := newFilter(t, rg.iface, p, nil)
	if v := r.Judge(tcp(yc.addr4, ro.addr4, 1, 6), Inbound); v != VerdictViaDirect {
		t.Errorf("red gateway receiving the console's flow for a red client: %v", v)
	}
}

// TestMalformed: anything that is not a well-formed IP packet drops.
func TestMalformed(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yc := mems[0]
	f := newFilter(t, yc.iface, planOf(m, mems), nil)
	good := tcp(yc.addr4, mems[1].addr4, 1, 2)
	short := good[:19]
	long := append([]byte(nil), good...)
	binary.BigEndian.PutUint16(long[2:], uint16(len(good)+1))
	badIHL := append([]byte(nil), good...)
	badIHL[0] = 0x44
	v6 := tcp(yc.addr6, mems[1].addr6, 1, 2)
	for name, b := range map[string][]byte{
		"empty": nil, "short": short, "length past end": long, "ihl < 5": badIHL,
		"version 5": {0x55, 0, 0, 20}, "ipv6 short": v6[:39], "ipv6 length past end": v6[:len(v6)-1],
	} {
		if v := f.Judge(b, Outbound); v != VerdictMalformed {
			t.Errorf("%s: %v, want %v", name, v, VerdictMalformed)
		}
	}
	c := f.Counters()[CounterMalformed]
	if c.Packets != 7 {
		t.Errorf("deny-malformed counted %d packets, want 7", c.Packets)
	}
}

// TestFlowExpiry: a reply after its flow expired is a new flow of its own.
func TestFlowExpiry(t *testing.T) {
	m := oneWay(t)
	mems := members(t, m)
	yg, rg := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway")
	clk := &clock{t: time.Unix(1_000_000, 0)}
	f := newFilter(t, yg.iface, planOf(m, mems), clk)
	req := tcp(yg.addr4, rg.addr4, 40000, 443)
	rep := pkt(rg.addr4, yg.addr4, protoTCP, 443, 40000, 0x10)
	if v := f.Judge(req, Outbound); !v.Allowed() {
		t.Fatal(v)
	}
	clk.add(TCPTimeout - time.Second)
	if v := f.Judge(rep, Inbound); !v.Allowed() {
		t.Fatalf("reply within the timeout: %v", v)
	}
	clk.add(TCPTimeout - time.Second) // the reply refreshed the flow
	if v := f.Judge(rep, Inbound); !v.Allowed() {
		t.Fatalf("reply within the refreshed timeout: %v", v)
	}
	fin := pkt(yg.addr4, rg.addr4, protoTCP, 40000, 443, 0x11)
	if v := f.Judge(fin, Outbound); !v.Allowed() {
		t.Fatal(v)
	}
	if v := f.Judge(rep, Inbound); !v.Allowed() {
		t.Fatalf("reply after FIN: %v", v)
	}
	clk.add(ClosingTimeout + time.Second)
	if v := f.Judge(rep, Inbound); v.Allowed() {
		t.Fatalf("reply after the closed flow expired: %v", v)
	}
	// UDP flows live OtherTimeout.
	u := pkt(yg.addr4, rg.addr4, protoUDP, 5000, 53, 0)
	ur := pkt(rg.addr4, yg.addr4, protoUDP, 53, 5000, 0)
	f.Judge(u, Outbound)
	clk.add(OtherTimeout + time.Second)
	if v := f.Judge(ur, Inbound); v.Allowed() {
		t.Fatalf("UDP reply after expiry: %v", v)
	}
}

// TestFlowTableFull: new flows are refused when the table is full of live
// flows, and accepted again once they expire; known flows go on.
func TestFlowTableFull(t *testing.T) {
	m := oneWay(t)
	mems := members(t, m)
	yg, rg := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway")
	clk := &clock{t: time.Unix(1_000_000, 0)}
	f, err := New(Config{Iface: yg.iface, MaxFlows: 4, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Apply(planOf(m, mems)); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if v := f.Judge(tcp(yg.addr4, rg.addr4, uint16(100+i), 443), Outbound); !v.Allowed() {
			t.Fatalf("flow %d: %v", i, v)
		}
	}
	if v := f.Judge(tcp(yg.addr4, rg.addr4, 200, 443), Outbound); v != VerdictFlowTableFull {
		t.Fatalf("fifth flow: %v", v)
	}
	if v := f.Judge(pkt(rg.addr4, yg.addr4, protoTCP, 443, 101, 0x10), Inbound); !v.Allowed() {
		t.Fatalf("reply of a known flow: %v", v)
	}
	clk.add(TCPTimeout + time.Second)
	if v := f.Judge(tcp(yg.addr4, rg.addr4, 200, 443), Outbound); !v.Allowed() {
		t.Fatalf("new flow after expiry: %v", v)
	}
	if f.Flows() != 1 {
		t.Fatalf("%d flows after the sweep, want 1", f.Flows())
	}
	if _, err := New(Config{MaxFlows: -1}); err == nil {
		t.Fatal("negative MaxFlows accepted")
	}
}

// TestApplyKeepsFlows: a new plan keeps established flows it still
// allows, cuts those it does not, and bad plans are refused whole.
func TestApplyKeepsFlows(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yg, rg, yc := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway"), byName(t, mems, "y-management-console")
	p := planOf(m, mems)
	f := newFilter(t, yg.iface, p, nil)
	f.Judge(tcp(yg.addr4, rg.addr4, 40000, 443), Outbound)
	f.Judge(tcp(yg.addr4, yc.addr4, 40001, 22), Outbound)
	rep := pkt(rg.addr4, yg.addr4, protoTCP, 443, 40000, 0x10)
	repC := pkt(yc.addr4, yg.addr4, protoTCP, 22, 40001, 0x10)

	// A plan that quarantines the console: the flow to the red gateway
	// goes on, the one with the console is cut.
	if err := f.Apply(planOf(m, mems, yc.name)); err != nil {
		t.Fatal(err)
	}
	if v := f.Judge(rep, Inbound); v != VerdictP2PAllow {
		t.Errorf("reply of a still-allowed flow after Apply: %v", v)
	}
	if v := f.Judge(repC, Inbound); v != VerdictQuarantine {
		t.Errorf("reply from the now quarantined console: %v", v)
	}
	// A changed matrix: the yellow gateway may no longer reach red.
	m2 := withCell(t, m, yg.class, "red", flow.RuleNone, 0)
	p2 := planOf(m2, mems)
	if err := f.Apply(p2); err != nil {
		t.Fatal(err)
	}
	if v := f.Judge(rep, Inbound); v != VerdictNone {
		t.Errorf("reply after the cell became none: %v", v)
	}
	// And back: the flow was never forgotten.
	if err := f.Apply(p); err != nil {
		t.Fatal(err)
	}
	if v := f.Judge(rep, Inbound); v != VerdictP2PAllow {
		t.Errorf("reply after the cell came back: %v", v)
	}
	// Invalid plans leave the current one in place.
	bad := planOf(m, mems, "nobody")
	if err := f.Apply(bad); err == nil {
		t.Error("plan with an unknown quarantined EE accepted")
	}
	if err := f.Apply(nil); err == nil {
		t.Error("nil plan accepted")
	}
	if f.Plan() != p {
		t.Error("a refused plan replaced the current one")
	}
}

// withCell returns a copy of m with one cell changed.
func withCell(t testing.TB, m *flow.Matrix, src flow.ClassID, dst string, r flow.Rule, roles uint64) *flow.Matrix {
	t.Helper()
	b, err := flow.NewBuilder(m.Domains())
	if err != nil {
		t.Fatal(err)
	}
	dd, ok := m.DomainIndex(dst)
	if !ok {
		t.Fatalf("no domain %s", dst)
	}
	for c := range m.NumClasses() {
		for d := range m.Domains() {
			rule, mask := m.Cell(flow.ClassID(c), d)
			b.Set(flow.ClassID(c), d, rule, mask)
		}
	}
	b.Set(src, dd, r, roles)
	return b.Build()
}

// TestCountersCount: each judged packet is counted once, with its bytes.
func TestCountersCount(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yg, rg, ro := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway"), byName(t, mems, "r-client-os")
	f := newFilter(t, yg.iface, planOf(m, mems), nil)
	a, b := tcp(yg.addr4, rg.addr4, 1, 2), tcp(yg.addr6, ro.addr6, 1, 2)
	f.Judge(a, Outbound)
	f.Judge(b, Outbound)
	c := f.Counters()
	if len(c) != len(CounterNames()) {
		t.Fatalf("%d counters, want %d", len(c), len(CounterNames()))
	}
	if got := c[CounterP2PAllow]; got.Packets != 1 || got.Bytes != uint64(len(a)) {
		t.Errorf("%s: %+v", CounterP2PAllow, got)
	}
	if got := c[CounterP2PDeny]; got.Packets != 1 || got.Bytes != uint64(len(b)) {
		t.Errorf("%s: %+v", CounterP2PDeny, got)
	}
	for n, v := range c {
		if n != CounterP2PAllow && n != CounterP2PDeny && v.Packets != 0 {
			t.Errorf("%s counted %d packets", n, v.Packets)
		}
	}
}

// TestConcurrentJudgeApply judges from several goroutines while plans and
// peers are swapped (run with -race): every verdict is one of the two
// plans' verdicts for the packet.
func TestConcurrentJudgeApply(t *testing.T) {
	m := matrix(t)
	mems := members(t, m)
	yg, rg, yc := byName(t, mems, "y-gateway"), byName(t, mems, "r-gateway"), byName(t, mems, "y-management-console")
	open, quar := planOf(m, mems), planOf(m, mems, rg.name)
	f := newFilter(t, yg.iface, open, nil)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := f.Judge(tcp(yg.addr4, rg.addr4, uint16(g*10000+i%5000), 443), Outbound)
				if v != VerdictP2PAllow && v != VerdictQuarantine {
					t.Errorf("verdict %v", v)
					return
				}
				if v := f.Judge(tcp(yc.addr4, yg.addr4, uint16(i), 22), Inbound); v != VerdictIntra {
					t.Errorf("intra verdict %v", v)
					return
				}
			}
		})
	}
	for i := range 200 {
		p := open
		if i%2 == 0 {
			p = quar
		}
		if err := f.Apply(p); err != nil {
			t.Fatal(err)
		}
		f.SetPeers([][]netip.Prefix{{netip.PrefixFrom(rg.addr4, 32)}, {netip.PrefixFrom(yc.addr4, 32)}})
	}
	close(stop)
	wg.Wait()
}
