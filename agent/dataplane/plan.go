package dataplane

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
	"github.com/tvd-dev/tvd/flow"
)

// EEInterface is the name of the member's interface inside its EE.
const EEInterface = "tvd0"

// VethName returns the node-side interface name of an EE's veth pair: "v"
// and the first 8 hex digits of the SHA-256 of the EE name (9 bytes, a
// valid interface name for any EE name).
func VethName(ee string) string {
	sum := sha256.Sum256([]byte(ee))
	return "v" + hex.EncodeToString(sum[:4])
}

// StraightTOS is the IP TOS value that makes a packet skip the gateway
// routes and go straight to its destination, where the flow rules judge
// it as sent straight: the lab's probe that a flow the matrix sends
// through gateways is dropped when it tries to go straight. It lifts no
// restriction: every hop is still filtered.
const StraightTOS = 0x04

// domainRE is what a domain name must look like to name files and keys:
// the policy's names are lower-case; this is a little wider, never a path.
var domainRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// memberSpec is one local member the plan asks the node to attach.
type memberSpec struct {
	EE, Domain, Role string
	Addr             netip.Addr
	Gateway          netip.Addr // the node-side address in the domain
}

// domainSpec is one domain the node takes part in.
type domainSpec struct {
	Name     string
	Prefix   netip.Prefix
	NodeAddr netip.Addr
	Peers    []channel.Peer
	raw      []*tvdv1.Peer
	// Reach are the addresses reached through a gateway on a peer (see
	// tvdv1.GatewayReach), in the peers' order.
	Reach []reachSpec
	// Err is what is wrong with the domain's part of the plan; the domain
	// is then not programmed (or left as it was).
	Err error
}

// reachSpec is one address a peer carries for a via-gateway flow.
type reachSpec struct {
	Addr         netip.Addr
	Domain, Role string // the gateway's class
}

// gwRouteSpec is one gateway route of the plan (tvdv1.GatewayRoute):
// packets entering from FromEE's link or FromDomain's interface, to To,
// go to ViaEE's link or ViaDomain's interface.
type gwRouteSpec struct {
	FromEE, FromDomain string
	To                 netip.Addr
	ViaEE, ViaDomain   string
}

// errNoOverlay marks a domain without overlay: its policy gives no subnet,
// so its members have no overlay address and the node no channel.
var errNoOverlay = errors.New("the domain has no overlay prefix (its policy gives no subnet)")

// desired is a plan read and checked: what the node must look like.
type desired struct {
	Members map[string]memberSpec // by EE
	Domains map[string]*domainSpec
	// MemberErr holds, by domain, members that could not be taken.
	MemberErr map[string][]error
	// GatewayRoutes carry via-gateway flows through their gateways.
	GatewayRoutes []gwRouteSpec
	// RouteErr lists gateway routes that could not be read (left out).
	RouteErr []error
}

// firstHost returns the first host address of p, the node side of every
// EE link in the domain.
func firstHost(p netip.Prefix) netip.Addr { return p.Masked().Addr().Next() }

