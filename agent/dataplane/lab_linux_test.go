package dataplane

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow/nft"
	"github.com/tvd-dev/tvd/policy"
)

// This file builds a small deployment inside network namespaces: an
// underlay namespace with a bridge, one namespace per node on it (with
// addresses 10.254.0.N), a controller host on the bridge (10.254.0.100),
// and EE namespaces for the members. Each node runs its own DataPlane; the
// test plays the controller, building every node's plan the way
// controller/plan.go does and carrying the published channel keys into the
// other nodes' peers.

const (
	nsPrefix = "tvddp-"
	tcpPort  = 7070
	udpPort  = 7071
)

var ctlAddr = netip.MustParseAddr("10.254.0.100")

func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs, TUN devices and nftables tables")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun for wireguard-go")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("needs network namespaces (/proc/self/ns/net missing)")
	}
}

type labEE struct {
	name, node, domain, role string
	addr                     netip.Addr
	ns                       netns.NsHandle
	path                     string
	ln                       net.Listener
	udp                      *net.UDPConn

	mu   sync.Mutex
	seen map[netip.Addr]int // TCP peers accepted
	got  [][]byte           // UDP payloads received
}

// sawFrom reports whether e accepted a connection from a, waiting a little
// for the accept loop (the dialer may learn of the connection first).
func (e *labEE) sawFrom(a netip.Addr) bool {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		e.mu.Lock()
		n := e.seen[a]
		e.mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			return n > 0
		}
	}
}

func (e *labEE) received(marker []byte) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, g := range e.got {
		if string(g) == string(marker) {
			return true
		}
	}
	return false
}

type labNode struct {
	name     string
	ns       netns.NsHandle
	path     string
	underlay netip.Addr
	dp       *DataPlane
	version  uint64
	keys     map[string]*tvdv1.ChannelKey // published, by domain
}

type lab struct {
	t       testing.TB
	prefix  string
	pol     *policy.Compiled
	mjson   []byte
	mid     string
	ul      netns.NsHandle
	ulH     *netlink.Handle
	ctl     *labEE // the controller host, listening like an EE
	nodes   map[string]*labNode
	order   []string
	ees     map[string]*labEE
	eeOrder []string
	// The controller's view.
	removed     map[string]bool
	unrouted    map[netip.Addr]bool // destinations the nodes no longer route
	noWarm      bool                // apply does not open sessions (remote nodes are simulated)
	v6          bool                // namespaces keep IPv6 on
	subnets     map[string]string   // overlay prefixes that replace the policy's, by domain
	quarantined map[string]bool
	nextAddr    map[string]netip.Addr
}

func newLab(t testing.TB, opts ...func(*lab)) *lab {
	t.Helper()
	needRoot(t)
	pol, err := policy.LoadAndCompile("../../examples/outsourcing")
	if err != nil {
		t.Fatalf("compile the outsourcing policy: %v", err)
	}
	mj, err := json.Marshal(pol.Matrix)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(mj)
	var rnd [4]byte
	rand.Read(rnd[:])
	l := &lab{t: t, prefix: nsPrefix + hex.EncodeToString(rnd[:]), pol: pol, mjson: mj, mid: "sha256:" + hex.EncodeToString(sum[:]),
		nodes: map[string]*labNode{}, ees: map[string]*labEE{}, removed: map[string]bool{}, unrouted: map[netip.Addr]bool{}, quarantined: map[string]bool{}, nextAddr: map[string]netip.Addr{}}
	for _, o := range opts {
		o(l)
	}
	var path string
	l.ul, path = l.newNS("ul")
	_ = path
	if l.ulH, err = netlink.NewHandleAt(l.ul); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.ulH.Close)
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
	if err := l.ulH.LinkAdd(br); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	mustUp(t, l.ulH, "br0")
	// The controller host.
	cns, cpath := l.newNS("ctl")
	l.plug(cns, "ctl", ctlAddr)
	l.ctl = &labEE{name: "controller", ns: cns, path: cpath, addr: ctlAddr}
	l.listen(l.ctl)
	return l
}

// subnetOf returns the domain's overlay prefix: the policy's unless the
// test replaced it.
func (l *lab) subnetOf(domain string) string {
	if s, ok := l.subnets[domain]; ok {
		return s
	}
	dp, ok := l.pol.Domain(domain)
	if !ok {
		l.t.Fatalf("no domain %q in the policy", domain)
	}
	return dp.Subnet
}

