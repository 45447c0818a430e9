package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
	"github.com/tvd-dev/tvd/channel/filter"
	"github.com/tvd-dev/tvd/flow"
)

// OverlaySocketName is the file name of an EE's overlay socket in its
// Workload API directory (DataDir/workload/EE): a SOCKS5 server whose
// CONNECTs leave from the EE's overlay address (see [Userspace]).
const OverlaySocketName = "overlay.sock"

// Expose is one overlay TCP port of an EE on the userspace data plane:
// connections to the EE's overlay address at Port that its flow filter
// lets in are forwarded to Target, a host address the EE's process
// listens on (default 127.0.0.1:Port).
type Expose struct {
	Port   uint16
	Target string
}

// UserspaceConfig configures a [Userspace] data plane.
type UserspaceConfig struct {
	// Underlay is the node's underlay address: each domain's UDP socket
	// binds to it and it is published with each channel key as the
	// endpoint peers send to. Required.
	Underlay netip.Addr
	// BasePort is the first underlay UDP port handed to a domain; each
	// domain keeps its port (DataDir/channel/ports.json). 0 lets the
	// system choose a port per domain, not kept across restarts.
	BasePort uint16
	// DataDir holds the channel keys (channel/<domain>.key), the port
	// book, and each EE's overlay socket (workload/<ee>/overlay.sock,
	// beside its Workload API socket). Required.
	DataDir string
	// Controller are the controller's addresses (see Config.Controller).
	Controller []netip.Addr
	// Expose returns the overlay ports an EE serves; nil: none.
	Expose func(ee string) []Expose
	// DialTimeout bounds one CONNECT on an overlay socket; 0 means 10s.
	DialTimeout time.Duration
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first problem with c.
func (c *UserspaceConfig) Validate() error {
	if c.DataDir == "" {
		return errors.New("dataplane: userspace config: expected a data directory, got none")
	}
	if !c.Underlay.IsValid() || c.Underlay.IsUnspecified() || c.Underlay.IsMulticast() || c.Underlay.Zone() != "" {
		return fmt.Errorf("dataplane: userspace config: expected a unicast underlay address, got %s", c.Underlay)
	}
	for _, a := range c.Controller {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("dataplane: userspace config: expected unicast controller addresses, got %s", a)
		}
	}
	return nil
}

// Userspace is a node's data plane without privileges, for nodes whose EEs
// run under the process driver: the same plans as [DataPlane], the same
// channel keys and ports per (node, domain), the same flow decisions, all
// inside the agent's process. It implements agent.DataPlane.
//
// Per domain, one wireguard-go device (channel.Userspace) carries the
// domain's peers. Per local member, a userspace TCP/IP stack (gVisor
// netstack) owns the member's overlay address, behind its own flow filter
// (channel/filter, from the node's flow plan: the member is the filter's
// local end, as a local EE behind its veth is flow/nft's). A switch
// between them plays the node's routing: a packet a member sends goes to
// another local member if the destination is one (judged again by that
// member's filter), else to the domain whose peers' allowed IPs hold the
// destination, as the node's routes would send it; a packet a domain's
// device receives goes to the local member that owns its destination.
//
// An EE reaches its stack through two doors in its Workload API directory
// and on its host ports: its overlay socket (OverlaySocketName, SOCKS5
// CONNECT: outbound TCP from its overlay address) and the ports it
// exposes (UserspaceConfig.Expose: inbound TCP forwarded to a host
// address).
//
// Flows the matrix sends through gateways follow the plan's gateway routes
// hop by hop, as on the kernel plane: a route from a member's stack or a
// domain's device to an address leads to a local gateway member's stack
// or to a domain's device; a gateway member's stack forwards what is not
// for it (filter.WrapGateway), each hop judged; and each member's filter
// knows the addresses its routes reach through a gateway as hops with
// that gateway (filter.SetReach, flow/nft's reach maps).
//
// What it does not do: it carries TCP only between EEs and their stacks
// (the stacks themselves exchange any IP traffic, judged by the filters);
// and it does not confine the EE's process, which may open any host socket
// (the process driver reports weak isolation for this reason). Traffic
// between EEs over the host's loopback, outside the overlay, is not seen.
type Userspace struct {
	cfg   UserspaceConfig
	log   *slog.Logger
	ports *portBook // nil with BasePort 0

	mu       sync.Mutex
	closed   bool
	domains  map[string]*usDomain
	members  map[string]*usMember
	matrices matrixCache
	matrix   *flow.Matrix // of the flow plan in force
	flowID   string
	fplan    *flow.Plan
	last     *tvdv1.Plan

	// The packet path reads these without mu.
	local  atomic.Pointer[map[netip.Addr]*usMember] // local members by address
	routes atomic.Pointer[routeTable]               // peers' allowed IPs to domain switches
	gw     atomic.Pointer[map[gwKey]gwHop]          // gateway routes
}