// readPlan checks the plan's members and peers. Problems confined to one
// domain or one member are recorded there; readPlan fails only on a plan
// it cannot read at all.
func readPlan(p *tvdv1.Plan) (*desired, error) {
	if p == nil {
		return nil, errors.New("dataplane: no plan")
	}
	d := &desired{Members: map[string]memberSpec{}, Domains: map[string]*domainSpec{}, MemberErr: map[string][]error{}}
	for _, dp := range p.GetPeers() {
		name := dp.GetDomain()
		if !domainRE.MatchString(name) {
			return nil, fmt.Errorf("dataplane: plan peers: domain name %q: want 1 to 63 letters, digits, '.', '_' or '-'", name)
		}
		if _, dup := d.Domains[name]; dup {
			return nil, fmt.Errorf("dataplane: plan peers: domain %q listed twice", name)
		}
		ds := &domainSpec{Name: name, raw: dp.GetPeers()}
		d.Domains[name] = ds
		if dp.GetOverlayPrefix() == "" && len(dp.GetPeers()) == 0 {
			ds.Err = errNoOverlay
			continue
		}
		pfx, err := netip.ParsePrefix(dp.GetOverlayPrefix())
		if err != nil {
			ds.Err = fmt.Errorf("overlay prefix %q: want CIDR notation such as 10.77.0.0/16", dp.GetOverlayPrefix())
			continue
		}
		if pfx.Addr().Zone() != "" || pfx.Addr().Is4In6() {
			ds.Err = fmt.Errorf("overlay prefix %s: want a plain IPv4 or IPv6 prefix", pfx)
			continue
		}
		if pfx.Bits() > pfx.Addr().BitLen()-2 {
			ds.Err = fmt.Errorf("overlay prefix %s: want room for the node address and members (at most /%d)", pfx, pfx.Addr().BitLen()-2)
			continue
		}
		ds.Prefix = pfx.Masked()
		ds.NodeAddr = firstHost(pfx)
	}
	local := map[netip.Addr]string{}
	for i, m := range p.GetMembers() {
		mm := m.GetMember()
		ee, dom := mm.GetEe(), mm.GetDomain()
		if m.GetOverlayAddress() == "" {
			continue // the domain has no overlay: nothing to attach
		}
		fail := func(err error) { d.MemberErr[dom] = append(d.MemberErr[dom], fmt.Errorf("member %q: %w", ee, err)) }
		if ee == "" {
			return nil, fmt.Errorf("dataplane: plan member %d has no EE name", i)
		}
		if _, dup := d.Members[ee]; dup {
			return nil, fmt.Errorf("dataplane: plan member %q listed twice", ee)
		}
		ds := d.Domains[dom]
		if ds == nil {
			if !domainRE.MatchString(dom) {
				return nil, fmt.Errorf("dataplane: plan member %q: domain name %q: want 1 to 63 letters, digits, '.', '_' or '-'", ee, dom)
			}
			ds = &domainSpec{Name: dom, Err: errors.New("the plan gives no overlay prefix for the domain")}
			d.Domains[dom] = ds
			fail(ds.Err)
			continue
		}
		if ds.Err != nil {
			fail(ds.Err)
			continue
		}
		a, err := netip.ParseAddr(m.GetOverlayAddress())
		if err != nil || a.Zone() != "" {
			fail(fmt.Errorf("overlay address %q: want a plain IP address", m.GetOverlayAddress()))
			continue
		}
		a = a.Unmap()
		if !ds.Prefix.Contains(a) || a == ds.NodeAddr || a == ds.Prefix.Addr() {
			fail(fmt.Errorf("overlay address %s: want a host of %s other than the node address %s", a, ds.Prefix, ds.NodeAddr))
			continue
		}
		if other, dup := local[a]; dup {
			fail(fmt.Errorf("overlay address %s is also member %q's", a, other))
			continue
		}
		local[a] = ee
		d.Members[ee] = memberSpec{EE: ee, Domain: dom, Role: mm.GetRole(), Addr: a, Gateway: ds.NodeAddr}
	}
	for _, ds := range d.Domains {
		if ds.Err != nil {
			continue
		}
		peers, err := readPeers(ds, local)
		if err != nil {
			ds.Err = err
			continue
		}
		ds.Peers = peers
	}
	for i, r := range p.GetGatewayRoutes() {
		g, err := readGatewayRoute(r, d)
		if err != nil {
			d.RouteErr = append(d.RouteErr, fmt.Errorf("gateway route %d: %w", i, err))
			continue
		}
		d.GatewayRoutes = append(d.GatewayRoutes, g)
	}
	return d, nil
}

