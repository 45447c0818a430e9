package filter

import (
	"encoding/binary"
	"net/netip"
	"slices"

	"github.com/tvd-dev/tvd/flow"
)

// Counter names. The first twelve are flow/nft's counter names, counting
// the same decisions; the last two have no nftables counterpart.
const (
	CounterIntra          = "allow-intra-domain"
	CounterUnrestricted   = "allow-unrestricted"
	CounterP2PAllow       = "allow-point-to-point"
	CounterController     = "allow-controller"
	CounterP2PDeny        = "deny-point-to-point"
	CounterNone           = "deny-none"
	CounterViaDirect      = "deny-via-gateway-direct"
	CounterQuarantine     = "deny-quarantine"
	CounterSpoof          = "deny-spoofed-source"
	CounterMisroute       = "deny-misrouted"
	CounterGatewayRefused = "deny-gateway-refused"
	CounterNonMember      = "deny-non-member"
	// CounterMalformed counts packets that are not well-formed IPv4 or
	// IPv6 (the kernel drops those before nftables sees them).
	CounterMalformed = "deny-malformed"
	// CounterFlowTableFull counts new flows refused because the flow
	// table was full of live flows.
	CounterFlowTableFull = "deny-flow-table-full"
)

// Verdict is the outcome of judging one packet: the counter it was
// counted under, which also tells whether it passed.
type Verdict uint8

// The verdicts, in the order of CounterNames.
const (
	VerdictIntra Verdict = iota
	VerdictUnrestricted
	VerdictP2PAllow
	VerdictController
	VerdictP2PDeny
	VerdictNone
	VerdictViaDirect
	VerdictQuarantine
	VerdictSpoof
	VerdictMisroute
	VerdictGatewayRefused
	VerdictNonMember
	VerdictMalformed
	VerdictFlowTableFull
	numVerdicts
)

var counterNames = [numVerdicts]string{
	CounterIntra, CounterUnrestricted, CounterP2PAllow, CounterController,
	CounterP2PDeny, CounterNone, CounterViaDirect, CounterQuarantine,
	CounterSpoof, CounterMisroute, CounterGatewayRefused, CounterNonMember,
	CounterMalformed, CounterFlowTableFull,
}

// CounterNames lists every counter of a Filter, in a stable order: flow/nft's
// twelve, then deny-malformed and deny-flow-table-full.
func CounterNames() []string { return append([]string(nil), counterNames[:]...) }

// Allowed reports whether the packet passes.
func (v Verdict) Allowed() bool { return v <= VerdictController }

// String returns the verdict's counter name.
func (v Verdict) String() string {
	if v < numVerdicts {
		return counterNames[v]
	}
	return "verdict(?)"
}

// Reserved classes, as in flow/nft: a quarantined member is classified as
// classQuarantine instead of its own class, a controller address as
// classController. Neither is a class of any matrix.
const (
	classQuarantine int32 = -1
	classController int32 = -2
	// reserved is how many reserved classes precede class 0 in the
	// verdict table.
	reserved = 2
)

// tables is the compiled form of one plan (and, optionally, the
// interface's WireGuard peers) as one interface sees it. It is immutable
// once built; Apply and SetPeers swap the whole value atomically.
type tables struct {
	plan  *flow.Plan
	peers [][]netip.Prefix
	m     *flow.Matrix
	n     int // classes of m, plus the reserved ones

	// Address -> class and owning member (an index into mems; -1 for a
	// controller address).
	addr4 map[[4]byte]addrInfo
	addr6 map[[16]byte]addrInfo
	mems  []memInfo

	// local is the member behind the filtered interface, or -1.
	local int32

	// Routes mirror WireGuard's allowed IPs: for each prefix length in
	// use (longest first), masked address -> the member that is the peer
	// (-1: a peer that is no single member). Empty when SetPeers was
	// never called: remote ends are then known by address alone.
	routes4 []routeLen[[4]byte]
	routes6 []routeLen[[16]byte]

	// Reach: remote addresses reached through a gateway, with the
	// gateway's class (SetReach); nil when none.
	reach4 map[[4]byte]addrInfo
	reach6 map[[16]byte]addrInfo

	// verdict[(s+reserved)*n + d+reserved] is the verdict for a hop from
	// class s to class d (reserved classes included).
	verdict []Verdict
	// cross holds bit s*classes+d when flow.Matrix.MayCross(s, domain of d).
	cross []uint64
}

