package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/store"
)

// Store keys. Every record is JSON.
const (
	keyCA            = "ca"
	keyPolicyCurrent = "meta/policy-version"
	keyEpoch         = "meta/epoch"
	prefixNodes      = "nodes/"
	prefixMembers    = "members/"
	prefixTokens     = "tokens/"
	prefixPolicy     = "policy/"
)

func policyKey(v uint64) string { return fmt.Sprintf("%s%020d", prefixPolicy, v) }

// nodeRec is an enrolled node.
type nodeRec struct {
	Name         string                 `json:"name"`
	Assurance    string                 `json:"assurance"`
	EnrolledAt   time.Time              `json:"enrolledAt"`
	KeyHash      string                 `json:"keyHash"` // SHA-256 of the node TLS key's SPKI
	CertSerial   string                 `json:"certSerial"`
	AgentVersion string                 `json:"agentVersion,omitempty"`
	LastReport   time.Time              `json:"lastReport,omitzero"`
	AckedVersion uint64                 `json:"ackedVersion,omitempty"`
	AckedAt      time.Time              `json:"ackedAt,omitzero"`
	AckedPolicy  uint64                 `json:"ackedPolicy,omitempty"`
	Domains      map[string]domainState `json:"domains,omitempty"`
	ChannelKeys  map[string]channelKey  `json:"channelKeys,omitempty"`
	// KnownPeers are the peers of the last plan the node acknowledged, as
	// peerKey.String(), sorted: what its WireGuard interfaces know (the
	// two-phase peer add, see Controller.peerReady).
	KnownPeers []string `json:"knownPeers,omitempty"`
	// RoutedPeers are those of KnownPeers that plan routed traffic to.
	RoutedPeers []string `json:"routedPeers,omitempty"`
	Left        bool     `json:"left,omitempty"`
	// EEs are the node's EEs as its agent last reported them.
	EEs []eeSeen `json:"ees,omitempty"`
	// TPM-assured nodes: the verifier's state (attest.NodeState) and what
	// the EK certificate established.
	AttestState []byte `json:"attestState,omitempty"`
	EK          string `json:"ek,omitempty"`
}

type domainState struct {
	Channel string `json:"channel"`
	Matrix  string `json:"matrix,omitempty"`
	Error   string `json:"error,omitempty"`
}

type channelKey struct {
	PublicKey []byte `json:"publicKey"`
	Endpoint  string `json:"endpoint"`
}

// Member states.
const (
	memberAdmitted = "admitted"
	memberRefused  = "refused"
	memberRevoked  = "revoked"
	memberLeft     = "left"
)

// memberRec is an EE's membership (or refused request) in a domain.
type memberRec struct {
	EE            string            `json:"ee"`
	Node          string            `json:"node"`
	Domain        string            `json:"domain"`
	Role          string            `json:"role"`
	Owner         string            `json:"owner,omitempty"`
	Image         string            `json:"image,omitempty"`
	Claims        map[string]string `json:"claims,omitempty"`
	State         string            `json:"state"`
	Reason        string            `json:"reason,omitempty"`
	Since         time.Time         `json:"since"`
	Address       string            `json:"address,omitempty"`
	Cert          []byte            `json:"cert,omitempty"`
	CertExpires   time.Time         `json:"certExpires,omitzero"`
	Status        tvd.Status        `json:"status"`
	StatusReason  string            `json:"statusReason,omitempty"`
	LastVerified  time.Time         `json:"lastVerified,omitzero"`
	Quarantined   bool              `json:"quarantined,omitempty"`
	Frozen        bool              `json:"frozen,omitempty"`
	PolicyVersion uint64            `json:"policyVersion"`
	// MeasuredSets are the reference value sets the member's measurements
	// came from (evidence for mappings and the report).
	MeasuredSets []string `json:"measuredSets,omitempty"`
	// Instructions are the reactions sent to the member's node.
	Instructions []instruction `json:"instructions,omitempty"`
	// SecretsReleased is set while the member holds released secrets, so
	// that their withdrawal is audited (secrets.go).
	SecretsReleased bool `json:"secretsReleased,omitempty"`
}

// instruction is a reaction the member's node must carry out once.
type instruction struct {
	ID       string       `json:"id"`
	Reaction tvd.Reaction `json:"reaction"`
	Reason   string       `json:"reason"`
	IssuedAt time.Time    `json:"issuedAt"`
	Done     bool         `json:"done,omitempty"`
	Error    string       `json:"error,omitempty"`
}

func (m *memberRec) member() tvd.Member { return tvd.Member{Domain: m.Domain, Role: m.Role, EE: m.EE} }

// active reports whether the member holds a place in its domain.
func (m *memberRec) active() bool { return m.State == memberAdmitted }

// inGoodStanding reports whether other members may reach the member: it is
// admitted, not violating and not quarantined.
func (m *memberRec) inGoodStanding() bool {
	return m.active() && m.Status != tvd.StatusViolated && !m.Quarantined
}

