package channel

import (
	"bytes"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var _ interface {
	SetPeers([]Peer) error
	Peers() ([]PeerStatus, error)
	PublicKey() PublicKey
	Close() error
} = (*Interface)(nil)

// pair builds two nodes with a domain interface each, peered with each
// other.
func pair(t *testing.T) (*lab, *Interface, *Interface) {
	l := newLab(t, 2)
	a := l.nodes[0].iface(t, "tvd0", mustKey(t), labPort, l.nodes[0].overlay)
	b := l.nodes[1].iface(t, "tvd0", mustKey(t), labPort, l.nodes[1].overlay)
	if err := a.SetPeers([]Peer{l.nodes[1].peer(b, labPort)}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]Peer{l.nodes[0].peer(a, labPort)}); err != nil {
		t.Fatal(err)
	}
	return l, a, b
}

// TestInterfaceTransferIsEncrypted sends a TCP stream full of a marker from
// node B to node A over the overlay while capturing A's underlay veth: the
// stream arrives intact, and the underlay carries only WireGuard messages on
// the listen port, never the marker.
func TestInterfaceTransferIsEncrypted(t *testing.T) {
	l, a, b := pair(t)
	na, nb := l.nodes[0], l.nodes[1]
	marker := []byte("TVDCH-PLAINTEXT-MARKER-")
	payload := bytes.Repeat(marker, (2<<20)/len(marker))

	capt := startCapture(t, na, na.veth)
	ln := na.listenTCP(t, 7000)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		r, _ := io.ReadAll(c)
		got <- r
	}()
	c := nb.dialTCP(t, na.overlay.Addr(), 7000)
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-got; !bytes.Equal(r, payload) {
		t.Fatalf("received %d bytes, want the %d sent", len(r), len(payload))
	}
	frames, drops := capt.stop()
	if drops != 0 {
		t.Fatalf("capture dropped %d frames: the underlay check would be incomplete", drops)
	}
	s := checkWireGuardOnly(t, frames, labPort, marker[:16])
	t.Logf("underlay: %d frames (%d ARP, %d IGMP), WireGuard types 1-4: %v, %d transport bytes", s.frames, s.arp, s.igmp, s.types[1:], s.transportBytes)
	if s.types[1] == 0 || s.types[2] == 0 {
		t.Fatalf("no handshake seen on the underlay: %v", s.types)
	}
	if s.transportBytes < len(payload) {
		t.Fatalf("only %d WireGuard transport bytes captured for a %d-byte transfer", s.transportBytes, len(payload))
	}
	st, err := a.Peers()
	if err != nil {
		t.Fatal(err)
	}
	p := peerByKey(t, st, b.PublicKey())
	if p.LastHandshake.IsZero() || p.RxBytes < uint64(len(payload)) {
		t.Fatalf("A's view of B after the transfer: %+v", p)
	}
}

