package dataplane

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// NodeTable is the nftables table (family inet) the data plane owns beside
// flow/nft's: its input chain drops every packet an EE addresses to the
// node itself (the node's own addresses, its underlay, its services), which
// flow/nft, judging the forward hook only, never sees. IPv6 neighbour
// discovery is let through so that IPv6 members can resolve their gateway.
// ARP is not IP and is not affected.
const NodeTable = "tvd-node"

const guardSet = "ees"

// guard keeps NodeTable's set of EE interfaces equal to the attached EEs,
// incrementally.
type guard struct {
	nsFd  int
	conn  *nftables.Conn
	table *nftables.Table
	set   *nftables.Set
	ifs   map[string]bool // in the kernel's set; nil until built
}

func newGuard(nsFd int) (*guard, error) {
	c, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(nsFd))
	if err != nil {
		return nil, fmt.Errorf("node guard: netlink: %w", err)
	}
	return &guard{nsFd: nsFd, conn: c, table: &nftables.Table{Name: NodeTable, Family: nftables.TableFamilyINet}}, nil
}

func ifnameKey(n string) []byte {
	b := make([]byte, 16)
	copy(b, n)
	return b
}

// sync makes the set hold exactly names, building the table on first use
// (replacing one left by an earlier run in the same transaction).
func (g *guard) sync(names []string) error {
	want := make(map[string]bool, len(names))
	for _, n := range names {
		want[n] = true
	}
	if g.ifs == nil {
		return g.build(want)
	}
	var add, del []nftables.SetElement
	for n := range want {
		if !g.ifs[n] {
			add = append(add, nftables.SetElement{Key: ifnameKey(n)})
		}
	}
	for n := range g.ifs {
		if !want[n] {
			del = append(del, nftables.SetElement{Key: ifnameKey(n)})
		}
	}
	if len(add) == 0 && len(del) == 0 {
		return nil
	}
	if len(del) > 0 {
		if err := g.conn.SetDeleteElements(g.set, del); err != nil {
			return g.fail(err)
		}
	}
	if len(add) > 0 {
		if err := g.conn.SetAddElements(g.set, add); err != nil {
			return g.fail(err)
		}
	}
	if err := g.conn.Flush(); err != nil {
		return g.fail(err)
	}
	g.ifs = want
	return nil
}

// fail forgets the applied state so that the next sync rebuilds the
// table in one transaction.
// A new connection drops whatever the failed transaction left queued.
func (g *guard) fail(err error) error {
	g.ifs = nil
	g.conn.CloseLasting()
	if c, cerr := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(g.nsFd)); cerr == nil {
		g.conn = c
	} else {
		err = errors.Join(err, fmt.Errorf("reopen netlink: %w", cerr))
	}
	return fmt.Errorf("node guard: %w", err)
}

func (g *guard) build(want map[string]bool) error {
	tables, err := g.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("node guard: list tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == NodeTable {
			g.conn.DelTable(g.table)
		}
	}
	g.conn.AddTable(g.table)
	g.set = &nftables.Set{Table: g.table, Name: guardSet, KeyType: nftables.TypeIFName}
	elems := make([]nftables.SetElement, 0, len(want))
	for n := range want {
		elems = append(elems, nftables.SetElement{Key: ifnameKey(n)})
	}
	if err := g.conn.AddSet(g.set, elems); err != nil {
		return g.fail(err)
	}
	accept := nftables.ChainPolicyAccept
	ch := g.conn.AddChain(&nftables.Chain{Name: "input", Table: g.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &accept})
	fromEE := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Lookup{SourceRegister: 1, SetName: g.set.Name, SetID: g.set.ID},
	}
	nd := append(append([]expr.Any{}, fromEE...),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_ICMPV6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		// Router solicitation to redirect: 133..137.
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{137}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)
	drop := append(append([]expr.Any{}, fromEE...), &expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
	g.conn.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: nd})
	g.conn.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: drop})
	if err := g.conn.Flush(); err != nil {
		return g.fail(fmt.Errorf("build table %s: %w", NodeTable, err))
	}
	g.ifs = want
	return nil
}

// remove deletes the table if this guard built it.
func (g *guard) remove() error {
	if g.ifs == nil {
		return nil
	}
	g.ifs = nil
	g.conn.DelTable(g.table)
	if err := g.conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("node guard: delete table %s: %w", NodeTable, err)
	}
	return nil
}

func (g *guard) close() error { return g.conn.CloseLasting() }