// tokenRec is a one-time join token.
type tokenRec struct {
	ID         string    `json:"id"`
	SecretHash []byte    `json:"secretHash"`
	Expires    time.Time `json:"expires"`
	Node       string    `json:"node,omitempty"` // the only node name it may enrol, if set
	CreatedBy  string    `json:"createdBy"`
	Used       bool      `json:"used,omitempty"`
	UsedBy     string    `json:"usedBy,omitempty"`
}

// policyRec is one stored policy version.
type policyRec struct {
	Version   uint64        `json:"version"`
	AppliedAt time.Time     `json:"appliedAt"`
	AppliedBy string        `json:"appliedBy"`
	Digest    string        `json:"digest"`
	Comment   string        `json:"comment,omitempty"`
	Diff      string        `json:"diff,omitempty"`
	Files     []policy.File `json:"files"`
}

// state is the controller's in-memory copy of the store.
type state struct {
	nodes   map[string]*nodeRec
	members map[string]*memberRec // by EE name; change through put
	byNode  map[string]map[string]*memberRec
	history []*policyRec     // ascending versions, without files
	policy  *policy.Compiled // the current policy; nil before the first apply
	polVer  uint64
	// Plans: per node, the version and digest of the last plan made.
	// Versions start at epoch<<32, the epoch counting controller starts,
	// so they only grow across restarts.
	epoch    uint64
	planVer  map[string]uint64
	planHash map[string][32]byte
	// Two-phase peer adds (see peerReady): per node, the peers (node and
	// channel key) of each plan version made and not yet acknowledged.
	// An acknowledgement moves them to the node record (KnownPeers).
	sentPeers map[string]map[uint64]sentPeers
	// ops are the EE operations (tvd ee), by id.
	ops map[string]*eeOpRec

	// Indexes kept by put, so that admission does not scan every member:
	// what each member was indexed as, active members per (domain, role),
	// addresses held per domain, and per domain an address at or below the
	// lowest free one.
	indexed   map[string]memberIndex
	roleCount map[[2]string]int
	addrUsed  map[string]map[netip.Addr]int // holders per address (one, unless records disagree)
	addrLow   map[string]netip.Addr
}

// memberIndex is what put indexed a member record as (records may be
// changed in place before they are put again, so the old values are kept
// here, not read back from the record).
type memberIndex struct {
	domain, role string
	active       bool
	addr         netip.Addr // valid if the member holds its address
}

func newState() *state {
	return &state{
		nodes:    map[string]*nodeRec{},
		members:  map[string]*memberRec{},
		byNode:   map[string]map[string]*memberRec{},
		planVer:  map[string]uint64{},
		planHash: map[string][32]byte{},
		ops:      map[string]*eeOpRec{},

		sentPeers: map[string]map[uint64]sentPeers{},

		indexed:   map[string]memberIndex{},
		roleCount: map[[2]string]int{},
		addrUsed:  map[string]map[netip.Addr]int{},
		addrLow:   map[string]netip.Addr{},
	}
}

func putJSON(key string, v any) (store.Op, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return store.Op{}, fmt.Errorf("encode %s: %w", key, err)
	}
	return store.Put(key, b), nil
}

// load reads the whole state from the store.
func load(ctx context.Context, st store.Store) (*state, error) {
	s := newState()
	list := func(prefix string, each func(kv store.KV) error) error {
		kvs, err := st.List(ctx, prefix, store.ListOptions{})
		if err != nil {
			return fmt.Errorf("load %s: %w", prefix, err)
		}
		for _, kv := range kvs {
			if err := each(kv); err != nil {
				return fmt.Errorf("load %s: %w", kv.Key, err)
			}
		}
		return nil
	}
	if err := list(prefixNodes, func(kv store.KV) error {
		var n nodeRec
		if err := json.Unmarshal(kv.Value, &n); err != nil {
			return err
		}
		s.nodes[n.Name] = &n
		return nil
	}); err != nil {
		return nil, err
	}
	if err := list(prefixMembers, func(kv store.KV) error {
		var m memberRec
		if err := json.Unmarshal(kv.Value, &m); err != nil {
			return err
		}
		s.put(&m)
		return nil
	}); err != nil {
		return nil, err
	}
	if err := loadOps(ctx, st, s); err != nil {
		return nil, err
	}
	var current []policy.File // only the newest version is compiled
	if err := list(prefixPolicy, func(kv store.KV) error {
		var p policyRec
		if err := json.Unmarshal(kv.Value, &p); err != nil {
			return err
		}
		current = p.Files
		p.Files = nil
		s.history = append(s.history, &p)
		s.polVer = p.Version
		return nil
	}); err != nil {
		return nil, err
	}
	if current != nil {
		comp, err := policy.ParseAndCompile(current)
		if err != nil {
			return nil, fmt.Errorf("load: policy version %d no longer compiles: %w", s.polVer, err)
		}
		s.policy = comp
	}
	if kv, err := st.Get(ctx, keyPolicyCurrent); err == nil {
		v, perr := strconv.ParseUint(string(kv.Value), 10, 64)
		if perr != nil || v != s.polVer {
			return nil, fmt.Errorf("load: current policy version %q does not match the newest stored version %d", kv.Value, s.polVer)
		}
	}
	return s, nil
}