// gwKey selects a gateway route: packets from a member's stack (ee) or a
// domain's device (domain), to an address.
type gwKey struct {
	ee, domain string
	to         netip.Addr
}

// gwHop is where a gateway route sends a packet: a local gateway member,
// or a domain's device (towards the gateway's node).
type gwHop struct {
	m  *usMember
	sw *tunSwitch
}

type usDomain struct {
	spec  *domainSpec
	sw    *tunSwitch
	iface *channel.Userspace
	port  uint16
	raw   []*tvdv1.Peer
	err   error
}

type usMember struct {
	spec   memberSpec
	domain *usDomain
	filt   *filter.Filter
	dev    *filter.Device // the stack's TUN side, filtered
	net    *netstack.Net
	socks  *socksServer
	expose []net.Listener
	done   chan struct{}
	ctx    context.Context // cancelled with done, by stop
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// NewUserspace checks cfg and opens the port book. Nothing runs until the
// first Apply.
func NewUserspace(cfg UserspaceConfig) (*Userspace, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 10 * time.Second
	}
	u := &Userspace{cfg: cfg, log: cfg.Logger, domains: map[string]*usDomain{}, members: map[string]*usMember{}}
	if cfg.BasePort != 0 {
		var err error
		if u.ports, err = openPortBook(filepath.Join(cfg.DataDir, "channel", "ports.json"), cfg.BasePort); err != nil {
			return nil, fmt.Errorf("dataplane: %w", err)
		}
	}
	empty := map[netip.Addr]*usMember{}
	u.local.Store(&empty)
	u.routes.Store(&routeTable{})
	noGW := map[gwKey]gwHop{}
	u.gw.Store(&noGW)
	return u, nil
}

// OverlaySocket returns the path of ee's overlay socket.
func (u *Userspace) OverlaySocket(ee string) string {
	return filepath.Join(u.cfg.DataDir, "workload", ee, OverlaySocketName)
}

// Apply makes the node match plan p, as [DataPlane.Apply] does, changing
// only what differs from the previous plan: members gone or changed lose
// their stack first, every filter gets the new flow plan before a new
// domain or member is brought up, and a member is started only under a
// flow plan that judges it.
func (u *Userspace) Apply(ctx context.Context, p *tvdv1.Plan) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, nil, errClosed
	}
	return u.applyLocked(ctx, p)
}

// Reconcile applies the last plan again, retrying what failed.
func (u *Userspace) Reconcile(ctx context.Context) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, nil, errClosed
	}
	if u.last == nil {
		return nil, nil, nil
	}
	return u.applyLocked(ctx, u.last)
}

