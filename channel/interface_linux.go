package channel

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// BackendTUN names the data plane of [Interface]: wireguard-go on a kernel
// TUN device.
const BackendTUN = "wireguard-go/tun"

// routeProtocol marks the routes this package installs (an unassigned
// rtnetlink protocol number), so they can be told apart in `ip route`.
const routeProtocol = netlink.RouteProtocol(0x7d) // 125

// Interface is one domain's WireGuard interface on one node, running
// wireguard-go on a kernel TUN device, optionally inside a network
// namespace. It is safe for concurrent use.
type Interface struct {
	cfg  Config
	log  *slog.Logger
	core *core
	ns   netns.NsHandle
	nl   *netlink.Handle
	link int // ifindex inside ns

	routeMu sync.Mutex
	routes  map[netip.Prefix]bool // installed by us
}

// New creates the TUN device named cfg.Name (inside cfg.NetNS when set),
// starts wireguard-go on it with cfg.PrivateKey and cfg.ListenPort, assigns
// cfg.Address, sets the MTU and brings the link up. The interface starts with
// no peers. The underlay UDP socket lives in the same namespace. New needs
// CAP_NET_ADMIN and /dev/net/tun.
func New(cfg Config) (*Interface, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.ListenAddr.IsValid() {
		return nil, errors.New("config: ListenAddr is supported only by the userspace data plane; expected it unset for a TUN interface")
	}
	log := cfg.logger().With("domain", cfg.Domain, "iface", cfg.Name)
	i := &Interface{cfg: cfg, log: log, ns: netns.None(), routes: map[netip.Prefix]bool{}}
	ok := false
	defer func() {
		if !ok {
			i.release()
		}
	}()
	var err error
	if cfg.NetNS != "" {
		if i.ns, err = netns.GetFromPath(cfg.NetNS); err != nil {
			return nil, fmt.Errorf("open network namespace %s: %w", cfg.NetNS, err)
		}
		i.nl, err = netlink.NewHandleAt(i.ns)
	} else {
		i.nl, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	if detectKernelWireGuard(i.nl, log) {
		log.Info("kernel WireGuard is available but unused (wgctrl is not linked); using wireguard-go", "backend", BackendTUN)
	} else {
		log.Info("kernel WireGuard is not available; using wireguard-go", "backend", BackendTUN)
	}

	mtu := cfg.mtu()
	err = inNetNS(i.ns, func() error {
		td, err := tun.CreateTUN(cfg.Name, mtu)
		if err != nil {
			return fmt.Errorf("create tun %s: %w", cfg.Name, err)
		}
		dev := device.NewDevice(&nsTUN{Device: td, mtu: mtu}, conn.NewDefaultBind(), wgLogger(log))
		c, err := newCore(log, dev, cfg.PrivateKey)
		if err != nil {
			dev.Close()
			return err
		}
		i.core = c
		if err := dev.IpcSet(fmt.Sprintf("listen_port=%d\n", cfg.ListenPort)); err != nil {
			return fmt.Errorf("set listen port %d: %w", cfg.ListenPort, err)
		}
		// Bring the device up here, on a thread inside the namespace: this
		// opens the underlay UDP sockets, which stay in the namespace.
		if err := dev.Up(); err != nil {
			return fmt.Errorf("bring up wireguard-go: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	link, err := i.nl.LinkByName(cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("find link %s: %w", cfg.Name, err)
	}
	i.link = link.Attrs().Index
	addr := &netlink.Addr{IPNet: prefixIPNet(cfg.Address)}
	if cfg.Address.Addr().Is6() {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := i.nl.AddrReplace(link, addr); err != nil {
		return nil, fmt.Errorf("assign %s to %s: %w", cfg.Address, cfg.Name, err)
	}
	if err := i.nl.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set %s up: %w", cfg.Name, err)
	}
	i.core.afterPeers = i.syncRoutes
	port, err := i.core.listenPort()
	if err != nil {
		return nil, err
	}
	log.Info("interface up", "address", cfg.Address, "listen_port", port, "mtu", mtu,
		"netns", cfg.NetNS, "public_key", i.core.self)
	ok = true
	return i, nil
}

// SetPeers makes peers the interface's peer set. It is incremental: only
// peers that were added, removed or changed are sent to wireguard-go (no
// replace_peers; remove=true for removals; update_only=true, and
// replace_allowed_ips=true only when a peer's allowed IPs changed), so the
// sessions, handshake times and counters of unchanged peers survive.
// Removing a peer is revocation: when SetPeers returns, wireguard-go has
// dropped the peer's keys and sessions, and any further handshake or
// transport packet from it is discarded. Routes for allowed IPs outside the
// interface's own prefix are added and removed to match. A peer whose
// Endpoint becomes unset keeps its last known endpoint (as when it roams).
// Invalid input leaves the interface unchanged.
func (i *Interface) SetPeers(peers []Peer) error { return i.core.setPeers(peers) }

// Peers returns the current peers with their handshake time and byte
// counters, sorted by public key.
func (i *Interface) Peers() ([]PeerStatus, error) { return i.core.peerStatus() }

// PublicKey is this interface's public key, to be distributed to peers.
func (i *Interface) PublicKey() PublicKey { return i.core.self }

// ListenPort is the underlay UDP port actually bound.
func (i *Interface) ListenPort() (uint16, error) { return i.core.listenPort() }

// Name is the network interface name.
func (i *Interface) Name() string { return i.cfg.Name }

// Address is the overlay address and prefix.
func (i *Interface) Address() netip.Prefix { return i.cfg.Address }

// Backend names the data plane in use (BackendTUN).
func (i *Interface) Backend() string { return BackendTUN }

// Close stops wireguard-go and removes the interface. It is safe to call
// more than once; later calls return nil.
func (i *Interface) Close() error {
	if i.core == nil || !i.core.close() {
		return nil
	}
	err := i.release()
	i.log.Info("interface closed")
	return err
}

// release removes the link if it is still there and frees namespace and
// netlink handles. It is also the cleanup path of a failed New.
func (i *Interface) release() error {
	var err error
	if i.core != nil {
		i.core.close()
	}
	if i.nl != nil {
		// Closing the TUN file normally deletes the link; make sure.
		if i.link != 0 {
			if l, lerr := i.nl.LinkByIndex(i.link); lerr == nil && l.Attrs().Name == i.cfg.Name {
				if derr := i.nl.LinkDel(l); derr != nil && !errors.Is(derr, unix.ENODEV) {
					err = fmt.Errorf("delete link %s: %w", i.cfg.Name, derr)
				}
			}
		}
		i.nl.Close()
		i.nl = nil
	}
	if i.ns.IsOpen() {
		i.ns.Close()
		i.ns = netns.None()
	}
	return err
}

// syncRoutes installs a route over the interface for every peer prefix not
// already covered by the interface's own connected prefix, and removes the
// ones no peer needs any more. A peer's Unrouted prefixes get no route.
func (i *Interface) syncRoutes(peers map[PublicKey]Peer) error {
	i.routeMu.Lock()
	defer i.routeMu.Unlock()
	own := i.cfg.Address.Masked()
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		for _, pfx := range p.AllowedIPs {
			if slices.Contains(p.Unrouted, pfx) {
				continue
			}
			if pfx.Addr().Is4() != own.Addr().Is4() || !(pfx.Bits() >= own.Bits() && own.Contains(pfx.Addr())) {
				want[pfx] = true
			}
		}
	}
	var errs []error
	for pfx := range i.routes {
		if want[pfx] {
			continue
		}
		r := &netlink.Route{LinkIndex: i.link, Dst: prefixIPNet(pfx), Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
		if err := i.nl.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", pfx, err))
			continue
		}
		delete(i.routes, pfx)
	}
	for pfx := range want {
		if i.routes[pfx] {
			continue
		}
		r := &netlink.Route{LinkIndex: i.link, Dst: prefixIPNet(pfx), Scope: netlink.SCOPE_LINK, Protocol: routeProtocol}
		if err := i.nl.RouteReplace(r); err != nil {
			errs = append(errs, fmt.Errorf("add route %s: %w", pfx, err))
			continue
		}
		i.routes[pfx] = true
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sync routes: %w", err)
	}
	return nil
}

func prefixIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// nsTUN wraps the TUN device so that wireguard-go never acts on it from a
// thread outside the interface's network namespace: wireguard-go reacts to
// link up/down events by re-opening its UDP sockets, and to MTU events with
// an ioctl by interface name, both from whatever thread runs its event
// goroutine, i.e. in the wrong namespace. The device is brought up once, in
// the namespace, by New; the MTU is the configured one.
type nsTUN struct {
	tun.Device
	mtu    int
	once   sync.Once
	events chan tun.Event
}

func (t *nsTUN) MTU() (int, error) { return t.mtu, nil }

func (t *nsTUN) Events() <-chan tun.Event {
	t.once.Do(func() {
		t.events = make(chan tun.Event)
		go func() {
			defer close(t.events)
			for range t.Device.Events() {
				// Dropped: see the type comment.
			}
		}()
	})
	return t.events
}

var (
	kernelOnce sync.Once
	kernelWG   bool
)

// detectKernelWireGuard reports whether the kernel supports WireGuard links,
// by creating (and at once deleting) a link of type wireguard through h. The
// answer is computed once per process.
func detectKernelWireGuard(h *netlink.Handle, log *slog.Logger) bool {
	kernelOnce.Do(func() {
		name := fmt.Sprintf("tvdwgprobe%d", unix.Getpid()%100000)
		err := h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: name}})
		if err != nil {
			log.Debug("kernel wireguard probe", "err", err)
			return
		}
		kernelWG = true
		if l, err := h.LinkByName(name); err == nil {
			if err := h.LinkDel(l); err != nil {
				log.Warn("delete kernel wireguard probe link", "link", name, "err", err)
			}
		}
	})
	return kernelWG
}
