package nft

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/flow"
)

// This file builds the test topology: a "node" network namespace that
// routes between EE namespaces, each connected to it by a veth pair. The
// node side of EE e's veth is named e; inside the EE it is eth0. Every EE
// reaches the node at 169.254.0.1 / fe80::1 (the node owns these on every
// EE veth) and the node has a host route to each EE address.

const (
	nsPrefix   = "tvdnft-"
	listenPort = 7070
	dialWait   = 900 * time.Millisecond // under the first SYN retransmission (1 s)
	// warmUpDialWait covers two SYN retransmissions (1 s, 3 s).
	warmUpDialWait = 4 * time.Second
)

var (
	nodeGW4 = netip.MustParseAddr("169.254.0.1")
	nodeGW6 = netip.MustParseAddr("fe80::1")
)

type testEE struct {
	name  string
	ns    netns.NsHandle
	addr4 netip.Addr
	addr6 netip.Addr
}

type lab struct {
	t      testing.TB
	prefix string
	node   netns.NsHandle
	nodeH  *netlink.Handle
	ees    map[string]*testEE
}

// needRoot skips the test when it cannot create network namespaces and
// nftables tables.
func needRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and nftables tables")
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("needs network namespaces (/proc/self/ns/net missing)")
	}
}

// newLab creates the node namespace. Every namespace it creates is deleted
// by name when the test ends, pass or fail.
func newLab(t testing.TB) *lab {
	t.Helper()
	needRoot(t)
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, prefix: nsPrefix + hex.EncodeToString(rnd[:]), ees: map[string]*testEE{}}
	l.node = l.newNS("node")
	h, err := netlink.NewHandleAt(l.node)
	if err != nil {
		t.Fatalf("netlink handle in node namespace: %v", err)
	}
	l.nodeH = h
	t.Cleanup(h.Close)
	mustUp(t, h, "lo")
	l.sysctl(l.node, "net/ipv4/ip_forward", "1")
	l.sysctl(l.node, "net/ipv6/conf/all/forwarding", "1")
	l.sysctl(l.node, "net/ipv4/conf/all/rp_filter", "0")
	l.sysctl(l.node, "net/ipv4/conf/default/rp_filter", "0")
	return l
}

func (l *lab) nsPath() string { return filepath.Join("/run/netns", l.prefix+"-node") }

// newNS creates a named namespace and registers its deletion.
func (l *lab) newNS(short string) netns.NsHandle {
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
		return netns.Set(orig)
	})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			l.t.Errorf("delete namespace %s: %v", name, err)
		}
	})
	return ns
}

// onThread runs fn on a fresh locked OS thread. If fn leaves the thread in
// another namespace, the thread dies with the goroutine instead of being
// reused.
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

// inNS runs fn with the calling thread in namespace ns.
func inNS(ns netns.NsHandle, fn func() error) error {
	return onThread(func() error {
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter namespace: %w", err)
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			return fmt.Errorf("leave namespace: %w", err)
		}
		return ferr
	})
}

func (l *lab) sysctl(ns netns.NsHandle, key, val string) {
	l.t.Helper()
	err := inNS(ns, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(val), 0o644)
	})
	if err != nil {
		l.t.Fatalf("sysctl %s=%s: %v", key, val, err)
	}
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

func prefixOf(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// addEE creates an EE namespace wired to the node, with a TCP listener on
// listenPort that accepts and closes every connection.
func (l *lab) addEE(name, a4, a6 string) *testEE {
	t := l.t
	t.Helper()
	e := &testEE{name: name, ns: l.newNS(name), addr4: netip.MustParseAddr(a4)}
	if a6 != "" {
		e.addr6 = netip.MustParseAddr(a6)
	}
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: "eth0", PeerNamespace: netlink.NsFd(int(e.ns))}
	if err := l.nodeH.LinkAdd(veth); err != nil {
		t.Fatalf("veth %s: %v", name, err)
	}
	l.sysctl(l.node, "net/ipv4/conf/"+name+"/rp_filter", "0")
	link, err := l.nodeH.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, l.nodeH, link, nodeGW4)
	addAddr(t, l.nodeH, link, nodeGW6)
	mustUp(t, l.nodeH, name)
	route(t, l.nodeH, &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixOf(e.addr4), Scope: netlink.SCOPE_LINK})
	if e.addr6.IsValid() {
		route(t, l.nodeH, &netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixOf(e.addr6)})
	}

	h, err := netlink.NewHandleAt(e.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mustUp(t, h, "lo")
	eth, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, h, eth, e.addr4)
	if e.addr6.IsValid() {
		addAddr(t, h, eth, e.addr6)
	}
	mustUp(t, h, "eth0")
	route(t, h, &netlink.Route{LinkIndex: eth.Attrs().Index, Dst: prefixOf(nodeGW4), Scope: netlink.SCOPE_LINK})
	route(t, h, &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: nodeGW4.AsSlice()})
	if e.addr6.IsValid() {
		route(t, h, &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: nodeGW6.AsSlice()})
	}

	var ln net.Listener
	err = inNS(e.ns, func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", listenPort))
		return err
	})
	if err != nil {
		t.Fatalf("listen in %s: %v", name, err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	l.ees[name] = e
	return e
}

func addAddr(t testing.TB, h *netlink.Handle, link netlink.Link, a netip.Addr) {
	t.Helper()
	ad := &netlink.Addr{IPNet: prefixOf(a)}
	if a.Is6() {
		ad.Flags = unix.IFA_F_NODAD
		if a.IsLinkLocalUnicast() {
			ad.IPNet.Mask = net.CIDRMask(64, 128)
		}
	}
	if err := h.AddrAdd(link, ad); err != nil {
		t.Fatalf("address %s on %s: %v", a, link.Attrs().Name, err)
	}
}

func route(t testing.TB, h *netlink.Handle, r *netlink.Route) {
	t.Helper()
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("route %v: %v", r, err)
	}
}