// readGatewayRoute checks one gateway route against the plan: its ends
// must be local members or domains of the plan.
func readGatewayRoute(r *tvdv1.GatewayRoute, d *desired) (gwRouteSpec, error) {
	g := gwRouteSpec{FromEE: r.GetFromEe(), FromDomain: r.GetFromDomain(), ViaEE: r.GetViaEe(), ViaDomain: r.GetViaDomain()}
	if (g.FromEE == "") == (g.FromDomain == "") {
		return g, errors.New("want exactly one of from_ee and from_domain")
	}
	if (g.ViaEE == "") == (g.ViaDomain == "") {
		return g, errors.New("want exactly one of via_ee and via_domain")
	}
	for _, ee := range []string{g.FromEE, g.ViaEE} {
		if _, ok := d.Members[ee]; ee != "" && !ok {
			return g, fmt.Errorf("EE %q is not a local member of the plan", ee)
		}
	}
	for _, dom := range []string{g.FromDomain, g.ViaDomain} {
		if ds, ok := d.Domains[dom]; dom != "" && (!ok || ds.Err != nil) {
			return g, fmt.Errorf("domain %q has no channel in the plan", dom)
		}
	}
	a, err := netip.ParseAddr(r.GetToAddress())
	if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
		return g, fmt.Errorf("to_address %q: want a unicast IP address", r.GetToAddress())
	}
	g.To = a.Unmap()
	if g.ViaEE != "" && d.Members[g.ViaEE].Addr.Is4() != g.To.Is4() {
		return g, fmt.Errorf("to_address %s and gateway %q are of different address families", g.To, g.ViaEE)
	}
	return g, nil
}