type addrInfo struct {
	cls int32
	mem int32
}

type memInfo struct {
	cls int32 // classQuarantine when quarantined
	gw  bool
}

type routeLen[A [4]byte | [16]byte] struct {
	bits int
	m    map[A]int32
}

// matrixTables are the parts of tables that depend on the matrix alone,
// shared between plans with the same matrix.
type matrixTables struct {
	verdict []Verdict
	cross   []uint64
}

func compileMatrix(m *flow.Matrix) matrixTables {
	c := m.NumClasses()
	n := c + reserved
	mt := matrixTables{verdict: make([]Verdict, n*n), cross: make([]uint64, (c*c+63)/64)}
	for s := -reserved; s < c; s++ {
		for d := -reserved; d < c; d++ {
			mt.verdict[(s+reserved)*n+d+reserved] = hopVerdict(m, int32(s), int32(d))
			if s >= 0 && d >= 0 && m.MayCross(flow.ClassID(s), m.ClassDomain(flow.ClassID(d))) {
				i := s*c + d
				mt.cross[i/64] |= 1 << (i % 64)
			}
		}
	}
	return mt
}

// hopVerdict follows flow/nft's verdict map: a controller on either side
// accepts (the quarantine included), then a quarantined member on either
// side drops, then flow.Matrix.Decide.
func hopVerdict(m *flow.Matrix, s, d int32) Verdict {
	switch {
	case s == classController || d == classController:
		return VerdictController
	case s == classQuarantine || d == classQuarantine:
		return VerdictQuarantine
	}
	sc, dc := flow.ClassID(s), flow.ClassID(d)
	if m.ClassDomain(sc) == m.ClassDomain(dc) {
		return VerdictIntra
	}
	dec := m.Decide(sc, dc)
	switch dec.Rule {
	case flow.RuleUnrestricted:
		return VerdictUnrestricted
	case flow.RulePointToPoint:
		if dec.Direct {
			return VerdictP2PAllow
		}
		return VerdictP2PDeny
	case flow.RuleViaGateway:
		return VerdictViaDirect
	}
	return VerdictNone
}

// compile builds the tables of a validated plan for the interface named
// iface and its WireGuard peers (each peer's allowed IPs; nil when not
// known). prev, when it has the same matrix, lends its matrix tables.
func compile(p *flow.Plan, iface string, peers [][]netip.Prefix, reach map[netip.Addr]flow.ClassID, prev *tables) *tables {
	t := &tables{
		plan: p, peers: peers, m: p.Matrix, n: p.Matrix.NumClasses() + reserved,
		addr4: make(map[[4]byte]addrInfo, len(p.Members)+len(p.Controllers)),
		addr6: make(map[[16]byte]addrInfo),
		mems:  make([]memInfo, len(p.Members)),
		local: -1,
	}
	if prev != nil && prev.m == p.Matrix {
		t.verdict, t.cross = prev.verdict, prev.cross
	} else {
		mt := compileMatrix(p.Matrix)
		t.verdict, t.cross = mt.verdict, mt.cross
	}
	for _, c := range p.Controllers {
		t.put(c, addrInfo{cls: classController, mem: -1})
	}
	quar := make(map[string]bool, len(p.Quarantine))
	for _, q := range p.Quarantine {
		quar[q] = true
	}
	for i, mem := range p.Members {
		cls := int32(mem.Class)
		if quar[mem.EE] {
			cls = classQuarantine
		}
		t.mems[i] = memInfo{cls: cls, gw: p.Matrix.IsGateway(mem.Class)}
		for _, a := range mem.Addrs {
			t.put(a, addrInfo{cls: cls, mem: int32(i)})
		}
		if iface != "" && mem.Iface == iface {
			t.local = int32(i)
		}
	}
	t.compileRoutes(peers)
	for a, c := range reach {
		if int(c) >= p.Matrix.NumClasses() {
			continue // not a class of this plan's matrix
		}
		ai := addrInfo{cls: int32(c), mem: -1}
		if a.Is4() {
			if t.reach4 == nil {
				t.reach4 = map[[4]byte]addrInfo{}
			}
			t.reach4[a.As4()] = ai
		} else {
			if t.reach6 == nil {
				t.reach6 = map[[16]byte]addrInfo{}
			}
			t.reach6[a.As16()] = ai
		}
	}
	return t
}