// newNS creates a named namespace with IPv6 off (a quiet underlay for the
// capture) and registers its deletion by name.
func (l *lab) newNS(short string) (netns.NsHandle, string) {
	l.t.Helper()
	name := l.prefix + "-" + short
	var ns netns.NsHandle
	err := onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		ns, err = netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
		off := "1"
		if l.v6 {
			off = "0"
		}
		for _, k := range []string{"net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6"} {
			os.WriteFile("/proc/sys/"+k, []byte(off), 0o644)
		}
		return netns.Set(orig)
	})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return ns, filepath.Join("/run/netns", name)
}

func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		err := fn()
		if err == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

func mustUp(t testing.TB, h *netlink.Handle, name string) {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s: %v", name, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("link %s up: %v", name, err)
	}
}

// plug connects namespace ns to the underlay bridge as "ul0" with address
// a/24.
func (l *lab) plug(ns netns.NsHandle, short string, a netip.Addr) {
	t := l.t
	t.Helper()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "u-" + short}, PeerName: "ul0", PeerNamespace: netlink.NsFd(int(ns))}
	if err := l.ulH.LinkAdd(veth); err != nil {
		t.Fatalf("underlay veth for %s: %v", short, err)
	}
	br, err := l.ulH.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	port, err := l.ulH.LinkByName("u-" + short)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.ulH.LinkSetMaster(port, br); err != nil {
		t.Fatal(err)
	}
	mustUp(t, l.ulH, "u-"+short)
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ul, err := h.LinkByName("ul0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(ul, &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(a, 24))}); err != nil {
		t.Fatal(err)
	}
	mustUp(t, h, "ul0")
	mustUp(t, h, "lo")
}

// addNode creates a node namespace on the underlay and its DataPlane.
func (l *lab) addNode(name string, n byte) *labNode {
	t := l.t
	t.Helper()
	ns, path := l.newNS(name)
	u := netip.AddrFrom4([4]byte{10, 254, 0, n})
	l.plug(ns, name, u)
	node := &labNode{name: name, ns: ns, path: path, underlay: u, keys: map[string]*tvdv1.ChannelKey{}}
	dp, err := New(Config{
		NodeNetNS: path, Underlay: u, BasePort: 51820, DataDir: t.TempDir(),
		EENetNS:    l.eeNetNS,
		Controller: []netip.Addr{ctlAddr},
	})
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := dp.Close(); err != nil {
			t.Errorf("node %s: %v", name, err)
		}
	})
	node.dp = dp
	l.nodes[name] = node
	l.order = append(l.order, name)
	return node
}

func (l *lab) eeNetNS(ee string) (string, bool) {
	e, ok := l.ees[ee]
	if !ok {
		return "", false
	}
	return e.path, true
}

