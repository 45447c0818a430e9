package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
	"github.com/tvd-dev/tvd/flow/nft"
)

// Config configures a DataPlane.
type Config struct {
	// NodeNetNS is the path of the node's network namespace (e.g.
	// /run/netns/node1); empty means the caller's namespace.
	NodeNetNS string
	// Underlay is this node's underlay address, published with each
	// channel key as the endpoint peers send to. Unset publishes no
	// endpoint (peers must then be contacted first).
	Underlay netip.Addr
	// BasePort is the first underlay UDP port handed to a domain; each
	// domain keeps its own port (DataDir/channel/ports.json). 0 means
	// DefaultBasePort.
	BasePort uint16
	// DataDir holds the channel keys (channel/<domain>.key) and the port
	// book. Required.
	DataDir string
	// EENetNS returns the path of an EE's network namespace (created by the
	// EE driver), or false if the EE has none (yet). Required.
	EENetNS func(ee string) (path string, ok bool)
	// Controller are the controller's addresses: members, even
	// quarantined ones, may always exchange traffic with them.
	Controller []netip.Addr
	// Logger receives operational logs; nil discards them.
	Logger *slog.Logger
}

// Validate reports the first problem with c.
func (c *Config) Validate() error {
	if c.DataDir == "" {
		return errors.New("dataplane: config: expected a data directory, got none")
	}
	if c.EENetNS == nil {
		return errors.New("dataplane: config: expected an EENetNS function giving each EE's network namespace, got none")
	}
	if c.Underlay.IsValid() && (c.Underlay.IsUnspecified() || c.Underlay.IsMulticast() || c.Underlay.Zone() != "") {
		return fmt.Errorf("dataplane: config: expected a unicast underlay address, got %s", c.Underlay)
	}
	for _, a := range c.Controller {
		if !a.IsValid() || a.IsUnspecified() || a.IsMulticast() {
			return fmt.Errorf("dataplane: config: expected unicast controller addresses, got %s", a)
		}
	}
	return nil
}

var errClosed = errors.New("dataplane: closed")

// domainState is an open channel interface.
type domainState struct {
	spec  *domainSpec
	iface *channel.Interface
	port  uint16
	raw   []*tvdv1.Peer // peers last applied
	err   error         // last peer update error
}

// DataPlane programs one node's channels, EE links and flow rules. It
// implements agent.DataPlane. Apply and Close may be called from different
// goroutines; Apply calls are serialised.
type DataPlane struct {
	cfg   Config
	log   *slog.Logger
	ns    netns.NsHandle
	nl    *netlink.Handle
	nft   *nft.Programmer
	guard *guard
	ports *portBook

	mu       sync.Mutex
	closed   bool
	domains  map[string]*domainState
	attached map[string]*attachment
	matrices matrixCache
	flowID   string // matrix id of the rules in force ("" for none)
	flowOn   bool   // the nft table exists
	sysctls  map[string]string
	last     *tvdv1.Plan // the last plan read
	gw       gwState     // gateway routing in force
}

// New opens handles into the node namespace. It changes nothing in the
// kernel: the first Apply does.
func New(cfg Config) (*DataPlane, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.BasePort == 0 {
		cfg.BasePort = DefaultBasePort
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &DataPlane{cfg: cfg, log: cfg.Logger, domains: map[string]*domainState{}, attached: map[string]*attachment{}, sysctls: map[string]string{}, ns: netns.None()}
	ok := false
	defer func() {
		if !ok {
			d.release()
		}
	}()
	var err error
	if cfg.NodeNetNS != "" {
		d.ns, err = netns.GetFromPath(cfg.NodeNetNS)
	} else {
		d.ns, err = netns.Get()
	}
	if err != nil {
		return nil, fmt.Errorf("dataplane: open node network namespace %q: %w", cfg.NodeNetNS, err)
	}
	if d.nl, err = netlink.NewHandleAt(d.ns); err != nil {
		return nil, fmt.Errorf("dataplane: netlink: %w", err)
	}
	if d.nft, err = nft.New(nft.Config{NetNSFd: int(d.ns), Logger: cfg.Logger}); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if d.guard, err = newGuard(int(d.ns)); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	if d.ports, err = openPortBook(filepath.Join(cfg.DataDir, "channel", "ports.json"), cfg.BasePort); err != nil {
		return nil, fmt.Errorf("dataplane: %w", err)
	}
	ok = true
	return d, nil
}

// Apply makes the node match plan p, changing only what differs from the
// previous plan (see the package doc). It returns one DomainAck per domain
// of the plan (channel UP when the domain's interface, peers, EE links
// and flow rules are all in force, else FAILED with the reasons) and one
// ChannelKey per open interface. err joins every problem; the acks say
// which domain each belongs to.
func (d *DataPlane) Apply(ctx context.Context, p *tvdv1.Plan) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, nil, errClosed
	}
	return d.applyLocked(ctx, p)
}

