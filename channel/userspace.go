package channel

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"
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
type Userspace struct {
	cfg  Config
	log  *slog.Logger
	core *core
	tnet *netstack.Net
}

// NewUserspace starts a userspace interface for cfg. cfg.NetNS must be empty
// (the userspace stack has no kernel namespace); cfg.Name is used only in
// logs.
func NewUserspace(cfg Config) (*Userspace, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.NetNS != "" {
		return nil, errors.New("config: expected no network namespace for the userspace data plane, got " + cfg.NetNS)
	}
	log := cfg.logger().With("domain", cfg.Domain, "iface", cfg.Name)
	mtu := cfg.mtu()
	td, tnet, err := netstack.CreateNetTUN([]netip.Addr{cfg.Address.Addr()}, nil, mtu)
	if err != nil {
		return nil, fmt.Errorf("create netstack: %w", err)
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
	if err := dev.IpcSet(fmt.Sprintf("listen_port=%d\n", cfg.ListenPort)); err != nil {
		dev.Close()
		return nil, fmt.Errorf("set listen port %d: %w", cfg.ListenPort, err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("bring up wireguard-go: %w", err)
	}
	u := &Userspace{cfg: cfg, log: log, core: c, tnet: tnet}
	port, err := c.listenPort()
	if err != nil {
		dev.Close()
		return nil, err
	}
	log.Info("interface up", "backend", BackendNetstack, "address", cfg.Address, "listen_addr", cfg.ListenAddr, "listen_port", port,
		"mtu", mtu, "public_key", c.self)
	return u, nil
}

// Net is the overlay network stack: Dial and Listen on it to talk to peers.
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
