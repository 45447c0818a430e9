package channel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/tvd-dev/tvd/channel/filter"
	"github.com/tvd-dev/tvd/flow"
)

// BackendNetstack names the data plane of [Userspace]: wireguard-go over the
// gVisor userspace network stack.
const BackendNetstack = "wireguard-go/netstack"

// Userspace is one domain's WireGuard interface implemented entirely in this
// process: wireguard-go over a userspace TCP/IP stack (gVisor netstack). It
// needs no privileges. The overlay is reachable only through [Userspace.Net];
// the underlay is an ordinary UDP socket of this process at
// Config.ListenPort, bound to Config.ListenAddr when set (e.g. 127.0.0.1, so
// nothing is exposed beyond loopback; peers on one machine then use loopback
// endpoints) and to all local addresses otherwise. It is safe for concurrent
// use.
//
// With [WithFlowPlan] the interface is the attachment of one EE (the plan
// member whose Iface is Config.Name): every packet between its stack and
// wireguard-go is judged by channel/filter. What the userspace plane does
// not do: it has no per-node view (each EE's interface filters its own
// traffic, so a node is only where the interfaces run), it does not
// isolate the EE process from the host's own network (the process driver
// gives no network isolation; only traffic over [Userspace.Net] is
// filtered), and a gateway forwards only between the prefixes routed on
// its one interface.
type Userspace struct {
	cfg  Config
	log  *slog.Logger
	core *core
	tnet *netstack.Net
	filt *filter.Filter // nil: unfiltered
}

// UserspaceOption configures a [Userspace] beyond its Config.
type UserspaceOption func(*userspaceOptions)

type userspaceOptions struct {
	plan    *flow.Plan
	gateway bool
	tun     tun.Device
}

// WithTUN runs wireguard-go over td instead of a netstack of its own: the
// caller owns the packets' other side (for example a switch between
// several netstacks, one per EE, as the agent's userspace data plane
// has). [Userspace.Net] is then nil and Config.Address is only reported.
// Close closes td. It cannot be combined with [WithFlowPlan]: td's owner
// filters.
func WithTUN(td tun.Device) UserspaceOption {
	return func(o *userspaceOptions) { o.tun = td }
}

// WithFlowPlan filters the interface with the flow plan p from its first
// packet on (package channel/filter): the plan member whose Iface is
// Config.Name is the local end, every other address is classified by the
// plan, and the decisions are flow/nft's. Change the plan later with
// [Userspace.ApplyFlowPlan]. Without this option the interface is not
// filtered.
func WithFlowPlan(p *flow.Plan) UserspaceOption {
	return func(o *userspaceOptions) { o.plan = p }
}

// WithGateway makes the interface a gateway EE's (with [WithFlowPlan]): a
// packet that arrives from a peer for an address this interface does not
// own is forwarded back out to the peer WireGuard routes its destination
// to, keeping its origin address, after the filter judged both hops (the
// gateway may forward only flows whose origin may cross into the
// destination's domain: flow.Matrix.MayCross). The routes are the peers'
// AllowedIPs: a domain's members route the other domain's prefix to their
// gateway, and the gateways route it to each other.
func WithGateway() UserspaceOption {
	return func(o *userspaceOptions) { o.gateway = true }
}

