package controller

import (
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/flow"
)

// Gateway paths (Rule G, and point-to-point flows to a role behind the
// destination's gateway). For every pair of members in good standing
// whose flow the matrix sends through gateways (flow.Matrix.Via), the
// controller lays the path origin → gateway(s) → final, and its reverse
// for the replies, and tells each node on it how to pass the packets on:
//
//   - a gateway route at every node where a packet must turn towards the
//     next gateway rather than its destination: from the EE or overlay
//     interface it enters by, to the destination, via the next gateway's
//     EE link or the overlay interface towards the gateway's node;
//   - a reach entry wherever a packet crosses between nodes with an
//     address that is not the sending member's own (the destination
//     behind the next gateway, or the origin a gateway forwards for): the
//     peer's WireGuard allowed IPs accept it from that peer only, and the
//     flow rules judge the hop as one with the gateway, since the gateway
//     node already judged the gateway's hop and the origin's right to
//     cross (flow/nft's cross set).
//
// Packets keep their origin and final addresses all the way; the gateways
// forward them (the data plane switches forwarding on inside gateway EEs)
// and the node's flow rules judge every hop.
//
// Gateway instances: the first member in good standing of each gateway
// class, in the state's member order, unless the flow's own end has that
// class. Where two paths would give one node the same route or reach with
// different next hops, the first wins and the other flow fails closed.
//
// The cost is one route per (source, destination) pair on each node of
// each path: fine for gateways serving hundreds of members, not for a
// million-member domain behind one gateway.

// gwPlan is the gateway routing of every node.
type gwPlan struct {
	routes     map[string][]*tvdv1.GatewayRoute
	routeSeen  map[gwRouteKey]bool
	reach      map[gwReachKey][]*tvdv1.GatewayReach // node, interface domain, peer
	reachOwner map[gwReachAddr]string               // node, interface domain, address -> peer
}

type gwRouteKey struct{ node, from, to string }

type gwReachKey struct{ node, domain, peer string }

type gwReachAddr struct{ node, domain, addr string }

// reachFor returns the reach entries of node's interface in domain for
// peer, in the order they were laid.
func (g *gwPlan) reachFor(node, domain, peer string) []*tvdv1.GatewayReach {
	if g == nil {
		return nil
	}
	return g.reach[gwReachKey{node, domain, peer}]
}

// gatewayPlan lays the gateway paths of all members (see above). It
// returns nil when no pair of classes of the matrix goes through a
// gateway. It must be called with c.mu held.
func (c *Controller) gatewayPlan(members []*memberRec) *gwPlan {
	s := c.s
	if s.policy == nil {
		return nil
	}
	m := s.policy.Matrix
	n := m.NumClasses()
	via := make([][]flow.ClassID, n*n)
	any := false
	for a := range n {
		for b := range n {
			if v := m.Via(flow.ClassID(a), flow.ClassID(b)); len(v) > 0 {
				via[a*n+b] = v
				any = true
			}
		}
	}
	if !any {
		return nil
	}
	type end struct {
		rec   *memberRec
		class flow.ClassID
	}
	var ends []end
	inst := map[flow.ClassID]*memberRec{}
	for _, r := range members {
		if !r.inGoodStanding() || r.Address == "" {
			continue
		}
		cl, ok := m.Class(r.Domain, r.Role)
		if !ok {
			continue
		}
		ends = append(ends, end{r, cl})
		if m.IsGateway(cl) && inst[cl] == nil {
			inst[cl] = r
		}
	}
	g := &gwPlan{routes: map[string][]*tvdv1.GatewayRoute{}, routeSeen: map[gwRouteKey]bool{},
		reach: map[gwReachKey][]*tvdv1.GatewayReach{}, reachOwner: map[gwReachAddr]string{}}
	carriers := map[string]map[string]*crossLink{}
	carrier := func(a, b string) *crossLink {
		cp, ok := carriers[a]
		if !ok {
			cp = c.crossPeers(a, members)
			carriers[a] = cp
		}
		return cp[b]
	}
	for _, o := range ends {
		for _, f := range ends {
			if o.rec == f.rec || o.rec.Domain == f.rec.Domain {
				continue
			}
			v := via[int(o.class)*n+int(f.class)]
			if len(v) == 0 {
				continue
			}
			hops := []*memberRec{o.rec}
			ok := true
			for _, gc := range v {
				gm := inst[gc]
				if gc == f.class {
					gm = f.rec
				}
				if gm == nil {
					ok = false
					break
				}
				if gm != hops[len(hops)-1] {
					hops = append(hops, gm)
				}
			}
			if !ok {
				continue
			}
			if hops[len(hops)-1] != f.rec {
				hops = append(hops, f.rec)
			}
			g.addPath(m, hops, carrier)
			rev := make([]*memberRec, len(hops))
			for i, h := range hops {
				rev[len(hops)-1-i] = h
			}
			g.addPath(m, rev, carrier)
		}
	}
	return g
}

// addPath adds the routes and reach entries that carry packets from
// hops[0] to the last hop through the gateways between.
func (g *gwPlan) addPath(m *flow.Matrix, hops []*memberRec, carrier func(a, b string) *crossLink) {
	src, dst := hops[0].Address, hops[len(hops)-1].Address
	k := len(hops) - 1
	for i := 0; i < k; i++ {
		x, y := hops[i], hops[i+1]
		last := i+1 == k
		if x.Node == y.Node {
			if !last {
				g.route(x.Node, &tvdv1.GatewayRoute{FromEe: x.EE, ToAddress: dst, ViaEe: y.EE})
			}
			continue
		}
		lx, ly := x.Domain, y.Domain
		if x.Domain != y.Domain {
			cl := carrier(x.Node, y.Node)
			if cl == nil {
				return // no interface pair between the nodes: fail closed
			}
			lx, ly = cl.local, cl.remote
		} else {
			ly = lx
		}
		if !last {
			g.route(x.Node, &tvdv1.GatewayRoute{FromEe: x.EE, ToAddress: dst, ViaDomain: lx})
			g.addReach(x.Node, lx, y.Node, dst, y)
			g.route(y.Node, &tvdv1.GatewayRoute{FromDomain: ly, ToAddress: dst, ViaEe: y.EE})
		}
		if i > 0 {
			// x forwards for the origin: the origin's address arrives from
			// x's node.
			g.addReach(y.Node, ly, x.Node, src, x)
		}
	}
}

func (g *gwPlan) route(node string, r *tvdv1.GatewayRoute) {
	from := "ee:" + r.GetFromEe()
	if r.GetFromDomain() != "" {
		from = "domain:" + r.GetFromDomain()
	}
	k := gwRouteKey{node, from, r.GetToAddress()}
	if g.routeSeen[k] {
		return
	}
	g.routeSeen[k] = true
	g.routes[node] = append(g.routes[node], r)
}

func (g *gwPlan) addReach(node, domain, peer, addr string, gw *memberRec) {
	ak := gwReachAddr{node, domain, addr}
	if _, taken := g.reachOwner[ak]; taken {
		return
	}
	g.reachOwner[ak] = peer
	k := gwReachKey{node, domain, peer}
	g.reach[k] = append(g.reach[k], &tvdv1.GatewayReach{Address: addr, Domain: gw.Domain, Role: gw.Role})
}