// allocAddress returns the lowest free address of the domain's subnet,
// skipping the network address and the first host (the gateway of the
// subnet, kept for the node side of EE links) and the reserved addresses
// (handed out earlier in the same change).
func (s *state) allocAddress(d *policy.DomainPolicy, reserved map[string]bool) (string, error) {
	if d.Subnet == "" {
		return "", nil
	}
	pfx, err := netip.ParsePrefix(d.Subnet)
	if err != nil {
		return "", fmt.Errorf("domain %q subnet: %w", d.Name, err)
	}
	pfx = pfx.Masked()
	res := make(map[netip.Addr]bool, len(reserved))
	for r := range reserved {
		if a, err := netip.ParseAddr(r); err == nil {
			res[a] = true
		}
	}
	used := s.addrUsed[d.Name]
	a := pfx.Addr().Next().Next()
	if low, ok := s.addrLow[d.Name]; ok && pfx.Contains(low) && a.Less(low) {
		a = low
	}
	for pfx.Contains(a) {
		if used[a] == 0 && !res[a] {
			next := a.Next()
			if !pfx.Contains(next) && a.Is4() { // the broadcast address
				break
			}
			return a.String(), nil
		}
		a = a.Next()
	}
	return "", errPrecondition("domain %q: no free overlay address in %s", d.Name, d.Subnet)
}

// inRole is how many active members other than ee the role of the domain
// has.
func (s *state) inRole(domain, role, ee string) int {
	n := s.roleCount[[2]string{domain, role}]
	if ix, ok := s.indexed[ee]; ok && ix.active && ix.domain == domain && ix.role == role {
		n--
	}
	return n
}

// index adds m to the indexes, or with remove takes out what it was
// indexed as.
func (s *state) index(ee string, m *memberRec) {
	if old, ok := s.indexed[ee]; ok {
		if old.active {
			s.roleCount[[2]string{old.domain, old.role}]--
		}
		if old.addr.IsValid() {
			if s.addrUsed[old.domain][old.addr]--; s.addrUsed[old.domain][old.addr] <= 0 {
				delete(s.addrUsed[old.domain], old.addr)
			}
			if low, ok := s.addrLow[old.domain]; ok && old.addr.Less(low) {
				s.addrLow[old.domain] = old.addr
			}
		}
		delete(s.indexed, ee)
	}
	if m == nil {
		return
	}
	ix := memberIndex{domain: m.Domain, role: m.Role, active: m.active()}
	if ix.active {
		s.roleCount[[2]string{m.Domain, m.Role}]++
	}
	if m.Address != "" && (m.active() || m.State == memberRevoked || m.State == memberMigrating) {
		if a, err := netip.ParseAddr(m.Address); err == nil {
			ix.addr = a
			if s.addrUsed[m.Domain] == nil {
				s.addrUsed[m.Domain] = map[netip.Addr]int{}
			}
			s.addrUsed[m.Domain][a]++
			if low, ok := s.addrLow[m.Domain]; ok && low == a {
				s.addrLow[m.Domain] = a.Next()
			}
		}
	}
	s.indexed[ee] = ix
}

// put stores m as the record of its EE and keeps the per-node index.
func (s *state) put(m *memberRec) {
	if old := s.members[m.EE]; old != nil && old.Node != m.Node {
		delete(s.byNode[old.Node], m.EE)
	}
	s.members[m.EE] = m
	s.index(m.EE, m)
	if s.byNode[m.Node] == nil {
		s.byNode[m.Node] = map[string]*memberRec{}
	}
	s.byNode[m.Node][m.EE] = m
}

// nodeMembers returns the records of the EEs of one node, in EE order: a
// report touches only these, whatever the size of the deployment.
func (s *state) nodeMembers(node string) []*memberRec {
	out := make([]*memberRec, 0, len(s.byNode[node]))
	for _, m := range s.byNode[node] {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].EE < out[j].EE })
	return out
}

// sortedNodes returns the node names in order.
func (s *state) sortedNodes() []string {
	out := make([]string, 0, len(s.nodes))
	for n := range s.nodes {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// sortedMembers returns the members in domain, role, EE order.
func (s *state) sortedMembers() []*memberRec {
	out := make([]*memberRec, 0, len(s.members))
	for _, m := range s.members {
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Domain != b.Domain {
			return a.Domain < b.Domain
		}
		if a.Role != b.Role {
			return a.Role < b.Role
		}
		return a.EE < b.EE
	})
	return out
}