// addEE creates an EE namespace with listeners and gives it the next free
// address of its domain (skipping the network and first host, like the
// controller).
func (l *lab) addEE(name, node, domain, role string) *labEE {
	t := l.t
	t.Helper()
	a, ok := l.nextAddr[domain]
	if !ok {
		a = netip.MustParsePrefix(l.subnetOf(domain)).Masked().Addr().Next().Next()
	}
	l.nextAddr[domain] = a.Next()
	ns, path := l.newNS(name)
	e := &labEE{name: name, node: node, domain: domain, role: role, addr: a, ns: ns, path: path}
	l.listen(e)
	l.ees[name] = e
	l.eeOrder = append(l.eeOrder, name)
	// The controller host routes the overlay address back to its node
	// (the underlay is IPv4: IPv6 members do not reach it in these tests).
	if !a.Is4() {
		return e
	}
	h, err := netlink.NewHandleAt(l.ctl.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r := &netlink.Route{Dst: ipNet(hostPrefix(a)), Gw: l.nodes[node].underlay.AsSlice()}
	if err := h.RouteReplace(r); err != nil {
		t.Fatalf("controller route to %s: %v", a, err)
	}
	return e
}

// listen opens a TCP listener and a UDP socket inside e's namespace; the
// TCP listener records every peer address it accepts.
func (l *lab) listen(e *labEE) {
	t := l.t
	t.Helper()
	e.seen = map[netip.Addr]int{}
	err := inNS(e.ns, func() error {
		var err error
		tcp, udp := "tcp4", "udp4"
		if e.addr.Is6() {
			tcp, udp = "tcp6", "udp6"
		}
		if e.ln, err = net.Listen(tcp, fmt.Sprintf(":%d", tcpPort)); err != nil {
			return err
		}
		e.udp, err = net.ListenUDP(udp, &net.UDPAddr{Port: udpPort})
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", e.name, err)
	}
	t.Cleanup(func() { e.ln.Close(); e.udp.Close() })
	go func() {
		for {
			c, err := e.ln.Accept()
			if err != nil {
				return
			}
			ap := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			e.mu.Lock()
			e.seen[ap.Addr().Unmap()]++
			e.mu.Unlock()
			c.Close()
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := e.udp.Read(buf)
			if err != nil {
				return
			}
			e.mu.Lock()
			e.got = append(e.got, append([]byte(nil), buf[:n]...))
			e.mu.Unlock()
		}
	}()
}

// caseStudy builds the paper's case study 1 on three nodes: node a hosts
// yellow's domain controller and gateway and red's gateway and domain
// controller; nodes b and c each a yellow management console and a red
// client OS.
func caseStudy(t testing.TB) *lab {
	l := newLab(t)
	l.addNode("a", 1)
	l.addNode("b", 2)
	l.addNode("c", 3)
	l.addEE("y-dc", "a", "yellow", "domain-controller")
	l.addEE("y-gw", "a", "yellow", "gateway")
	l.addEE("r-gw", "a", "red", "gateway")
	l.addEE("r-dc", "a", "red", "domain-controller")
	for _, n := range []string{"b", "c"} {
		l.addEE("y-mc-"+n, n, "yellow", "management-console")
		l.addEE("r-cl-"+n, n, "red", "client-os")
	}
	return l
}

// active returns the EEs the controller currently admits, in order.
func (l *lab) active() []*labEE {
	var out []*labEE
	for _, name := range l.eeOrder {
		if !l.removed[name] {
			out = append(out, l.ees[name])
		}
	}
	return out
}

// plan builds node's plan as controller/plan.go does.
func (l *lab) plan(node string) *tvdv1.Plan {
	n := l.nodes[node]
	n.version++
	p := &tvdv1.Plan{Version: n.version, PolicyVersion: 1}
	onNode := map[string]bool{}
	act := l.active()
	for _, e := range act {
		if e.node != node {
			continue
		}
		onNode[e.domain] = true
		p.Members = append(p.Members, &tvdv1.PlanMember{
			Member:         &tvdv1.Member{Domain: e.domain, Role: e.role, Ee: e.name},
			OverlayAddress: e.addr.String(),
		})
	}
	var domains []string
	for d := range onNode {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	for _, d := range domains {
		dp := &tvdv1.DomainPeers{Domain: d, OverlayPrefix: l.subnetOf(d)}
		for _, peer := range l.order {
			if peer == node {
				continue
			}
			key := l.nodes[peer].keys[d]
			var allowed []string
			for _, e := range act {
				if e.node == peer && e.domain == d {
					allowed = append(allowed, hostPrefix(e.addr).String())
				}
			}
			if key == nil || len(allowed) == 0 {
				continue
			}
			dp.Peers = append(dp.Peers, &tvdv1.Peer{Node: peer, WireguardPublicKey: key.WireguardPublicKey, Endpoint: key.Endpoint, AllowedIps: allowed})
		}
		p.Peers = append(p.Peers, dp)
	}
	if len(onNode) > 0 {
		fp := &tvdv1.FlowPlan{MatrixId: l.mid, Matrix: l.mjson}
		classes := map[[2]string]*tvdv1.ClassSet{}
		for _, e := range act {
			k := [2]string{e.domain, e.role}
			cs := classes[k]
			if cs == nil {
				cs = &tvdv1.ClassSet{Domain: e.domain, Role: e.role}
				classes[k] = cs
				fp.Classes = append(fp.Classes, cs)
			}
			cs.Addresses = append(cs.Addresses, e.addr.String())
		}
		p.Flow = fp
		for _, e := range act {
			if l.quarantined[e.name] {
				p.Quarantine = append(p.Quarantine, &tvdv1.QuarantinedMember{
					Member: &tvdv1.Member{Domain: e.domain, Role: e.role, Ee: e.name}, Addresses: []string{e.addr.String()}, Reason: "test"})
			}
		}
	}
	return p
}

// apply sends the named nodes (all if none) their plans until the
// published keys settle, as the controller does when keys arrive in
// reports, and checks every acknowledgement.
func (l *lab) apply(nodes ...string) {
	t := l.t
	t.Helper()
	if len(nodes) == 0 {
		nodes = l.order
	}
	for round := 0; round < 4; round++ {
		changed := false
		for _, name := range nodes {
			n := l.nodes[name]
			p := l.plan(name)
			acks, keys, err := n.dp.Apply(context.Background(), p)
			if err != nil {
				t.Fatalf("node %s: apply plan %d: %v", name, p.Version, err)
			}
			want := map[string]bool{}
			for _, dp := range p.Peers {
				want[dp.Domain] = true
			}
			if len(acks) != len(want) {
				t.Fatalf("node %s: %d domain acks, want %d", name, len(acks), len(want))
			}
			for _, a := range acks {
				if !want[a.Domain] || a.Channel != tvdv1.ChannelState_CHANNEL_STATE_UP || a.FlowMatrixId != l.mid || a.Error != "" {
					t.Fatalf("node %s: ack %v, want channel UP with matrix %s", name, a, l.mid)
				}
			}
			got := map[string]*tvdv1.ChannelKey{}
			for _, k := range keys {
				if len(k.WireguardPublicKey) != 32 || k.Endpoint == "" {
					t.Fatalf("node %s: published key %v: want 32 bytes and an endpoint", name, k)
				}
				got[k.Domain] = k
				if old := n.keys[k.Domain]; old == nil || string(old.WireguardPublicKey) != string(k.WireguardPublicKey) || old.Endpoint != k.Endpoint {
					changed = true
				}
			}
			if len(got) != len(n.keys) {
				changed = true
			}
			n.keys = got
		}
		if !changed {
			if !l.noWarm {
				l.warm(nodes)
			}
			return
		}
	}
	t.Fatal("channel keys did not settle")
}

// warm opens the WireGuard sessions that do not exist yet, one direction
// at a time. Two nodes that start talking to each other at the same
// instant both initiate a handshake, each answers the other's, and
// wireguard-go then drops both answers (the initiation each was waiting
// on was replaced); the sessions come up only at the handshake retry 5 s
// later. The probes below start every flow at once, so they would hit
// that on purpose; a deployment meets it at worst once per peer pair.
func (l *lab) warm(nodes []string) {
	t := l.t
	t.Helper()
	for _, n := range nodes {
		for dom, st := range l.nodes[n].dp.domains {
			ps, err := st.iface.Peers()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range ps {
				if !p.LastHandshake.IsZero() || len(p.AllowedIPs) == 0 {
					continue
				}
				var src, dst *labEE
				for _, e := range l.active() {
					if e.domain != dom || l.quarantined[e.name] {
						continue
					}
					if e.node == n && src == nil {
						src = e
					}
					if p.AllowedIPs[0].Contains(e.addr) {
						dst = e
					}
				}
				if src == nil || dst == nil {
					continue
				}
				deadline := time.Now().Add(8 * time.Second)
				for {
					ok, err := dial(src, dst.addr, time.Second)
					if err != nil {
						t.Fatalf("warm %s -> %s: %v", src.name, dst.name, err)
					}
					if ok {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("warm %s -> %s: no session within 8s", src.name, dst.name)
					}
				}
			}
		}
	}
}

// dial opens a TCP connection from inside src's namespace to dst and
// reports whether it was established within timeout.
func dial(src *labEE, dst netip.Addr, timeout time.Duration) (bool, error) {
	ok := false
	err := inNS(src.ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(dst, tcpPort).String(), timeout)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil // dropped on the way
			}
			return err
		}
		ok = true
		return c.Close()
	})
	return ok, err
}

