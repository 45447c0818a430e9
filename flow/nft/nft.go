package nft

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/flow"
)

// TableName is the name of the inet table a Programmer owns.
const TableName = "tvd"

// maxElemsPerMsg bounds the elements of one netlink message: the element
// list is one netlink attribute, whose length is 16 bits. Large changes are
// split over several messages of the same transaction.
const maxElemsPerMsg = 1000

// sockBuf is the netlink socket buffer size asked for, so that a large
// transaction (the first one, with every member) fits one sendmsg.
const sockBuf = 16 << 20

// ErrClosed is returned by a Programmer's methods after Close.
var ErrClosed = errors.New("nft: programmer closed")

// Config configures a Programmer.
type Config struct {
	// NetNS is the path of the network namespace to program, e.g.
	// /run/netns/node1 or /proc/<pid>/ns/net. Empty means the caller's
	// namespace.
	NetNS string
	// NetNSFd is an open handle of the network namespace to program, used
	// when NetNS is empty and NetNSFd > 0. The caller keeps it open for the
	// Programmer's lifetime and closes it.
	NetNSFd int
	// Table overrides the table name; empty means TableName.
	Table string
	// Logger receives debug records of applied changes; nil discards them.
	Logger *slog.Logger
}

// Counter is a named nftables counter.
type Counter struct {
	Packets uint64
	Bytes   uint64
}

// Programmer owns one nftables table (family inet) in one network
// namespace and keeps it equal to the last plan applied. It is safe for
// concurrent use.
type Programmer struct {
	mu      sync.Mutex
	log     *slog.Logger
	ns      *os.File
	conn    *nftables.Conn
	table   *nftables.Table
	sets    map[string]*nftables.Set
	applied *applied // nil until the table is built
	closed  bool
	opts    []nftables.ConnOption
}

// New opens a netlink connection into the configured namespace. It does not
// touch the kernel's rules: the first Apply builds the table.
func New(cfg Config) (*Programmer, error) {
	p := &Programmer{log: cfg.Logger}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	name := cfg.Table
	if name == "" {
		name = TableName
	}
	if len(name) > 255 {
		return nil, fmt.Errorf("nft: table name %q too long (at most 255 bytes)", name)
	}
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(bigBuffers)}
	if cfg.NetNS != "" {
		f, err := os.Open(cfg.NetNS)
		if err != nil {
			return nil, fmt.Errorf("nft: open network namespace: %w", err)
		}
		var st unix.Statfs_t
		if err := unix.Fstatfs(int(f.Fd()), &st); err != nil || (st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC) {
			f.Close()
			return nil, fmt.Errorf("nft: %s is not a network namespace file (want /run/netns/<name> or /proc/<pid>/ns/net)", cfg.NetNS)
		}
		p.ns = f
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	} else if cfg.NetNSFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNSFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		if p.ns != nil {
			p.ns.Close()
		}
		return nil, fmt.Errorf("nft: netlink: %w", err)
	}
	p.conn = c
	p.opts = opts
	p.table = &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	return p, nil
}

// bigBuffers raises the netlink socket buffers; as root it forces them past
// the system limit, otherwise it asks for what the limit allows.
func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, sockBuf)
		if serr == nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, sockBuf)
		}
	})
	if err == nil && serr == nil {
		return nil
	}
	if err := c.SetWriteBuffer(sockBuf); err != nil {
		return err
	}
	return c.SetReadBuffer(sockBuf)
}

// Table returns the name of the table the programmer owns.
func (p *Programmer) Table() string { return p.table.Name }

