// Package flow holds the compiled cross-domain flow matrix and answers flow
// decisions on it. It is pure: no networking, no store.
//
// The matrix follows ARCHITECTURE §5 and the paper's Table 3. Rows are
// classes (a domain and one of its roles); columns are destination domains.
// Each cell is one of four rules:
//
//   - unrestricted: any member of the destination domain may be reached;
//   - none: nothing, not even through a gateway;
//   - point-to-point (the paper's Rule P): only destination EEs whose role is
//     in the cell's role set (by default the destination's gateway role);
//   - via-gateway (Rule G): only through a gateway. The packet goes to a
//     gateway of the source domain, which forwards it (itself under Rule P)
//     to a gateway of the destination domain.
//
// Traffic inside one domain is always allowed. A decision is a table lookup
// with no allocation; the policy compiler builds the table once.
package flow

import (
	"fmt"
	"math/bits"
	"sort"
)

// Rule is the value of one cell of the flow matrix. The zero value is
// RuleNone, so an unset cell denies.
type Rule uint8

// The rules of the paper's Table 3.
const (
	RuleNone Rule = iota
	RuleUnrestricted
	RulePointToPoint
	RuleViaGateway
)

var ruleNames = [...]string{"none", "unrestricted", "point-to-point", "via-gateway"}

func (r Rule) String() string {
	if int(r) < len(ruleNames) {
		return ruleNames[r]
	}
	return fmt.Sprintf("Rule(%d)", r)
}

// ParseRule parses the policy spelling of a rule.
func ParseRule(s string) (Rule, error) {
	for i, n := range ruleNames {
		if s == n {
			return Rule(i), nil
		}
	}
	return RuleNone, fmt.Errorf("unknown flow rule %q (want unrestricted, none, point-to-point or via-gateway)", s)
}

// MaxRoles is the largest number of roles a domain may declare: a cell's
// role set is a 64-bit mask.
const MaxRoles = 64

// Domain describes one domain's roles for the matrix. Roles are kept in the
// order given; Gateways lists the indexes of its gateway roles.
type Domain struct {
	Name     string   `json:"name"`
	Roles    []string `json:"roles"`
	Gateways []int    `json:"gateways,omitempty"`
}

// ClassID identifies a (domain, role) row of the matrix.
type ClassID int32

// Matrix is the compiled flow matrix. It is immutable once built and safe
// for concurrent use.
type Matrix struct {
	domains  []Domain
	byName   map[string]int
	classOff []ClassID // first ClassID of each domain
	classDom []int32   // domain of each class
	cells    []uint32  // rule in the low 2 bits, role-set index above
	roleSets []uint64  // distinct destination role masks; index 0 is empty
	gwMask   []uint64  // per domain: mask of gateway roles
}

// Builder fills a Matrix. Cells not set are RuleNone.
type Builder struct {
	m      *Matrix
	setIdx map[uint64]uint32
}

// NewBuilder returns a builder for the given domains. Domain names must be
// unique and each domain may have at most MaxRoles roles.
func NewBuilder(domains []Domain) (*Builder, error) {
	m := &Matrix{domains: domains, byName: make(map[string]int, len(domains))}
	var n ClassID
	for i, d := range domains {
		if _, dup := m.byName[d.Name]; dup {
			return nil, fmt.Errorf("domain %q listed twice", d.Name)
		}
		if len(d.Roles) > MaxRoles {
			return nil, fmt.Errorf("domain %q has %d roles; at most %d are allowed", d.Name, len(d.Roles), MaxRoles)
		}
		var gw uint64
		for _, g := range d.Gateways {
			if g < 0 || g >= len(d.Roles) {
				return nil, fmt.Errorf("domain %q: gateway role index %d out of range", d.Name, g)
			}
			gw |= 1 << g
		}
		m.byName[d.Name] = i
		m.classOff = append(m.classOff, n)
		m.gwMask = append(m.gwMask, gw)
		for range d.Roles {
			m.classDom = append(m.classDom, int32(i))
		}
		n += ClassID(len(d.Roles))
	}
	m.cells = make([]uint32, int(n)*len(domains))
	m.roleSets = []uint64{0}
	return &Builder{m: m, setIdx: map[uint64]uint32{0: 0}}, nil
}

