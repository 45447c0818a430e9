package dataplane_test

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/agent/dataplane"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel/filter"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/workload"
)

// usEE is one member of the userspace lab; the test plays its workload:
// it listens on a host port the agent forwards the EE's overlay port to,
// answering with the EE's name, and dials through the EE's overlay socket.
type usEE struct {
	name, node, domain, role string
	ln                       net.Listener
	addr                     netip.Addr // overlay, once admitted
	socket                   string
}

const usPort = 7070

// usLab is a real controller and three agents with the userspace data
// plane (no root, no kernel devices), hosting members of
// examples/outsourcing (relaxed for join-token nodes) so that every kind
// of pair occurs: same node and across nodes, same domain and across.
type usLab struct {
	t      *testing.T
	env    *tvdtest.Env
	m      *flow.Matrix
	ees    []*usEE
	byName map[string]*usEE
	dps    map[string]*dataplane.Userspace
}

func newUSLab(t *testing.T) *usLab {
	t.Helper()
	env := tvdtest.New(t, tvdtest.Options{Verbose: testing.Verbose()})
	files := tvdtest.ImplicitOutsourcing(t)
	pol, err := policy.ParseAndCompile(files)
	if err != nil {
		t.Fatal(err)
	}
	env.ApplyFiles(files)
	l := &usLab{t: t, env: env, m: pol.Matrix, byName: map[string]*usEE{}, dps: map[string]*dataplane.Userspace{}}
	owner := map[string]string{"yellow": "ibm-global-services", "red": "outsourcing-customer"}
	layout := map[string][][3]string{
		"n1": {{"y-dc", "yellow", "domain-controller"}, {"y-mc", "yellow", "management-console"}, {"r-os1", "red", "client-os"}},
		"n2": {{"y-gw", "yellow", "gateway"}, {"r-gw", "red", "gateway"}},
		"n3": {{"r-dc", "red", "domain-controller"}, {"r-os2", "red", "client-os"}, {"y-mc2", "yellow", "management-console"}},
	}
	for _, node := range []string{"n1", "n2", "n3"} {
		nc := agent.NodeConfig{Node: node}
		for _, e := range layout[node] {
			ee := &usEE{name: e[0], node: node, domain: e[1], role: e[2]}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ee.ln = ln
			t.Cleanup(func() { ln.Close() })
			go serveName(ln, ee.name)
			l.ees = append(l.ees, ee)
			l.byName[ee.name] = ee
			nc.EEs = append(nc.EEs, agent.EEConfig{Name: ee.name, Domain: ee.domain, Role: ee.role, Owner: owner[ee.domain]})
		}
		dir := filepath.Join(env.Dir, "agents", node)
		dp, err := dataplane.NewUserspace(dataplane.UserspaceConfig{
			Underlay:    netip.MustParseAddr("127.0.0.1"),
			DataDir:     dir,
			DialTimeout: 2 * time.Second,
			Logger:      env.Logger.With("node", node, "part", "dataplane"),
			Expose: func(name string) []dataplane.Expose {
				if ee := l.byName[name]; ee != nil {
					return []dataplane.Expose{{Port: usPort, Target: ee.ln.Addr().String()}}
				}
				return nil
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		l.dps[node] = dp
		for _, e := range layout[node] {
			l.byName[e[0]].socket = dp.OverlaySocket(e[0])
		}
		env.StartAgentWith(nc, agent.Config{DataPlane: dp})
	}
	tvdtest.Eventually(t, 30*time.Second, "every member verified with an overlay address", func() bool {
		ms := env.Members("")
		n := 0
		for _, m := range ms {
			ee := l.byName[m.GetMember().GetEe()]
			if ee == nil || m.GetVerdict().GetStatus() != tvdv1.Status_STATUS_VERIFIED || m.GetOverlayAddress() == "" {
				continue
			}
			a, err := netip.ParseAddr(m.GetOverlayAddress())
			if err != nil {
				t.Fatalf("member %s: overlay address %q: %v", ee.name, m.GetOverlayAddress(), err)
			}
			ee.addr = a
			n++
		}
		return n == len(l.ees)
	})
	return l
}

// serveName answers every connection with name and a newline.
func serveName(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, name)
		}()
	}
}

