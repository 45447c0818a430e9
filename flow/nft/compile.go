package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"

	"github.com/tvd-dev/tvd/flow"
)

// Names of the sets and maps of the tvd table.
const (
	setScope   = "scope"   // ifname: EE and overlay interfaces (filtered)
	setEEIfs   = "eeifs"   // ifname: local EE interfaces
	setGwIfs   = "gwifs"   // ifname: interfaces of local gateway EEs
	mapIfCls   = "ifcls"   // ifname -> class of the local EE behind it
	mapCls4    = "cls4"    // ipv4 -> class
	mapCls6    = "cls6"    // ipv6 -> class
	setBind4   = "bind4"   // ifname . ipv4 -> class: a local EE's own addresses
	setBind6   = "bind6"   // ifname . ipv6 -> class
	mapReach4  = "reach4"  // ifname . ipv4 -> class: addresses reached through a peer's gateway
	mapReach6  = "reach6"  // ifname . ipv6 -> class
	setCross   = "cross"   // class . class: origin may cross to final's domain
	mapVerdict = "verdict" // class . class -> jump to a verdict chain
)

var (
	typeClass     = nftables.TypeInteger
	typeClassPair = nftables.MustConcatSetType(nftables.TypeInteger, nftables.TypeInteger)
	typeBind4     = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIPAddr)
	typeBind6     = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIP6Addr)
)

// setDef describes one named set or map of the table.
type setDef struct {
	name   string
	key    nftables.SetDatatype
	data   *nftables.SetDatatype // nil: a plain set
	concat bool
	order  binaryutil.ByteOrder
}

var setDefs = []setDef{
	{name: setScope, key: nftables.TypeIFName},
	{name: setEEIfs, key: nftables.TypeIFName},
	{name: setGwIfs, key: nftables.TypeIFName},
	{name: mapIfCls, key: nftables.TypeIFName, data: &typeClass},
	{name: mapCls4, key: nftables.TypeIPAddr, data: &typeClass, order: binaryutil.BigEndian},
	{name: mapCls6, key: nftables.TypeIP6Addr, data: &typeClass, order: binaryutil.BigEndian},
	{name: setBind4, key: typeBind4, data: &typeClass, concat: true},
	{name: setBind6, key: typeBind6, data: &typeClass, concat: true},
	{name: mapReach4, key: typeBind4, data: &typeClass, concat: true},
	{name: mapReach6, key: typeBind6, data: &typeClass, concat: true},
	{name: setCross, key: typeClassPair, concat: true, order: binaryutil.NativeEndian},
	{name: mapVerdict, key: typeClassPair, data: &nftables.TypeVerdict, concat: true, order: binaryutil.NativeEndian},
}

// state is the content of every set and map: set name -> element key ->
// element value (the class bytes of a map, the target chain of the verdict
// map, "" for a plain set). Keys and values are raw bytes held in strings.
type state map[string]map[string]string

// The verdict chains: the verdict map jumps to one of them, so each verdict
// has its own named counter.
const (
	chainIntra        = "v-intra"
	chainUnrestricted = "v-unrestricted"
	chainP2PAllow     = "v-p2p-allow"
	chainP2PDeny      = "v-p2p-deny"
	chainNone         = "v-none"
	chainViaDirect    = "v-via-direct"
	chainQuarantine   = "v-quarantine"
	chainController   = "v-controller"
)

// Counter names, as returned by Programmer.Counters.
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
)

// verdictChains maps each verdict chain to its counter and verdict.
var verdictChains = []struct {
	chain, counter string
	accept         bool
}{
	{chainIntra, CounterIntra, true},
	{chainUnrestricted, CounterUnrestricted, true},
	{chainP2PAllow, CounterP2PAllow, true},
	{chainP2PDeny, CounterP2PDeny, false},
	{chainNone, CounterNone, false},
	{chainViaDirect, CounterViaDirect, false},
	{chainQuarantine, CounterQuarantine, false},
	{chainController, CounterController, true},
}

// CounterNames lists every named counter of the table, in a stable order.
func CounterNames() []string {
	return []string{
		CounterIntra, CounterUnrestricted, CounterP2PAllow, CounterController,
		CounterP2PDeny, CounterNone, CounterViaDirect, CounterQuarantine,
		CounterSpoof, CounterMisroute, CounterGatewayRefused, CounterNonMember,
	}
}

// verdictChain returns the chain the verdict map sends a hop from class s
// to class d to. It follows flow.Matrix.Decide.
func verdictChain(m *flow.Matrix, s, d flow.ClassID) string {
	dec := m.Decide(s, d)
	if m.ClassDomain(s) == m.ClassDomain(d) {
		return chainIntra
	}
	switch dec.Rule {
	case flow.RuleUnrestricted:
		return chainUnrestricted
	case flow.RulePointToPoint:
		if dec.Direct {
			return chainP2PAllow
		}
		return chainP2PDeny
	case flow.RuleViaGateway:
		return chainViaDirect
	}
	return chainNone
}

