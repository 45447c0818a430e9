package dataplane

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
)

// TestCaseStudy runs the paper's case study 1 on three nodes with real
// namespaces, wireguard-go and nftables: every ordered pair of EEs against
// the compiled matrix, encryption on the underlay, incremental updates,
// quarantine and revocation.
func TestCaseStudy(t *testing.T) {
	l := caseStudy(t)
	l.apply()

	steps := []struct {
		name string
		fn   func(t *testing.T, l *lab)
	}{
		{"matrix", testMatrix},
		{"encrypted-underlay", testEncrypted},
		{"incremental", testIncremental},
		{"quarantine", testQuarantine},
		{"revocation", testRevocation},
	}
	for _, s := range steps {
		if !t.Run(s.name, func(t *testing.T) { l.t = t; s.fn(t, l) }) {
			return
		}
	}
}

// testMatrix: every ordered pair of EEs passes exactly when the policy
// says a packet sent straight there passes.
func testMatrix(t *testing.T, l *lab) {
	pairs := l.allPairs()
	passed := l.checkPairs(pairs, l.matrixSays)
	// The test would be vacuous if nothing (or everything) passed: the
	// case study has both, and cross-domain pairs that pass.
	cross := 0
	for _, pr := range pairs {
		if pr.src.domain != pr.dst.domain && l.matrixSays(pr) {
			cross++
		}
	}
	if passed == 0 || passed == len(pairs) || cross == 0 {
		t.Fatalf("%d of %d pairs passed, %d cross-domain allowed: the scenario does not exercise the matrix", passed, len(pairs), cross)
	}
	t.Logf("%d of %d ordered pairs passed (%d cross-domain), as the matrix says", passed, len(pairs), cross)

	// No EE reaches the node itself (its overlay gateway addresses, its
	// underlay), local or remote; the controller host does.
	na := l.nodes["a"]
	node := &labEE{name: "node-a", ns: na.ns, addr: na.underlay}
	l.listen(node)
	ok, err := dial(l.ctl, na.underlay, 2*time.Second)
	if err != nil || !ok {
		t.Fatalf("controller host -> node a: %v %v", ok, err)
	}
	var toNode []pair
	for _, dst := range []string{"10.254.0.1", "10.77.0.1", "10.78.0.1"} {
		d := &labEE{name: "node-a/" + dst, addr: netip.MustParseAddr(dst)}
		for _, src := range []string{"y-dc", "r-gw", "y-mc-b", "r-cl-c"} {
			toNode = append(toNode, pair{l.ees[src], d})
		}
	}
	l.checkPairs(toNode, func(pair) bool { return false })
	// The drops were the flow rules' doing.
	c, err := l.nodes["b"].dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c["deny-none"].Packets == 0 || c["deny-via-gateway-direct"].Packets == 0 || c["allow-intra-domain"].Packets == 0 {
		t.Errorf("node b counters %v: want intra-domain allows and none/via-gateway denials", c)
	}
}