// dial reports whether a TCP connection from EE from to addr:listenPort is
// established within dialWait.
func dial(from netns.NsHandle, to netip.Addr) (bool, error) {
	return dialFrom(from, netip.Addr{}, to)
}

// dialFrom is dial with the source address src (unless invalid).
func dialFrom(from netns.NsHandle, src, to netip.Addr) (bool, error) {
	return dialWithin(from, src, to, dialWait)
}

// dialWithin is dialFrom with its own timeout.
func dialWithin(from netns.NsHandle, src, to netip.Addr, wait time.Duration) (bool, error) {
	var ok bool
	err := inNS(from, func() error {
		d := net.Dialer{Timeout: wait}
		if src.IsValid() {
			d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
		}
		c, err := d.Dial("tcp", netip.AddrPortFrom(to, listenPort).String())
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
		ok = true
		return c.Close()
	})
	return ok, err
}

// probe is one ordered pair to try.
type probe struct {
	from, to string
	addr     netip.Addr
	want     bool
}

// run sends every probe in parallel and reports every mismatch.
func (l *lab) run(probes []probe) {
	l.t.Helper()
	type res struct {
		p   probe
		got bool
		err error
	}
	out := make([]res, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A probe that should pass gets three tries: on a loaded
			// machine a first connection can outlast dialWait. A probe
			// that should be dropped needs one: a pass is never a fluke.
			var got bool
			var err error
			for try := 0; try < 3 && err == nil && !got; try++ {
				got, err = dial(l.ees[p.from].ns, p.addr)
				if !p.want {
					break
				}
			}
			out[i] = res{p, got, err}
		}()
	}
	wg.Wait()
	passed := 0
	for _, r := range out {
		if r.got {
			passed++
		}
		switch {
		case r.err != nil:
			l.t.Errorf("%s -> %s (%s): %v", r.p.from, r.p.to, r.p.addr, r.err)
		case r.got != r.p.want:
			l.t.Errorf("%s -> %s (%s): passed=%v, want %v", r.p.from, r.p.to, r.p.addr, r.got, r.p.want)
		}
	}
	l.t.Logf("%d probes: %d passed, %d dropped", len(out), passed, len(out)-passed)
}

// table3 builds the paper's Table 3 by hand, as flow's own tests do. With
// open set, red/client-os may reach yellow without restriction (a changed
// cell).
func table3(t testing.TB, open bool) *flow.Matrix {
	t.Helper()
	roles := []string{"domain-controller", "gateway", "management-console"}
	red := []string{"domain-controller", "gateway", "client-os"}
	b, err := flow.NewBuilder([]flow.Domain{
		{Name: "yellow", Roles: roles, Gateways: []int{1}},
		{Name: "red", Roles: red, Gateways: []int{1}},
	})
	if err != nil {
		t.Fatal(err)
	}
	const yellow, redD = 0, 1
	gw := uint64(1 << 1)
	b.Set(b.Class(yellow, 0), redD, flow.RuleNone, 0)
	b.Set(b.Class(yellow, 1), redD, flow.RulePointToPoint, gw)
	b.Set(b.Class(yellow, 2), redD, flow.RuleViaGateway, 0)
	b.Set(b.Class(redD, 0), yellow, flow.RuleViaGateway, 0)
	b.Set(b.Class(redD, 1), yellow, flow.RulePointToPoint, gw)
	if open {
		b.Set(b.Class(redD, 2), yellow, flow.RuleUnrestricted, 0)
	} else {
		b.Set(b.Class(redD, 2), yellow, flow.RuleNone, 0)
	}
	return b.Build()
}

// member is one test EE with its class.
type member struct {
	name, domain, role string
	a4, a6             string
}

