package dataplane

import (
	"encoding/json"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/channel"
	"github.com/tvd-dev/tvd/flow"
	"github.com/tvd-dev/tvd/policy"
)

func key(b byte) []byte {
	k := make([]byte, 32)
	k[0] = b
	return k
}

// samplePlan is node a's plan in the case study with one peer per domain.
func samplePlan(t testing.TB) (*tvdv1.Plan, *flow.Matrix) {
	t.Helper()
	pol, err := policy.LoadAndCompile("../../examples/outsourcing")
	if err != nil {
		t.Fatal(err)
	}
	mj, err := json.Marshal(pol.Matrix)
	if err != nil {
		t.Fatal(err)
	}
	m := func(ee, d, r, a string) *tvdv1.PlanMember {
		return &tvdv1.PlanMember{Member: &tvdv1.Member{Ee: ee, Domain: d, Role: r}, OverlayAddress: a}
	}
	p := &tvdv1.Plan{
		Version: 1,
		Members: []*tvdv1.PlanMember{
			m("y-dc", "yellow", "domain-controller", "10.77.0.2"),
			m("y-gw", "yellow", "gateway", "10.77.0.3"),
			m("r-gw", "red", "gateway", "10.78.0.2"),
		},
		Peers: []*tvdv1.DomainPeers{
			{Domain: "red", OverlayPrefix: "10.78.0.0/16", Peers: []*tvdv1.Peer{{Node: "b", WireguardPublicKey: key(1), Endpoint: "10.254.0.2:51820", AllowedIps: []string{"10.78.0.4/32"}}}},
			{Domain: "yellow", OverlayPrefix: "10.77.0.0/16", Peers: []*tvdv1.Peer{{Node: "b", WireguardPublicKey: key(2), Endpoint: "10.254.0.2:51821", AllowedIps: []string{"10.77.0.4/32"}}}},
		},
		Flow: &tvdv1.FlowPlan{MatrixId: "sha256:x", Matrix: mj, Classes: []*tvdv1.ClassSet{
			{Domain: "yellow", Role: "domain-controller", Addresses: []string{"10.77.0.2"}},
			{Domain: "yellow", Role: "gateway", Addresses: []string{"10.77.0.3"}},
			{Domain: "yellow", Role: "management-console", Addresses: []string{"10.77.0.4"}},
			{Domain: "red", Role: "gateway", Addresses: []string{"10.78.0.2"}},
			{Domain: "red", Role: "client-os", Addresses: []string{"10.78.0.4"}},
		}},
		Quarantine: []*tvdv1.QuarantinedMember{{Member: &tvdv1.Member{Ee: "y-mc-b", Domain: "yellow", Role: "management-console"}, Addresses: []string{"10.77.0.4"}}},
	}
	return p, pol.Matrix
}

func TestReadPlan(t *testing.T) {
	p, _ := samplePlan(t)
	d, err := readPlan(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Members) != 3 || len(d.Domains) != 2 || len(d.MemberErr) != 0 {
		t.Fatalf("members %v domains %v errors %v", d.Members, d.Domains, d.MemberErr)
	}
	y := d.Domains["yellow"]
	if y.Err != nil || y.NodeAddr != netip.MustParseAddr("10.77.0.1") || y.Prefix != netip.MustParsePrefix("10.77.0.0/16") {
		t.Fatalf("yellow: %+v", y)
	}
	if len(y.Peers) != 1 || y.Peers[0].Endpoint != netip.MustParseAddrPort("10.254.0.2:51821") || y.Peers[0].AllowedIPs[0] != netip.MustParsePrefix("10.77.0.4/32") {
		t.Fatalf("yellow peers: %+v", y.Peers)
	}
	if ms := d.Members["r-gw"]; ms.Gateway != netip.MustParseAddr("10.78.0.1") || ms.Addr != netip.MustParseAddr("10.78.0.2") {
		t.Fatalf("r-gw: %+v", ms)
	}
}