// readPeers converts a domain's peers. Every allowed IP must lie inside
// the domain's prefix and must not be a local member's or the node's
// address: a peer could otherwise draw local traffic into the tunnel.
func readPeers(ds *domainSpec, local map[netip.Addr]string) ([]channel.Peer, error) {
	out := make([]channel.Peer, 0, len(ds.raw))
	for _, p := range ds.raw {
		var peer channel.Peer
		k := p.GetWireguardPublicKey()
		if len(k) != channel.KeyLen {
			return nil, fmt.Errorf("peer %q: public key of %d bytes, want %d", p.GetNode(), len(k), channel.KeyLen)
		}
		copy(peer.PublicKey[:], k)
		peer.Greet = p.GetGreet()
		if ep := p.GetEndpoint(); ep != "" {
			ap, err := netip.ParseAddrPort(ep)
			if err != nil {
				return nil, fmt.Errorf("peer %q: endpoint %q: want address:port", p.GetNode(), ep)
			}
			peer.Endpoint = ap
		}
		for _, s := range p.GetAllowedIps() {
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("peer %q: allowed IP %q: want CIDR notation", p.GetNode(), s)
			}
			pfx = netip.PrefixFrom(pfx.Addr().Unmap(), pfx.Bits()).Masked()
			// Inside the domain's prefix a peer may be given any part of it;
			// outside it only single members: those of other domains that
			// the flow matrix lets this node's members talk with straight
			// (the controller's cross-domain peering).
			if ds.Prefix.Contains(pfx.Addr()) && pfx.Bits() < ds.Prefix.Bits() ||
				!ds.Prefix.Contains(pfx.Addr()) && pfx.Bits() != pfx.Addr().BitLen() {
				return nil, fmt.Errorf("peer %q: allowed IP %s: want a part of the domain's prefix %s, or one address of another domain's member", p.GetNode(), pfx, ds.Prefix)
			}
			if pfx.Contains(ds.NodeAddr) {
				return nil, fmt.Errorf("peer %q: allowed IP %s covers the node address %s", p.GetNode(), pfx, ds.NodeAddr)
			}
			for a, ee := range local {
				if pfx.Contains(a) {
					return nil, fmt.Errorf("peer %q: allowed IP %s covers local member %q", p.GetNode(), pfx, ee)
				}
			}
			peer.AllowedIPs = append(peer.AllowedIPs, pfx)
		}
		out = append(out, peer)
	}
	// Reach addresses second, so that one never takes an address another
	// peer has as an allowed IP (WireGuard gives each to one peer).
	taken := map[netip.Prefix]bool{}
	for _, peer := range out {
		for _, pfx := range peer.AllowedIPs {
			taken[pfx] = true
		}
	}
	for i, p := range ds.raw {
		for _, r := range p.GetReach() {
			a, err := netip.ParseAddr(r.GetAddress())
			if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
				return nil, fmt.Errorf("peer %q: reach address %q: want a unicast IP address", p.GetNode(), r.GetAddress())
			}
			a = a.Unmap()
			if a == ds.NodeAddr {
				return nil, fmt.Errorf("peer %q: reach address %s is the node address", p.GetNode(), a)
			}
			// A reach address may be a local member's: a flow between two
			// local EEs of different domains can go out to the gateways
			// and back. It gets no route of its own (Unrouted); only the
			// gateway routes send traffic to the peer.
			pfx := hostPrefix(a)
			if taken[pfx] {
				continue // fail closed: the flow is not carried
			}
			taken[pfx] = true
			out[i].AllowedIPs = append(out[i].AllowedIPs, pfx)
			out[i].Unrouted = append(out[i].Unrouted, pfx)
			ds.Reach = append(ds.Reach, reachSpec{Addr: a, Domain: r.GetDomain(), Role: r.GetRole()})
		}
	}
	return out, nil
}

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// flowPlan builds the node's flow plan from the plan's classes and
// quarantine, the local members and the interfaces. Addresses the matrix
// cannot classify are left out (and so denied as non-members); they are
// reported in the returned warnings.
func flowPlan(p *tvdv1.Plan, m *flow.Matrix, d *desired, controllers []netip.Addr, overlay []string) (*flow.Plan, []string) {
	fp := &flow.Plan{Matrix: m, Controllers: controllers, OverlayInterfaces: overlay}
	var warn []string
	byAddr := map[netip.Addr]bool{}
	names := map[string]bool{}
	ees := make([]string, 0, len(d.Members))
	for ee := range d.Members {
		ees = append(ees, ee)
	}
	sort.Strings(ees)
	for _, ee := range ees {
		ms := d.Members[ee]
		iface := VethName(ee)
		fp.EEInterfaces = append(fp.EEInterfaces, iface)
		c, ok := m.Class(ms.Domain, ms.Role)
		if !ok {
			warn = append(warn, fmt.Sprintf("local member %q: class %s/%s is not in the flow matrix", ee, ms.Domain, ms.Role))
			continue
		}
		fp.Members = append(fp.Members, flow.PlanMember{EE: ee, Class: c, Addrs: []netip.Addr{ms.Addr}, Iface: iface})
		byAddr[ms.Addr] = true
		names[ee] = true
	}
	// Remote members are named by address unless the quarantine names them.
	qname := map[netip.Addr]string{}
	for _, q := range p.GetQuarantine() {
		for _, s := range q.GetAddresses() {
			if a, err := netip.ParseAddr(s); err == nil {
				qname[a.Unmap()] = q.GetMember().GetEe()
			}
		}
	}
	for _, cs := range p.GetFlow().GetClasses() {
		c, ok := m.Class(cs.GetDomain(), cs.GetRole())
		if !ok {
			warn = append(warn, fmt.Sprintf("class %s/%s is not in the flow matrix", cs.GetDomain(), cs.GetRole()))
			continue
		}
		for _, s := range cs.GetAddresses() {
			a, err := netip.ParseAddr(s)
			if err != nil || a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
				warn = append(warn, fmt.Sprintf("class %s/%s: address %q is not a unicast IP address", cs.GetDomain(), cs.GetRole(), s))
				continue
			}
			a = a.Unmap()
			if byAddr[a] || slicesContains(controllers, a) {
				continue
			}
			name := "@" + a.String()
			if n, ok := qname[a]; ok && n != "" && !names[n] {
				name = n
			}
			byAddr[a] = true
			names[name] = true
			fp.Members = append(fp.Members, flow.PlanMember{EE: name, Class: c, Addrs: []netip.Addr{a}})
		}
	}
	for _, q := range p.GetQuarantine() {
		for _, s := range q.GetAddresses() {
			a, err := netip.ParseAddr(s)
			if err != nil {
				continue
			}
			a = a.Unmap()
			for _, pm := range fp.Members {
				if pm.Addrs[0] == a {
					fp.Quarantine = append(fp.Quarantine, pm.EE)
				}
			}
		}
	}
	sort.Strings(fp.Quarantine)
	fp.Quarantine = compactStrings(fp.Quarantine)
	doms := make([]string, 0, len(d.Domains))
	for name := range d.Domains {
		doms = append(doms, name)
	}
	sort.Strings(doms)
	seen := map[flow.Reach]bool{}
	for _, name := range doms {
		ds := d.Domains[name]
		if ds.Err != nil {
			continue
		}
		iface := channel.InterfaceName(name)
		for _, r := range ds.Reach {
			c, ok := m.Class(r.Domain, r.Role)
			if !ok {
				warn = append(warn, fmt.Sprintf("domain %s: reach %s: gateway class %s/%s is not in the flow matrix", name, r.Addr, r.Domain, r.Role))
				continue
			}
			k := flow.Reach{Iface: iface, Addr: r.Addr}
			if seen[k] {
				continue
			}
			seen[k] = true
			k.Class = c
			fp.Reach = append(fp.Reach, k)
		}
	}
	return fp, warn
}