func (u *Userspace) applyLocked(ctx context.Context, p *tvdv1.Plan) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	want, err := readPlan(p)
	if err != nil {
		return nil, nil, err
	}
	u.last = p
	domErr := map[string][]error{}
	for dom, errs := range want.MemberErr {
		domErr[dom] = append(domErr[dom], errs...)
	}
	var global []error

	// 1. Members gone or changed stop first; domains left close.
	for ee, m := range u.members {
		if ms, ok := want.Members[ee]; ok && ms == m.spec {
			continue
		}
		u.stopMember(ctx, m)
	}
	for name, d := range u.domains {
		if ds, ok := want.Domains[name]; !ok || ds.Err == nil && ds.Prefix != d.spec.Prefix {
			u.closeDomain(ctx, d)
		}
	}
	u.publishLocal()

	// 2. The flow plan, to every filter in place.
	flowErr := u.applyFlow(p, want)
	if flowErr != nil {
		global = append(global, flowErr)
	}
	for _, err := range want.RouteErr {
		u.log.WarnContext(ctx, "gateway route left out", "err", err)
	}

	// 3. Domains: peers updated (revocations even without a flow plan),
	// new ones opened only under a flow plan.
	for _, name := range sortedKeys(want.Domains) {
		ds := want.Domains[name]
		if ds.Err != nil {
			domErr[name] = append(domErr[name], ds.Err)
			continue
		}
		d := u.domains[name]
		if d == nil {
			if flowErr != nil {
				domErr[name] = append(domErr[name], errors.New("channel not opened while the flow rules are not in force"))
				continue
			}
			if d, err = u.openDomain(ds); err != nil {
				domErr[name] = append(domErr[name], err)
				continue
			}
			u.domains[name] = d
		}
		d.spec = ds
		if d.err == nil && peersEqual(d.raw, ds.raw) {
			continue
		}
		if err := d.iface.SetPeers(ds.Peers); err != nil {
			d.err = err
			domErr[name] = append(domErr[name], err)
			continue
		}
		d.raw, d.err = ds.raw, nil
	}
	u.publishRoutes()

	// 4. New members get their stack.
	for _, ee := range sortedKeys(want.Members) {
		ms := want.Members[ee]
		if _, ok := u.members[ee]; ok {
			continue
		}
		if flowErr != nil {
			domErr[ms.Domain] = append(domErr[ms.Domain], fmt.Errorf("member %q: not attached while the flow rules are not in force", ee))
			continue
		}
		d := u.domains[ms.Domain]
		if d == nil {
			continue // the domain's error is reported already
		}
		m, err := u.startMember(ms, d)
		if err != nil {
			domErr[ms.Domain] = append(domErr[ms.Domain], fmt.Errorf("member %q: %w", ee, err))
			continue
		}
		u.members[ee] = m
		u.log.InfoContext(ctx, "EE attached", "ee", ee, "domain", ms.Domain, "address", ms.Addr, "socket", u.OverlaySocket(ee), "backend", channel.BackendNetstack)
	}
	u.publishLocal()

	// 5. Gateway routes and what each member reaches through them.
	if flowErr == nil {
		u.publishGateways(want)
	}

	acks, err := domainAcks(want, domErr, global, func(name string) bool { return u.domains[name] != nil }, u.flowID)
	if err != nil {
		u.log.WarnContext(ctx, "plan not fully applied", "version", p.GetVersion(), "err", err)
	}
	return acks, u.keysLocked(), err
}

// applyFlow builds the node's flow plan (as DataPlane does; each local
// member's interface name is its filter's) and gives it to every member's
// filter. On error the filters keep the plan in force.
func (u *Userspace) applyFlow(p *tvdv1.Plan, want *desired) error {
	if len(want.Members) == 0 && len(want.Domains) == 0 {
		u.flowID = ""
		return nil
	}
	fp := p.GetFlow()
	m, err := u.matrices.decode(fp)
	if err != nil {
		return err
	}
	// The domains' devices are the plan's overlay interfaces (the reach
	// entries name them); the filters judge members' hops only.
	plan, warn := flowPlan(p, m, want, u.cfg.Controller, overlayNames(sortedKeys(want.Domains), sortedKeys(u.domains)))
	for _, w := range warn {
		u.log.Warn("flow plan", "problem", w)
	}
	if err := plan.Validate(); err != nil {
		return fmt.Errorf("flow: %w", err)
	}
	for ee, m := range u.members {
		if err := m.filt.Apply(plan); err != nil {
			return fmt.Errorf("flow: member %q: %w", ee, err)
		}
	}
	u.fplan, u.flowID, u.matrix = plan, fp.GetMatrixId(), m
	return nil
}

