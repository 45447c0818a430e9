package controller

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd/api"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
)

// hub wakes the plan streams of nodes whose plan may have changed.
type hub struct {
	mu    sync.Mutex
	subs  map[string]map[chan struct{}]bool
	close chan struct{}
	once  sync.Once
}

func newHub() *hub {
	return &hub{subs: map[string]map[chan struct{}]bool{}, close: make(chan struct{})}
}

func (h *hub) subscribe(node string) (chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	h.mu.Lock()
	if h.subs[node] == nil {
		h.subs[node] = map[chan struct{}]bool{}
	}
	h.subs[node][ch] = true
	h.mu.Unlock()
	return ch, func() {
		h.mu.Lock()
		delete(h.subs[node], ch)
		h.mu.Unlock()
	}
}

// wake tells every stream of the named nodes (all nodes if none named) to
// recompute its plan.
func (h *hub) wake(nodes ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	notify := func(set map[chan struct{}]bool) {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
	if len(nodes) == 0 {
		for _, set := range h.subs {
			notify(set)
		}
		return
	}
	for _, n := range nodes {
		notify(h.subs[n])
	}
}

func (h *hub) closeAll() { h.once.Do(func() { close(h.close) }) }

// nonces holds each node's outstanding challenge (challenge chaining: each
// reply gives the nonce the next report must answer). They live in memory:
// after a restart the plan stream hands every node a fresh one.
type nonces struct {
	mu  sync.Mutex
	cur map[string][]byte
}

func newNonces() *nonces { return &nonces{cur: map[string][]byte{}} }

// next makes and returns a fresh nonce for node, replacing the old one.
func (n *nonces) next(node string) []byte {
	b := make([]byte, 32)
	rand.Read(b)
	n.mu.Lock()
	n.cur[node] = b
	n.mu.Unlock()
	return b
}

// consume checks that got is node's outstanding nonce and retires it, so a
// report can never be replayed.
func (n *nonces) consume(node string, got []byte) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	want, ok := n.cur[node]
	if !ok || len(got) != len(want) || subtle.ConstantTimeCompare(got, want) != 1 {
		return false
	}
	delete(n.cur, node)
	return true
}