func slicesContains(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

func compactStrings(s []string) []string {
	out := s[:0]
	for i, x := range s {
		if i == 0 || x != s[i-1] {
			out = append(out, x)
		}
	}
	return out
}

func peersEqual(a, b []*tvdv1.Peer) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// overlayNames returns the interface names of the domains a plan wants and
// of those still open, sorted, each once: every overlay interface that
// exists or may exist is judged, including one kept open from an earlier
// plan while its domain's part of this plan is in error (an interface
// left out would not be filtered).
func overlayNames(want, open []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, names := range [][]string{want, open} {
		for _, name := range names {
			if n := channel.InterfaceName(name); !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	sort.Strings(out)
	return out
}

// matrixCache keeps the flow matrix last decoded from a plan, so that plans
// with the same matrix id do not decode it again.
type matrixCache struct {
	id string
	m  *flow.Matrix
}

// decode returns fp's matrix. A plan without one is an error: the rules in
// force are kept.
func (c *matrixCache) decode(fp *tvdv1.FlowPlan) (*flow.Matrix, error) {
	if fp == nil || len(fp.GetMatrix()) == 0 {
		return nil, errors.New("flow: the plan has members but no flow matrix; the rules in force are kept")
	}
	if c.m == nil || fp.GetMatrixId() != c.id || fp.GetMatrixId() == "" {
		m, err := flow.UnmarshalMatrix(fp.GetMatrix())
		if err != nil {
			return nil, fmt.Errorf("flow: %w", err)
		}
		c.m, c.id = m, fp.GetMatrixId()
	}
	return c.m, nil
}

// domainAcks acknowledges each domain of a plan: UP when its channel is
// open and nothing went wrong, DOWN for a domain without overlay that has
// nothing open (not a failure), FAILED otherwise with the reasons (the
// domain's, then the plan-wide ones). err joins every failure, by domain;
// with no domains at all, the plan-wide problems.
func domainAcks(want *desired, domErr map[string][]error, global []error, open func(domain string) bool, flowID string) ([]*tvdv1.DomainAck, error) {
	names := sortedKeys(want.Domains)
	var acks []*tvdv1.DomainAck
	var all []error
	for _, name := range names {
		if want.Domains[name].Err == errNoOverlay && len(domErr[name]) == 1 && !open(name) {
			acks = append(acks, &tvdv1.DomainAck{Domain: name, Channel: tvdv1.ChannelState_CHANNEL_STATE_DOWN, FlowMatrixId: flowID, Error: errNoOverlay.Error()})
			continue
		}
		errs := append(domErr[name], global...)
		ack := &tvdv1.DomainAck{Domain: name, Channel: tvdv1.ChannelState_CHANNEL_STATE_UP, FlowMatrixId: flowID}
		if !open(name) || len(errs) > 0 {
			ack.Channel = tvdv1.ChannelState_CHANNEL_STATE_FAILED
		}
		if len(errs) > 0 {
			msgs := make([]string, len(errs))
			for i, e := range errs {
				msgs[i] = e.Error()
			}
			ack.Error = strings.Join(msgs, "; ")
			all = append(all, fmt.Errorf("domain %s: %s", name, ack.Error))
		}
		acks = append(acks, ack)
	}
	if len(names) == 0 {
		all = append(all, global...)
	}
	return acks, errors.Join(all...)
}