// sendUDP sends one datagram from inside src's namespace.
func sendUDP(src *labEE, dst netip.Addr, payload []byte) error {
	return inNS(src.ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, udpPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
}

type pair struct{ src, dst *labEE }

// probe tries every pair at once. A pair expected to pass is retried (a
// first WireGuard handshake may take a moment); a pair expected to be
// dropped gets one attempt of the full timeout. It returns what passed.
func probe(t testing.TB, pairs []pair, expect func(pair) bool, unrouted map[netip.Addr]bool) map[pair]bool {
	t.Helper()
	const timeout = 1500 * time.Millisecond
	var mu sync.Mutex
	got := map[pair]bool{}
	var wg sync.WaitGroup
	for _, pr := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tries := 1
			if expect(pr) {
				tries = 3
			}
			for i := 0; i < tries; i++ {
				ok, err := dial(pr.src, pr.dst.addr, timeout)
				if err != nil && unrouted[pr.dst.addr] && (errors.Is(err, syscall.ENETUNREACH) || errors.Is(err, syscall.EHOSTUNREACH)) {
					return // the node no longer routes there at all
				}
				if err != nil {
					// A refusal or "no route" is a failure to pass, but of
					// the wrong kind: the rules drop, they never reject.
					t.Errorf("%s -> %s: %v (want a connection or a silent drop)", pr.src.name, pr.dst.name, err)
					return
				}
				if ok {
					mu.Lock()
					got[pr] = true
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	return got
}

// allPairs returns every ordered pair of distinct active EEs.
func (l *lab) allPairs() []pair {
	var out []pair
	act := l.active()
	for _, s := range act {
		for _, d := range act {
			if s != d {
				out = append(out, pair{s, d})
			}
		}
	}
	return out
}

// matrixSays is the policy's answer for a packet sent straight from src
// to dst: intra-domain always, else the matrix's Direct.
func (l *lab) matrixSays(pr pair) bool {
	m := l.pol.Matrix
	s, ok1 := m.Class(pr.src.domain, pr.src.role)
	d, ok2 := m.Class(pr.dst.domain, pr.dst.role)
	if !ok1 || !ok2 {
		l.t.Fatalf("class of %s or %s not in the matrix", pr.src.name, pr.dst.name)
	}
	if pr.src.domain == pr.dst.domain {
		return true
	}
	return m.Decide(s, d).Direct
}

// checkPairs probes pairs and fails for every pair whose outcome differs
// from expect; it also checks that every connection that passed arrived
// with the sender's own overlay address. It returns the number that passed.
func (l *lab) checkPairs(pairs []pair, expect func(pair) bool) int {
	t := l.t
	t.Helper()
	got := probe(t, pairs, expect, l.unrouted)
	for _, pr := range pairs {
		want := expect(pr)
		if got[pr] != want {
			t.Errorf("%s (%s/%s on %s) -> %s (%s/%s on %s): passed=%v, want %v",
				pr.src.name, pr.src.domain, pr.src.role, pr.src.node, pr.dst.name, pr.dst.domain, pr.dst.role, pr.dst.node, got[pr], want)
		}
		if got[pr] && !pr.dst.sawFrom(pr.src.addr) {
			t.Errorf("%s -> %s passed but %s never saw %s", pr.src.name, pr.dst.name, pr.dst.name, pr.src.addr)
		}
	}
	return len(got)
}

// links returns the ifindex of every link in node's namespace by name.
func (l *lab) links(node string) map[string]int {
	l.t.Helper()
	h, err := netlink.NewHandleAt(l.nodes[node].ns)
	if err != nil {
		l.t.Fatal(err)
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		l.t.Fatal(err)
	}
	out := map[string]int{}
	for _, lk := range ls {
		out[lk.Attrs().Name] = lk.Attrs().Index
	}
	return out
}

// blackholes returns the blackhole routes of node's main table.
func (l *lab) blackholes(node string) []string {
	l.t.Helper()
	h, err := netlink.NewHandleAt(l.nodes[node].ns)
	if err != nil {
		l.t.Fatal(err)
	}
	defer h.Close()
	var out []string
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rs, err := h.RouteListFiltered(fam, &netlink.Route{Type: syscall.RTN_BLACKHOLE}, netlink.RT_FILTER_TYPE)
		if err != nil {
			l.t.Fatal(err)
		}
		for _, r := range rs {
			out = append(out, r.Dst.String())
		}
	}
	sort.Strings(out)
	return out
}

// ruleHandles returns the handles of every rule of the tvd table in node's
// namespace: a rebuilt table gets new handles.
func (l *lab) ruleHandles(node string) []uint64 { return l.tableRules(node, nft.TableName) }

// tableRules returns the handles of every rule of an inet table in node's
// namespace.
func (l *lab) tableRules(node, table string) []uint64 {
	l.t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(int(l.nodes[node].ns)))
	if err != nil {
		l.t.Fatal(err)
	}
	tbl := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		l.t.Fatal(err)
	}
	var out []uint64
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		rs, err := c.GetRules(tbl, ch)
		if err != nil {
			l.t.Fatal(err)
		}
		for _, r := range rs {
			out = append(out, r.Handle)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}