// Reconcile applies the last plan again: it attaches members whose EE
// namespace appeared or changed since (an EE started or restarted),
// re-creates vanished links and retries whatever failed. What is in
// place is left alone. Without a previous plan it does nothing.
func (d *DataPlane) Reconcile(ctx context.Context) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, nil, errClosed
	}
	if d.last == nil {
		return nil, nil, nil
	}
	return d.applyLocked(ctx, d.last)
}

func (d *DataPlane) applyLocked(ctx context.Context, p *tvdv1.Plan) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	want, err := readPlan(p)
	if err != nil {
		return nil, nil, err
	}
	d.last = p
	domErr := map[string][]error{}
	for dom, errs := range want.MemberErr {
		domErr[dom] = append(domErr[dom], errs...)
	}
	var global []error

	// 1. Members gone or changed lose their link first. So does a link
	// that vanished (its EE's namespace died with the EE) or whose EE now
	// lives in another namespace (a restarted EE): it is attached anew
	// below.
	live := d.liveLinks()
	for ee, at := range d.attached {
		if ms, ok := want.Members[ee]; ok && ms == at.spec && (live == nil || live[at.index] == at.name) {
			if path, ok := d.cfg.EENetNS(ee); ok && path == at.path {
				continue
			}
		}
		if err := detach(d.nl, at); err != nil {
			domErr[at.spec.Domain] = append(domErr[at.spec.Domain], fmt.Errorf("member %q: %w", ee, err))
			continue
		}
		delete(d.attached, ee)
		d.log.InfoContext(ctx, "EE detached", "ee", ee, "domain", at.spec.Domain, "address", at.spec.Addr)
	}

	// Domains the node has left close their interface.
	for name, st := range d.domains {
		if _, ok := want.Domains[name]; !ok {
			d.closeDomain(ctx, st)
		}
	}

	// 2. Flow rules, naming every interface this plan may bring up.
	flowErr := d.applyFlow(ctx, p, want)
	if flowErr == nil && (len(want.Members) > 0 || len(d.attached) > 0) {
		ifs := make([]string, 0, len(want.Members)+len(d.attached))
		for ee := range want.Members {
			ifs = append(ifs, VethName(ee))
		}
		for ee := range d.attached {
			if _, ok := want.Members[ee]; !ok {
				ifs = append(ifs, VethName(ee))
			}
		}
		flowErr = d.guard.sync(ifs)
	}
	if flowErr != nil {
		global = append(global, flowErr)
	}

	// 3. Channels: update changed peer lists (revocations go through even
	// when the flow rules failed), open new domains (only under rules that
	// judge their interface).
	if err := d.forwarding(want); err != nil {
		global = append(global, err)
	}
	for _, name := range sortedKeys(want.Domains) {
		ds := want.Domains[name]
		if ds.Err != nil {
			domErr[name] = append(domErr[name], ds.Err)
			continue
		}
		st := d.domains[name]
		if st != nil && st.spec.Prefix != ds.Prefix {
			d.closeDomain(ctx, st)
			st = nil
		}
		if st == nil {
			if flowErr != nil {
				domErr[name] = append(domErr[name], errors.New("channel not opened while the flow rules are not in force"))
				continue
			}
			st, err = d.openDomain(ds)
			if err != nil {
				domErr[name] = append(domErr[name], err)
				continue
			}
			d.domains[name] = st
		}
		st.spec = ds
		if st.err == nil && peersEqual(st.raw, ds.raw) {
			continue
		}
		if err := st.iface.SetPeers(ds.Peers); err != nil {
			st.err = err
			domErr[name] = append(domErr[name], err)
			continue
		}
		st.raw, st.err = ds.raw, nil
	}

	// 4. New members get their link, only under rules that judge it.
	ees := make([]string, 0, len(want.Members))
	for ee := range want.Members {
		ees = append(ees, ee)
	}
	sort.Strings(ees)
	for _, ee := range ees {
		ms := want.Members[ee]
		if _, ok := d.attached[ee]; ok {
			continue
		}
		if flowErr != nil {
			domErr[ms.Domain] = append(domErr[ms.Domain], fmt.Errorf("member %q: not attached while the flow rules are not in force", ee))
			continue
		}
		if st := d.domains[ms.Domain]; st == nil {
			continue // the domain's error is reported already
		}
		path, ok := d.cfg.EENetNS(ee)
		if !ok {
			domErr[ms.Domain] = append(domErr[ms.Domain], fmt.Errorf("member %q: its EE has no network namespace yet", ee))
			continue
		}
		at, err := attach(d.nl, d.ns, ms, path)
		if err != nil {
			domErr[ms.Domain] = append(domErr[ms.Domain], fmt.Errorf("member %q: %w", ee, err))
			continue
		}
		d.attached[ee] = at
		d.log.InfoContext(ctx, "EE attached", "ee", ee, "domain", ms.Domain, "address", ms.Addr, "link", at.name)
	}

	// 5. Gateway routes, once the links and interfaces they name exist.
	for _, err := range want.RouteErr {
		d.log.WarnContext(ctx, "gateway route left out", "err", err)
	}
	if flowErr == nil {
		if err := d.syncGatewayRoutes(ctx, want); err != nil {
			global = append(global, err)
		}
	}

	acks, err := domainAcks(want, domErr, global, func(name string) bool { return d.domains[name] != nil }, d.flowID)
	return acks, d.keysLocked(), err
}