func (u *Userspace) openDomain(ds *domainSpec) (*usDomain, error) {
	key, err := channel.LoadOrCreateKey(filepath.Join(u.cfg.DataDir, "channel", ds.Name+".key"))
	if err != nil {
		return nil, fmt.Errorf("channel key: %w", err)
	}
	var port uint16
	if u.ports != nil {
		if port, err = u.ports.port(ds.Name); err != nil {
			return nil, err
		}
	}
	name := ds.Name
	sw := newTUNSwitch(channel.InterfaceName(ds.Name), channel.DefaultMTU, func(pkt []byte) { u.deliver(name, pkt) })
	iface, err := channel.NewUserspace(channel.Config{
		Name:       channel.InterfaceName(ds.Name),
		Domain:     ds.Name,
		PrivateKey: key,
		ListenPort: port,
		ListenAddr: u.cfg.Underlay,
		Address:    hostPrefix(ds.NodeAddr),
		Logger:     u.log,
	}, channel.WithTUN(sw))
	if err != nil {
		sw.Close()
		return nil, fmt.Errorf("channel: %w", err)
	}
	if port, err = iface.ListenPort(); err != nil {
		iface.Close()
		return nil, fmt.Errorf("channel: %w", err)
	}
	u.log.Info("domain channel open", "domain", ds.Name, "iface", iface.Name(), "port", port, "backend", channel.BackendNetstack)
	return &usDomain{spec: ds, sw: sw, iface: iface, port: port}, nil
}

func (u *Userspace) closeDomain(ctx context.Context, d *usDomain) {
	for _, m := range u.members {
		if m.domain == d {
			u.stopMember(ctx, m)
		}
	}
	if err := d.iface.Close(); err != nil {
		u.log.WarnContext(ctx, "close domain channel", "domain", d.spec.Name, "err", err)
	}
	delete(u.domains, d.spec.Name)
	u.publishRoutes()
	u.log.InfoContext(ctx, "domain channel closed", "domain", d.spec.Name)
}

// startMember brings up ee's stack, filter, overlay socket and exposed
// ports.
func (u *Userspace) startMember(ms memberSpec, d *usDomain) (m *usMember, err error) {
	if u.fplan == nil {
		return nil, errors.New("no flow plan")
	}
	f, err := filter.New(filter.Config{Iface: VethName(ms.EE)})
	if err != nil {
		return nil, err
	}
	if err := f.Apply(u.fplan); err != nil {
		return nil, fmt.Errorf("flow: %w", err)
	}
	td, tnet, err := netstack.CreateNetTUN([]netip.Addr{ms.Addr}, nil, channel.DefaultMTU)
	if err != nil {
		return nil, fmt.Errorf("create netstack: %w", err)
	}
	dev := filter.Wrap(td, f)
	if c, ok := u.matrix.Class(ms.Domain, ms.Role); ok && u.matrix.IsGateway(c) {
		dev = filter.WrapGateway(td, f)
	}
	m = &usMember{spec: ms, domain: d, filt: f, dev: dev, net: tnet, done: make(chan struct{})}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			m.stop()
		}
	}()
	m.wg.Add(1)
	go u.pump(m)

	sock := u.OverlaySocket(ms.EE)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return nil, fmt.Errorf("overlay socket: %w", err)
	}
	if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("overlay socket: %w", err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, fmt.Errorf("overlay socket: %w", err)
	}
	if err := os.Chmod(sock, 0o660); err != nil {
		ln.Close()
		return nil, fmt.Errorf("overlay socket: %w", err)
	}
	log := u.log.With("ee", ms.EE)
	m.socks = newSOCKSServer(ln, u.cfg.DialTimeout, func(ctx context.Context, to netip.AddrPort) (net.Conn, error) {
		c, err := tnet.DialContextTCPAddrPort(ctx, to)
		if err != nil {
			if strings.Contains(err.Error(), "refused") {
				return nil, fmt.Errorf("%w: %v", errConnRefused, err)
			}
			return nil, err
		}
		return c, nil
	}, log)

	if u.cfg.Expose != nil {
		for _, e := range u.cfg.Expose(ms.EE) {
			target := e.Target
			if target == "" {
				target = net.JoinHostPort("127.0.0.1", fmt.Sprint(e.Port))
			}
			l, err := tnet.ListenTCPAddrPort(netip.AddrPortFrom(ms.Addr, e.Port))
			if err != nil {
				return nil, fmt.Errorf("expose port %d: %w", e.Port, err)
			}
			m.expose = append(m.expose, l)
			m.wg.Add(1)
			go m.forward(l, target, log)
		}
	}
	return m, nil
}

