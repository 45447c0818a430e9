package controller

import (
	"testing"

	"github.com/tvd-dev/tvd"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"

	"github.com/tvd-dev/tvd/policy"
)

// TestGatewayPlan lays the paths of case study 1 (both gateways on the
// management node) and checks the hops of one Rule G flow and its
// replies: the console's node sends it over yellow to the management
// node, which passes it through yellow's gateway and red's gateway, and
// the client's node accepts it from there as traffic with red's gateway.
func TestGatewayPlan(t *testing.T) {
	comp, err := policy.LoadAndCompile("../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	c := &Controller{s: &state{policy: comp}}
	rec := func(ee, node, dom, role, addr string) *memberRec {
		return &memberRec{EE: ee, Node: node, Domain: dom, Role: role, Address: addr, State: memberAdmitted}
	}
	members := []*memberRec{
		rec("red-gw", "mgmt", "red", "gateway", "10.78.0.2"),
		rec("red-client2", "pc2", "red", "client-os", "10.78.0.5"),
		rec("yellow-gw", "mgmt", "yellow", "gateway", "10.77.0.2"),
		rec("yellow-mc1", "pc1", "yellow", "management-console", "10.77.0.4"),
	}
	g := c.gatewayPlan(members)
	if g == nil {
		t.Fatal("no gateway plan for a policy with Rule G cells")
	}
	type route struct{ fromEE, fromDom, to, viaEE, viaDom string }
	has := func(node string, want route) bool {
		for _, r := range g.routes[node] {
			if (route{r.GetFromEe(), r.GetFromDomain(), r.GetToAddress(), r.GetViaEe(), r.GetViaDomain()}) == want {
				return true
			}
		}
		return false
	}
	for _, tc := range []struct {
		node string
		r    route
	}{
		// Forward: console -> yellow gw -> red gw -> client.
		{"pc1", route{fromEE: "yellow-mc1", to: "10.78.0.5", viaDom: "yellow"}},
		{"mgmt", route{fromDom: "yellow", to: "10.78.0.5", viaEE: "yellow-gw"}},
		{"mgmt", route{fromEE: "yellow-gw", to: "10.78.0.5", viaEE: "red-gw"}},
		// Replies: client -> red gw -> yellow gw -> console.
		{"pc2", route{fromEE: "red-client2", to: "10.77.0.4", viaDom: "red"}},
		{"mgmt", route{fromDom: "red", to: "10.77.0.4", viaEE: "red-gw"}},
		{"mgmt", route{fromEE: "red-gw", to: "10.77.0.4", viaEE: "yellow-gw"}},
	} {
		if !has(tc.node, tc.r) {
			t.Errorf("node %s: no route %+v; have %v", tc.node, tc.r, g.routes[tc.node])
		}
	}
	// The last gateway hands the packet to the client's node by the main
	// table: no route there.
	if has("mgmt", route{fromEE: "red-gw", to: "10.78.0.5", viaDom: "red"}) {
		t.Error("red-gw got a gateway route for the last hop")
	}
	for _, tc := range []struct {
		node, dom, peer, addr, gwRole string
	}{
		{"pc1", "yellow", "mgmt", "10.78.0.5", "gateway"}, // the client, behind yellow's gateway
		{"pc2", "red", "mgmt", "10.77.0.4", "gateway"},    // the console, forwarded by red's gateway
	} {
		var r *tvdv1.GatewayReach
		for _, x := range g.reachFor(tc.node, tc.dom, tc.peer) {
			if x.GetAddress() == tc.addr {
				r = x
			}
		}
		if r == nil || r.GetDomain() != tc.dom || r.GetRole() != tc.gwRole {
			t.Errorf("reach %+v: got %v", tc, r)
		}
	}
	// The yellow controller may not reach red's clients at all, nor they
	// it: no path. (It has routes towards red's gateway, for the replies of
	// the gateway's point-to-point flows to it.)
	members = append(members, rec("yellow-dc", "mgmt", "yellow", "domain-controller", "10.77.0.3"))
	g = c.gatewayPlan(members)
	for node, rs := range g.routes {
		for _, r := range rs {
			if r.GetFromEe() == "yellow-dc" && r.GetToAddress() == "10.78.0.5" {
				t.Errorf("node %s: route for a Rule none origin: %v", node, r)
			}
		}
	}
	// A violating gateway carries nothing.
	members[0].Status = tvd.StatusViolated
	g = c.gatewayPlan(members)
	for node, rs := range g.routes {
		for _, r := range rs {
			if r.GetViaEe() == "red-gw" {
				t.Errorf("node %s: route via a violating gateway: %v", node, r)
			}
		}
	}
}