// liveLinks returns the node namespace's links by ifindex, or nil if they
// cannot be listed (then every attachment is taken as alive).
func (d *DataPlane) liveLinks() map[int]string {
	if len(d.attached) == 0 {
		return nil
	}
	ls, err := d.nl.LinkList()
	if err != nil {
		d.log.Warn("list links", "err", err)
		return nil
	}
	out := make(map[int]string, len(ls))
	for _, l := range ls {
		out[l.Attrs().Index] = l.Attrs().Name
	}
	return out
}

// forwarding switches on IP forwarding in the node namespace once, for
// each address family the plan's domains use.
func (d *DataPlane) forwarding(want *desired) error {
	need := map[string]bool{}
	for _, ds := range want.Domains {
		if ds.Err != nil {
			continue
		}
		if ds.Prefix.Addr().Is4() {
			need["net/ipv4/ip_forward"] = true
		} else {
			need["net/ipv6/conf/all/forwarding"] = true
		}
	}
	var errs []error
	for key := range need {
		if _, done := d.sysctls[key]; done {
			continue
		}
		prev, err := sysctl(d.ns, key, "1")
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d.sysctls[key] = prev
	}
	return errors.Join(errs...)
}

func (d *DataPlane) openDomain(ds *domainSpec) (*domainState, error) {
	key, err := channel.LoadOrCreateKey(filepath.Join(d.cfg.DataDir, "channel", ds.Name+".key"))
	if err != nil {
		return nil, fmt.Errorf("channel key: %w", err)
	}
	port, err := d.ports.port(ds.Name)
	if err != nil {
		return nil, err
	}
	iface, err := channel.New(channel.Config{
		Name:       channel.InterfaceName(ds.Name),
		Domain:     ds.Name,
		PrivateKey: key,
		ListenPort: port,
		Address:    hostPrefix(ds.NodeAddr),
		NetNS:      d.cfg.NodeNetNS,
		Logger:     d.log,
	})
	if err != nil {
		return nil, fmt.Errorf("channel: %w", err)
	}
	// Addresses of the domain that no peer carries (a peer not yet known,
	// or held back by the two-phase peer add) go nowhere: without this a
	// packet to one would follow the node's default route out over the
	// underlay, in clear. More specific routes (peers, EE links) win.
	if err := d.nl.RouteReplace(blackhole(ds.Prefix)); err != nil {
		iface.Close()
		return nil, fmt.Errorf("blackhole route for %s: %w", ds.Prefix, err)
	}
	d.log.Info("domain channel open", "domain", ds.Name, "iface", iface.Name(), "port", port, "address", ds.NodeAddr)
	return &domainState{spec: ds, iface: iface, port: port}, nil
}

// blackhole is the route that drops what is sent to an overlay prefix and
// routed nowhere more specific.
func blackhole(p netip.Prefix) *netlink.Route {
	p = p.Masked()
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Route{Dst: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Type: unix.RTN_BLACKHOLE, Family: fam, Priority: blackholeMetric}
}

// blackholeMetric ranks the blackhole route below any route to the same
// prefix someone else installs.
const blackholeMetric = 4000