// planFor computes node's plan from the current state and gives it a new
// version if it differs from the last one made. It must be called with
// c.mu held. The nonce, times and version are filled by the caller.
func (c *Controller) planFor(node string) (*tvdv1.Plan, uint64) {
	s := c.s
	p := &tvdv1.Plan{PolicyVersion: s.polVer, OnControllerLoss: "keep-intra"}
	comp := s.policy
	members := s.sortedMembers()
	onNode := map[string]bool{} // domains the node has members in
	for _, m := range members {
		if m.Node != node || !m.active() {
			continue
		}
		onNode[m.Domain] = true
		p.Members = append(p.Members, &tvdv1.PlanMember{
			Member:         api.MemberToProto(m.member()),
			CertChain:      [][]byte{m.Cert},
			Expires:        timestamppb.New(m.CertExpires),
			OverlayAddress: m.Address,
			// A member not in good standing keeps its place until a
			// reaction removes it, but not its secrets.
			SecretsWithdrawn: !m.inGoodStanding(),
		})
		if comp != nil {
			if d, ok := comp.Domain(m.Domain); ok && d.OnControllerLoss == "isolate" {
				p.OnControllerLoss = "isolate"
			}
		}
	}
	// Peers: per domain the node is in, every other node with admitted
	// members there that has published its channel key.
	domains := make([]string, 0, len(onNode))
	for d := range onNode {
		domains = append(domains, d)
	}
	sort.Strings(domains)
	cross := c.crossPeers(node, members)
	gw := c.gatewayPlan(members)
	var sent sentPeers
	for _, d := range domains {
		dp := &tvdv1.DomainPeers{Domain: d}
		if comp != nil {
			if pol, ok := comp.Domain(d); ok {
				dp.OverlayPrefix = pol.Subnet
			}
		}
		byNode := map[string][]string{}
		for _, m := range members {
			if m.Domain == d && m.inGoodStanding() && m.Node != node && m.Address != "" {
				byNode[m.Node] = append(byNode[m.Node], m.Address)
			}
		}
		for _, peer := range s.sortedNodes() {
			addrs := byNode[peer]
			key, ok := s.nodes[peer].ChannelKeys[d]
			if x := cross[peer]; x != nil && x.local == d {
				// Cross-domain flows with this node ride on this interface:
				// on the peering the two nodes already have in d, or on one
				// to the peer's carrier interface.
				if len(addrs) == 0 {
					key, ok = s.nodes[peer].ChannelKeys[x.remote]
				}
				addrs = append(addrs, x.addrs...)
			}
			if len(addrs) == 0 || !ok {
				continue
			}
			pk := peerKey(peer, key.PublicKey)
			sent.known = append(sent.known, pk)
			pe := &tvdv1.Peer{Node: peer, WireguardPublicKey: key.PublicKey, Endpoint: key.Endpoint}
			if c.peerReady(node, d, peer) {
				sent.routed = append(sent.routed, pk)
				// The side that routes first greets; the other finds a
				// session when its turn comes (see peerReady).
				pe.Greet = node < peer
				for _, a := range addrs {
					if ip, err := netip.ParseAddr(a); err == nil {
						pe.AllowedIps = append(pe.AllowedIps, netip.PrefixFrom(ip, ip.BitLen()).String())
					}
				}
				pe.Reach = gw.reachFor(node, d, peer)
			}
			dp.Peers = append(dp.Peers, pe)
		}
		p.Peers = append(p.Peers, dp)
	}
	// Flow: the matrix and the address sets of every class.
	if comp != nil && len(onNode) > 0 {
		mj, id := c.flowMatrix(comp)
		fp := &tvdv1.FlowPlan{MatrixId: id, Matrix: mj}
		classes := map[[2]string]*tvdv1.ClassSet{}
		var keys [][2]string
		for _, m := range members {
			// Other nodes learn only members in good standing: a violating
			// member leaves its peers' plans at once.
			if m.Address == "" || !(m.inGoodStanding() || (m.Node == node && m.active())) {
				continue
			}
			k := [2]string{m.Domain, m.Role}
			cs := classes[k]
			if cs == nil {
				cs = &tvdv1.ClassSet{Domain: m.Domain, Role: m.Role}
				classes[k] = cs
				keys = append(keys, k)
			}
			cs.Addresses = append(cs.Addresses, m.Address)
		}
		for _, k := range keys {
			fp.Classes = append(fp.Classes, classes[k])
		}
		p.Flow = fp
		for _, m := range members {
			if m.active() && m.Quarantined {
				p.Quarantine = append(p.Quarantine, &tvdv1.QuarantinedMember{Member: api.MemberToProto(m.member()), Addresses: []string{m.Address}, Reason: m.StatusReason})
			}
		}
	}
	if gw != nil {
		p.GatewayRoutes = gw.routes[node]
	}
	// Reactions not yet carried out.
	for _, m := range members {
		if m.Node != node {
			continue
		}
		for _, in := range m.Instructions {
			if in.Done {
				continue
			}
			r, err := api.ReactionToProto(in.Reaction)
			if err != nil {
				continue
			}
			p.Instructions = append(p.Instructions, &tvdv1.Instruction{Id: in.ID, Reaction: r, Member: api.MemberToProto(m.member()), Reason: in.Reason, IssuedAt: timestamppb.New(in.IssuedAt)})
		}
	}
	// EE operations an administrator asked for (tvd ee).
	p.EeOperations = c.pendingOps(node)
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(p)
	h := sha256.Sum256(b)
	if s.planHash[node] != h || s.planVer[node] == 0 {
		s.planHash[node] = h
		if s.planVer[node] == 0 {
			s.planVer[node] = s.epoch << 32
		}
		s.planVer[node]++
		c.notePeersSent(node, s.planVer[node], sent.sorted())
	}
	return p, s.planVer[node]
}