// Set sets the cell for source class src towards destination domain dst.
// roles is the destination role mask for RulePointToPoint and is ignored
// otherwise.
func (b *Builder) Set(src ClassID, dst int, rule Rule, roles uint64) {
	if rule != RulePointToPoint {
		roles = 0
	}
	if roles == 0 {
		b.m.cells[int(src)*len(b.m.domains)+dst] = uint32(rule)
		return
	}
	idx, ok := b.setIdx[roles]
	if !ok {
		idx = uint32(len(b.m.roleSets))
		b.m.roleSets = append(b.m.roleSets, roles)
		b.setIdx[roles] = idx
	}
	b.m.cells[int(src)*len(b.m.domains)+dst] = uint32(rule) | idx<<2
}

// Class returns the class of role r in domain d; both are indexes.
func (b *Builder) Class(d, r int) ClassID { return b.m.classOff[d] + ClassID(r) }

// Build returns the finished matrix. The builder must not be used afterwards.
func (b *Builder) Build() *Matrix { m := b.m; b.m = nil; return m }

// Domains returns the matrix's domains in index order. The slice must not be
// modified.
func (m *Matrix) Domains() []Domain { return m.domains }

// DomainIndex returns the index of the named domain.
func (m *Matrix) DomainIndex(name string) (int, bool) {
	i, ok := m.byName[name]
	return i, ok
}

// NumClasses returns the number of (domain, role) classes.
func (m *Matrix) NumClasses() int { return len(m.classDom) }

// Class returns the class of a domain's role.
func (m *Matrix) Class(domain, role string) (ClassID, bool) {
	d, ok := m.byName[domain]
	if !ok {
		return 0, false
	}
	for i, r := range m.domains[d].Roles {
		if r == role {
			return m.classOff[d] + ClassID(i), true
		}
	}
	return 0, false
}

// ClassName returns the domain and role names of c.
func (m *Matrix) ClassName(c ClassID) (domain, role string) {
	d := m.classDom[c]
	return m.domains[d].Name, m.domains[d].Roles[c-m.classOff[d]]
}

// ClassDomain returns the domain index of c.
func (m *Matrix) ClassDomain(c ClassID) int { return int(m.classDom[c]) }

// Cell returns the rule and destination role mask of the cell for source
// class src towards destination domain dst.
func (m *Matrix) Cell(src ClassID, dst int) (Rule, uint64) {
	v := m.cells[int(src)*len(m.domains)+dst]
	return Rule(v & 3), m.roleSets[v>>2]
}

// Decision is the answer to "may a packet go straight from src to dst?".
type Decision struct {
	// Rule is the cell that governs the pair; RuleUnrestricted inside one
	// domain.
	Rule Rule
	// Direct reports whether a packet sent straight from the source to the
	// destination passes.
	Direct bool
}

// Decide answers whether a packet sent straight from class src to class dst
// passes. It is a table lookup and does not allocate.
func (m *Matrix) Decide(src, dst ClassID) Decision {
	sd, dd := m.classDom[src], m.classDom[dst]
	if sd == dd {
		return Decision{Rule: RuleUnrestricted, Direct: true}
	}
	v := m.cells[int(src)*len(m.domains)+int(dd)]
	rule := Rule(v & 3)
	switch rule {
	case RuleUnrestricted:
		return Decision{Rule: rule, Direct: true}
	case RulePointToPoint:
		bit := uint64(1) << uint(dst-m.classOff[dd])
		return Decision{Rule: rule, Direct: m.roleSets[v>>2]&bit != 0}
	}
	return Decision{Rule: rule}
}