func (d *DataPlane) closeDomain(ctx context.Context, st *domainState) {
	if err := st.iface.Close(); err != nil {
		d.log.WarnContext(ctx, "close domain channel", "domain", st.spec.Name, "err", err)
	}
	if err := d.nl.RouteDel(blackhole(st.spec.Prefix)); err != nil && !errors.Is(err, unix.ESRCH) {
		d.log.WarnContext(ctx, "remove blackhole route", "domain", st.spec.Name, "prefix", st.spec.Prefix, "err", err)
	}
	delete(d.domains, st.spec.Name)
	d.log.InfoContext(ctx, "domain channel closed", "domain", st.spec.Name)
}

// applyFlow builds the node's flow plan and hands it to nft. With no
// members and no domains the table is removed.
func (d *DataPlane) applyFlow(ctx context.Context, p *tvdv1.Plan, want *desired) error {
	if len(want.Members) == 0 && len(want.Domains) == 0 {
		if err := d.guard.remove(); err != nil {
			return err
		}
		if d.flowOn {
			if err := d.nft.Remove(); err != nil {
				return fmt.Errorf("flow: %w", err)
			}
		}
		d.flowOn, d.flowID = false, ""
		return nil
	}
	fp := p.GetFlow()
	m, err := d.matrices.decode(fp)
	if err != nil {
		return err
	}
	// Every overlay interface that exists or may exist is judged, including
	// one kept open from an earlier plan while its domain's part of this
	// plan is in error: an interface left out would not be filtered.
	plan, warn := flowPlan(p, m, want, d.cfg.Controller, overlayNames(sortedKeys(want.Domains), sortedKeys(d.domains)))
	for _, w := range warn {
		d.log.WarnContext(ctx, "flow plan", "problem", w)
	}
	if err := d.nft.Apply(plan); err != nil {
		return fmt.Errorf("flow: %w", err)
	}
	d.flowOn, d.flowID = true, fp.GetMatrixId()
	return nil
}

func (d *DataPlane) keysLocked() []*tvdv1.ChannelKey {
	names := make([]string, 0, len(d.domains))
	for name := range d.domains {
		names = append(names, name)
	}
	sort.Strings(names)
	keys := make([]*tvdv1.ChannelKey, 0, len(names))
	for _, name := range names {
		st := d.domains[name]
		pub := st.iface.PublicKey()
		k := &tvdv1.ChannelKey{Domain: name, WireguardPublicKey: pub[:]}
		if d.cfg.Underlay.IsValid() {
			k.Endpoint = netip.AddrPortFrom(d.cfg.Underlay, st.port).String()
		}
		keys = append(keys, k)
	}
	return keys
}

// Keys returns the node's current channel keys, one per open interface.
func (d *DataPlane) Keys() []*tvdv1.ChannelKey {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.keysLocked()
}

// Counters returns the flow rules' named counters (see nft.CounterNames).
func (d *DataPlane) Counters() (map[string]nft.Counter, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil, errClosed
	}
	return d.nft.Counters()
}

// Close removes everything the data plane created: the EE links, the
// channel interfaces and the nftables table, and restores the forwarding
// sysctls it changed. It is safe to call more than once.
func (d *DataPlane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	for ee, at := range d.attached {
		if err := detach(d.nl, at); err != nil {
			errs = append(errs, fmt.Errorf("member %q: %w", ee, err))
		}
	}
	d.attached = nil
	if err := d.removeGatewayRoutes(); err != nil {
		errs = append(errs, err)
	}
	for _, st := range d.domains {
		if err := st.iface.Close(); err != nil {
			errs = append(errs, fmt.Errorf("domain %s: %w", st.spec.Name, err))
		}
		if err := d.nl.RouteDel(blackhole(st.spec.Prefix)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("domain %s: remove blackhole route: %w", st.spec.Name, err))
		}
	}
	d.domains = nil
	if d.flowOn {
		if err := d.nft.Remove(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := d.guard.remove(); err != nil {
		errs = append(errs, err)
	}
	for key, prev := range d.sysctls {
		if _, err := sysctl(d.ns, key, prev); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, d.release())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dataplane: close: %w", err)
	}
	return nil
}

func (d *DataPlane) release() error {
	var err error
	if d.nft != nil {
		err = d.nft.Close()
		d.nft = nil
	}
	if d.guard != nil {
		d.guard.close()
		d.guard = nil
	}
	if d.nl != nil {
		d.nl.Close()
		d.nl = nil
	}
	if d.ns.IsOpen() {
		d.ns.Close()
		d.ns = netns.None()
	}
	return err
}