// Apply makes the table enforce plan. The first call builds the table, its
// sets, chains and rules in one transaction, atomically replacing a table
// of the same name left by an earlier run. Later calls send only the
// difference from the last applied plan (elements added to or removed from
// sets, changed verdict-map entries) as one transaction; chains and rules
// are never rebuilt. Applying the same plan twice sends nothing.
//
// If a transaction fails the kernel keeps its previous state, and the next
// Apply rebuilds the table from scratch (in one transaction), in case the
// table was changed behind the programmer's back.
func (p *Programmer) Apply(plan *flow.Plan) error {
	if err := plan.Validate(); err != nil {
		return fmt.Errorf("nft: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	if p.applied == nil {
		want := compile(plan)
		if err := p.build(want); err != nil {
			return fmt.Errorf("nft: build table %s: %w", p.table.Name, err)
		}
		p.applied = record(plan, want)
		p.log.Debug("nft table built", "table", p.table.Name, "members", len(plan.Members))
		return nil
	}
	var (
		changes []setChange
		commit  func()
	)
	if p.applied.sameGlobal(plan) {
		// Only members (or the quarantine) may differ: look at those.
		changes, commit = p.applied.memberDiff(plan)
	} else {
		want := compile(plan)
		changes = diff(p.applied.st, want)
		commit = func() { p.applied = record(plan, want) }
	}
	if len(changes) == 0 {
		commit()
		return nil
	}
	for _, ch := range changes {
		s := p.sets[ch.name]
		if err := p.sendElems(s, ch.del, p.conn.SetDeleteElements); err != nil {
			return fmt.Errorf("nft: %w", p.discard(err))
		}
		if err := p.sendElems(s, ch.add, p.conn.SetAddElements); err != nil {
			return fmt.Errorf("nft: %w", p.discard(err))
		}
	}
	if err := p.conn.Flush(); err != nil {
		p.applied = nil
		return fmt.Errorf("nft: update table %s: %w", p.table.Name, err)
	}
	commit()
	p.log.Debug("nft table updated", "table", p.table.Name, "changes", fmt.Sprint(changes))
	return nil
}

func (p *Programmer) sendElems(s *nftables.Set, es []nftables.SetElement, op func(*nftables.Set, []nftables.SetElement) error) error {
	for len(es) > 0 {
		n := min(len(es), maxElemsPerMsg)
		if err := op(s, es[:n]); err != nil {
			return fmt.Errorf("set %s: %w", s.Name, err)
		}
		es = es[n:]
	}
	return nil
}

// discard drops the messages queued on the connection after a failure to
// queue a transaction (they must never go out with a later one) by
// replacing the connection, and forgets the applied state so that the next
// Apply rebuilds the table.
func (p *Programmer) discard(cause error) error {
	p.applied = nil
	p.conn.CloseLasting()
	c, err := nftables.New(p.opts...)
	if err != nil {
		p.closed = true
		return errors.Join(cause, fmt.Errorf("reopen netlink: %w", err))
	}
	p.conn = c
	return cause
}

// build queues the whole table and flushes it as one transaction.
func (p *Programmer) build(want state) error {
	exists, err := p.tableExists()
	if err != nil {
		return err
	}
	carried := map[string]*nftables.CounterObj{}
	if exists {
		// Keep the counts of the table being replaced (an agent restart):
		// the new counters start where the old ones were read.
		if objs, err := p.conn.GetObjects(p.table); err == nil {
			for _, o := range objs {
				if c, ok := o.(*nftables.CounterObj); ok {
					carried[c.Name] = c
				}
			}
		}
		// Delete and recreate inside the same transaction: the kernel
		// switches from the old rules to the new ones atomically.
		p.conn.DelTable(p.table)
	}
	p.conn.AddTable(p.table)
	for _, name := range CounterNames() {
		c := &nftables.CounterObj{Table: p.table, Name: name}
		if old := carried[name]; old != nil {
			c.Packets, c.Bytes = old.Packets, old.Bytes
		}
		p.conn.AddObj(c)
	}
	p.sets = make(map[string]*nftables.Set, len(setDefs))
	for _, d := range setDefs {
		s := &nftables.Set{
			Table:         p.table,
			Name:          d.name,
			KeyType:       d.key,
			Concatenation: d.concat,
			KeyByteOrder:  d.order,
		}
		if d.data != nil {
			s.IsMap = true
			s.DataType = *d.data
		}
		if err := p.conn.AddSet(s, nil); err != nil {
			return p.discard(fmt.Errorf("set %s: %w", d.name, err))
		}
		p.sets[d.name] = s
	}
	// Chains first (the verdict map's elements jump to them), then the
	// elements, then the rules.
	rules := p.ruleset()
	chains := make(map[string]*nftables.Chain, len(rules))
	for _, cr := range rules {
		c := &nftables.Chain{Name: cr.name, Table: p.table}
		if cr.name == chainForward {
			accept := nftables.ChainPolicyAccept
			c.Hooknum = nftables.ChainHookForward
			c.Priority = nftables.ChainPriorityFilter
			c.Type = nftables.ChainTypeFilter
			c.Policy = &accept
		}
		chains[cr.name] = p.conn.AddChain(c)
	}
	for _, ch := range diff(nil, want) {
		if err := p.sendElems(p.sets[ch.name], ch.add, p.conn.SetAddElements); err != nil {
			return p.discard(err)
		}
	}
	for _, cr := range rules {
		for _, r := range cr.rules {
			p.conn.AddRule(&nftables.Rule{Table: p.table, Chain: chains[cr.name], Exprs: r})
		}
	}
	return p.conn.Flush()
}

func (p *Programmer) tableExists() (bool, error) {
	ts, err := p.conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("list tables: %w", err)
	}
	for _, t := range ts {
		if t.Name == p.table.Name {
			return true, nil
		}
	}
	return false, nil
}

// Counters returns every named counter of the table (see CounterNames):
// packets and bytes since the table was first built. When a table is
// replaced (the first Apply of a new Programmer, or the Apply after a
// failed update) the counts are carried over; packets counted between the
// read and the replacement are lost.
func (p *Programmer) Counters() (map[string]Counter, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	objs, err := p.conn.GetObjects(p.table)
	if err != nil {
		return nil, fmt.Errorf("nft: read counters: %w", err)
	}
	out := make(map[string]Counter, len(objs))
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			out[c.Name] = Counter{Packets: c.Packets, Bytes: c.Bytes}
		}
	}
	return out, nil
}

// Remove deletes the table, and with it every rule, set and counter, in
// one transaction. Removing a table that does not exist is not an error.
// A later Apply builds the table again.
func (p *Programmer) Remove() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.applied = nil
	p.conn.DelTable(p.table)
	if err := p.conn.Flush(); err != nil && !errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("nft: delete table %s: %w", p.table.Name, err)
	}
	return nil
}

// Close releases the netlink connection and the namespace handle. It leaves
// the table in place: enforcement outlives the process (fail closed); call
// Remove first to take the rules down.
func (p *Programmer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	err := p.conn.CloseLasting()
	if p.ns != nil {
		if cerr := p.ns.Close(); err == nil {
			err = cerr
		}
		p.ns = nil
	}
	if err != nil {
		return fmt.Errorf("nft: close: %w", err)
	}
	return nil
}
