package nft

import (
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Registers. reg1..reg3 are 16-byte registers (32-bit words 0-3, 4-7,
// 8-11); reg32xNN names word NN. A class looked up into reg1 (word 0) and
// another into reg32x01 (word 1) form the 8-byte key "class . class" of the
// verdict map. An "ifname . address" key is an interface name (16 bytes)
// followed by the address: in reg1 then reg32x04 (IPv4) or reg2 (IPv6), or
// in reg2 then reg32x08 (IPv4) or reg3 (IPv6).
const (
	regVerdict = unix.NFT_REG_VERDICT
	reg1       = unix.NFT_REG_1
	reg2       = unix.NFT_REG_2
	reg3       = unix.NFT_REG_3
	reg32x01   = unix.NFT_REG32_01
	reg32x04   = unix.NFT_REG32_04
	reg32x08   = unix.NFT_REG32_08
)

const (
	chainForward = "forward"
	chainCheck   = "check"
)

// family holds what differs between IPv4 and IPv6 in the rules.
type family struct {
	name           string // "4" or "6"
	proto          byte
	srcOff, dstOff uint32
	addrLen        uint32
	cls, bind      string
	reach          string
	bindAddrReg    uint32 // the address after an interface name in reg1
	bindAddrReg2   uint32 // the address after an interface name in reg2
}

var families = []family{
	{name: "4", proto: unix.NFPROTO_IPV4, srcOff: 12, dstOff: 16, addrLen: 4,
		cls: mapCls4, bind: setBind4, reach: mapReach4, bindAddrReg: reg32x04, bindAddrReg2: reg32x08},
	{name: "6", proto: unix.NFPROTO_IPV6, srcOff: 8, dstOff: 24, addrLen: 16,
		cls: mapCls6, bind: setBind6, reach: mapReach6, bindAddrReg: reg2, bindAddrReg2: reg3},
}

// side is one end of a hop as the rules see it: the interface the packet
// uses on that end and the address of that end of the flow.
type side struct {
	iface expr.MetaKey
	src   bool // the address is the packet's source (else its destination)
}

var (
	inSide  = side{iface: expr.MetaKeyIIFNAME, src: true}
	outSide = side{iface: expr.MetaKeyOIFNAME, src: false}
)

// direction is a conntrack direction. In the original direction the flow's
// origin is the packet's source; in the reply direction it is the packet's
// destination, so a reply is judged as the flow it answers.
type direction struct {
	name          string
	origin, final side
}

var directions = []direction{
	{name: "orig", origin: inSide, final: outSide},
	{name: "reply", origin: outSide, final: inSide},
}

func mainChain(d direction, f family) string { return d.name + f.name }
func originChain(d direction, f family) string {
	return d.name + f.name + "-o"
}
func finalChain(d direction, f family) string { return d.name + f.name + "-f" }
func familyChain(f family) string             { return chainCheck + f.name }

// Expression helpers.

func nfproto(f family) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{f.proto}},
	}
}

func loadIf(s side, reg uint32) expr.Any { return &expr.Meta{Key: s.iface, Register: reg} }

func loadAddr(f family, s side, reg uint32) expr.Any {
	off := f.dstOff
	if s.src {
		off = f.srcOff
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.addrLen}
}

func (p *Programmer) in(set string, sreg uint32, invert bool) expr.Any {
	s := p.sets[set]
	return &expr.Lookup{SourceRegister: sreg, SetName: s.Name, SetID: s.ID, Invert: invert}
}

func (p *Programmer) mapTo(set string, sreg, dreg uint32) expr.Any {
	s := p.sets[set]
	return &expr.Lookup{SourceRegister: sreg, DestRegister: dreg, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}
}

func counter(name string) expr.Any {
	return &expr.Objref{Type: int(nftables.ObjTypeCounter), Name: name}
}

func verdict(k expr.VerdictKind) expr.Any           { return &expr.Verdict{Kind: k} }
func jump(kind expr.VerdictKind, c string) expr.Any { return &expr.Verdict{Kind: kind, Chain: c} }

func verdictFor(chain string) *expr.Verdict {
	return &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func ex(e ...expr.Any) []expr.Any { return e }

// chainRules is the fixed rule set: chain name -> rules, in creation order.
// Every chain but the base chain is a regular chain.
type chainRules struct {
	name  string
	rules [][]expr.Any
}

// ruleset returns the table's chains and rules. They never change after
// the table is built; only set and map elements do.
func (p *Programmer) ruleset() []chainRules {
	var out []chainRules

	// Base chain: only traffic through an EE or overlay interface is ours;
	// it goes to its family's chain.
	var fwd [][]expr.Any
	for _, s := range []side{inSide, outSide} {
		for _, f := range families {
			fwd = append(fwd, cat(ex(loadIf(s, reg2), p.in(setScope, reg2, false)), nfproto(f), ex(jump(expr.VerdictGoto, familyChain(f)))))
		}
	}
	out = append(out, chainRules{name: chainForward, rules: fwd})

	for _, f := range families {
		var r [][]expr.Any
		r = append(r,
			ex(&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{ctDirReply}},
				jump(expr.VerdictGoto, mainChain(directions[1], f))),
			ex(jump(expr.VerdictGoto, mainChain(directions[0], f))),
		)
		out = append(out, chainRules{name: familyChain(f), rules: r})

		for _, d := range directions {
			out = append(out, p.directionChains(d, f)...)
		}
	}

	for _, v := range verdictChains {
		k := expr.VerdictDrop
		if v.accept {
			k = expr.VerdictAccept
		}
		out = append(out, chainRules{name: v.chain, rules: [][]expr.Any{ex(counter(v.counter), verdict(k))}})
	}
	return out
}

