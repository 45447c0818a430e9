package channel

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// The lab: a bridge namespace joining node namespaces over veth pairs.
// Every name starts with "tvdch-" and a random suffix; everything is removed
// by name in t.Cleanup, also when the test fails.

const (
	labUnderlay = "198.18.0."  // underlay: node i has 198.18.0.(i+1)/24
	labOverlay  = "198.19.77." // overlay: node i has 198.19.77.(i+1)/24
	labPort     = 51820
)

type labNode struct {
	ns       string // namespace name
	path     string // /run/netns/<ns>
	underlay netip.Addr
	overlay  netip.Prefix
	veth     string // underlay interface inside the node
}

type lab struct {
	t     testing.TB
	id    string
	nodes []*labNode
}

// requireNetAdmin skips the test unless it can build network namespaces and
// TUN devices.
func requireNetAdmin(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and TUN devices")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun: " + err.Error())
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs ip from iproute2: " + err.Error())
	}
}

func run(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func newLab(t testing.TB, n int) *lab {
	t.Helper()
	requireNetAdmin(t)
	var rnd [3]byte
	rand.Read(rnd[:])
	l := &lab{t: t, id: "tvdch-" + hex.EncodeToString(rnd[:])}
	br := l.id + "-br"
	names := []string{br}
	for i := range n {
		names = append(names, fmt.Sprintf("%s-%d", l.id, i))
	}
	t.Cleanup(func() {
		for _, name := range names {
			exec.Command("ip", "netns", "del", name).Run()
		}
	})
	for _, name := range names {
		run(t, "ip", "netns", "add", name)
		l.sysctls(name)
		run(t, "ip", "-n", name, "link", "set", "lo", "up")
	}
	run(t, "ip", "-n", br, "link", "add", "br0", "type", "bridge")
	run(t, "ip", "-n", br, "link", "set", "br0", "up")
	for i := range n {
		node := &labNode{
			ns:       names[i+1],
			path:     "/run/netns/" + names[i+1],
			underlay: netip.MustParseAddr(fmt.Sprintf("%s%d", labUnderlay, i+1)),
			overlay:  netip.MustParsePrefix(fmt.Sprintf("%s%d/24", labOverlay, i+1)),
			veth:     "ul0",
		}
		port := fmt.Sprintf("p%d", i)
		run(t, "ip", "-n", br, "link", "add", port, "type", "veth", "peer", "name", node.veth, "netns", node.ns)
		run(t, "ip", "-n", br, "link", "set", port, "master", "br0", "up")
		run(t, "ip", "-n", node.ns, "addr", "add", node.underlay.String()+"/24", "dev", node.veth)
		run(t, "ip", "-n", node.ns, "link", "set", node.veth, "up")
		l.nodes = append(l.nodes, node)
	}
	return l
}

// sysctls turns IPv6 off in a namespace so the underlay carries nothing but
// what the test sends (no router or neighbour solicitations).
func (l *lab) sysctls(ns string) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		l.t.Fatalf("open namespace %s: %v", ns, err)
	}
	defer h.Close()
	err = inNetNS(h, func() error {
		for _, k := range []string{"all", "default"} {
			if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+k+"/disable_ipv6", []byte("1"), 0o644); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		l.t.Fatalf("sysctl in %s: %v", ns, err)
	}
}

// do runs fn inside node's namespace (sockets it opens stay there).
func (n *labNode) do(t testing.TB, fn func() error) {
	t.Helper()
	h, err := netns.GetFromPath(n.path)
	if err != nil {
		t.Fatalf("open namespace %s: %v", n.ns, err)
	}
	defer h.Close()
	if err := inNetNS(h, fn); err != nil {
		t.Fatal(err)
	}
}

func (n *labNode) listenTCP(t testing.TB, port int) net.Listener {
	var ln net.Listener
	n.do(t, func() (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf("%s:%d", n.overlay.Addr(), port))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	return ln
}

func (n *labNode) dialTCP(t testing.TB, to netip.Addr, port int) net.Conn {
	var c net.Conn
	n.do(t, func() (err error) {
		c, err = net.Dial("tcp4", netip.AddrPortFrom(to, uint16(port)).String())
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func (n *labNode) listenUDP(t testing.TB, port int) *net.UDPConn {
	var c *net.UDPConn
	n.do(t, func() (err error) {
		c, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(n.overlay.Addr(), uint16(port))))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

func (n *labNode) dialUDP(t testing.TB, to netip.Addr, port int) *net.UDPConn {
	var c *net.UDPConn
	n.do(t, func() (err error) {
		c, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to, uint16(port))))
		return err
	})
	t.Cleanup(func() { c.Close() })
	return c
}

// iface starts the domain interface "tvd0" on node.
func (n *labNode) iface(t testing.TB, name string, key PrivateKey, port uint16, addr netip.Prefix) *Interface {
	t.Helper()
	i, err := New(Config{
		Name: name, Domain: "d1", PrivateKey: key, ListenPort: port,
		Address: addr, NetNS: n.path, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { i.Close() })
	return i
}

func (n *labNode) peer(i *Interface, port uint16) Peer {
	return Peer{
		PublicKey:  i.PublicKey(),
		Endpoint:   netip.AddrPortFrom(n.underlay, port),
		AllowedIPs: []netip.Prefix{netip.PrefixFrom(i.Address().Addr(), 32)},
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

func hex4(port uint16) string { return fmt.Sprintf(":%04X", port) }

// TestInNetNSLeavesNoThreadBehind: after many namespace switches, every
// thread of the process is back in the original namespace.
func TestInNetNSLeavesNoThreadBehind(t *testing.T) {
	l := newLab(t, 1)
	want, err := os.Readlink("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	h, err := netns.GetFromPath(l.nodes[0].path)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var inside atomic.Value // string
	inside.Store("")
	errs := make(chan error, 64)
	for range 64 {
		go func() {
			errs <- inNetNS(h, func() error {
				s, err := os.Readlink("/proc/thread-self/ns/net")
				if err == nil && s == want {
					err = fmt.Errorf("fn ran in the original namespace %s", s)
				}
				inside.Store(s)
				return err
			})
		}()
	}
	for range 64 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		got, err := os.Readlink("/proc/self/task/" + task.Name() + "/ns/net")
		if err != nil {
			continue // thread exited meanwhile
		}
		if got != want {
			t.Fatalf("thread %s left in %s (node namespace %s), want %s", task.Name(), got, inside.Load(), want)
		}
	}
}