// dial reports whether a connects to b over the overlay and b answers.
func (l *usLab) dial(a, b *usEE, wait time.Duration) (bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	c, err := workload.DialOverlayVia(ctx, a.socket, netip.AddrPortFrom(b.addr, usPort).String())
	if err != nil {
		if strings.Contains(err.Error(), "connection not established") || ctx.Err() != nil {
			return false, nil
		}
		return false, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return false, nil // accepted by the stack, then cut: not through
	}
	if got = strings.TrimSpace(got); got != b.name {
		return false, fmt.Errorf("%s -> %s: answered by %q", a.name, b.name, got)
	}
	return true, nil
}

func (l *usLab) class(e *usEE) flow.ClassID {
	c, ok := l.m.Class(e.domain, e.role)
	if !ok {
		l.t.Fatalf("no class %s/%s", e.domain, e.role)
	}
	return c
}

// TestUserspaceMatrix is the matrix test of the userspace data plane:
// three agents, a real controller, and for every ordered pair of members a
// TCP connection from one EE's overlay socket to the other's overlay
// address passes exactly when the flow matrix lets the two classes talk,
// straight or through the gateways (flow.Matrix.Via: the plan's gateway
// routes carry it hop by hop, each hop judged). A flow whose origin may
// not cross is refused at the gateway.
func TestUserspaceMatrix(t *testing.T) {
	l := newUSLab(t)
	type pair struct {
		a, b *usEE
		want bool
		why  string
	}
	var pairs []pair
	for _, a := range l.ees {
		for _, b := range l.ees {
			if a == b {
				continue
			}
			d := l.m.Decide(l.class(a), l.class(b))
			via := l.m.Via(l.class(a), l.class(b))
			why := d.Rule.String()
			if len(via) > 0 {
				why += " through gateways"
			}
			pairs = append(pairs, pair{a, b, d.Direct || len(via) > 0, why})
		}
	}
	// The plans reach the nodes and their WireGuard sessions come up in
	// their own time: wait until every allowed pair passes once.
	var last string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("last pair that did not connect: %s", last)
			for n, dp := range l.dps {
				for _, dom := range []string{"yellow", "red"} {
					ps, err := dp.Peers(dom)
					t.Logf("%s %s: %+v %v", n, dom, ps, err)
				}
			}
		}
	})
	start := time.Now()
	tvdtest.Eventually(t, 30*time.Second, "every allowed pair connected once", func() bool {
		for _, p := range pairs {
			if p.want {
				if ok, err := l.dial(p.a, p.b, time.Second); !ok {
					last = fmt.Sprintf("%s -> %s (%v)", p.a.name, p.b.name, err)
					return false
				}
			}
		}
		return true
	})
	t.Logf("every allowed pair connected %v after the members were verified", time.Since(start).Round(time.Millisecond))
	before := l.counters()
	var wg sync.WaitGroup
	got := make([]bool, len(pairs))
	errs := make([]error, len(pairs))
	for i, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = l.dial(p.a, p.b, 3*time.Second)
		}()
	}
	wg.Wait()
	allowed, sameNode, routed := 0, 0, 0
	var lines []string
	for i, p := range pairs {
		if errs[i] != nil {
			t.Errorf("%s -> %s: %v", p.a.name, p.b.name, errs[i])
			continue
		}
		if got[i] != p.want {
			t.Errorf("%s (%s/%s, %s) -> %s (%s/%s, %s): passed=%v, want %v (%s)", p.a.name, p.a.domain, p.a.role, p.a.node,
				p.b.name, p.b.domain, p.b.role, p.b.node, got[i], p.want, p.why)
		}
		if p.want {
			allowed++
			if p.a.node == p.b.node {
				sameNode++
			}
			if strings.HasSuffix(p.why, "through gateways") {
				routed++
			}
		}
		lines = append(lines, fmt.Sprintf("%s->%s=%v", p.a.name, p.b.name, got[i]))
	}
	sort.Strings(lines)
	t.Logf("%d pairs, %d allowed (%d on one node, %d through gateways): %s", len(pairs), allowed, sameNode, routed, strings.Join(lines, " "))
	if allowed == 0 || allowed == len(pairs) || sameNode == 0 || routed == 0 {
		t.Fatalf("the layout must give allowed and dropped pairs, some on one node, some through gateways: %d of %d allowed, %d on one node, %d through gateways",
			allowed, len(pairs), sameNode, routed)
	}
	after := l.counters()
	for _, n := range []string{filter.CounterIntra, filter.CounterP2PAllow, filter.CounterNone, filter.CounterGatewayRefused} {
		if after[n] <= before[n] {
			t.Errorf("counter %s did not move (%d -> %d)", n, before[n], after[n])
		}
	}
	for _, n := range []string{filter.CounterSpoof, filter.CounterMisroute, filter.CounterMalformed} {
		if after[n] != 0 {
			t.Errorf("counter %s = %d, want 0", n, after[n])
		}
	}
}