// peerKey is a peer as a plan lists it: its node and channel public key.
func peerKey(node string, key []byte) string {
	return node + "/" + base64.StdEncoding.EncodeToString(key)
}

// maxSentPlans bounds the unacknowledged plan versions whose peers are
// remembered per node.
const maxSentPlans = 16

// sentPeers are the peers of one plan: all it lists (known), and those
// it routes traffic to (routed), each as peerKey, sorted once made.
type sentPeers struct{ known, routed []string }

func (p sentPeers) sorted() sentPeers {
	slices.Sort(p.known)
	slices.Sort(p.routed)
	return sentPeers{known: slices.Compact(p.known), routed: slices.Compact(p.routed)}
}

// peerReady reports whether node's plan may route traffic to peer in
// domain d (give it the peer's allowed IPs). This is the two-phase peer
// add. Until it holds, node knows peer's key and endpoint, so it accepts
// peer's handshakes, but sends it nothing:
//
//   - peer must have acknowledged a plan that lists node with the key node
//     uses in d (KnownPeers, kept in the store, so a controller restart
//     holds nothing back): a node's first packet to a peer that does not
//     know it starts a WireGuard handshake the peer drops, and
//     wireguard-go retries only after 5 s;
//   - of the two, the one with the larger name also waits until the
//     other has applied routes to it (RoutedPeers): two first packets
//     crossing would start two handshakes that cancel each other out
//     (each side answers the other's and drops the answer to its own),
//     again until the 5 s retry. The first packet thus comes from one
//     side, or finds a session. This cannot deadlock: the smaller routes
//     to the larger as soon as the larger knows it, and a plan that lists
//     a peer (the larger's, listing the smaller) is applied whatever its
//     routes.
func (c *Controller) peerReady(node, d, peer string) bool {
	n, p := c.s.nodes[node], c.s.nodes[peer]
	if n == nil || p == nil {
		return true
	}
	own, ok := n.ChannelKeys[d]
	if !ok {
		// The node opens its interface for d with this plan and publishes
		// its key after: the peer cannot know it yet.
		return false
	}
	me := peerKey(node, own.PublicKey)
	if _, known := slices.BinarySearch(p.KnownPeers, me); !known {
		return false
	}
	if node < peer {
		return true
	}
	_, routed := slices.BinarySearch(p.RoutedPeers, me)
	return routed
}

// notePeersSent remembers the peers of node's plan version v.
func (c *Controller) notePeersSent(node string, v uint64, peers sentPeers) {
	m := c.s.sentPeers[node]
	if m == nil {
		m = map[uint64]sentPeers{}
		c.s.sentPeers[node] = m
	}
	m[v] = peers
	if len(m) > maxSentPlans {
		oldest := v
		for k := range m {
			oldest = min(oldest, k)
		}
		delete(m, oldest)
	}
}

// peersAcked returns the peers of node's plan version v, which it has
// just acknowledged, and forgets that version and older ones; ok is false
// for a version this controller run did not make (or no longer holds).
func (c *Controller) peersAcked(node string, v uint64) (peers sentPeers, ok bool) {
	m := c.s.sentPeers[node]
	peers, ok = m[v]
	if !ok {
		return sentPeers{}, false
	}
	for k := range m {
		if k <= v {
			delete(m, k)
		}
	}
	return peers, true
}

// gained reports whether sorted list b holds an element sorted list a
// does not.
func gained(a, b []string) bool {
	for _, x := range b {
		if _, ok := slices.BinarySearch(a, x); !ok {
			return true
		}
	}
	return false
}