// testEncrypted: traffic between EEs on different nodes crosses the
// underlay only inside WireGuard.
func testEncrypted(t *testing.T, l *lab) {
	src, dst := l.ees["y-mc-b"], l.ees["y-dc"]
	marker := make([]byte, 48)
	rand.Read(marker)
	marker = append([]byte("tvd-plaintext-marker-"), fmt.Appendf(nil, "%x", marker)...)
	ports := map[uint16]bool{}
	for _, n := range l.nodes {
		for _, k := range n.keys {
			ap := netip.MustParseAddrPort(k.Endpoint)
			ports[ap.Port()] = true
		}
	}
	capB := startCapture(t, l.nodes["b"], "ul0")
	capA := startCapture(t, l.nodes["a"], "ul0")
	deadline := time.Now().Add(5 * time.Second)
	for !dst.received(marker) {
		if time.Now().After(deadline) {
			t.Fatal("the marker datagram never arrived")
		}
		if err := sendUDP(src, dst.addr, marker); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// And a TCP connection, both ways of the flow.
	if ok, err := dial(src, dst.addr, 2*time.Second); err != nil || !ok {
		t.Fatalf("tcp %s -> %s: %v %v", src.name, dst.name, ok, err)
	}
	for name, c := range map[string]*capture{"b": capB, "a": capA} {
		frames, drops := c.stop()
		if drops != 0 {
			t.Fatalf("node %s capture dropped %d frames", name, drops)
		}
		wg := checkWireGuardOnly(t, frames, ports, marker)
		if wg == 0 {
			t.Fatalf("node %s: no WireGuard transport frames on the underlay", name)
		}
		t.Logf("node %s underlay: %d frames, %d WireGuard transport, no plaintext", name, len(frames), wg)
	}
}

// testIncremental: adding and removing a member touches only what it
// must: no interface is recreated and the flow table is never rebuilt.
func testIncremental(t *testing.T, l *lab) {
	before := map[string]map[string]int{}
	handles := map[string][]uint64{}
	counters := map[string]uint64{}
	for _, n := range l.order {
		before[n] = l.links(n)
		handles[n] = l.ruleHandles(n)
		c, err := l.nodes[n].dp.Counters()
		if err != nil {
			t.Fatal(err)
		}
		counters[n] = c["allow-intra-domain"].Packets
	}
	added := l.addEE("y-mc-c2", "c", "yellow", "management-console")
	l.apply()
	check := func(stage string) {
		t.Helper()
		for _, n := range l.order {
			now := l.links(n)
			for name, idx := range before[n] {
				if now[name] != idx {
					t.Errorf("%s: node %s: link %s ifindex %d, was %d (recreated or removed)", stage, n, name, now[name], idx)
				}
			}
			if h := l.ruleHandles(n); !slices.Equal(h, handles[n]) {
				t.Errorf("%s: node %s: nftables rule handles changed (%v, was %v): the table was rebuilt", stage, n, h, handles[n])
			}
			c, err := l.nodes[n].dp.Counters()
			if err != nil {
				t.Fatal(err)
			}
			if c["allow-intra-domain"].Packets < counters[n] {
				t.Errorf("%s: node %s: counters were reset", stage, n)
			}
		}
	}
	check("add")
	if _, ok := l.links("c")[VethName(added.name)]; !ok {
		t.Fatalf("node c has no veth for the new member")
	}
	var pairs []pair
	for _, e := range l.active() {
		if e != added {
			pairs = append(pairs, pair{added, e}, pair{e, added})
		}
	}
	l.checkPairs(pairs, l.matrixSays)
	l.removed[added.name] = true
	l.apply()
	check("remove")
	if _, ok := l.links("c")[VethName(added.name)]; ok {
		t.Fatalf("node c still has the removed member's veth")
	}
}

// testQuarantine: a quarantined member reaches nothing but the
// controller, nothing reaches it, and everyone else is unaffected.
func testQuarantine(t *testing.T, l *lab) {
	q := l.ees["y-mc-b"]
	if ok, err := dial(q, ctlAddr, 2*time.Second); err != nil || !ok {
		t.Fatalf("before quarantine: %s -> controller: %v %v", q.name, ok, err)
	}
	l.quarantined[q.name] = true
	l.apply()
	l.checkPairs(l.allPairs(), func(pr pair) bool {
		if pr.src == q || pr.dst == q {
			return false
		}
		return l.matrixSays(pr)
	})
	if ok, err := dial(q, ctlAddr, 2*time.Second); err != nil || !ok {
		t.Errorf("quarantined %s -> controller: passed=%v err=%v, want passed", q.name, ok, err)
	}
	if !l.ctl.sawFrom(q.addr) {
		t.Errorf("the controller never saw %s", q.addr)
	}
	c, err := l.nodes["b"].dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c["deny-quarantine"].Packets == 0 {
		t.Errorf("node b: deny-quarantine counter is zero: %v", c)
	}
	// Lifting the quarantine restores the member.
	delete(l.quarantined, q.name)
	l.apply()
	l.checkPairs([]pair{{q, l.ees["y-dc"]}, {l.ees["y-dc"], q}, {q, l.ees["y-mc-c"]}}, l.matrixSays)
}

// testRevocation: once the peers have a plan without a member, its
// packets are dropped there even if its own node keeps the old plan, and
// nobody else notices.
func testRevocation(t *testing.T, l *lab) {
	rv := l.ees["y-mc-c"] // the last yellow member on node c
	l.removed[rv.name] = true
	l.unrouted[rv.addr] = true
	l.apply("a", "b") // node c does not cooperate
	others := []pair{
		{l.ees["y-mc-b"], l.ees["y-dc"]},
		{l.ees["y-dc"], l.ees["y-mc-b"]},
		{l.ees["r-cl-c"], l.ees["r-gw"]},
		{l.ees["r-gw"], l.ees["r-cl-c"]},
		{l.ees["r-cl-c"], l.ees["r-cl-b"]},
	}
	var pairs []pair
	for _, e := range l.active() {
		if e.node != "c" {
			pairs = append(pairs, pair{rv, e}, pair{e, rv})
		}
	}
	l.checkPairs(append(pairs, others...), func(pr pair) bool {
		return pr.src != rv && pr.dst != rv && l.matrixSays(pr)
	})
	// Node c catches up: the member's link and the yellow channel go.
	l.apply("c")
	links := l.links("c")
	if _, ok := links[VethName(rv.name)]; ok {
		t.Error("node c keeps the revoked member's veth")
	}
	if _, ok := links[channel.InterfaceName("yellow")]; ok {
		t.Error("node c keeps the yellow interface with no yellow member left")
	}
	for _, k := range l.nodes["c"].dp.Keys() {
		if k.Domain == "yellow" {
			t.Error("node c still publishes a yellow key")
		}
	}
	l.checkPairs(others, l.matrixSays)
}

// TestCloseRemovesEverything: Close leaves the node namespace as it was.
func TestCloseRemovesEverything(t *testing.T) {
	l := newLab(t)
	n := l.addNode("a", 1)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	l.addEE("r-gw", "a", "red", "gateway")
	before := l.links("a")
	l.apply()
	if got := len(l.links("a")); got != len(before)+4 {
		t.Fatalf("after apply: %d links, want %d (two veths, two WireGuard interfaces)", got, len(before)+4)
	}
	if len(l.ruleHandles("a")) == 0 || len(l.tableRules("a", NodeTable)) != 2 {
		t.Fatal("no nftables rules after apply")
	}
	// Each domain's overlay prefix is a blackhole below the peers' routes:
	// an address no peer carries is never sent out over the underlay.
	if got, want := strings.Join(l.blackholes("a"), " "), "10.77.0.0/16 10.78.0.0/16"; got != want {
		t.Errorf("blackhole routes %q, want %q", got, want)
	}
	if err := n.dp.Close(); err != nil {
		t.Fatal(err)
	}
	if got := l.blackholes("a"); len(got) != 0 {
		t.Errorf("after close: blackhole routes %v left", got)
	}
	if after := l.links("a"); len(after) != len(before) {
		t.Errorf("after close: links %v, want %v", after, before)
	}
	if h := l.ruleHandles("a"); len(h) != 0 {
		t.Errorf("after close: %d nftables rules left", len(h))
	}
	if h := l.tableRules("a", NodeTable); len(h) != 0 {
		t.Errorf("after close: %d rules left in %s", len(h), NodeTable)
	}
	if _, _, err := n.dp.Apply(context.Background(), l.plan("a")); err == nil {
		t.Error("Apply after Close: want an error")
	}
	// A new data plane on the same data directory (an agent restart)
	// publishes the same keys and endpoints.
	dp, err := New(n.dp.cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	_, keys, err := dp.Apply(context.Background(), l.plan("a"))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != len(n.keys) {
		t.Fatalf("keys after restart %v, want %v", keys, n.keys)
	}
	for _, k := range keys {
		if old := n.keys[k.Domain]; old == nil || !bytes.Equal(old.WireguardPublicKey, k.WireguardPublicKey) || old.Endpoint != k.Endpoint {
			t.Errorf("domain %s after restart: key %v, was %v", k.Domain, k, old)
		}
	}
}

// TestReattach: an EE restarted in a new namespace (its old link died with
// the old one) is attached again by Reconcile, with no new plan.
func TestReattach(t *testing.T) {
	l := newLab(t)
	l.addNode("a", 1)
	dc := l.addEE("y-dc", "a", "yellow", "domain-controller")
	gw := l.addEE("y-gw", "a", "yellow", "gateway")
	l.apply()
	l.checkPairs([]pair{{dc, gw}, {gw, dc}}, l.matrixSays)
	old := l.links("a")[VethName(gw.name)]
	// The EE restarts: a new namespace at a new path; the old one (and
	// with it both ends of the veth) goes away.
	gw.ln.Close()
	gw.udp.Close()
	ns, path := l.newNS("y-gw2")
	oldNS := gw.ns
	gw.ns, gw.path = ns, path
	oldNS.Close()
	if err := netns.DeleteNamed(l.prefix + "-y-gw"); err != nil {
		t.Fatal(err)
	}
	l.listen(gw)
	deadline := time.Now().Add(5 * time.Second)
	for l.links("a")[VethName(gw.name)] != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // the kernel frees the namespace asynchronously
	}
	// No new plan: the agent reconciles when its EE host restarts an EE.
	acks, _, err := l.nodes["a"].dp.Reconcile(context.Background())
	if err != nil || len(acks) != 1 || acks[0].Channel != tvdv1.ChannelState_CHANNEL_STATE_UP {
		t.Fatalf("reconcile: %v %v", acks, err)
	}
	if idx := l.links("a")[VethName(gw.name)]; idx == 0 || idx == old {
		t.Fatalf("veth of the restarted EE: ifindex %d (was %d), want a new link", idx, old)
	}
	l.checkPairs([]pair{{dc, gw}, {gw, dc}}, l.matrixSays)
}

// TestAckReportsProblems: a member whose EE has no namespace yet, and a
// domain without prefix, are reported in the acks; the rest is applied.
func TestAckReportsProblems(t *testing.T) {
	l := newLab(t)
	n := l.addNode("a", 1)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	p := l.plan("a")
	p.Members = append(p.Members, &tvdv1.PlanMember{Member: &tvdv1.Member{Domain: "yellow", Role: "gateway", Ee: "ghost"}, OverlayAddress: "10.77.0.9"})
	p.Members = append(p.Members, &tvdv1.PlanMember{Member: &tvdv1.Member{Domain: "blue", Role: "x", Ee: "b1"}, OverlayAddress: "10.99.0.2"})
	// A domain whose policy gives no subnet: nothing to bring up.
	p.Members = append(p.Members, &tvdv1.PlanMember{Member: &tvdv1.Member{Domain: "green", Role: "x", Ee: "g1"}})
	p.Peers = append(p.Peers, &tvdv1.DomainPeers{Domain: "green"})
	acks, keys, err := n.dp.Apply(context.Background(), p)
	if err == nil {
		t.Fatal("want an error")
	}
	byDomain := map[string]*tvdv1.DomainAck{}
	for _, a := range acks {
		byDomain[a.Domain] = a
	}
	if a := byDomain["yellow"]; a == nil || a.Channel != tvdv1.ChannelState_CHANNEL_STATE_FAILED || !bytes.Contains([]byte(a.Error), []byte("ghost")) {
		t.Errorf("yellow ack %v: want FAILED naming the member without namespace", a)
	}
	if a := byDomain["blue"]; a == nil || a.Channel != tvdv1.ChannelState_CHANNEL_STATE_FAILED || !bytes.Contains([]byte(a.Error), []byte("overlay prefix")) {
		t.Errorf("blue ack %v: want FAILED for the missing prefix", a)
	}
	if a := byDomain["green"]; a == nil || a.Channel != tvdv1.ChannelState_CHANNEL_STATE_DOWN || strings.Contains(err.Error(), "green") {
		t.Errorf("green ack %v (err %v): want DOWN, not an error", a, err)
	}
	if len(keys) != 1 || keys[0].Domain != "yellow" {
		t.Errorf("keys %v: want yellow's only", keys)
	}
	if _, ok := l.links("a")[VethName("y-dc")]; !ok {
		t.Error("the healthy member was not attached")
	}
}

// capture records every frame on one interface of a node through a raw
// AF_PACKET socket opened inside the node's namespace.
type capture struct {
	fd     int
	mu     sync.Mutex
	frames [][]byte
	done   chan struct{}
	once   sync.Once
	ended  chan struct{}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func startCapture(t testing.TB, n *labNode, ifname string) *capture {
	t.Helper()
	c := &capture{done: make(chan struct{}), ended: make(chan struct{})}
	err := inNS(n.ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_ALL)))
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(fd)
			return err
		}
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
		tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(fd)
			return err
		}
		c.fd = fd
		return nil
	})
	if err != nil {
		t.Fatalf("capture on %s/%s: %v", n.name, ifname, err)
	}
	go func() {
		defer close(c.ended)
		buf := make([]byte, 1<<16)
		for {
			k, _, err := unix.Recvfrom(c.fd, buf, 0)
			if err != nil {
				select {
				case <-c.done:
					return
				default:
					continue
				}
			}
			c.mu.Lock()
			c.frames = append(c.frames, append([]byte(nil), buf[:k]...))
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() { c.stop() })
	return c
}