// counters sums the flow filters' packet counters over the nodes.
func (l *usLab) counters() map[string]uint64 {
	sum := map[string]uint64{}
	for _, dp := range l.dps {
		for n, c := range dp.Counters() {
			sum[n] += c.Packets
		}
	}
	return sum
}

// TestUserspaceRevocation: a revoked member is cut off at every peer (its
// address leaves their WireGuard peers and flow plans) and on its own
// node (its stack and overlay socket go), while the others are unaffected.
func TestUserspaceRevocation(t *testing.T) {
	l := newUSLab(t)
	os1, os2, dc := l.byName["r-os1"], l.byName["r-os2"], l.byName["r-dc"]
	tvdtest.Eventually(t, 30*time.Second, "r-os1 and r-dc connected", func() bool {
		a, _ := l.dial(os1, dc, time.Second)
		b, _ := l.dial(dc, os1, time.Second)
		return a && b
	})
	_, err := l.env.Admin.Admin.Revoke(context.Background(), connect.NewRequest(&tvdv1.RevokeRequest{
		Target: &tvdv1.RevokeRequest_Member{Member: &tvdv1.Member{Domain: "red", Role: "client-os", Ee: "r-os1"}}, Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	tvdtest.Eventually(t, 10*time.Second, "r-os1 cut off both ways", func() bool {
		a, _ := l.dial(dc, os1, 500*time.Millisecond)
		b, _ := l.dial(os1, dc, 500*time.Millisecond)
		return !a && !b
	})
	t.Logf("cut off %v after the revocation", time.Since(start).Round(time.Millisecond))
	for _, p := range [][2]*usEE{{os2, dc}, {dc, os2}, {l.byName["y-mc"], l.byName["y-mc2"]}} {
		if ok, err := l.dial(p[0], p[1], 3*time.Second); !ok || err != nil {
			t.Errorf("%s -> %s after revoking r-os1: passed=%v err=%v, want pass", p[0].name, p[1].name, ok, err)
		}
	}
}

// TestUserspaceJoinLatency measures the join latency on the userspace
// data plane: from the start of two agents to the first TCP connection
// between their members over the overlay, dialled every 20 ms from the
// moment the agents start (so the first packets race the peer updates:
// the two-phase peer add keeps a node from sending to a peer before the
// peer knows it, which would cost wireguard-go's 5 s handshake retry).
func TestUserspaceJoinLatency(t *testing.T) {
	env := tvdtest.New(t, tvdtest.Options{Verbose: testing.Verbose()})
	env.ApplyFiles(tvdtest.ImplicitOutsourcing(t))
	type node struct {
		name, ee string
		dp       *dataplane.Userspace
		ln       net.Listener
	}
	nodes := []*node{{name: "n1", ee: "y-dc"}, {name: "n2", ee: "y-mc2"}}
	for _, n := range nodes {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveName(ln, n.ee)
		n.ln = ln
		dp, err := dataplane.NewUserspace(dataplane.UserspaceConfig{
			Underlay: netip.MustParseAddr("127.0.0.1"), DataDir: filepath.Join(env.Dir, "agents", n.name),
			Logger: env.Logger.With("node", n.name, "part", "dataplane"),
			Expose: func(string) []dataplane.Expose {
				return []dataplane.Expose{{Port: usPort, Target: ln.Addr().String()}}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		n.dp = dp
	}
	start := time.Now()
	for _, n := range nodes {
		env.StartAgentWith(agent.NodeConfig{Node: n.name, EEs: []agent.EEConfig{{Name: n.ee, Domain: "yellow", Role: map[string]string{"y-dc": "domain-controller", "y-mc2": "management-console"}[n.ee], Owner: "ibm-global-services"}}},
			agent.Config{DataPlane: n.dp})
	}
	from, to := &usEE{name: nodes[0].ee, socket: nodes[0].dp.OverlaySocket(nodes[0].ee)}, &usEE{name: nodes[1].ee}
	l := &usLab{t: t}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatal("no connection over the overlay within 30 s")
		}
		if !to.addr.IsValid() {
			for _, m := range env.Members("yellow") {
				if m.GetMember().GetEe() == to.name && m.GetOverlayAddress() != "" {
					to.addr = netip.MustParseAddr(m.GetOverlayAddress())
				}
			}
		}
		if to.addr.IsValid() {
			if ok, _ := l.dial(from, to, 100*time.Millisecond); ok {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("join latency: %v from the agents' start to the first connection between their members", time.Since(start).Round(time.Millisecond))
}

// recorder is a data plane that logs every plan it applies, in one
// sequence shared by the nodes, before applying it.
type recorder struct {
	*dataplane.Userspace
	node string
	log  *planLog
}

type planLog struct {
	mu    sync.Mutex
	plans []recorded
}

type recorded struct {
	node string
	plan *tvdv1.Plan
}

func (r *recorder) Apply(ctx context.Context, p *tvdv1.Plan) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error) {
	r.log.mu.Lock()
	r.log.plans = append(r.log.plans, recorded{r.node, p})
	r.log.mu.Unlock()
	return r.Userspace.Apply(ctx, p)
}

// TestTwoPhasePeerAdd checks the controller's order of peer updates on
// real plans from three agents joining at once: a node is given a peer's
// allowed IPs only after that peer applied a plan listing the node's key;
// of each pair the node with the smaller name is routed first and greets,
// the other is routed only after the first applied its routes; and in the
// end every pair routes both ways.
func TestTwoPhasePeerAdd(t *testing.T) {
	env := tvdtest.New(t, tvdtest.Options{Verbose: testing.Verbose()})
	env.ApplyFiles(tvdtest.ImplicitOutsourcing(t))
	log := &planLog{}
	keys := map[string]string{} // node -> its yellow key, as the plans show it
	for _, n := range []string{"n1", "n2", "n3"} {
		dp, err := dataplane.NewUserspace(dataplane.UserspaceConfig{
			Underlay: netip.MustParseAddr("127.0.0.1"), DataDir: filepath.Join(env.Dir, "agents", n),
			Logger: env.Logger.With("node", n, "part", "dataplane")})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { dp.Close() })
		env.StartAgentWith(agent.NodeConfig{Node: n, EEs: []agent.EEConfig{{Name: "mc-" + n, Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"}}},
			agent.Config{DataPlane: &recorder{Userspace: dp, node: n, log: log}})
	}
	routes := func(p *tvdv1.Plan, peer string) (listed, routed, greet bool, key string) {
		for _, d := range p.GetPeers() {
			for _, x := range d.GetPeers() {
				if x.GetNode() == peer {
					return true, len(x.GetAllowedIps()) > 0, x.GetGreet(), string(x.GetWireguardPublicKey())
				}
			}
		}
		return false, false, false, ""
	}
	tvdtest.Eventually(t, 20*time.Second, "every pair routing both ways", func() bool {
		log.mu.Lock()
		defer log.mu.Unlock()
		last := map[string]*tvdv1.Plan{}
		for _, r := range log.plans {
			last[r.node] = r.plan
		}
		for _, a := range []string{"n1", "n2", "n3"} {
			for _, b := range []string{"n1", "n2", "n3"} {
				if a == b {
					continue
				}
				if _, routed, _, key := routes(last[a], b); !routed {
					return false
				} else {
					keys[b] = key
				}
			}
		}
		return true
	})
	log.mu.Lock()
	defer log.mu.Unlock()
	for _, a := range []string{"n1", "n2", "n3"} {
		for _, b := range []string{"n1", "n2", "n3"} {
			if a == b {
				continue
			}
			// The first plan of a that routes to b, and what b had applied
			// before it.
			bKnowsA, bRoutesA := false, false
			for _, r := range log.plans {
				switch r.node {
				case b:
					listed, routed, _, key := routes(r.plan, a)
					bKnowsA = bKnowsA || listed && key == keys[a]
					bRoutesA = bRoutesA || routed
				case a:
					_, routed, greet, _ := routes(r.plan, b)
					if !routed {
						continue
					}
					if !bKnowsA {
						t.Errorf("%s routed to %s before %s applied a plan with %s's key", a, b, b, a)
					}
					if a > b && !bRoutesA {
						t.Errorf("%s (the larger name) routed to %s before %s routed to it", a, b, b)
					}
					if greet != (a < b) {
						t.Errorf("%s's plan greets %s: %v, want %v (the smaller name greets)", a, b, greet, a < b)
					}
				}
				if r.node == a {
					if _, routed, _, _ := routes(r.plan, b); routed {
						break
					}
				}
			}
		}
	}
	t.Logf("%d plans applied by three nodes joining at once", len(log.plans))
}
