package channel

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Both data planes offer the same peer-management API, so callers (the
// agent) can hold either behind one small interface.
var _ interface {
	SetPeers([]Peer) error
	Peers() ([]PeerStatus, error)
	PublicKey() PublicKey
	Close() error
} = (*Userspace)(nil)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.DiscardHandler)
}

func mustKey(t testing.TB) PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// newUserspace starts a userspace interface whose underlay listens on the
// loopback address of the overlay's family only.
func newUserspace(t testing.TB, name string, addr string) *Userspace {
	t.Helper()
	ov := netip.MustParsePrefix(addr)
	lo := netip.MustParseAddr("127.0.0.1")
	if ov.Addr().Is6() {
		lo = netip.IPv6Loopback()
	}
	return newUserspaceOn(t, name, ov, lo)
}

func newUserspaceOn(t testing.TB, name string, addr netip.Prefix, listen netip.Addr) *Userspace {
	t.Helper()
	u, err := NewUserspace(Config{
		Name: name, Domain: "d1", PrivateKey: mustKey(t),
		Address: addr, ListenAddr: listen, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	return u
}

func loopbackPeer(t testing.TB, u *Userspace, keepalive time.Duration) Peer {
	t.Helper()
	port, err := u.ListenPort()
	if err != nil || port == 0 {
		t.Fatalf("listen port %d: %v", port, err)
	}
	return Peer{
		PublicKey:           u.PublicKey(),
		Endpoint:            netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port),
		AllowedIPs:          []netip.Prefix{netip.PrefixFrom(u.Address().Addr(), 32)},
		PersistentKeepalive: keepalive,
	}
}

func peerByKey(t testing.TB, peers []PeerStatus, k PublicKey) PeerStatus {
	t.Helper()
	for _, p := range peers {
		if p.PublicKey == k {
			return p
		}
	}
	t.Fatalf("peer %s not found in %d peers", k, len(peers))
	return PeerStatus{}
}

// TestUserspaceTransfer runs two netstack instances over loopback UDP and
// moves data over TCP through the overlay. No root needed.
func TestUserspaceTransfer(t *testing.T) {
	t.Run("loopback-bind", func(t *testing.T) {
		testUserspaceTransfer(t, netip.MustParseAddr("127.0.0.1"))
	})
	t.Run("all-addresses", func(t *testing.T) {
		testUserspaceTransfer(t, netip.Addr{})
	})
}

func testUserspaceTransfer(t *testing.T, listen netip.Addr) {
	a := newUserspaceOn(t, "tvdA", netip.MustParsePrefix("198.19.77.1/24"), listen)
	b := newUserspaceOn(t, "tvdB", netip.MustParsePrefix("198.19.77.2/24"), listen)
	if listen.IsValid() {
		port, _ := a.ListenPort()
		udp, err := os.ReadFile("/proc/net/udp")
		if err == nil && !strings.Contains(string(udp), fmt.Sprintf("0100007F:%04X", port)) {
			t.Fatalf("underlay port %d not bound to 127.0.0.1:\n%s", port, udp)
		}
	}
	if err := a.SetPeers([]Peer{loopbackPeer(t, b, 0)}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]Peer{loopbackPeer(t, a, 0)}); err != nil {
		t.Fatal(err)
	}
	ln, err := a.Net().ListenTCPAddrPort(netip.MustParseAddrPort("198.19.77.1:7000"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	payload := make([]byte, 1<<20)
	rand.Read(payload)
	got := make(chan []byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- nil
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		b, _ := io.ReadAll(c)
		got <- b
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := b.Net().DialContextTCPAddrPort(ctx, netip.MustParseAddrPort("198.19.77.1:7000"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(payload); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if r := <-got; !bytes.Equal(r, payload) {
		t.Fatalf("received %d bytes, want the %d sent", len(r), len(payload))
	}
	st, err := a.Peers()
	if err != nil {
		t.Fatal(err)
	}
	p := peerByKey(t, st, b.PublicKey())
	if p.LastHandshake.IsZero() || p.RxBytes < uint64(len(payload)) || p.TxBytes == 0 {
		t.Fatalf("peer status after transfer: %+v", p)
	}
}

// TestUserspaceRevocationAndIncremental checks, on the userspace data plane,
// that a change to one peer keeps the other peer's session, and that a
// removed peer's packets are dropped while the remaining one still gets
// through.
func TestUserspaceRevocationAndIncremental(t *testing.T) {
	a := newUserspace(t, "tvdA", "198.19.77.1/24")
	b := newUserspace(t, "tvdB", "198.19.77.2/24")
	c := newUserspace(t, "tvdC", "198.19.77.3/24")
	pb, pc := loopbackPeer(t, b, 0), loopbackPeer(t, c, 0)
	if err := a.SetPeers([]Peer{pb, pc}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Userspace{b, c} {
		if err := n.SetPeers([]Peer{loopbackPeer(t, a, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	rx, err := a.Net().ListenUDPAddrPort(netip.MustParseAddrPort("198.19.77.1:7001"))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	r := newUDPRecorder(rx)
	var phase atomic.Int32
	for _, s := range []struct {
		n    *Userspace
		name string
	}{{b, "B"}, {c, "C"}} {
		conn, err := s.n.Net().DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("198.19.77.1:7001"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		startSender(t, conn, s.name, &phase)
	}
	r.waitFor(t, "B", 0, 10*time.Second)
	r.waitFor(t, "C", 0, 10*time.Second)
	before, _ := a.Peers()
	cBefore := peerByKey(t, before, c.PublicKey())

	// One change (B gets an extra prefix): C's session must survive.
	pb2 := pb
	pb2.AllowedIPs = append([]netip.Prefix{netip.MustParsePrefix("198.19.99.0/24")}, pb.AllowedIPs...)
	if err := a.SetPeers([]Peer{pb2, pc}); err != nil {
		t.Fatal(err)
	}
	after, _ := a.Peers()
	cAfter := peerByKey(t, after, c.PublicKey())
	if !cAfter.LastHandshake.Equal(cBefore.LastHandshake) || cAfter.RxBytes < cBefore.RxBytes || cAfter.TxBytes < cBefore.TxBytes {
		t.Fatalf("C's session was reset by a change to B: before %+v after %+v", cBefore, cAfter)
	}
	if got := peerByKey(t, after, b.PublicKey()).AllowedIPs; len(got) != 2 {
		t.Fatalf("B's allowed IPs = %v, want 2 prefixes", got)
	}

	// Revoke B.
	if err := a.SetPeers([]Peer{pc}); err != nil {
		t.Fatal(err)
	}
	phase.Store(1)
	r.waitFor(t, "C", 1, 10*time.Second)
	time.Sleep(1500 * time.Millisecond) // B keeps sending (and re-handshaking) meanwhile
	if n := r.count("B", 1); n != 0 {
		t.Fatalf("%d datagrams from revoked B arrived after SetPeers returned", n)
	}
	if n := r.count("C", 1); n < 5 {
		t.Fatalf("only %d datagrams from C arrived after B's revocation", n)
	}
	final, _ := a.Peers()
	if len(final) != 1 || final[0].PublicKey != c.PublicKey() {
		t.Fatalf("peers after revocation = %+v", final)
	}
	if cFinal := peerByKey(t, final, c.PublicKey()); cFinal.RxBytes < cAfter.RxBytes {
		t.Fatalf("C's counters went backwards after B's revocation: %d < %d", cFinal.RxBytes, cAfter.RxBytes)
	}
}

// udpRecorder counts datagrams "<sender> <phase> <seq>" by sender and phase.
type udpRecorder struct {
	counts [2]map[string]*atomic.Int64
}

func newUDPRecorder(rx io.Reader) *udpRecorder {
	r := &udpRecorder{}
	for i := range r.counts {
		r.counts[i] = map[string]*atomic.Int64{"B": {}, "C": {}}
	}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := rx.Read(buf)
			if err != nil {
				return
			}
			var who string
			var ph, seq int
			if _, err := fmt.Sscanf(string(buf[:n]), "%s %d %d", &who, &ph, &seq); err != nil || ph < 0 || ph > 1 {
				continue
			}
			if c, ok := r.counts[ph][who]; ok {
				c.Add(1)
			}
		}
	}()
	return r
}

func (r *udpRecorder) count(who string, phase int) int64 { return r.counts[phase][who].Load() }

func (r *udpRecorder) waitFor(t testing.TB, who string, phase int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for r.count(who, phase) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no datagram from %s in phase %d within %v", who, phase, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// startSender sends a tagged datagram every 50 ms until the test ends. The
// phase is read when each datagram is composed, so a phase-1 datagram was
// sent after the switch to phase 1.
func startSender(t testing.TB, w io.Writer, who string, phase *atomic.Int32) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	t.Cleanup(func() { close(done); <-stopped })
	go func() {
		defer close(stopped)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for seq := 0; ; seq++ {
			fmt.Fprintf(w, "%s %d %d", who, phase.Load(), seq)
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
}

// TestUserspaceIPv6Readmission runs an IPv6 overlay over the IPv6 loopback
// underlay, revokes the peer and admits it again: traffic stops, then flows
// once more after a fresh handshake.
func TestUserspaceIPv6Readmission(t *testing.T) {
	a := newUserspace(t, "tvdA6", "fd7d:77::1/64")
	b := newUserspace(t, "tvdB6", "fd7d:77::2/64")
	peer6 := func(u *Userspace) Peer {
		port, err := u.ListenPort()
		if err != nil {
			t.Fatal(err)
		}
		return Peer{PublicKey: u.PublicKey(), Endpoint: netip.AddrPortFrom(netip.IPv6Loopback(), port),
			AllowedIPs: []netip.Prefix{netip.PrefixFrom(u.Address().Addr(), 128)}}
	}
	pa, pb := peer6(a), peer6(b)
	if err := a.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetPeers([]Peer{pa}); err != nil {
		t.Fatal(err)
	}
	rx, err := a.Net().ListenUDPAddrPort(netip.AddrPortFrom(a.Address().Addr(), 7002))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	r := newUDPRecorder(rx)
	conn, err := b.Net().DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(a.Address().Addr(), 7002))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var phase atomic.Int32
	startSender(t, conn, "B", &phase)
	r.waitFor(t, "B", 0, 10*time.Second)

	if err := a.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	phase.Store(1)
	time.Sleep(500 * time.Millisecond)
	if n := r.count("B", 1); n != 0 {
		t.Fatalf("%d datagrams from revoked B arrived", n)
	}
	st, _ := a.Peers()
	if len(st) != 0 {
		t.Fatalf("peers after revocation: %+v", st)
	}
	// Re-admission. B's side still holds a session A has forgotten; B's
	// next handshake (on rekey or after its send attempts time out) or
	// A's own initiation restores traffic. A initiates when it has
	// something to send, so send one datagram from A to B.
	if err := a.SetPeers([]Peer{pb}); err != nil {
		t.Fatal(err)
	}
	back, err := a.Net().DialUDPAddrPort(netip.AddrPort{}, netip.AddrPortFrom(b.Address().Addr(), 7003))
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	back.Write([]byte("hello"))
	deadline := time.Now().Add(10 * time.Second)
	for r.count("B", 1) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no traffic from B after re-admission")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestInterfaceName(t *testing.T) {
	a, b := InterfaceName("customer-a"), InterfaceName("customer-b")
	if a == b || a != InterfaceName("customer-a") {
		t.Fatalf("names not stable and distinct: %q %q", a, b)
	}
	for _, d := range []string{"customer-a", "", strings.Repeat("x", 500), "a/b c:d"} {
		if err := validateName(InterfaceName(d)); err != nil {
			t.Errorf("InterfaceName(%q) = %q: %v", d, InterfaceName(d), err)
		}
	}
}

// TestUserspaceConcurrentUse drives SetPeers, Peers and ListenPort from
// several goroutines at once (run with -race), then checks the final state
// is one of the sets applied.
func TestUserspaceConcurrentUse(t *testing.T) {
	u := newUserspace(t, "tvdC", "198.19.77.1/24")
	sets := make([][]Peer, 4)
	for i := range sets {
		for j := range 5 {
			sets[i] = append(sets[i], Peer{
				PublicKey:  mustKey(t).PublicKey(),
				Endpoint:   netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(40000+10*i+j)),
				AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 77, byte(10 + 10*i + j)}), 32)},
			})
		}
	}
	done := make(chan error, len(sets))
	for i := range sets {
		go func() {
			for range 50 {
				if err := u.SetPeers(sets[i]); err != nil {
					done <- err
					return
				}
				if _, err := u.Peers(); err != nil {
					done <- err
					return
				}
				if _, err := u.ListenPort(); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
	}
	for range sets {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	st, err := u.Peers()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 5 {
		t.Fatalf("%d peers after concurrent updates, want one whole set of 5", len(st))
	}
	var set []Peer
	for _, s := range sets {
		if slices.ContainsFunc(s, func(p Peer) bool { return p.PublicKey == st[0].PublicKey }) {
			set = s
		}
	}
	for _, p := range st {
		if !slices.ContainsFunc(set, func(q Peer) bool { return q.PublicKey == p.PublicKey && q.Endpoint == p.Endpoint }) {
			t.Fatalf("final peers mix several sets: %+v", st)
		}
	}
}

// TestUserspaceNonMemberRejected: a node that knows a member's public key
// and endpoint, and even claims another member's overlay address, cannot get
// a packet through without holding an admitted key.
func TestUserspaceNonMemberRejected(t *testing.T) {
	a := newUserspace(t, "tvdA", "198.19.77.1/24")
	b := newUserspace(t, "tvdB", "198.19.77.2/24")
	m := newUserspace(t, "tvdM", "198.19.77.2/24") // claims B's overlay address
	if err := a.SetPeers([]Peer{loopbackPeer(t, b, 0)}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []*Userspace{b, m} {
		if err := n.SetPeers([]Peer{loopbackPeer(t, a, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	rx, err := a.Net().ListenUDPAddrPort(netip.MustParseAddrPort("198.19.77.1:7004"))
	if err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	r := newUDPRecorder(rx)
	var phase atomic.Int32
	for _, s := range []struct {
		n    *Userspace
		name string
	}{{b, "B"}, {m, "C"}} { // the recorder knows senders B and C; M reports as C
		conn, err := s.n.Net().DialUDPAddrPort(netip.AddrPort{}, netip.MustParseAddrPort("198.19.77.1:7004"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		startSender(t, conn, s.name, &phase)
	}
	r.waitFor(t, "B", 0, 10*time.Second)
	time.Sleep(time.Second)
	if n := r.count("C", 0); n != 0 {
		t.Fatalf("%d datagrams from the non-member arrived", n)
	}
	st, _ := a.Peers()
	if len(st) != 1 || st[0].PublicKey != b.PublicKey() {
		t.Fatalf("A's peers: %+v", st)
	}
	ms, _ := m.Peers()
	if len(ms) != 1 || !ms[0].LastHandshake.IsZero() || ms[0].RxBytes != 0 {
		t.Fatalf("the non-member completed a handshake or received data: %+v", ms)
	}
}