// compileRoutes fills the route tables from the peers' allowed IPs. A
// peer's member is the one plan member with an address among the peer's
// host prefixes (/32, /128); a peer with none or several is no single
// member, and the ends routed to it are known by address.
func (t *tables) compileRoutes(peers [][]netip.Prefix) {
	by4 := map[int]map[[4]byte]int32{}
	by6 := map[int]map[[16]byte]int32{}
	for _, ips := range peers {
		owner := int32(-1)
		for _, pfx := range ips {
			if !pfx.IsSingleIP() {
				continue
			}
			if ai, ok := t.info(pfx.Addr()); ok && ai.mem >= 0 {
				if owner >= 0 && owner != ai.mem {
					owner = -2 // several members behind one peer
					break
				}
				owner = ai.mem
			}
		}
		if owner < -1 {
			owner = -1
		}
		for _, pfx := range ips {
			if !pfx.IsValid() {
				continue
			}
			pfx = pfx.Masked()
			if pfx.Addr().Is4() {
				if by4[pfx.Bits()] == nil {
					by4[pfx.Bits()] = map[[4]byte]int32{}
				}
				by4[pfx.Bits()][pfx.Addr().As4()] = owner
			} else {
				if by6[pfx.Bits()] == nil {
					by6[pfx.Bits()] = map[[16]byte]int32{}
				}
				by6[pfx.Bits()][pfx.Addr().As16()] = owner
			}
		}
	}
	for bits, m := range by4 {
		t.routes4 = append(t.routes4, routeLen[[4]byte]{bits: bits, m: m})
	}
	for bits, m := range by6 {
		t.routes6 = append(t.routes6, routeLen[[16]byte]{bits: bits, m: m})
	}
	slices.SortFunc(t.routes4, func(a, b routeLen[[4]byte]) int { return b.bits - a.bits })
	slices.SortFunc(t.routes6, func(a, b routeLen[[16]byte]) int { return b.bits - a.bits })
}

func (t *tables) info(a netip.Addr) (addrInfo, bool) {
	if a.Is4() {
		ai, ok := t.addr4[a.As4()]
		return ai, ok
	}
	ai, ok := t.addr6[a.As16()]
	return ai, ok
}

func (t *tables) put(a netip.Addr, ai addrInfo) {
	if a.Is4() {
		t.addr4[a.As4()] = ai
	} else {
		t.addr6[a.As16()] = ai
	}
}

// lookup returns what the plan knows of an address.
func (t *tables) lookup(ver uint8, a *[16]byte) (addrInfo, bool) {
	if ver == 4 {
		ai, ok := t.addr4[[4]byte(a[:4])]
		return ai, ok
	}
	ai, ok := t.addr6[*a]
	return ai, ok
}

// route returns the member that is the WireGuard peer for address a (the
// longest matching allowed IP), or -1 when there is none or the peer is
// no single member. The cost is one map lookup per prefix length in use.
func (t *tables) route(ver uint8, a *[16]byte) int32 {
	if ver == 4 {
		v := binary.BigEndian.Uint32(a[:4])
		for _, r := range t.routes4 {
			var k [4]byte
			binary.BigEndian.PutUint32(k[:], v&uint32(^uint64(0)<<(32-r.bits)))
			if m, ok := r.m[k]; ok {
				return m
			}
		}
		return -1
	}
	for _, r := range t.routes6 {
		k := *a
		if r.bits < 128 {
			k[r.bits/8] &= byte(0xff << (8 - r.bits%8))
			for i := r.bits/8 + 1; i < 16; i++ {
				k[i] = 0
			}
		}
		if m, ok := r.m[k]; ok {
			return m
		}
	}
	return -1
}

