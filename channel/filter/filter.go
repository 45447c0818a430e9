package filter

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tvd-dev/tvd/flow"
)

// Direction says which way a packet crosses the filtered interface.
type Direction uint8

const (
	// Outbound packets leave the local member for the overlay.
	Outbound Direction = iota
	// Inbound packets arrive from the overlay for the local member.
	Inbound
)

func (d Direction) String() string {
	if d == Outbound {
		return "outbound"
	}
	return "inbound"
}

// Default flow-table settings.
const (
	DefaultMaxFlows = 65536
	// TCPTimeout is how long an idle TCP flow is remembered; after a FIN
	// or RST, ClosingTimeout.
	TCPTimeout     = 5 * time.Minute
	ClosingTimeout = 10 * time.Second
	// OtherTimeout is how long an idle UDP, ICMP or other flow is
	// remembered.
	OtherTimeout = time.Minute
)

// Config configures a Filter.
type Config struct {
	// Iface is the name of the filtered interface. The plan member whose
	// Iface equals it is the local end of every packet; with no such
	// member, every packet is from or to a non-member and dropped.
	Iface string
	// MaxFlows bounds the flow table; 0 means DefaultMaxFlows.
	MaxFlows int
	// Now returns the current time; nil means time.Now. Tests inject a
	// clock to expire flows.
	Now func() time.Time
}

// Counter is one named counter: packets and bytes judged under it.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Filter judges the packets of one interface against a flow plan. It is
// safe for concurrent use: Judge may run on many goroutines while Apply
// swaps the plan.
type Filter struct {
	iface string
	now   func() time.Time
	epoch time.Time

	applyMu      sync.Mutex // serializes Apply, SetPeers and SetReach
	tab          atomic.Pointer[tables]
	pendingPeers [][]netip.Prefix // SetPeers before the first Apply
	reach        map[netip.Addr]flow.ClassID

	flows    flowTable
	counters [numVerdicts]struct {
		packets, bytes atomic.Uint64
		_              [48]byte // one cache line each
	}
}