var table3EEs = []member{
	{"y-dc", "yellow", "domain-controller", "10.71.1.10", "fd00:71:1::10"},
	{"y-gw", "yellow", "gateway", "10.71.1.11", "fd00:71:1::11"},
	{"y-mc", "yellow", "management-console", "10.71.1.12", "fd00:71:1::12"},
	{"r-dc", "red", "domain-controller", "10.71.2.10", "fd00:71:2::10"},
	{"r-gw", "red", "gateway", "10.71.2.11", "fd00:71:2::11"},
	{"r-os", "red", "client-os", "10.71.2.12", "fd00:71:2::12"},
}

// outsider is an EE wired to the node that is not a member at first.
var outsider = member{"x", "red", "client-os", "10.71.2.13", "fd00:71:2::13"}

var controllerAddr = netip.MustParseAddr("10.71.9.1")

// planFor returns the node plan for the given members; every EE of the lab
// (members or not) has its interface listed.
func (l *lab) planFor(m *flow.Matrix, members []member, quarantine ...string) *flow.Plan {
	l.t.Helper()
	p := &flow.Plan{Matrix: m, Quarantine: quarantine, Controllers: []netip.Addr{controllerAddr}}
	for name := range l.ees {
		if name != "ctl" {
			p.EEInterfaces = append(p.EEInterfaces, name)
		}
	}
	for _, mem := range members {
		c, ok := m.Class(mem.domain, mem.role)
		if !ok {
			l.t.Fatalf("no class %s/%s", mem.domain, mem.role)
		}
		pm := flow.PlanMember{EE: mem.name, Class: c, Addrs: []netip.Addr{netip.MustParseAddr(mem.a4)}}
		if mem.a6 != "" {
			pm.Addrs = append(pm.Addrs, netip.MustParseAddr(mem.a6))
		}
		if _, local := l.ees[mem.name]; local {
			pm.Iface = mem.name
		}
		p.Members = append(p.Members, pm)
	}
	return p
}

// table3Lab builds the six Table 3 EEs, the outsider and a controller
// namespace (wired to the node through an interface the plan does not
// list, like the underlay).
func table3Lab(t testing.TB) *lab {
	l := newLab(t)
	for _, m := range table3EEs {
		l.addEE(m.name, m.a4, m.a6)
	}
	l.addEE(outsider.name, outsider.a4, outsider.a6)
	l.addEE("ctl", controllerAddr.String(), "")
	l.warmUp()
	return l
}

// warmUp connects every EE to every other before any rule is installed,
// retrying for a while, so that neighbour resolution on the veths is done
// and later probes measure the rules only.
func (l *lab) warmUp() {
	l.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var wg sync.WaitGroup
	var failed sync.Map
	for _, a := range l.ees {
		for _, b := range l.ees {
			if a == b {
				continue
			}
			for _, addr := range []netip.Addr{b.addr4, b.addr6} {
				if !addr.IsValid() || addr.Is6() && !a.addr6.IsValid() {
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(deadline) {
						// A long timeout: the kernel retransmits the SYN
						// itself rather than the attempt being abandoned
						// with its SYN still queued somewhere, which
						// would answer (RST) long after the warm-up.
						if ok, err := dialWithin(a.ns, netip.Addr{}, addr, warmUpDialWait); ok && err == nil {
							return
						}
					}
					failed.Store(a.name+" -> "+addr.String(), true)
				}()
			}
		}
	}
	wg.Wait()
	failed.Range(func(k, _ any) bool {
		l.t.Errorf("topology: %s never connected", k)
		return true
	})
	l.settle()
}

// settle waits until every TCP connection the node has forwarded is over
// (TIME_WAIT or CLOSE): a straggler of the warm-up (a late FIN or RST of a
// direct connection) must not reach the rules a test installs next and
// move their counters. A connection that never settles (a SYN lost for
// good) sends nothing more either, so after a while settle gives up
// quietly.
func (l *lab) settle() {
	l.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		busy := 0
		for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
			flows, err := l.nodeH.ConntrackTableList(netlink.ConntrackTable, fam)
			if err != nil {
				l.t.Logf("settle: conntrack list: %v (not waiting)", err)
				return
			}
			for _, f := range flows {
				if f.Forward.Protocol != unix.IPPROTO_TCP {
					continue
				}
				if tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP); ok && tcp.State != tcpCtTimeWait && tcp.State != tcpCtClose {
					busy++
				}
			}
		}
		if busy == 0 {
			return
		}
		if time.Now().After(deadline) {
			l.t.Logf("settle: %d forwarded TCP connections still open after the warm-up", busy)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TCP conntrack states (enum tcp_conntrack).
const (
	tcpCtTimeWait = 7
	tcpCtClose    = 8
)

func (l *lab) programmer() *Programmer {
	l.t.Helper()
	p, err := New(Config{NetNS: l.nsPath()})
	if err != nil {
		l.t.Fatal(err)
	}
	l.t.Cleanup(func() {
		if err := p.Remove(); err != nil {
			l.t.Errorf("remove table: %v", err)
		}
		if err := p.Close(); err != nil {
			l.t.Errorf("close: %v", err)
		}
	})
	return p
}