// TestReadPlanRejects: every bad input is reported against its domain or
// member, naming what was expected, and never panics.
func TestReadPlanRejects(t *testing.T) {
	cases := []struct {
		name    string
		mutate  func(p *tvdv1.Plan)
		domain  string // the domain whose error must mention want
		want    string
		planErr bool
	}{
		{"bad prefix", func(p *tvdv1.Plan) { p.Peers[1].OverlayPrefix = "10.77.0.0" }, "yellow", "CIDR", false},
		{"tiny prefix", func(p *tvdv1.Plan) { p.Peers[1].OverlayPrefix = "10.77.0.0/31" }, "yellow", "at most /30", false},
		{"short key", func(p *tvdv1.Plan) { p.Peers[1].Peers[0].WireguardPublicKey = []byte{1} }, "yellow", "public key", false},
		{"host endpoint", func(p *tvdv1.Plan) { p.Peers[1].Peers[0].Endpoint = "node-b:51820" }, "yellow", "address:port", false},
		{"foreign prefix", func(p *tvdv1.Plan) { p.Peers[1].Peers[0].AllowedIps = []string{"10.78.0.0/24"} }, "yellow", "one address of another domain", false},
		{"steals a local member", func(p *tvdv1.Plan) { p.Peers[1].Peers[0].AllowedIps = []string{"10.77.0.0/24"} }, "yellow", "covers", false},
		{"member outside prefix", func(p *tvdv1.Plan) { p.Members[0].OverlayAddress = "10.99.0.2" }, "yellow", "want a host of", false},
		{"member on node address", func(p *tvdv1.Plan) { p.Members[0].OverlayAddress = "10.77.0.1" }, "yellow", "other than the node address", false},
		{"member address twice", func(p *tvdv1.Plan) { p.Members[1].OverlayAddress = "10.77.0.2" }, "yellow", "also member", false},
		{"member without domain peers", func(p *tvdv1.Plan) { p.Peers = p.Peers[:1] }, "yellow", "no overlay prefix", false},
		{"path in domain", func(p *tvdv1.Plan) { p.Peers[1].Domain = "../etc" }, "", "domain name", true},
		{"domain twice", func(p *tvdv1.Plan) { p.Peers[0].Domain = "yellow" }, "", "twice", true},
		{"member twice", func(p *tvdv1.Plan) { p.Members[1].Member.Ee = "y-dc" }, "", "twice", true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, _ := samplePlan(t)
			c.mutate(p)
			d, err := readPlan(p)
			if c.planErr {
				if err == nil || !strings.Contains(err.Error(), c.want) {
					t.Fatalf("err %v, want one mentioning %q", err, c.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var msgs []string
			if ds := d.Domains[c.domain]; ds != nil && ds.Err != nil {
				msgs = append(msgs, ds.Err.Error())
			}
			for _, e := range d.MemberErr[c.domain] {
				msgs = append(msgs, e.Error())
			}
			if !strings.Contains(strings.Join(msgs, "; "), c.want) {
				t.Fatalf("domain %s errors %q, want one mentioning %q", c.domain, msgs, c.want)
			}
		})
	}
}

// addGatewayParts gives samplePlan's node what the controller sends for
// Rule G flows: red's client 10.78.0.4 is reached over yellow through the
// peer's gateway, and the node passes flows from its yellow controller
// and from the yellow interface to it through its yellow gateway.
func addGatewayParts(p *tvdv1.Plan) {
	y := p.Peers[1].Peers[0]
	y.Reach = []*tvdv1.GatewayReach{
		{Address: "10.78.0.4", Domain: "yellow", Role: "gateway"},
		{Address: "10.78.0.2", Domain: "yellow", Role: "gateway"}, // a local member: allowed
	}
	p.GatewayRoutes = []*tvdv1.GatewayRoute{
		{FromEe: "y-dc", ToAddress: "10.78.0.4", ViaEe: "y-gw"},
		{FromDomain: "yellow", ToAddress: "10.78.0.4", ViaEe: "y-gw"},
		{FromEe: "y-gw", ToAddress: "10.78.0.4", ViaDomain: "red"},
	}
}

// TestReadPlanGateways: reach addresses become allowed IPs without routes
// (never one another peer has), and the flow plan judges them as the
// gateway; gateway routes are read, bad ones left out with a reason.
func TestReadPlanGateways(t *testing.T) {
	p, m := samplePlan(t)
	addGatewayParts(p)
	// Already the peer's own allowed IP: not added twice.
	p.Peers[1].Peers[0].Reach = append(p.Peers[1].Peers[0].Reach, &tvdv1.GatewayReach{Address: "10.77.0.4", Domain: "yellow", Role: "gateway"})
	p.GatewayRoutes = append(p.GatewayRoutes,
		&tvdv1.GatewayRoute{FromEe: "nobody", ToAddress: "10.78.0.4", ViaEe: "y-gw"},
		&tvdv1.GatewayRoute{FromEe: "y-dc", FromDomain: "yellow", ToAddress: "10.78.0.4", ViaEe: "y-gw"},
		&tvdv1.GatewayRoute{FromEe: "y-dc", ToAddress: "somewhere", ViaEe: "y-gw"},
		&tvdv1.GatewayRoute{FromEe: "y-dc", ToAddress: "10.78.0.4", ViaDomain: "blue"},
	)
	d, err := readPlan(p)
	if err != nil {
		t.Fatal(err)
	}
	y := d.Domains["yellow"]
	if y.Err != nil {
		t.Fatal(y.Err)
	}
	peer := y.Peers[0]
	wantAllowed := []netip.Prefix{netip.MustParsePrefix("10.77.0.4/32"), netip.MustParsePrefix("10.78.0.4/32"), netip.MustParsePrefix("10.78.0.2/32")}
	if !slices.Equal(peer.AllowedIPs, wantAllowed) || !slices.Equal(peer.Unrouted, wantAllowed[1:]) {
		t.Errorf("allowed %v unrouted %v", peer.AllowedIPs, peer.Unrouted)
	}
	if len(d.GatewayRoutes) != 3 || len(d.RouteErr) != 4 {
		t.Fatalf("routes %+v errors %v", d.GatewayRoutes, d.RouteErr)
	}
	for i, want := range []string{"not a local member", "exactly one of from_ee", "unicast IP", "no channel"} {
		if !strings.Contains(d.RouteErr[i].Error(), want) {
			t.Errorf("route error %d: %v, want %q", i, d.RouteErr[i], want)
		}
	}
	fp, warn := flowPlan(p, m, d, nil, []string{channel.InterfaceName("red"), channel.InterfaceName("yellow")})
	if len(warn) != 0 {
		t.Fatal(warn)
	}
	if err := fp.Validate(); err != nil {
		t.Fatal(err)
	}
	gw, _ := m.Class("yellow", "gateway")
	want := []flow.Reach{
		{Iface: channel.InterfaceName("yellow"), Addr: netip.MustParseAddr("10.78.0.4"), Class: gw},
		{Iface: channel.InterfaceName("yellow"), Addr: netip.MustParseAddr("10.78.0.2"), Class: gw},
	}
	if !slices.Equal(fp.Reach, want) {
		t.Errorf("reach %+v, want %+v", fp.Reach, want)
	}
}

func TestFlowPlan(t *testing.T) {
	p, m := samplePlan(t)
	d, err := readPlan(p)
	if err != nil {
		t.Fatal(err)
	}
	ctl := []netip.Addr{netip.MustParseAddr("10.254.0.100")}
	fp, warn := flowPlan(p, m, d, ctl, []string{"tvd-a", "tvd-b"})
	if len(warn) != 0 {
		t.Fatalf("warnings %v", warn)
	}
	if err := fp.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(fp.Members) != 5 || len(fp.EEInterfaces) != 3 {
		t.Fatalf("members %+v interfaces %v", fp.Members, fp.EEInterfaces)
	}
	byEE := map[string]flow.PlanMember{}
	for _, pm := range fp.Members {
		byEE[pm.EE] = pm
	}
	if byEE["y-gw"].Iface != VethName("y-gw") {
		t.Errorf("local member y-gw: %+v", byEE["y-gw"])
	}
	if r := byEE["@10.78.0.4"]; r.Iface != "" || r.Addrs[0] != netip.MustParseAddr("10.78.0.4") {
		t.Errorf("remote member named by address: %+v", r)
	}
	if !slices.Equal(fp.Quarantine, []string{"y-mc-b"}) || byEE["y-mc-b"].Iface != "" {
		t.Errorf("quarantine %v (member %+v)", fp.Quarantine, byEE["y-mc-b"])
	}
	// A class the matrix does not know is left out, with a warning.
	p.Flow.Classes = append(p.Flow.Classes, &tvdv1.ClassSet{Domain: "blue", Role: "x", Addresses: []string{"10.99.0.2"}})
	fp, warn = flowPlan(p, m, d, ctl, nil)
	if len(warn) != 1 || len(fp.Members) != 5 {
		t.Errorf("unknown class: warnings %v, %d members", warn, len(fp.Members))
	}
}

func TestVethName(t *testing.T) {
	seen := map[string]bool{}
	for _, ee := range []string{"a", "y-dc", strings.Repeat("x", 63)} {
		n := VethName(ee)
		if len(n) != 9 || n != VethName(ee) || seen[n] {
			t.Errorf("VethName(%q) = %q", ee, n)
		}
		seen[n] = true
	}
}

func TestPortBook(t *testing.T) {
	path := filepath.Join(t.TempDir(), "channel", "ports.json")
	b, err := openPortBook(path, 51820)
	if err != nil {
		t.Fatal(err)
	}
	for i, d := range []string{"red", "yellow", "blue"} {
		p, err := b.port(d)
		if err != nil || p != uint16(51820+i) {
			t.Fatalf("port(%s) = %d, %v", d, p, err)
		}
	}
	// Reopened: same ports, a new domain takes the next free one.
	b, err = openPortBook(path, 51820)
	if err != nil {
		t.Fatal(err)
	}
	if p, _ := b.port("yellow"); p != 51821 {
		t.Errorf("yellow after reopen: %d", p)
	}
	if p, _ := b.port("green"); p != 51823 {
		t.Errorf("green: %d", p)
	}
}

// FuzzReadPlan feeds arbitrary plans (wire format) through the plan
// reader and the flow-plan builder: they must never panic, and a flow plan
// built from an accepted plan must be one flow/nft accepts.
func FuzzReadPlan(f *testing.F) {
	p, m := samplePlan(f)
	b, err := proto.Marshal(p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	p.Peers[0].OverlayPrefix = "fd00::/64"
	p.Members[2].OverlayAddress = "fd00::2"
	b, _ = proto.Marshal(p)
	f.Add(b)
	f.Add([]byte{})
	p, _ = samplePlan(f)
	addGatewayParts(p)
	b, _ = proto.Marshal(p)
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		var p tvdv1.Plan
		if err := proto.Unmarshal(data, &p); err != nil {
			return
		}
		d, err := readPlan(&p)
		if err != nil {
			return
		}
		var overlay []string
		for name := range d.Domains {
			overlay = append(overlay, channel.InterfaceName(name))
		}
		slices.Sort(overlay)
		fp, _ := flowPlan(&p, m, d, nil, overlay)
		if err := fp.Validate(); err != nil {
			t.Fatalf("flow plan from an accepted plan is invalid: %v", err)
		}
	})
}