// NewUserspace starts a userspace interface for cfg. cfg.NetNS must be empty
// (the userspace stack has no kernel namespace); cfg.Name is used in logs
// and, with [WithFlowPlan], names the interface in the plan.
func NewUserspace(cfg Config, opts ...UserspaceOption) (*Userspace, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.NetNS != "" {
		return nil, errors.New("config: expected no network namespace for the userspace data plane, got " + cfg.NetNS)
	}
	var o userspaceOptions
	for _, opt := range opts {
		opt(&o)
	}
	if o.gateway && o.plan == nil {
		return nil, errors.New("config: a gateway interface needs a flow plan (WithFlowPlan)")
	}
	if o.tun != nil && o.plan != nil {
		return nil, errors.New("config: WithTUN and WithFlowPlan exclude each other (the TUN's owner filters)")
	}
	var filt *filter.Filter
	if o.plan != nil {
		f, err := filter.New(filter.Config{Iface: cfg.Name})
		if err != nil {
			return nil, err
		}
		if err := f.Apply(o.plan); err != nil {
			return nil, fmt.Errorf("flow plan: %w", err)
		}
		filt = f
	}
	log := cfg.logger().With("domain", cfg.Domain, "iface", cfg.Name)
	mtu := cfg.mtu()
	var td tun.Device
	var tnet *netstack.Net
	if o.tun != nil {
		td = o.tun
	} else {
		var err error
		td, tnet, err = netstack.CreateNetTUN([]netip.Addr{cfg.Address.Addr()}, nil, mtu)
		if err != nil {
			return nil, fmt.Errorf("create netstack: %w", err)
		}
	}
	switch {
	case filt != nil && o.gateway:
		td = filter.WrapGateway(td, filt)
	case filt != nil:
		td = filter.Wrap(td, filt)
	}
	bind := conn.NewDefaultBind()
	if cfg.ListenAddr.IsValid() {
		bind = &addrBind{addr: cfg.ListenAddr.Unmap()}
	}
	dev := device.NewDevice(td, bind, wgLogger(log))
	c, err := newCore(log, dev, cfg.PrivateKey)
	if err != nil {
		dev.Close()
		return nil, err
	}
	if filt != nil {
		// The filter knows each overlay end by the peer WireGuard routes
		// it to, so it follows every peer change.
		c.afterPeers = func(peers map[PublicKey]Peer) error {
			ips := make([][]netip.Prefix, 0, len(peers))
			for _, p := range peers {
				ips = append(ips, p.AllowedIPs)
			}
			filt.SetPeers(ips)
			return nil
		}
	}
	if err := dev.IpcSet(fmt.Sprintf("listen_port=%d\n", cfg.ListenPort)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("set listen port %d: %w", cfg.ListenPort, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("bring up wireguard-go: %w", err)
	}
	u := &Userspace{cfg: cfg, log: log, core: c, tnet: tnet, filt: filt}
	port, err := c.listenPort()
	if err != nil {
		dev.Close()
		return nil, err
	}
	log.Info("interface up", "backend", BackendNetstack, "address", cfg.Address, "listen_addr", cfg.ListenAddr, "listen_port", port,
		"mtu", mtu, "public_key", c.self, "flow_filter", filt != nil, "gateway", o.gateway)
	return u, nil
}

// Net is the overlay network stack: Dial and Listen on it to talk to peers.
// It is nil for an interface started [WithTUN].
func (u *Userspace) Net() *netstack.Net { return u.tnet }

// SetPeers behaves as [Interface.SetPeers], without routes: the userspace
// stack sends every non-local destination to wireguard-go.
func (u *Userspace) SetPeers(peers []Peer) error { return u.core.setPeers(peers) }

// Peers behaves as [Interface.Peers].
func (u *Userspace) Peers() ([]PeerStatus, error) { return u.core.peerStatus() }

// PublicKey is this interface's public key, to be distributed to peers.
func (u *Userspace) PublicKey() PublicKey { return u.core.self }

// ListenPort is the underlay UDP port actually bound.
func (u *Userspace) ListenPort() (uint16, error) { return u.core.listenPort() }

// ErrNoFilter is returned by the flow methods of a [Userspace] started
// without [WithFlowPlan].
var ErrNoFilter = errors.New("channel: userspace interface has no flow filter (start it with WithFlowPlan)")

// ApplyFlowPlan replaces the flow plan atomically; flows the new plan still
// allows go on (see filter.Filter.Apply).
func (u *Userspace) ApplyFlowPlan(p *flow.Plan) error {
	if u.filt == nil {
		return ErrNoFilter
	}
	if err := u.filt.Apply(p); err != nil {
		return err
	}
	u.log.Info("flow plan applied", "members", len(p.Members), "quarantine", len(p.Quarantine))
	return nil
}

// FlowCounters returns the flow filter's counters by name (flow/nft's
// names; see filter.CounterNames).
func (u *Userspace) FlowCounters() (map[string]filter.Counter, error) {
	if u.filt == nil {
		return nil, ErrNoFilter
	}
	return u.filt.Counters(), nil
}

// Name is the interface name given in the configuration.
func (u *Userspace) Name() string { return u.cfg.Name }

// Address is the overlay address and prefix.
func (u *Userspace) Address() netip.Prefix { return u.cfg.Address }

// Backend names the data plane in use (BackendNetstack).
func (u *Userspace) Backend() string { return BackendNetstack }

// Close stops wireguard-go and the userspace stack. It is safe to call more
// than once.
func (u *Userspace) Close() error {
	if u.core.close() {
		u.log.Info("interface closed")
	}
	return nil
}
