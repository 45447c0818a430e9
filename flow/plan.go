package flow

import (
	"fmt"
	"net/netip"
	"strings"
)

// Plan is what one node enforces: the compiled matrix and every member the
// node must know about, with the node's quarantine set, the controller
// addresses and the node-side interfaces the rules are scoped to. It is
// plain data; a node's flow programmer turns it into firewall state, and
// the controller can build and diff it without touching the network.
type Plan struct {
	// Matrix is the compiled flow matrix.
	Matrix *Matrix
	// Members are the local and remote members the node must classify.
	Members []PlanMember
	// Quarantine lists EE names (each one of Members) whose traffic is
	// dropped except to and from the controllers.
	Quarantine []string
	// Controllers are the controller addresses: every member, quarantined
	// or not, may exchange traffic with them whatever the matrix says. A
	// controller address must not be a member address.
	Controllers []netip.Addr
	// EEInterfaces are the node-side interfaces facing local EEs (one per
	// EE, e.g. the host end of a veth pair). Traffic entering or leaving
	// through them is filtered.
	EEInterfaces []string
	// OverlayInterfaces are the node's overlay interfaces (one WireGuard
	// interface per domain). Traffic entering or leaving through them is
	// filtered. The encrypted underlay is never named here and never cut.
	OverlayInterfaces []string
	// Reach lists addresses that arrive over, or leave through, an overlay
	// interface on a via-gateway flow: a hop with that address over that
	// interface is a hop with the gateway on the peer node (of class
	// Class), not with the address's own member. Each (Iface, Addr) pair
	// appears once. See [Reach].
	Reach []Reach
}

// Reach is one address reached over an overlay interface through a
// gateway on the peer node. The peer's WireGuard allowed IPs accept the
// address only from that peer, so the interface vouches for the hop: the
// gateway node already judged the hop into or out of its gateway, and the
// origin's right to cross.
type Reach struct {
	Iface string     // an overlay interface, one of OverlayInterfaces
	Addr  netip.Addr // the far address
	Class ClassID    // the gateway's class
}

// PlanMember is one member as a node sees it.
type PlanMember struct {
	// EE is the member's EE name, unique in the plan.
	EE string
	// Class is the member's (domain, role) class in the plan's matrix.
	Class ClassID
	// Addrs are the member's overlay addresses (IPv4 and/or IPv6).
	Addrs []netip.Addr
	// Iface is the node-side interface of a local EE, one of
	// EEInterfaces; empty for a member on another node.
	Iface string
}

// MaxIfaceLen is the longest Linux interface name (IFNAMSIZ - 1).
const MaxIfaceLen = 15

// Validate checks the plan for consistency: a matrix, unique EE names,
// classes in range, at least one valid address per member and no address
// used twice, interface names that Linux accepts, member interfaces that
// are listed EE interfaces and used by one member only, quarantined EEs
// that are members, and controller addresses that are not member
// addresses.
func (p *Plan) Validate() error {
	if p == nil || p.Matrix == nil {
		return fmt.Errorf("plan: no flow matrix")
	}
	ifaces := make(map[string]string) // name -> "ee" or "overlay"
	for _, n := range p.EEInterfaces {
		if err := checkIface(n); err != nil {
			return fmt.Errorf("plan: EE interface: %w", err)
		}
		if _, dup := ifaces[n]; dup {
			return fmt.Errorf("plan: EE interface %q listed twice", n)
		}
		ifaces[n] = "ee"
	}
	for _, n := range p.OverlayInterfaces {
		if err := checkIface(n); err != nil {
			return fmt.Errorf("plan: overlay interface: %w", err)
		}
		if kind, dup := ifaces[n]; dup {
			return fmt.Errorf("plan: overlay interface %q already listed as %s interface", n, kind)
		}
		ifaces[n] = "overlay"
	}
	names := make(map[string]bool, len(p.Members))
	addrs := make(map[netip.Addr]string, 2*len(p.Members))
	ifaceEE := make(map[string]string)
	n := ClassID(p.Matrix.NumClasses())
	for i, m := range p.Members {
		if m.EE == "" {
			return fmt.Errorf("plan: member %d has no EE name", i)
		}
		if names[m.EE] {
			return fmt.Errorf("plan: member EE %q listed twice", m.EE)
		}
		names[m.EE] = true
		if m.Class < 0 || m.Class >= n {
			return fmt.Errorf("plan: member %q: class %d out of range (the matrix has %d classes)", m.EE, m.Class, n)
		}
		if len(m.Addrs) == 0 {
			return fmt.Errorf("plan: member %q has no overlay address", m.EE)
		}
		for _, a := range m.Addrs {
			if err := checkAddr(a); err != nil {
				return fmt.Errorf("plan: member %q: %w", m.EE, err)
			}
			if other, dup := addrs[a]; dup {
				return fmt.Errorf("plan: address %s used by members %q and %q", a, other, m.EE)
			}
			addrs[a] = m.EE
		}
		if m.Iface != "" {
			if ifaces[m.Iface] != "ee" {
				return fmt.Errorf("plan: member %q: interface %q is not one of the EE interfaces", m.EE, m.Iface)
			}
			if other, dup := ifaceEE[m.Iface]; dup {
				return fmt.Errorf("plan: interface %q used by members %q and %q", m.Iface, other, m.EE)
			}
			ifaceEE[m.Iface] = m.EE
		}
	}
	reach := make(map[Reach]bool, len(p.Reach))
	for i, r := range p.Reach {
		if ifaces[r.Iface] != "overlay" {
			return fmt.Errorf("plan: reach %d: interface %q is not one of the overlay interfaces", i, r.Iface)
		}
		if err := checkAddr(r.Addr); err != nil {
			return fmt.Errorf("plan: reach %d: %w", i, err)
		}
		if r.Class < 0 || r.Class >= n {
			return fmt.Errorf("plan: reach %d: class %d out of range (the matrix has %d classes)", i, r.Class, n)
		}
		k := Reach{Iface: r.Iface, Addr: r.Addr}
		if reach[k] {
			return fmt.Errorf("plan: reach of %s over %q listed twice", r.Addr, r.Iface)
		}
		reach[k] = true
	}
	for _, q := range p.Quarantine {
		if !names[q] {
			return fmt.Errorf("plan: quarantined EE %q is not a member", q)
		}
	}
	for _, c := range p.Controllers {
		if err := checkAddr(c); err != nil {
			return fmt.Errorf("plan: controller: %w", err)
		}
		if ee, dup := addrs[c]; dup {
			return fmt.Errorf("plan: controller address %s is also the address of member %q", c, ee)
		}
	}
	return nil
}

func checkAddr(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return fmt.Errorf("invalid address")
	case a.Is4In6():
		return fmt.Errorf("address %s is IPv4-mapped IPv6; give the IPv4 form", a)
	case a.Zone() != "":
		return fmt.Errorf("address %s has a zone; want a plain overlay address", a)
	case a.IsUnspecified() || a.IsMulticast():
		return fmt.Errorf("address %s is not a unicast address", a)
	}
	return nil
}

func checkIface(n string) error {
	if n == "" || len(n) > MaxIfaceLen || n == "." || n == ".." || strings.ContainsAny(n, "/:\x00 \t\n") {
		return fmt.Errorf("invalid interface name %q (want 1 to %d bytes, no '/', ':' or space)", n, MaxIfaceLen)
	}
	return nil
}