// directionChains returns the main chain of one direction and family and
// its two hop-check chains.
func (p *Programmer) directionChains(d direction, f family) []chainRules {
	o, fin := d.origin, d.final
	// mismatch matches when the end s is a member's local interface whose
	// EE does not own the end's address: a gateway forwarding someone
	// else's flow, or a spoofed/misrouted packet. (An EE interface with no
	// member behind it is a non-member.)
	mismatch := func(s side) []expr.Any {
		return ex(
			loadIf(s, reg2), p.in(mapIfCls, reg2, false),
			loadIf(s, reg1), loadAddr(f, s, f.bindAddrReg), p.in(f.bind, reg1, true),
		)
	}
	notLocal := func(s side) []expr.Any { return ex(loadIf(s, reg2), p.in(setEEIfs, reg2, true)) }
	ifClass := func(s side, dreg uint32) []expr.Any {
		return ex(loadIf(s, reg2), p.mapTo(mapIfCls, reg2, dreg))
	}
	addrClass := func(s side, dreg uint32) []expr.Any {
		return ex(loadAddr(f, s, reg2), p.mapTo(f.cls, reg2, dreg))
	}
	// reachO and reachF classify a remote end reached through a gateway
	// on the peer node (the reach maps, keyed "overlay interface .
	// address"); they come before the plain address lookup, which they
	// override. The origin end is classified first (its key spans reg1
	// onwards and its class lands in reg1's first word), then the final
	// end (key in reg2 onwards, class in reg32x01).
	reachO := ex(loadIf(o, reg1), loadAddr(f, o, f.bindAddrReg), p.mapTo(f.reach, reg1, reg1))
	reachF := ex(loadIf(fin, reg2), loadAddr(f, fin, f.bindAddrReg2), p.mapTo(f.reach, reg2, reg32x01))
	vmap := ex(p.mapTo(mapVerdict, reg1, regVerdict))
	// ownClass looks up "interface . address" of a local end in the bind
	// map: it matches only when the EE behind the interface owns the
	// address, and yields its class. The key of the origin end goes in
	// reg1 onwards, that of the final end in reg2 onwards (their classes
	// land in reg1's first word and reg32x01).
	ownClassO := ex(loadIf(o, reg1), loadAddr(f, o, f.bindAddrReg), p.mapTo(f.bind, reg1, reg1))
	ownClassF := ex(loadIf(fin, reg2), loadAddr(f, fin, f.bindAddrReg2), p.mapTo(f.bind, reg2, reg32x01))

	main := chainRules{name: mainChain(d, f), rules: [][]expr.Any{
		// Fast paths for the common case, where each local end owns its
		// address: one lookup per end, then the verdict map. They give
		// the same answer as the general rules below.
		cat(ownClassO, ownClassF, vmap),
		cat(notLocal(fin), ownClassO, reachF, vmap),
		cat(notLocal(fin), ownClassO, addrClass(fin, reg32x01), vmap),
		cat(notLocal(o), reachO, ownClassF, vmap),
		cat(notLocal(o), addrClass(o, reg1), ownClassF, vmap),
		cat(mismatch(o), ex(jump(expr.VerdictJump, originChain(d, f)))),
		cat(mismatch(fin), ex(jump(expr.VerdictJump, finalChain(d, f)))),
		// The hop's classes: a local end by its interface, a remote end
		// by its address; then one verdict-map lookup.
		cat(ifClass(o, reg1), ifClass(fin, reg32x01), vmap),
		cat(notLocal(fin), ifClass(o, reg1), reachF, vmap),
		cat(notLocal(fin), ifClass(o, reg1), addrClass(fin, reg32x01), vmap),
		cat(notLocal(o), reachO, ifClass(fin, reg32x01), vmap),
		cat(notLocal(o), addrClass(o, reg1), ifClass(fin, reg32x01), vmap),
		cat(notLocal(o), notLocal(fin), reachO, reachF, vmap),
		cat(notLocal(o), notLocal(fin), reachO, addrClass(fin, reg32x01), vmap),
		cat(notLocal(o), notLocal(fin), addrClass(o, reg1), reachF, vmap),
		cat(notLocal(o), notLocal(fin), addrClass(o, reg1), addrClass(fin, reg32x01), vmap),
		ex(counter(CounterNonMember), verdict(expr.VerdictDrop)),
	}}
	// A hop end that does not own its address must be a gateway, and the
	// flow's origin must be allowed to cross into the final domain.
	crossOK := cat(addrClass(o, reg1), addrClass(fin, reg32x01), ex(p.in(setCross, reg1, false), verdict(expr.VerdictReturn)))
	refused := ex(counter(CounterGatewayRefused), verdict(expr.VerdictDrop))
	hop := func(name string, s side, bad string) chainRules {
		return chainRules{name: name, rules: [][]expr.Any{
			ex(loadIf(s, reg2), p.in(setGwIfs, reg2, true), counter(bad), verdict(expr.VerdictDrop)),
			crossOK,
			refused,
		}}
	}
	return []chainRules{main, hop(originChain(d, f), o, CounterSpoof), hop(finalChain(d, f), fin, CounterMisroute)}
}

// ctDirReply is IP_CT_DIR_REPLY, the value of "ct direction" for a reply.
const ctDirReply = 1