// forward accepts overlay connections on l and splices each to target.
func (m *usMember) forward(l net.Listener, target string, log *slog.Logger) {
	defer m.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			defer c.Close()
			var d net.Dialer
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			out, err := d.DialContext(ctx, "tcp", target)
			cancel()
			if err != nil {
				log.Debug("exposed port: connect to the EE", "target", target, "err", err)
				return
			}
			defer out.Close()
			stop := context.AfterFunc(m.ctx, func() { c.Close(); out.Close() })
			defer stop()
			splice(c, out)
		}()
	}
}

// stop closes everything of m and waits for its goroutines.
func (m *usMember) stop() {
	close(m.done)
	m.cancel()
	if m.socks != nil {
		m.socks.Close()
	}
	for _, l := range m.expose {
		l.Close()
	}
	m.dev.Close() // ends the pump's Read
	m.wg.Wait()
}

func (u *Userspace) stopMember(ctx context.Context, m *usMember) {
	// Out of the packet path first, then stopped.
	delete(u.members, m.spec.EE)
	u.publishLocal()
	m.stop()
	os.Remove(u.OverlaySocket(m.spec.EE))
	u.log.InfoContext(ctx, "EE detached", "ee", m.spec.EE, "domain", m.spec.Domain, "address", m.spec.Addr)
}

// pump carries the packets m's stack sends (judged by m's filter) to a
// local member or to the domain device that routes their destination.
func (u *Userspace) pump(m *usMember) {
	defer m.wg.Done()
	bufs, sizes := [][]byte{make([]byte, 65535)}, []int{0}
	for {
		n, err := m.dev.Read(bufs, sizes, 0)
		if err != nil {
			return
		}
		if n == 0 || sizes[0] < 1 {
			continue
		}
		pkt := bufs[0][:sizes[0]]
		dst, ok := packetDst(pkt)
		if !ok {
			continue
		}
		if hop, ok := (*u.gw.Load())[gwKey{ee: m.spec.EE, to: dst}]; ok {
			if hop.m != nil {
				if hop.m != m {
					hop.m.dev.Write([][]byte{pkt}, 0)
				}
			} else {
				hop.sw.send(append([]byte(nil), pkt...), m.done)
			}
			continue
		}
		if to := (*u.local.Load())[dst]; to != nil {
			if to != m {
				to.dev.Write([][]byte{pkt}, 0)
			}
			continue
		}
		sw := u.routes.Load().lookup(dst)
		if sw == nil {
			continue // no route: dropped, as the node would drop it
		}
		sw.send(append([]byte(nil), pkt...), m.done)
	}
}

// deliver hands a packet domain's device received to the local gateway
// member a gateway route names, else to the local member owning its
// destination (its filter judges it); others are dropped.
func (u *Userspace) deliver(domain string, pkt []byte) {
	dst, ok := packetDst(pkt)
	if !ok {
		return
	}
	if hop, ok := (*u.gw.Load())[gwKey{domain: domain, to: dst}]; ok {
		if hop.m != nil {
			hop.m.dev.Write([][]byte{pkt}, 0)
		}
		return // a route back into the domain's own device: dropped
	}
	if m := (*u.local.Load())[dst]; m != nil {
		m.dev.Write([][]byte{pkt}, 0)
	}
}