// Via returns the gateway classes a flow from src to dst passes through when
// it may not go straight: for RuleViaGateway, a gateway of the source domain
// then a gateway of the destination domain; for RulePointToPoint to a role
// outside the cell's set, a gateway of the destination domain that the cell
// allows. It returns nil when the flow goes straight or cannot pass at all.
func (m *Matrix) Via(src, dst ClassID) []ClassID {
	d := m.Decide(src, dst)
	if d.Direct {
		return nil
	}
	sd, dd := int(m.classDom[src]), int(m.classDom[dst])
	switch d.Rule {
	case RuleViaGateway:
		sg, ok1 := m.firstGateway(sd, ^uint64(0))
		dg, ok2 := m.firstGateway(dd, ^uint64(0))
		if !ok1 || !ok2 {
			return nil
		}
		// The source gateway must itself be allowed to reach the
		// destination gateway directly.
		if !m.Decide(sg, dg).Direct {
			return nil
		}
		if src == sg {
			return []ClassID{dg}
		}
		return []ClassID{sg, dg}
	case RulePointToPoint:
		_, mask := m.Cell(src, dd)
		if g, ok := m.firstGateway(dd, mask); ok {
			return []ClassID{g}
		}
	}
	return nil
}

func (m *Matrix) firstGateway(d int, allowed uint64) (ClassID, bool) {
	g := m.gwMask[d] & allowed
	if g == 0 {
		return 0, false
	}
	return m.classOff[d] + ClassID(bits.TrailingZeros64(g)), true
}

// MayCross reports whether a gateway may forward a flow that originated in
// class origin into destination domain dst: the origin's cell towards dst
// must allow crossing in some way. A RuleNone origin is refused at every
// gateway (ARCHITECTURE §5).
func (m *Matrix) MayCross(origin ClassID, dst int) bool {
	if int(m.classDom[origin]) == dst {
		return true
	}
	r, _ := m.Cell(origin, dst)
	return r != RuleNone
}

// IsGateway reports whether class c is a gateway role of its domain.
func (m *Matrix) IsGateway(c ClassID) bool {
	d := m.classDom[c]
	return m.gwMask[d]&(1<<uint(c-m.classOff[d])) != 0
}

// RoleNames returns the names of the roles of domain d set in mask, in role
// order.
func (m *Matrix) RoleNames(d int, mask uint64) []string {
	var out []string
	for i, r := range m.domains[d].Roles {
		if mask&(1<<uint(i)) != 0 {
			out = append(out, r)
		}
	}
	return out
}

// Row is one cell of the matrix in readable form.
type Row struct {
	From  string   `json:"from"`            // "domain/role"
	To    string   `json:"to"`              // destination domain
	Rule  string   `json:"rule"`            // the cell's rule
	Roles []string `json:"roles,omitempty"` // point-to-point destination roles
}

// Rows returns every cross-domain cell that lets something through, in
// class then domain order, for golden files, plans and reports. Cells that
// are not listed are none; intra-domain cells are always unrestricted.
func (m *Matrix) Rows() []Row {
	var out []Row
	for c := 0; c < len(m.classDom); c++ {
		d, r := m.ClassName(ClassID(c))
		for dd := range m.domains {
			if dd == int(m.classDom[c]) {
				continue
			}
			rule, mask := m.Cell(ClassID(c), dd)
			if rule == RuleNone {
				continue
			}
			out = append(out, Row{From: d + "/" + r, To: m.domains[dd].Name, Rule: rule.String(), Roles: m.RoleNames(dd, mask)})
		}
	}
	return out
}

// SortedDomainNames returns the domain names in lexical order.
func (m *Matrix) SortedDomainNames() []string {
	out := make([]string, 0, len(m.domains))
	for _, d := range m.domains {
		out = append(out, d.Name)
	}
	sort.Strings(out)
	return out
}