// stop ends the capture and returns the frames and the kernel's drops.
func (c *capture) stop() ([][]byte, uint32) {
	var drops uint32
	c.once.Do(func() {
		if st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
			drops = st.Drops
		}
		close(c.done)
		<-c.ended
		unix.Close(c.fd)
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.frames, drops
}

// checkWireGuardOnly fails unless no frame holds marker and every IPv4
// frame is UDP to or from a WireGuard port carrying a WireGuard message
// (ARP and IGMP aside). It returns the number of transport messages.
func checkWireGuardOnly(t testing.TB, frames [][]byte, ports map[uint16]bool, marker []byte) int {
	t.Helper()
	transport := 0
	for i, f := range frames {
		if bytes.Contains(f, marker) {
			t.Fatalf("frame %d carries the plaintext marker on the underlay", i)
		}
		if len(f) < 14 {
			t.Fatalf("frame %d: runt", i)
		}
		switch et := binary.BigEndian.Uint16(f[12:14]); et {
		case unix.ETH_P_ARP:
			continue
		case unix.ETH_P_IP:
		default:
			t.Fatalf("frame %d: ethertype %#04x on the underlay, want IPv4 or ARP", i, et)
		}
		ip := f[14:]
		if len(ip) < 20 {
			t.Fatalf("frame %d: short IPv4", i)
		}
		if ip[9] == unix.IPPROTO_IGMP {
			continue
		}
		if ip[9] != unix.IPPROTO_UDP {
			t.Fatalf("frame %d: IP protocol %d on the underlay, want only UDP (WireGuard)", i, ip[9])
		}
		udp := ip[int(ip[0]&0x0f)*4:]
		if len(udp) < 12 {
			t.Fatalf("frame %d: UDP too short for WireGuard", i)
		}
		sp, dp := binary.BigEndian.Uint16(udp[0:2]), binary.BigEndian.Uint16(udp[2:4])
		if !ports[sp] && !ports[dp] {
			t.Fatalf("frame %d: UDP %d -> %d, want a WireGuard port %v", i, sp, dp, ports)
		}
		wg := udp[8:]
		if wg[0] < 1 || wg[0] > 4 || wg[1] != 0 || wg[2] != 0 || wg[3] != 0 {
			t.Fatalf("frame %d: UDP payload is not a WireGuard message (header % x)", i, wg[:4])
		}
		if wg[0] == 4 {
			transport++
		}
	}
	return transport
}

// TestFlowFailureFailsClosed: when the flow rules cannot be put in force,
// no EE link or channel interface comes up unjudged; the next good plan
// brings them up.
func TestFlowFailureFailsClosed(t *testing.T) {
	l := newLab(t)
	n := l.addNode("a", 1)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	before := l.links("a")
	p := l.plan("a")
	p.Flow.MatrixId, p.Flow.Matrix = "sha256:broken", []byte(`{"domains":[{"name":"yellow","roles":["x","x"]}]}`)
	acks, _, err := n.dp.Apply(context.Background(), p)
	if err == nil {
		t.Fatal("want an error for an undecodable matrix")
	}
	if len(acks) != 1 || acks[0].Channel != tvdv1.ChannelState_CHANNEL_STATE_FAILED || !bytes.Contains([]byte(acks[0].Error), []byte("flow")) {
		t.Fatalf("acks %v: want yellow FAILED naming the flow rules", acks)
	}
	if after := l.links("a"); len(after) != len(before) {
		t.Fatalf("links %v after a failed flow update, want none added to %v", after, before)
	}
	l.apply()
	if _, ok := l.links("a")[VethName("y-dc")]; !ok {
		t.Fatal("the next good plan did not attach the member")
	}
}

// TestIPv6Overlay: a domain with an IPv6 overlay prefix (over the IPv4
// underlay) next to an IPv4 one: EE links, WireGuard routes and flow rules
// work for both families.
func TestIPv6Overlay(t *testing.T) {
	l := newLab(t, func(l *lab) {
		l.v6 = true
		l.subnets = map[string]string{"yellow": "fd77::/64"}
	})
	l.addNode("a", 1)
	l.addNode("b", 2)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	l.addEE("y-gw", "a", "yellow", "gateway")
	l.addEE("y-mc-b", "b", "yellow", "management-console")
	l.addEE("r-gw", "a", "red", "gateway")
	l.addEE("r-cl-b", "b", "red", "client-os")
	if a := l.ees["y-mc-b"].addr; a != netip.MustParseAddr("fd77::4") {
		t.Fatalf("yellow address %s, want fd77::4", a)
	}
	l.apply()
	var pairs []pair
	for _, pr := range l.allPairs() {
		if pr.src.addr.Is6() == pr.dst.addr.Is6() {
			pairs = append(pairs, pr)
		}
	}
	if n := l.checkPairs(pairs, l.matrixSays); n == 0 {
		t.Fatal("nothing passed")
	}
	c, err := l.nodes["a"].dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c["deny-non-member"].Packets != 0 {
		t.Errorf("node a dropped %d packets as non-members: an IPv6 member was not classified", c["deny-non-member"].Packets)
	}
}