func (u *Userspace) publishLocal() {
	l := make(map[netip.Addr]*usMember, len(u.members))
	for _, m := range u.members {
		l[m.spec.Addr] = m
	}
	u.local.Store(&l)
}

// publishGateways installs the plan's gateway routes whose ends are up,
// and gives each member's filter the addresses it reaches through a
// gateway: a route from the member via a local gateway member reaches its
// address through that member's class; one via a domain's device,
// through the class of the gateway the peer carries it for (the plan's
// reach).
func (u *Userspace) publishGateways(want *desired) {
	table := map[gwKey]gwHop{}
	reach := map[string]map[netip.Addr]flow.ClassID{}
	reachClass := map[string]map[netip.Addr]flow.ClassID{} // by domain: reach address -> gateway class
	for name, ds := range want.Domains {
		for _, r := range ds.Reach {
			if c, ok := u.matrix.Class(r.Domain, r.Role); ok {
				if reachClass[name] == nil {
					reachClass[name] = map[netip.Addr]flow.ClassID{}
				}
				reachClass[name][r.Addr] = c
			}
		}
	}
	for _, r := range want.GatewayRoutes {
		var hop gwHop
		var cls flow.ClassID
		known := false
		if r.ViaEE != "" {
			g := u.members[r.ViaEE]
			if g == nil {
				continue
			}
			hop.m = g
			cls, known = u.matrix.Class(g.spec.Domain, g.spec.Role)
		} else {
			d := u.domains[r.ViaDomain]
			if d == nil {
				continue
			}
			hop.sw = d.sw
			cls, known = reachClass[r.ViaDomain][r.To]
		}
		if r.FromEE != "" {
			if u.members[r.FromEE] == nil {
				continue
			}
			if known {
				if reach[r.FromEE] == nil {
					reach[r.FromEE] = map[netip.Addr]flow.ClassID{}
				}
				reach[r.FromEE][r.To] = cls
			}
		} else if u.domains[r.FromDomain] == nil {
			continue
		}
		table[gwKey{ee: r.FromEE, domain: r.FromDomain, to: r.To}] = hop
	}
	for ee, m := range u.members {
		m.filt.SetReach(reach[ee])
	}
	u.gw.Store(&table)
}

// publishRoutes rebuilds the route table from the open domains' peers:
// each routed allowed IP leads to its domain's device.
func (u *Userspace) publishRoutes() {
	rt := &routeTable{host: map[netip.Addr]*tunSwitch{}}
	for _, name := range sortedKeys(u.domains) {
		d := u.domains[name]
		for _, p := range d.spec.Peers {
			for _, a := range p.AllowedIPs {
				if slices.Contains(p.Unrouted, a) {
					continue
				}
				if a.IsSingleIP() {
					if _, dup := rt.host[a.Addr()]; !dup {
						rt.host[a.Addr()] = d.sw
					}
					continue
				}
				rt.nets = append(rt.nets, routeEntry{a.Masked(), d.sw})
			}
		}
	}
	sort.SliceStable(rt.nets, func(i, j int) bool { return rt.nets[i].p.Bits() > rt.nets[j].p.Bits() })
	u.routes.Store(rt)
}

// routeTable is the node's routes to peers: host routes, then prefixes
// longest first.
type routeTable struct {
	host map[netip.Addr]*tunSwitch
	nets []routeEntry
}

type routeEntry struct {
	p  netip.Prefix
	sw *tunSwitch
}

func (rt *routeTable) lookup(a netip.Addr) *tunSwitch {
	if sw := rt.host[a]; sw != nil {
		return sw
	}
	for _, e := range rt.nets {
		if e.p.Contains(a) {
			return e.sw
		}
	}
	return nil
}

// packetDst returns an IPv4 or IPv6 packet's destination.
func packetDst(pkt []byte) (netip.Addr, bool) {
	if len(pkt) < 1 {
		return netip.Addr{}, false
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte(pkt[16:20])), true
	case 6:
		if len(pkt) < 40 {
			return netip.Addr{}, false
		}
		return netip.AddrFrom16([16]byte(pkt[24:40])), true
	}
	return netip.Addr{}, false
}