// TestInterfaceRevocationAndIncremental: A peers with B and C. A change to
// B keeps C's session (handshake time and counters) and installs a route for
// B's new prefix; removing B drops B's packets at A while C still reaches A.
func TestInterfaceRevocationAndIncremental(t *testing.T) {
	l := newLab(t, 3)
	na, nb, nc := l.nodes[0], l.nodes[1], l.nodes[2]
	a := na.iface(t, "tvd0", mustKey(t), labPort, na.overlay)
	b := nb.iface(t, "tvd0", mustKey(t), labPort, nb.overlay)
	c := nc.iface(t, "tvd0", mustKey(t), labPort, nc.overlay)
	pb, pc := nb.peer(b, labPort), nc.peer(c, labPort)
	if err := a.SetPeers([]Peer{pb, pc}); err != nil {
		t.Fatal(err)
	}
	for _, i := range []*Interface{b, c} {
		if err := i.SetPeers([]Peer{na.peer(a, labPort)}); err != nil {
			t.Fatal(err)
		}
	}
	r := newUDPRecorder(na.listenUDP(t, 7001))
	var phase atomic.Int32
	startSender(t, nb.dialUDP(t, na.overlay.Addr(), 7001), "B", &phase)
	startSender(t, nc.dialUDP(t, na.overlay.Addr(), 7001), "C", &phase)
	r.waitFor(t, "B", 0, 10*time.Second)
	r.waitFor(t, "C", 0, 10*time.Second)

	before, err := a.Peers()
	if err != nil {
		t.Fatal(err)
	}
	cBefore, bBefore := peerByKey(t, before, c.PublicKey()), peerByKey(t, before, b.PublicKey())
	if cBefore.LastHandshake.IsZero() || bBefore.LastHandshake.IsZero() {
		t.Fatalf("no handshakes: B %+v C %+v", bBefore, cBefore)
	}

	// One change: B also routes 198.19.99.0/24.
	extra := netip.MustParsePrefix("198.19.99.0/24")
	pb2 := pb
	pb2.AllowedIPs = []netip.Prefix{pb.AllowedIPs[0], extra}
	if err := a.SetPeers([]Peer{pb2, pc}); err != nil {
		t.Fatal(err)
	}
	after, _ := a.Peers()
	cAfter, bAfter := peerByKey(t, after, c.PublicKey()), peerByKey(t, after, b.PublicKey())
	if !cAfter.LastHandshake.Equal(cBefore.LastHandshake) || cAfter.RxBytes < cBefore.RxBytes || cAfter.TxBytes < cBefore.TxBytes {
		t.Fatalf("C's session reset by a change to B: before %+v after %+v", cBefore, cAfter)
	}
	if !bAfter.LastHandshake.Equal(bBefore.LastHandshake) || bAfter.RxBytes < bBefore.RxBytes {
		t.Fatalf("B's own session reset by an allowed-IPs update: before %+v after %+v", bBefore, bAfter)
	}
	if !hasRoute(t, na, extra) {
		t.Fatalf("no route for %s over tvd0 in A", extra)
	}

	// Revoke B.
	if err := a.SetPeers([]Peer{pc}); err != nil {
		t.Fatal(err)
	}
	phase.Store(1)
	r.waitFor(t, "C", 1, 10*time.Second)
	time.Sleep(1500 * time.Millisecond) // B keeps sending and re-handshaking
	if n := r.count("B", 1); n != 0 {
		t.Fatalf("%d datagrams from revoked B reached A after SetPeers returned", n)
	}
	if n := r.count("C", 1); n < 5 {
		t.Fatalf("only %d datagrams from C reached A after B's revocation", n)
	}
	if hasRoute(t, na, extra) {
		t.Fatalf("route for %s left behind after B's removal", extra)
	}
	final, _ := a.Peers()
	if len(final) != 1 || final[0].PublicKey != c.PublicKey() {
		t.Fatalf("A's peers after revocation: %+v", final)
	}
	if cf := final[0]; !cf.LastHandshake.Equal(cBefore.LastHandshake) {
		// Well inside the 120 s rekey interval: a new handshake means
		// the session was reset.
		t.Fatalf("C re-handshook after B's removal: %v then %v", cBefore.LastHandshake, cf.LastHandshake)
	}
}