// New returns a filter with no plan: it drops every packet as from a
// non-member until the first Apply.
func New(cfg Config) (*Filter, error) {
	if cfg.MaxFlows < 0 {
		return nil, fmt.Errorf("filter: max flows %d: want 0 (default) or more", cfg.MaxFlows)
	}
	if cfg.MaxFlows == 0 {
		cfg.MaxFlows = DefaultMaxFlows
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	f := &Filter{iface: cfg.Iface, now: cfg.Now, epoch: cfg.Now()}
	f.flows.max = cfg.MaxFlows
	f.flows.m = make(map[tuple]*flowEntry)
	return f, nil
}

// ErrNoPlan is returned by Apply for a nil plan.
var ErrNoPlan = errors.New("filter: no plan")

// Apply makes p the plan every later packet is judged against, atomically:
// a packet is judged wholly by the old plan or wholly by the new one. The
// flow table is kept, so an established flow that the new plan still
// allows goes on, and one it no longer allows is cut at its next packet. p
// is validated first and must not be modified afterwards.
func (f *Filter) Apply(p *flow.Plan) error {
	if p == nil {
		return ErrNoPlan
	}
	if err := p.Validate(); err != nil {
		return fmt.Errorf("filter: %w", err)
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	var peers [][]netip.Prefix
	prev := f.tab.Load()
	if prev != nil {
		peers = prev.peers
	} else {
		peers = f.pendingPeers
	}
	f.tab.Store(compile(p, f.iface, peers, f.reach, prev))
	return nil
}

// SetPeers tells the filter the interface's WireGuard peers: each element
// is one peer's allowed IPs, as WireGuard routes them (longest prefix
// first). From then on the overlay end of a packet is the peer WireGuard
// sends it to or received it from (the peer whose allowed IPs hold the
// packet's remote address): a peer whose host prefixes (/32, /128) hold
// the addresses of exactly one plan member is that member, judged as
// flow/nft judges a local EE by its interface; so a packet that a gateway
// peer forwards (keeping its origin address) is judged as a hop to or from
// that gateway. Ends routed to any other peer, and every end before the
// first SetPeers, are known by address alone. Call it whenever the peers
// change; it swaps the tables atomically, as Apply does.
func (f *Filter) SetPeers(peers [][]netip.Prefix) {
	cp := make([][]netip.Prefix, len(peers))
	for i, p := range peers {
		cp[i] = slices.Clone(p)
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	prev := f.tab.Load()
	if prev == nil {
		f.pendingPeers = cp
		return
	}
	f.tab.Store(compile(prev.plan, f.iface, cp, f.reach, prev))
}

// SetReach tells the filter which remote addresses it reaches through a
// gateway, and that gateway's class: a hop to or from such an address is
// judged as a hop with the gateway (flow/nft's reach maps, flow.Reach),
// before the peers and the plan's addresses are consulted. The agent's
// userspace data plane uses it for the flows the matrix sends through
// gateways (the plan's gateway routes). Call it whenever the routes
// change; it swaps the tables atomically, as Apply does.
func (f *Filter) SetReach(reach map[netip.Addr]flow.ClassID) {
	cp := make(map[netip.Addr]flow.ClassID, len(reach))
	for a, c := range reach {
		cp[a.Unmap()] = c
	}
	f.applyMu.Lock()
	defer f.applyMu.Unlock()
	f.reach = cp
	if prev := f.tab.Load(); prev != nil {
		f.tab.Store(compile(prev.plan, f.iface, prev.peers, cp, prev))
	}
}

// Plan returns the plan last applied, or nil.
func (f *Filter) Plan() *flow.Plan {
	if t := f.tab.Load(); t != nil {
		return t.plan
	}
	return nil
}

// Counters returns every counter by name (see CounterNames).
func (f *Filter) Counters() map[string]Counter {
	out := make(map[string]Counter, numVerdicts)
	for i := range f.counters {
		out[counterNames[i]] = Counter{Packets: f.counters[i].packets.Load(), Bytes: f.counters[i].bytes.Load()}
	}
	return out
}

// Flows returns the number of flows in the flow table, live or not yet
// swept.
func (f *Filter) Flows() int {
	f.flows.mu.RLock()
	defer f.flows.mu.RUnlock()
	return len(f.flows.m)
}

// Judge decides whether pkt, an IPv4 or IPv6 packet without link header,
// may cross the interface in direction dir, counts it and records a new
// allowed flow. It never modifies pkt and, for a packet of a flow already
// in the table, does not allocate.
//
// A packet that answers a flow in the table (the reverse of its 5-tuple)
// is judged as that flow: its origin is the flow's origin, so a reply
// passes exactly when the flow it answers would pass under the current
// plan.
func (f *Filter) Judge(pkt []byte, dir Direction) Verdict {
	return f.judgeAt(pkt, dir, f.clock())
}

// clock returns the time since the filter's epoch in nanoseconds.
func (f *Filter) clock() int64 { return int64(f.now().Sub(f.epoch)) }

// judgeAt is Judge at time now (see clock).
func (f *Filter) judgeAt(pkt []byte, dir Direction, now int64) Verdict {
	v, _ := f.judge(pkt, dir, now)
	f.count(v, len(pkt))
	return v
}

// judgeInbound is Judge for an inbound packet; it also reports whether the
// packet is for an address the local member does not own (one a gateway
// forwards).
func (f *Filter) judgeInbound(pkt []byte, now int64) (Verdict, bool) {
	v, fwd := f.judge(pkt, Inbound, now)
	f.count(v, len(pkt))
	return v, fwd
}

func (f *Filter) count(v Verdict, n int) {
	c := &f.counters[v]
	c.packets.Add(1)
	c.bytes.Add(uint64(n))
}

func (f *Filter) judge(pkt []byte, dir Direction, now int64) (Verdict, bool) {
	var p packet
	if !parse(pkt, &p) {
		return VerdictMalformed, false
	}
	t := f.tab.Load()
	if t == nil {
		return VerdictNonMember, false
	}
	v := f.judgeFlow(t, &p, dir, now)
	if !v.Allowed() || dir != Inbound {
		return v, false
	}
	ai, ok := t.lookup(p.ver, &p.dst)
	return v, !ok || ai.mem != t.local
}

func (f *Filter) judgeFlow(t *tables, p *packet, dir Direction, now int64) Verdict {
	e, reply := f.flows.lookup(&p.tuple, now)
	// The packet's two ends: the one it enters by (its source) and the
	// one it leaves by (its destination).
	in := end{local: dir == Outbound, addr: &p.src}
	out := end{local: dir == Inbound, addr: &p.dst}
	var v Verdict
	if reply {
		v = t.judge(p.ver, out, in)
	} else {
		v = t.judge(p.ver, in, out)
	}
	if !v.Allowed() {
		return v
	}
	if e == nil {
		if !f.flows.insert(&p.tuple, now) {
			return VerdictFlowTableFull
		}
		e, _ = f.flows.lookup(&p.tuple, now)
		if e == nil {
			return v
		}
	}
	e.touch(now, p.proto == protoTCP, p.tcpFlags)
	return v
}

// flowTable remembers the flows the filter let through, by their tuple in
// the original direction.
type flowTable struct {
	mu        sync.RWMutex
	m         map[tuple]*flowEntry
	max       int
	lastSweep int64
}

type flowEntry struct {
	expires atomic.Int64 // nanoseconds since the filter's epoch
	closing atomic.Bool  // a TCP FIN or RST was seen
}

// touch extends the flow's life after an allowed packet.
func (e *flowEntry) touch(now int64, tcp bool, flags uint8) {
	d := OtherTimeout
	if tcp {
		d = TCPTimeout
		if flags&(tcpFIN|tcpRST) != 0 {
			e.closing.Store(true)
		}
		// A closing TCP flow does not come back to life by a late segment.
		if e.closing.Load() {
			d = ClosingTimeout
		}
	}
	e.expires.Store(now + int64(d))
}

// lookup finds the live flow a packet belongs to: its own tuple (the
// original direction) or the reverse one (a reply).
func (ft *flowTable) lookup(t *tuple, now int64) (e *flowEntry, reply bool) {
	r := t.reverse()
	ft.mu.RLock()
	e = ft.m[*t]
	if e == nil {
		e = ft.m[r]
		reply = e != nil
	}
	ft.mu.RUnlock()
	if e != nil && e.expires.Load() <= now {
		return nil, false
	}
	return e, reply
}

// sweepEvery is the least time between two sweeps of expired flows.
const sweepEvery = int64(5 * time.Second)

// insert adds a flow in the original direction t. It reports false when
// the table is full of live flows.
func (ft *flowTable) insert(t *tuple, now int64) bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if len(ft.m) >= ft.max || now-ft.lastSweep >= sweepEvery {
		ft.sweep(now)
	}
	// A live entry for either direction (added meanwhile by another
	// goroutine) is kept; an expired one is replaced.
	if e := ft.m[*t]; e != nil && e.expires.Load() > now {
		return true
	}
	if e := ft.m[t.reverse()]; e != nil {
		if e.expires.Load() > now {
			return true
		}
		delete(ft.m, t.reverse())
	}
	delete(ft.m, *t)
	if len(ft.m) >= ft.max {
		return false
	}
	e := &flowEntry{}
	e.expires.Store(now + 1)
	ft.m[*t] = e
	return true
}

func (ft *flowTable) sweep(now int64) {
	ft.lastSweep = now
	for k, e := range ft.m {
		if e.expires.Load() <= now {
			delete(ft.m, k)
		}
	}
}