func (u *Userspace) keysLocked() []*tvdv1.ChannelKey {
	keys := make([]*tvdv1.ChannelKey, 0, len(u.domains))
	for _, name := range sortedKeys(u.domains) {
		d := u.domains[name]
		pub := d.iface.PublicKey()
		keys = append(keys, &tvdv1.ChannelKey{Domain: name, WireguardPublicKey: pub[:],
			Endpoint: netip.AddrPortFrom(u.cfg.Underlay, d.port).String()})
	}
	return keys
}

// Keys returns the node's current channel keys, one per open domain.
func (u *Userspace) Keys() []*tvdv1.ChannelKey {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.keysLocked()
}

// Counters returns the flow filters' counters, summed over the local
// members, by name (flow/nft's names; see filter.CounterNames).
func (u *Userspace) Counters() map[string]filter.Counter {
	u.mu.Lock()
	defer u.mu.Unlock()
	sum := map[string]filter.Counter{}
	for _, m := range u.members {
		for n, c := range m.filt.Counters() {
			s := sum[n]
			s.Packets += c.Packets
			s.Bytes += c.Bytes
			sum[n] = s
		}
	}
	return sum
}

// Close stops every member and domain. It is safe to call more than once.
func (u *Userspace) Close() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil
	}
	u.closed = true
	ctx := context.Background()
	for _, m := range u.members {
		u.stopMember(ctx, m)
	}
	for _, d := range u.domains {
		u.closeDomain(ctx, d)
	}
	return nil
}

// tunSwitch is the TUN side of one domain's wireguard-go device: what
// members send towards the domain's peers is read from it, and what the
// peers send is written to it and delivered to local members.
type tunSwitch struct {
	name      string
	mtu       int
	out       chan []byte
	events    chan tun.Event
	closed    chan struct{}
	closeOnce sync.Once
	deliver   func([]byte)
}

var _ tun.Device = (*tunSwitch)(nil)

// switchQueue bounds the packets waiting for wireguard-go; a member's
// stack blocks (TCP backs off) when it is full.
const switchQueue = 256

func newTUNSwitch(name string, mtu int, deliver func([]byte)) *tunSwitch {
	s := &tunSwitch{name: name, mtu: mtu, out: make(chan []byte, switchQueue), events: make(chan tun.Event, 1), closed: make(chan struct{}), deliver: deliver}
	s.events <- tun.EventUp
	return s
}

// send queues pkt for wireguard-go unless the switch or the sender (done)
// closes first.
func (s *tunSwitch) send(pkt []byte, done <-chan struct{}) {
	select {
	case s.out <- pkt:
	case <-s.closed:
	case <-done:
	}
}

func (s *tunSwitch) File() *os.File { return nil }

func (s *tunSwitch) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	select {
	case p := <-s.out:
		sizes[0] = copy(bufs[0][offset:], p)
		return 1, nil
	case <-s.closed:
		return 0, os.ErrClosed
	}
}

func (s *tunSwitch) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-s.closed:
		return 0, os.ErrClosed
	default:
	}
	for _, b := range bufs {
		if len(b) > offset {
			s.deliver(b[offset:])
		}
	}
	return len(bufs), nil
}

func (s *tunSwitch) MTU() (int, error)        { return s.mtu, nil }
func (s *tunSwitch) Name() (string, error)    { return s.name, nil }
func (s *tunSwitch) Events() <-chan tun.Event { return s.events }
func (s *tunSwitch) BatchSize() int           { return 1 }
func (s *tunSwitch) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		close(s.events)
	})
	return nil
}

// Peers returns the WireGuard peers of domain's device and their state.
func (u *Userspace) Peers(domain string) ([]channel.PeerStatus, error) {
	u.mu.Lock()
	d := u.domains[domain]
	u.mu.Unlock()
	if d == nil {
		return nil, fmt.Errorf("dataplane: no channel open for domain %q", domain)
	}
	return d.iface.Peers()
}