func classBytes(c flow.ClassID) string {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], uint32(c))
	return string(b[:])
}

func ifname(n string) string {
	var b [16]byte
	copy(b[:], n)
	return string(b[:])
}

func addrBytes(a netip.Addr) string { return string(a.AsSlice()) }

func newState(members int) state {
	st := make(state, len(setDefs))
	for _, d := range setDefs {
		size := 0
		switch d.name {
		case mapCls4, mapCls6:
			size = members
		}
		st[d.name] = make(map[string]string, size)
	}
	return st
}

func (st state) put(set, k, v string) { st[set][k] = v }

// compile turns a validated plan into the wanted content of every set.
func compile(p *flow.Plan) state {
	st := newState(len(p.Members))
	compileGlobal(p, st)
	quar := quarantined(p)
	for _, mem := range p.Members {
		compileMember(p.Matrix, mem, quar[mem.EE], st)
	}
	return st
}

func quarantined(p *flow.Plan) map[string]bool {
	quar := make(map[string]bool, len(p.Quarantine))
	for _, q := range p.Quarantine {
		quar[q] = true
	}
	return quar
}

// compileGlobal adds what does not depend on single members: interfaces,
// controllers and the matrix.
func compileGlobal(p *flow.Plan, st state) {
	for _, n := range p.EEInterfaces {
		st.put(setScope, ifname(n), "")
		st.put(setEEIfs, ifname(n), "")
	}
	for _, n := range p.OverlayInterfaces {
		st.put(setScope, ifname(n), "")
	}
	for _, r := range p.Reach {
		set := mapReach6
		if r.Addr.Is4() {
			set = mapReach4
		}
		st.put(set, ifname(r.Iface)+addrBytes(r.Addr), classBytes(r.Class))
	}
	for _, c := range p.Controllers {
		if c.Is4() {
			st.put(mapCls4, addrBytes(c), controllerClass)
		} else {
			st.put(mapCls6, addrBytes(c), controllerClass)
		}
	}
	m := p.Matrix
	n := m.NumClasses()
	for s := range n {
		for d := range n {
			sc, dc := flow.ClassID(s), flow.ClassID(d)
			key := classBytes(sc) + classBytes(dc)
			st.put(mapVerdict, key, verdictChain(m, sc, dc))
			if m.MayCross(sc, m.ClassDomain(dc)) {
				st.put(setCross, key, "")
			}
		}
		c := classBytes(flow.ClassID(s))
		st.put(mapVerdict, quarantineClass+c, chainQuarantine)
		st.put(mapVerdict, c+quarantineClass, chainQuarantine)
	}
	st.put(mapVerdict, quarantineClass+quarantineClass, chainQuarantine)
	// The controllers are reachable from every class, the quarantine
	// included, and reach every class.
	for s := -2; s < n; s++ {
		c := classBytes(flow.ClassID(s))
		st.put(mapVerdict, controllerClass+c, chainController)
		st.put(mapVerdict, c+controllerClass, chainController)
	}
}

// quarantineClass is the class value a quarantined member gets in the
// address and interface maps instead of its own: every verdict-map entry
// with it on either side drops. It is no class of any matrix (ClassID is
// a non-negative int32).
var quarantineClass = classBytes(-1)

// controllerClass is the class of the controller addresses in the address
// maps: every verdict-map entry with it on either side accepts.
var controllerClass = classBytes(-2)

// compileMember adds one member's elements. Members' elements never
// overlap: a validated plan gives each address and interface to one
// member.
func compileMember(m *flow.Matrix, mem flow.PlanMember, quar bool, st state) {
	cls := classBytes(mem.Class)
	if quar {
		cls = quarantineClass
	}
	var ifn string
	if mem.Iface != "" {
		ifn = ifname(mem.Iface)
		st.put(mapIfCls, ifn, cls)
		if m.IsGateway(mem.Class) {
			st.put(setGwIfs, ifn, "")
		}
	}
	for _, a := range mem.Addrs {
		ab := addrBytes(a)
		clsMap, bind := mapCls6, setBind6
		if a.Is4() {
			clsMap, bind = mapCls4, setBind4
		}
		st.put(clsMap, ab, cls)
		if ifn != "" {
			st.put(bind, ifn+ab, cls)
		}
	}
}

// applied records what a Programmer last applied, to find what changed.
type applied struct {
	st      state
	matrix  *flow.Matrix
	eeIfs   []string
	overlay []string
	ctrls   []netip.Addr
	reach   []flow.Reach
	members map[string]memberState
}

