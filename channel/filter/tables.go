package filter

import (
	"net/netip"

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

// tables is the compiled form of one plan as one interface sees it. It is
// immutable once built; Apply swaps the whole value atomically.
type tables struct {
	plan *flow.Plan
	m    *flow.Matrix
	n    int // classes of m, plus the reserved ones

	cls4 map[[4]byte]int32
	cls6 map[[16]byte]int32

	// The local end: the member behind the filtered interface.
	local    bool // a member is behind the interface
	localCls int32
	localGW  bool
	own4     map[[4]byte]struct{}
	own6     map[[16]byte]struct{}

	// verdict[(s+reserved)*n + d+reserved] is the verdict for a hop from
	// class s to class d (reserved classes included).
	verdict []Verdict
	// cross holds bit s*classes+d when flow.Matrix.MayCross(s, domain of d).
	cross []uint64
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
// iface. prev, when it has the same matrix, lends its matrix tables.
func compile(p *flow.Plan, iface string, prev *tables) *tables {
	t := &tables{
		plan: p, m: p.Matrix, n: p.Matrix.NumClasses() + reserved,
		cls4: make(map[[4]byte]int32, len(p.Members)+len(p.Controllers)),
		cls6: make(map[[16]byte]int32),
		own4: map[[4]byte]struct{}{},
		own6: map[[16]byte]struct{}{},
	}
	if prev != nil && prev.m == p.Matrix {
		t.verdict, t.cross = prev.verdict, prev.cross
	} else {
		mt := compileMatrix(p.Matrix)
		t.verdict, t.cross = mt.verdict, mt.cross
	}
	for _, c := range p.Controllers {
		t.put(c, classController)
	}
	quar := make(map[string]bool, len(p.Quarantine))
	for _, q := range p.Quarantine {
		quar[q] = true
	}
	for _, mem := range p.Members {
		cls := int32(mem.Class)
		if quar[mem.EE] {
			cls = classQuarantine
		}
		for _, a := range mem.Addrs {
			t.put(a, cls)
		}
		if iface != "" && mem.Iface == iface {
			t.local, t.localCls, t.localGW = true, cls, p.Matrix.IsGateway(mem.Class)
			for _, a := range mem.Addrs {
				if a.Is4() {
					t.own4[a.As4()] = struct{}{}
				} else {
					t.own6[a.As16()] = struct{}{}
				}
			}
		}
	}
	return t
}

func (t *tables) put(a netip.Addr, cls int32) {
	if a.Is4() {
		t.cls4[a.As4()] = cls
	} else {
		t.cls6[a.As16()] = cls
	}
}

// addrClass returns the class of an address (reserved classes included).
func (t *tables) addrClass(ver uint8, a *[16]byte) (int32, bool) {
	if ver == 4 {
		c, ok := t.cls4[[4]byte(a[:4])]
		return c, ok
	}
	c, ok := t.cls6[*a]
	return c, ok
}

// owns reports whether the local member owns address a.
func (t *tables) owns(ver uint8, a *[16]byte) bool {
	if ver == 4 {
		_, ok := t.own4[[4]byte(a[:4])]
		return ok
	}
	_, ok := t.own6[*a]
	return ok
}

func (t *tables) hop(s, d int32) Verdict {
	return t.verdict[int(s+reserved)*t.n+int(d+reserved)]
}

// mayCross reports whether a gateway may forward a flow from the origin
// address's class to the final address's class: both must be (unreserved)
// member classes in the cross table.
func (t *tables) mayCross(ver uint8, origin, final *[16]byte) bool {
	s, ok1 := t.addrClass(ver, origin)
	d, ok2 := t.addrClass(ver, final)
	if !ok1 || !ok2 || s < 0 || d < 0 {
		return false
	}
	c := t.n - reserved
	i := int(s)*c + int(d)
	return t.cross[i/64]&(1<<(i%64)) != 0
}

// end is one end of a hop: the local member's interface or the overlay,
// with the packet address on that end.
type end struct {
	local bool
	addr  *[16]byte
}

// judge decides one hop from its origin-side end o to its final-side end f,
// in the order of flow/nft's rules (see the package documentation).
func (t *tables) judge(ver uint8, o, f end) Verdict {
	// The ends' classes: a local end by the member behind the interface
	// (and whether it owns the address), a remote end by its address.
	var oc, fc int32
	var oOK, fOK, oOwn, fOwn bool
	if o.local {
		oc, oOK = t.localCls, t.local
		oOwn = oOK && t.owns(ver, o.addr)
	} else {
		oc, oOK = t.addrClass(ver, o.addr)
	}
	if f.local {
		fc, fOK = t.localCls, t.local
		fOwn = fOK && t.owns(ver, f.addr)
	} else {
		fc, fOK = t.addrClass(ver, f.addr)
	}
	// Fast path: every local end owns its address.
	if oOK && fOK && (!o.local || oOwn) && (!f.local || fOwn) {
		return t.hop(oc, fc)
	}
	// A local end that does not own its address is a gateway forwarding
	// someone else's flow, or a spoofer.
	if o.local && oOK && !oOwn {
		if !t.localGW {
			return VerdictSpoof
		}
		if !t.mayCross(ver, o.addr, f.addr) {
			return VerdictGatewayRefused
		}
	}
	if f.local && fOK && !fOwn {
		if !t.localGW {
			return VerdictMisroute
		}
		if !t.mayCross(ver, o.addr, f.addr) {
			return VerdictGatewayRefused
		}
	}
	if oOK && fOK {
		return t.hop(oc, fc)
	}
	return VerdictNonMember
}
