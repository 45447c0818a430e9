package channel

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// DefaultMTU is the overlay MTU used when Config.MTU is zero: 1420 leaves
// room for the WireGuard, UDP and IPv6 headers on a 1500-byte underlay.
const DefaultMTU = 1420

// MaxNameLen is the longest interface name Linux accepts (IFNAMSIZ-1).
const MaxNameLen = 15

// Config describes one domain's interface on one node.
type Config struct {
	// Name is the network interface name (at most 15 characters, no '/',
	// ':' or white space). The userspace data plane uses it only in logs.
	Name string
	// Domain is the trusted virtual domain this interface belongs to; it
	// appears in logs.
	Domain string
	// PrivateKey is this node's key for Domain. It must be set.
	PrivateKey PrivateKey
	// ListenPort is the underlay UDP port; 0 picks a free port (see
	// ListenPort on the interface for the one chosen).
	ListenPort uint16
	// ListenAddr optionally binds the underlay socket to one local address
	// (e.g. 127.0.0.1). Only the userspace data plane supports it; the zero
	// value listens on all addresses (of the namespace, for the TUN plane).
	ListenAddr netip.Addr
	// Address is the node's overlay address and the domain's overlay prefix,
	// e.g. 10.77.0.1/24.
	Address netip.Prefix
	// NetNS optionally names the network namespace to create the interface
	// in, as a path such as /var/run/netns/X. Empty means the caller's
	// namespace. Only the TUN data plane supports it.
	NetNS string
	// MTU of the overlay interface; 0 means DefaultMTU.
	MTU int
	// Logger receives the interface's logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first problem with c, naming what was expected.
func (c *Config) Validate() error {
	if err := validateName(c.Name); err != nil {
		return err
	}
	if strings.TrimSpace(c.Domain) == "" {
		return errors.New("config: expected a domain name, got an empty one")
	}
	if c.PrivateKey.IsZero() {
		return errors.New("config: expected a private key, got none")
	}
	if !c.Address.IsValid() {
		return errors.New("config: expected an overlay address with prefix length (e.g. 10.77.0.1/24), got none")
	}
	a := c.Address.Addr()
	if a.Zone() != "" || a.Is4In6() || a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() {
		return fmt.Errorf("config: expected a unicast overlay address, got %s", c.Address)
	}
	if c.ListenAddr.IsValid() && (c.ListenAddr.Zone() != "" || c.ListenAddr.IsMulticast()) {
		return fmt.Errorf("config: expected a unicast listen address without zone, got %s", c.ListenAddr)
	}
	if c.MTU != 0 && (c.MTU < 1280 || c.MTU > 65535) {
		return fmt.Errorf("config: expected an MTU between 1280 and 65535 (or 0 for %d), got %d", DefaultMTU, c.MTU)
	}
	return nil
}

// InterfaceName returns the conventional interface name for a domain:
// "tvd-" and the first 10 hex digits of the domain name's SHA-256, so any
// domain name maps to a valid, stable name of 14 characters. Collisions need
// about a million domains on one node to become likely.
func InterfaceName(domain string) string {
	sum := sha256.Sum256([]byte(domain))
	return "tvd-" + hex.EncodeToString(sum[:5])
}

func validateName(name string) error {
	if name == "" {
		return errors.New("config: expected an interface name, got an empty one")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("config: expected an interface name of at most %d bytes, got %q (%d)", MaxNameLen, name, len(name))
	}
	if name == "." || name == ".." || strings.ContainsAny(name, "/: \t\n\r\x00") {
		return fmt.Errorf("config: expected an interface name without '/', ':' or white space, got %q", name)
	}
	for _, r := range name {
		if r < 0x21 || r > 0x7e {
			return fmt.Errorf("config: expected a printable ASCII interface name, got %q", name)
		}
	}
	return nil
}

func (c *Config) mtu() int {
	if c.MTU == 0 {
		return DefaultMTU
	}
	return c.MTU
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// Peer is one remote member of the domain as the controller distributes it.
type Peer struct {
	// PublicKey identifies the peer; it must be unique in a peer set.
	PublicKey PublicKey
	// Endpoint is the peer's underlay address; the zero value means unknown
	// (the peer must then contact us first).
	Endpoint netip.AddrPort
	// AllowedIPs are the overlay prefixes routed to this peer and accepted
	// from it. No prefix may be listed for two peers; prefixes of different
	// lengths may nest (the longest match wins, as in WireGuard).
	AllowedIPs []netip.Prefix
	// Unrouted lists allowed IPs (each also in AllowedIPs) for which the
	// interface installs no route in the main table: traffic reaches them
	// only through routes its user installs (the data plane's gateway
	// routes, which steer only some sources' packets to this peer).
	Unrouted []netip.Prefix
	// PersistentKeepalive, in whole seconds (0 disables it, at most 65535 s).
	PersistentKeepalive time.Duration
	// Greet sends the peer a handshake as soon as it has allowed IPs (when
	// it is added with some, or its allowed IPs were empty), so that a
	// session is up before the first packet. Set it on one side of a pair
	// only: two handshakes that cross cancel each other out until
	// wireguard-go retries, 5 s later. It needs an endpoint.
	Greet bool
}

// equal reports whether p and q configure wireguard-go identically. Both
// must be normalised.
func (p Peer) equal(q Peer) bool {
	return p.PublicKey == q.PublicKey && p.Endpoint == q.Endpoint &&
		p.PersistentKeepalive == q.PersistentKeepalive && slices.Equal(p.AllowedIPs, q.AllowedIPs) &&
		slices.Equal(p.Unrouted, q.Unrouted)
}

// normalise returns a copy of peers with masked, sorted, de-duplicated
// AllowedIPs, after checking every field. self is this interface's public
// key, which no peer may use.
func normalisePeers(peers []Peer, self PublicKey) ([]Peer, error) {
	out := make([]Peer, 0, len(peers))
	seen := make(map[PublicKey]bool, len(peers))
	owner := make(map[netip.Prefix]PublicKey, len(peers))
	for i, p := range peers {
		if p.PublicKey.IsZero() {
			return nil, fmt.Errorf("peer %d: expected a public key, got none", i)
		}
		if p.PublicKey == self {
			return nil, fmt.Errorf("peer %d (%s): expected a remote key, got this interface's own public key", i, p.PublicKey)
		}
		if seen[p.PublicKey] {
			return nil, fmt.Errorf("peer %d (%s): expected unique public keys, got a duplicate", i, p.PublicKey)
		}
		seen[p.PublicKey] = true
		if p.Endpoint.IsValid() {
			if p.Endpoint.Port() == 0 || p.Endpoint.Addr().IsUnspecified() || p.Endpoint.Addr().Zone() != "" {
				return nil, fmt.Errorf("peer %d (%s): expected an endpoint address:port with a non-zero port and a specific address, got %s", i, p.PublicKey, p.Endpoint)
			}
			p.Endpoint = netip.AddrPortFrom(p.Endpoint.Addr().Unmap(), p.Endpoint.Port())
		} else {
			p.Endpoint = netip.AddrPort{}
		}
		if p.PersistentKeepalive < 0 || p.PersistentKeepalive > 65535*time.Second || p.PersistentKeepalive%time.Second != 0 {
			return nil, fmt.Errorf("peer %d (%s): expected a persistent keepalive of whole seconds between 0 and 65535s, got %v", i, p.PublicKey, p.PersistentKeepalive)
		}
		ips := make([]netip.Prefix, 0, len(p.AllowedIPs))
		for _, pfx := range p.AllowedIPs {
			if !pfx.IsValid() || pfx.Addr().Zone() != "" {
				return nil, fmt.Errorf("peer %d (%s): expected valid allowed IP prefixes, got %v", i, p.PublicKey, pfx)
			}
			m := netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits())
			if pfx.Addr().Is4In6() {
				bits := pfx.Bits() - 96
				if bits < 0 {
					return nil, fmt.Errorf("peer %d (%s): expected an IPv4 or IPv6 prefix, got mapped prefix %v", i, p.PublicKey, pfx)
				}
				m = netip.PrefixFrom(pfx.Addr().Unmap(), bits)
			}
			ips = append(ips, m.Masked())
		}
		slices.SortFunc(ips, comparePrefix)
		ips = slices.Compact(ips)
		for _, pfx := range ips {
			if other, ok := owner[pfx]; ok {
				return nil, fmt.Errorf("peer %d (%s): allowed IP %s is already assigned to peer %s; expected disjoint allowed IPs", i, p.PublicKey, pfx, other)
			}
			owner[pfx] = p.PublicKey
		}
		p.AllowedIPs = ips
		var unrouted []netip.Prefix
		for _, pfx := range p.Unrouted {
			m := netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()).Masked()
			if !pfx.IsValid() || !slices.Contains(ips, m) {
				return nil, fmt.Errorf("peer %d (%s): unrouted prefix %v: expected one of the peer's allowed IPs", i, p.PublicKey, pfx)
			}
			unrouted = append(unrouted, m)
		}
		slices.SortFunc(unrouted, comparePrefix)
		p.Unrouted = slices.Compact(unrouted)
		out = append(out, p)
	}
	return out, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