type memberState struct {
	m    flow.PlanMember
	quar bool
}

func record(p *flow.Plan, st state) *applied {
	a := &applied{
		st:      st,
		matrix:  p.Matrix,
		eeIfs:   slices.Clone(p.EEInterfaces),
		overlay: slices.Clone(p.OverlayInterfaces),
		ctrls:   slices.Clone(p.Controllers),
		reach:   slices.Clone(p.Reach),
		members: make(map[string]memberState, len(p.Members)),
	}
	quar := quarantined(p)
	for _, m := range p.Members {
		m.Addrs = slices.Clone(m.Addrs)
		a.members[m.EE] = memberState{m: m, quar: quar[m.EE]}
	}
	return a
}

// sameGlobal reports whether p has the same matrix, interfaces and
// controllers as the recorded plan.
func (a *applied) sameGlobal(p *flow.Plan) bool {
	return a.matrix == p.Matrix && slices.Equal(a.eeIfs, p.EEInterfaces) &&
		slices.Equal(a.overlay, p.OverlayInterfaces) && slices.Equal(a.ctrls, p.Controllers) &&
		slices.Equal(a.reach, p.Reach)
}

// memberDiff returns the set changes for a plan that differs from the
// recorded one only in members and quarantine, looking at changed members
// only, and updates the record as if the changes were applied (commit
// them with the returned function).
func (a *applied) memberDiff(p *flow.Plan) ([]setChange, func()) {
	quar := quarantined(p)
	oldPart, newPart := newState(0), newState(0)
	found := 0
	var changed []memberState
	for _, m := range p.Members {
		ms := memberState{m: m, quar: quar[m.EE]}
		old, ok := a.members[m.EE]
		if ok {
			found++
			if old.quar == ms.quar && old.m.Class == m.Class && old.m.Iface == m.Iface && slices.Equal(old.m.Addrs, m.Addrs) {
				continue
			}
			compileMember(a.matrix, old.m, old.quar, oldPart)
		}
		compileMember(p.Matrix, m, ms.quar, newPart)
		ms.m.Addrs = slices.Clone(m.Addrs)
		changed = append(changed, ms)
	}
	// EE names are unique, so some recorded member is gone exactly when
	// fewer than all of them were found.
	var removed []string
	if found < len(a.members) {
		seen := make(map[string]bool, len(p.Members))
		for _, m := range p.Members {
			seen[m.EE] = true
		}
		for ee, old := range a.members {
			if !seen[ee] {
				compileMember(a.matrix, old.m, old.quar, oldPart)
				removed = append(removed, ee)
			}
		}
	}
	changes := diff(oldPart, newPart)
	commit := func() {
		for _, ch := range changes {
			set := a.st[ch.name]
			for _, e := range ch.del {
				delete(set, string(e.Key))
			}
		}
		for name, els := range newPart {
			for k, v := range els {
				a.st[name][k] = v
			}
		}
		for _, ee := range removed {
			delete(a.members, ee)
		}
		for _, ms := range changed {
			a.members[ms.m.EE] = ms
		}
	}
	return changes, commit
}

// setChange is the change of one set: elements to delete, then to add.
type setChange struct {
	name     string
	del, add []nftables.SetElement
}

// diff returns the per-set changes that turn old into new, in setDefs
// order. A map element whose value changed is deleted and added again.
func diff(old, new state) []setChange {
	var out []setChange
	for _, d := range setDefs {
		o, n := old[d.name], new[d.name]
		var ch setChange
		ch.name = d.name
		for k, ov := range o {
			if nv, ok := n[k]; !ok || nv != ov {
				ch.del = append(ch.del, element(d, k, ov))
			}
		}
		for k, nv := range n {
			if ov, ok := o[k]; !ok || ov != nv {
				ch.add = append(ch.add, element(d, k, nv))
			}
		}
		if len(ch.del)+len(ch.add) == 0 {
			continue
		}
		sortElems(ch.del)
		sortElems(ch.add)
		out = append(out, ch)
	}
	return out
}

func sortElems(es []nftables.SetElement) {
	sort.Slice(es, func(i, j int) bool { return string(es[i].Key) < string(es[j].Key) })
}

func element(d setDef, k, v string) nftables.SetElement {
	e := nftables.SetElement{Key: []byte(k)}
	switch {
	case d.data == nil:
	case d.data.Name == nftables.TypeVerdict.Name:
		e.VerdictData = verdictFor(v)
	default:
		e.Val = []byte(v)
	}
	return e
}

func (c setChange) String() string {
	return fmt.Sprintf("%s: -%d +%d", c.name, len(c.del), len(c.add))
}