// stamp fills a plan's version, nonce and times for sending.
func (c *Controller) stamp(node string, p *tvdv1.Plan, version uint64) {
	now := c.now()
	p.Version = version
	p.NextNonce = c.nonce.next(node)
	p.IssuedAt = timestamppb.New(now)
	p.FreshUntil = timestamppb.New(now.Add(c.freshFor(node)))
	if n := c.s.nodes[node]; n != nil && len(n.AttestState) > 0 {
		// A TPM node answers the verifier's outstanding nonce, which lives
		// in its attestation state: the plan repeats it, and the cursor.
		if st, err := c.nodeState(n); err == nil {
			p.NextNonce = st.Nonce()
			cur := st.Cursor()
			p.Cursor = &tvdv1.AttestCursor{ResetCount: cur.ResetCount, NextSeq: cur.Seq, Valid: cur.Valid}
		}
	}
}

// freshFor is how long a plan stays fresh without contact: the shortest
// deadline of the node's domains.
func (c *Controller) freshFor(node string) time.Duration {
	d := 3 * policy.DefaultInterval
	if c.s.policy == nil {
		return d
	}
	for _, m := range c.s.members {
		if m.Node == node && m.active() {
			if pol, ok := c.s.policy.Domain(m.Domain); ok && time.Duration(pol.Deadline) < d {
				d = time.Duration(pol.Deadline)
			}
		}
	}
	return d
}

// crossLink is how a node reaches another node's members of other domains
// that the flow matrix lets its members talk with straight (and back):
// over its interface of domain local, to the other node's interface of
// domain remote, for the addresses addrs.
type crossLink struct {
	local, remote string
	addrs         []string
}

// crossPeers finds, for each other node, the members of other domains that
// this node's members may reach straight or be reached by, and the pair of
// interfaces (the carrier) that carries them: the first domain the two
// nodes share, else the first domain involved on each side. Both nodes
// compute the same carrier, so their peer entries match. It must be called
// with c.mu held.
func (c *Controller) crossPeers(node string, members []*memberRec) map[string]*crossLink {
	s := c.s
	if s.policy == nil {
		return nil
	}
	m := s.policy.Matrix
	class := func(r *memberRec) (flow.ClassID, bool) { return m.Class(r.Domain, r.Role) }
	doms := map[string]map[string]bool{} // node -> domains with members
	var local []*memberRec
	for _, r := range members {
		if !r.active() {
			continue
		}
		if doms[r.Node] == nil {
			doms[r.Node] = map[string]bool{}
		}
		doms[r.Node][r.Domain] = true
		if r.Node == node && r.Address != "" {
			local = append(local, r)
		}
	}
	type acc struct {
		addrs         map[string]bool
		local, remote map[string]bool
	}
	found := map[string]*acc{}
	for _, r := range members {
		if r.Node == node || r.Address == "" || !r.inGoodStanding() {
			continue
		}
		rc, ok := class(r)
		if !ok {
			continue
		}
		for _, l := range local {
			if l.Domain == r.Domain {
				continue
			}
			lc, ok := class(l)
			if !ok || !(m.Decide(lc, rc).Direct || m.Decide(rc, lc).Direct) {
				continue
			}
			a := found[r.Node]
			if a == nil {
				a = &acc{addrs: map[string]bool{}, local: map[string]bool{}, remote: map[string]bool{}}
				found[r.Node] = a
			}
			a.addrs[r.Address] = true
			a.local[l.Domain] = true
			a.remote[r.Domain] = true
		}
	}
	out := map[string]*crossLink{}
	for peer, a := range found {
		var shared []string
		for d := range doms[node] {
			if doms[peer][d] {
				shared = append(shared, d)
			}
		}
		link := &crossLink{}
		if len(shared) > 0 {
			sort.Strings(shared)
			link.local, link.remote = shared[0], shared[0]
		} else {
			link.local, link.remote = first(a.local), first(a.remote)
		}
		for addr := range a.addrs {
			link.addrs = append(link.addrs, addr)
		}
		sort.Strings(link.addrs)
		out[peer] = link
	}
	return out
}

func first(set map[string]bool) string {
	var out []string
	for k := range set {
		out = append(out, k)
	}
	sort.Strings(out)
	if len(out) == 0 {
		return ""
	}
	return out[0]
}