// reached looks an address up in the reach tables.
func (t *tables) reached(ver uint8, a *[16]byte) (addrInfo, bool) {
	if ver == 4 {
		if t.reach4 == nil {
			return addrInfo{}, false
		}
		ai, ok := t.reach4[[4]byte(a[:4])]
		return ai, ok
	}
	if t.reach6 == nil {
		return addrInfo{}, false
	}
	ai, ok := t.reach6[*a]
	return ai, ok
}

func (t *tables) hop(s, d int32) Verdict {
	return t.verdict[int(s+reserved)*t.n+int(d+reserved)]
}

// mayCross reports whether a gateway may forward a flow from the origin
// address's class to the final address's class: both must be (unreserved)
// member classes in the cross table.
func (t *tables) mayCross(ver uint8, origin, final *[16]byte) bool {
	s, ok1 := t.lookup(ver, origin)
	d, ok2 := t.lookup(ver, final)
	if !ok1 || !ok2 || s.cls < 0 || d.cls < 0 {
		return false
	}
	c := t.n - reserved
	i := int(s.cls)*c + int(d.cls)
	return t.cross[i/64]&(1<<(i%64)) != 0
}

// end is one end of a hop: the local member's interface or the overlay,
// with the packet address on that end.
type end struct {
	local bool
	addr  *[16]byte
}

// resolved is an end as the rules see it. An end "at an interface" (the
// local member's, or a WireGuard peer that is one member) is classified by
// the member behind it, as flow/nft classifies a local EE by its
// interface; any other end by its address.
type resolved struct {
	iface bool  // at an interface
	ok    bool  // classified (a member behind the interface, or a known address)
	own   bool  // the member at the interface owns the address
	gw    bool  // the member at the interface is a gateway
	cls   int32 // the class
}

func (t *tables) resolve(ver uint8, e end) resolved {
	mem := t.local
	if !e.local {
		if ai, ok := t.reached(ver, e.addr); ok {
			return resolved{ok: true, cls: ai.cls}
		}
		mem = t.route(ver, e.addr)
		if mem < 0 {
			ai, ok := t.lookup(ver, e.addr)
			return resolved{ok: ok, cls: ai.cls}
		}
	}
	if mem < 0 {
		return resolved{iface: true}
	}
	ai, ok := t.lookup(ver, e.addr)
	mi := t.mems[mem]
	return resolved{iface: true, ok: true, own: ok && ai.mem == mem, gw: mi.gw, cls: mi.cls}
}

// judge decides one hop from its origin-side end o to its final-side end f,
// in the order of flow/nft's rules (see the package documentation).
func (t *tables) judge(ver uint8, o, f end) Verdict {
	ro, rf := t.resolve(ver, o), t.resolve(ver, f)
	// Fast path: every end at an interface owns its address.
	if ro.ok && rf.ok && (!ro.iface || ro.own) && (!rf.iface || rf.own) {
		return t.hop(ro.cls, rf.cls)
	}
	// An end at an interface that does not own its address is a gateway
	// forwarding someone else's flow, or a spoofer.
	if ro.iface && ro.ok && !ro.own {
		if !ro.gw {
			return VerdictSpoof
		}
		if !t.mayCross(ver, o.addr, f.addr) {
			return VerdictGatewayRefused
		}
	}
	if rf.iface && rf.ok && !rf.own {
		if !rf.gw {
			return VerdictMisroute
		}
		if !t.mayCross(ver, o.addr, f.addr) {
			return VerdictGatewayRefused
		}
	}
	if ro.ok && rf.ok {
		return t.hop(ro.cls, rf.cls)
	}
	return VerdictNonMember
}