func hasRoute(t testing.TB, n *labNode, dst netip.Prefix) bool {
	t.Helper()
	h, err := netns.GetFromPath(n.path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName("tvd0")
	if err != nil {
		t.Fatal(err)
	}
	routes, err := nl.RouteList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range routes {
		if r.Dst != nil && r.Dst.String() == dst.String() {
			return true
		}
	}
	return false
}

// TestInterfaceLifecycle: the link exists in the namespace (not the host)
// with the address and MTU asked for, and Close removes it.
func TestInterfaceLifecycle(t *testing.T) {
	l := newLab(t, 1)
	n := l.nodes[0]
	i, err := New(Config{Name: "tvdlife0", Domain: "d1", PrivateKey: mustKey(t), Address: n.overlay, NetNS: n.path, MTU: 1380, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer i.Close()
	if _, err := netlink.LinkByName("tvdlife0"); err == nil {
		t.Fatal("interface created in the host namespace")
	}
	h, _ := netns.GetFromPath(n.path)
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	defer nl.Close()
	link, err := nl.LinkByName("tvdlife0")
	if err != nil {
		t.Fatalf("interface not in its namespace: %v", err)
	}
	if link.Attrs().MTU != 1380 || link.Attrs().Flags&(1<<0) == 0 {
		t.Fatalf("link attrs: mtu %d flags %v", link.Attrs().MTU, link.Attrs().Flags)
	}
	addrs, _ := nl.AddrList(link, netlink.FAMILY_V4)
	if len(addrs) != 1 || addrs[0].IPNet.String() != n.overlay.String() {
		t.Fatalf("addresses = %v, want %s", addrs, n.overlay)
	}
	port, err := i.ListenPort()
	if err != nil || port == 0 {
		t.Fatalf("listen port %d: %v", port, err)
	}
	// The underlay socket must be in the node's namespace too.
	var udp string
	n.do(t, func() error {
		// thread-self: /proc/net follows the thread group leader's namespace.
		b, err := readFile("/proc/thread-self/net/udp")
		b6, _ := readFile("/proc/thread-self/net/udp6")
		udp = b + b6
		return err
	})
	if !strings.Contains(strings.ToUpper(udp), strings.ToUpper(hex4(port))) {
		t.Fatalf("UDP port %d not bound in the node's namespace:\n%s", port, udp)
	}
	// A second interface on the same port fails cleanly, leaving no link.
	if j, err := New(Config{Name: "tvdlife1", Domain: "d2", PrivateKey: mustKey(t), ListenPort: port,
		Address: netip.MustParsePrefix("198.19.78.1/24"), NetNS: n.path, Logger: testLogger(t)}); err == nil {
		j.Close()
		t.Fatalf("second interface bound the same UDP port %d", port)
	}
	if _, err := nl.LinkByName("tvdlife1"); err == nil {
		t.Fatal("failed New left its link behind")
	}
	if err := i.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := nl.LinkByName("tvdlife0"); err == nil {
		t.Fatal("link still present after Close")
	}
	if err := i.SetPeers(nil); err != ErrClosed {
		t.Fatalf("SetPeers after Close: %v, want ErrClosed", err)
	}
	if err := i.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Name: "tvd0", Domain: "d1", PrivateKey: mustKey(t), Address: netip.MustParsePrefix("198.19.77.1/24")}
	if err := good.Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mut := range map[string]func(*Config){
		"no name":    func(c *Config) { c.Name = "" },
		"long name":  func(c *Config) { c.Name = "tvd-0123456789abc" },
		"slash":      func(c *Config) { c.Name = "a/b" },
		"no domain":  func(c *Config) { c.Domain = " " },
		"no key":     func(c *Config) { c.PrivateKey = PrivateKey{} },
		"no address": func(c *Config) { c.Address = netip.Prefix{} },
		"loopback":   func(c *Config) { c.Address = netip.MustParsePrefix("127.0.0.2/8") },
		"tiny mtu":   func(c *Config) { c.MTU = 500 },
	} {
		c := good
		mut(&c)
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
		if _, err := NewUserspace(c); err == nil {
			t.Errorf("%s: NewUserspace accepted", name)
		}
	}
	c := good
	c.ListenAddr = netip.MustParseAddr("127.0.0.1")
	if _, err := New(c); err == nil || !strings.Contains(err.Error(), "ListenAddr") {
		t.Errorf("New accepted ListenAddr: %v", err)
	}
	c = good
	c.NetNS = "/run/netns/x"
	if _, err := NewUserspace(c); err == nil {
		t.Error("NewUserspace accepted a network namespace")
	}
}
