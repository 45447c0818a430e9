package controller_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/tvdtest"
)

// caseStudy1 is the paper's Figure 4 on three nodes: the management and
// gateway machine, and two client PCs.
func caseStudy1() []agent.NodeConfig {
	return []agent.NodeConfig{
		{Node: "mgmt", EEs: []agent.EEConfig{
			{Name: "yellow-dc", Domain: "yellow", Role: "domain-controller", Owner: "ibm-global-services"},
			{Name: "yellow-gw", Domain: "yellow", Role: "gateway", Owner: "ibm-global-services"},
			{Name: "red-gw", Domain: "red", Role: "gateway", Owner: "outsourcing-customer"},
			{Name: "red-dc", Domain: "red", Role: "domain-controller", Owner: "outsourcing-customer"},
		}},
		{Node: "pc1", EEs: []agent.EEConfig{
			{Name: "yellow-mc1", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
			{Name: "red-client1", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"},
		}},
		{Node: "pc2", EEs: []agent.EEConfig{
			{Name: "yellow-mc2", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
			{Name: "red-client2", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"},
		}},
	}
}

// start brings up a controller with the relaxed case study 1 policy and
// its three agents, and waits until every member has reported.
func start(t *testing.T) (*tvdtest.Env, map[string]*tvdtest.RunningAgent) {
	t.Helper()
	env := tvdtest.New(t, tvdtest.Options{})
	env.ApplyFiles(tvdtest.ImplicitOutsourcing(t))
	agents := map[string]*tvdtest.RunningAgent{}
	for _, nc := range caseStudy1() {
		agents[nc.Node] = env.StartAgent(nc)
	}
	tvdtest.Eventually(t, 10*time.Second, "8 verified members and acknowledged plans", func() bool {
		ms := env.Members("")
		if len(ms) != 8 {
			return false
		}
		for _, m := range ms {
			if m.GetVerdict().GetStatus() != tvdv1.Status_STATUS_VERIFIED {
				return false
			}
		}
		for _, a := range agents {
			if p := a.Plan(); p == nil || p.GetFlow() == nil {
				return false
			}
		}
		return true
	})
	return env, agents
}

func TestJoinWithImplicitTrust(t *testing.T) {
	env, agents := start(t)
	yellow := env.Members("yellow")
	var got []string
	addrs := map[string]bool{}
	for _, m := range yellow {
		got = append(got, m.GetMember().GetRole()+"/"+m.GetMember().GetEe()+"@"+m.GetNode())
		if addrs[m.GetOverlayAddress()] {
			t.Errorf("address %s handed out twice", m.GetOverlayAddress())
		}
		addrs[m.GetOverlayAddress()] = true
		if !strings.HasPrefix(m.GetOverlayAddress(), "10.77.") {
			t.Errorf("%s: address %s outside yellow's subnet", m.GetMember().GetEe(), m.GetOverlayAddress())
		}
	}
	want := []string{"domain-controller/yellow-dc@mgmt", "gateway/yellow-gw@mgmt", "management-console/yellow-mc1@pc1", "management-console/yellow-mc2@pc2"}
	if !slices.Equal(got, want) {
		t.Errorf("yellow members:\n got %v\nwant %v", got, want)
	}
	// Each agent holds exactly its own members, with certificates.
	for node, a := range agents {
		p := a.Plan()
		for _, m := range p.GetMembers() {
			if len(m.GetCertChain()) == 0 {
				t.Errorf("%s: member %s has no certificate", node, m.GetMember().GetEe())
			}
		}
		if len(p.GetFlow().GetMatrix()) == 0 || !strings.HasPrefix(p.GetFlow().GetMatrixId(), "sha256:") {
			t.Errorf("%s: plan has no flow matrix", node)
		}
	}
}

// TestMemberCertificateIsAnSVID checks that go-spiffe accepts a member
// certificate as an X.509-SVID of the deployment.
func TestMemberCertificateIsAnSVID(t *testing.T) {
	env, agents := start(t)
	p := agents["pc1"].Plan()
	var pm *tvdv1.PlanMember
	for _, m := range p.GetMembers() {
		if m.GetMember().GetEe() == "red-client1" {
			pm = m
		}
	}
	if pm == nil {
		t.Fatal("red-client1 not in pc1's plan")
	}
	leaf, err := x509.ParseCertificate(pm.GetCertChain()[0])
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString(env.Controller.TrustDomain())
	bundle := x509bundle.FromX509Authorities(td, env.Controller.Bundle().Roots())
	id, _, err := x509svid.Verify([]*x509.Certificate{leaf}, bundle)
	if err != nil {
		t.Fatalf("x509svid.Verify: %v", err)
	}
	if want := "spiffe://tvd.local/domain/red/role/client-os/ee/red-client1"; id.String() != want {
		t.Errorf("SVID %s, want %s", id, want)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 10*time.Minute {
		t.Errorf("member certificate lives %v; want minutes", life)
	}
	other, err := ca.New("tvd.local", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify([]*x509.Certificate{leaf}, x509bundle.FromX509Authorities(td, other.Bundle().Roots())); err == nil {
		t.Error("member certificate verified against another deployment's CA")
	}
}

// TestRevocationReachesEveryNode revokes a member and checks that it
// leaves every node's plan within one push.
func TestRevocationReachesEveryNode(t *testing.T) {
	env, agents := start(t)
	victim := "red-client1"
	var addr string
	for _, m := range env.Members("red") {
		if m.GetMember().GetEe() == victim {
			addr = m.GetOverlayAddress()
		}
	}
	// Let the plans settle first (reports after start-up may still bring
	// a push), so that the one push below is the revocation's.
	settled := func() map[string]uint64 {
		v := map[string]uint64{}
		for n, a := range agents {
			v[n] = a.Plan().GetVersion()
		}
		return v
	}
	prev := settled()
	tvdtest.Eventually(t, 10*time.Second, "plans to settle", func() bool {
		time.Sleep(400 * time.Millisecond)
		cur := settled()
		same := maps.Equal(prev, cur)
		prev = cur
		return same
	})
	before := map[string]uint64{}
	for n, a := range agents {
		p := a.Plan()
		before[n] = p.GetVersion()
		if !planMentions(p, victim, addr) && n == "pc1" {
			t.Fatalf("%s's plan does not hold %s before the revocation", n, victim)
		}
	}
	_, err := env.Admin.Admin.Revoke(context.Background(), connect.NewRequest(&tvdv1.RevokeRequest{
		Target: &tvdv1.RevokeRequest_Member{Member: &tvdv1.Member{Domain: "red", Role: "client-os", Ee: victim}}, Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	for n, a := range agents {
		tvdtest.Eventually(t, 5*time.Second, n+" to receive the next plan", func() bool { return a.Plan().GetVersion() > before[n] })
		p := a.Plan()
		if p.GetVersion() != before[n]+1 {
			t.Errorf("%s: plan version %d -> %d; want exactly one push", n, before[n], p.GetVersion())
		}
		if planMentions(p, victim, addr) {
			t.Errorf("%s: revoked member %s (%s) still in the plan", n, victim, addr)
		}
	}
	for _, m := range env.Members("red") {
		if m.GetMember().GetEe() == victim {
			t.Errorf("revoked member still listed: %v", m)
		}
	}
}

func planMentions(p *tvdv1.Plan, ee, addr string) bool {
	for _, m := range p.GetMembers() {
		if m.GetMember().GetEe() == ee {
			return true
		}
	}
	for _, c := range p.GetFlow().GetClasses() {
		if slices.Contains(c.GetAddresses(), addr) {
			return true
		}
	}
	for _, d := range p.GetPeers() {
		for _, peer := range d.GetPeers() {
			for _, a := range peer.GetAllowedIps() {
				if strings.HasPrefix(a, addr+"/") {
					return true
				}
			}
		}
	}
	return false
}

// dialAs issues an admin certificate with role and returns a client for it.
func dialAs(t *testing.T, env *tvdtest.Env, name, role string) *client.Client {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ca.NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := env.Admin.Admin.IssueAdminCert(context.Background(), connect.NewRequest(&tvdv1.IssueAdminCertRequest{Name: name, Role: role, Csr: csr, Ttl: durationpb.New(time.Hour)}))
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{resp.Msg.GetCert()}, PrivateKey: key}
	cl, err := client.New(env.URL, env.Controller.Bundle().ClientTLSConfig(&cert, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func auditSize(t *testing.T, env *tvdtest.Env) uint64 {
	t.Helper()
	resp, err := env.Admin.Admin.Status(context.Background(), connect.NewRequest(&tvdv1.StatusRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetAuditSize()
}

// waitAudit waits for the audit log to grow past n (appends are batched).
func waitAudit(t *testing.T, env *tvdtest.Env, n uint64, what string) {
	t.Helper()
	tvdtest.Eventually(t, 2*time.Second, "an audit entry for "+what, func() bool { return auditSize(t, env) > n })
}

// TestAuditorSeesOnlyItsDomain gives an auditor:red certificate, as tMart's
// CIO gets for its domain, and checks what it may and may not do.
func TestAuditorSeesOnlyItsDomain(t *testing.T) {
	env, _ := start(t)
	aud := dialAs(t, env, "red-auditor", "auditor:red")
	ctx := context.Background()
	resp, err := aud.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{Domain: "red"}))
	if err != nil {
		t.Fatalf("auditor:red listing red: %v", err)
	}
	if len(resp.Msg.GetMembers()) != 4 {
		t.Errorf("auditor:red sees %d red members, want 4", len(resp.Msg.GetMembers()))
	}
	all, err := aud.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range all.Msg.GetMembers() {
		if m.GetMember().GetDomain() != "red" {
			t.Errorf("auditor:red sees %v", m.GetMember())
		}
	}
	_, err = aud.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{Domain: "yellow"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("auditor:red listing yellow: %v; want permission denied", err)
	}
	n := auditSize(t, env)
	writes := map[string]func() error{
		"create join token": func() error {
			_, err := aud.Admin.CreateJoinToken(ctx, connect.NewRequest(&tvdv1.CreateJoinTokenRequest{}))
			return err
		},
		"apply policy": func() error {
			_, err := aud.Admin.ApplyPolicy(ctx, connect.NewRequest(&tvdv1.ApplyPolicyRequest{Files: []*tvdv1.PolicyFile{{Name: "x.yaml", Content: []byte("kind: Tests")}}}))
			return err
		},
		"revoke": func() error {
			_, err := aud.Admin.Revoke(ctx, connect.NewRequest(&tvdv1.RevokeRequest{Target: &tvdv1.RevokeRequest_Member{Member: &tvdv1.Member{Domain: "red", Role: "client-os", Ee: "red-client1"}}}))
			return err
		},
		"issue admin cert": func() error {
			_, err := aud.Admin.IssueAdminCert(ctx, connect.NewRequest(&tvdv1.IssueAdminCertRequest{Name: "x", Role: "admin"}))
			return err
		},
	}
	for what, call := range writes {
		if err := call(); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Errorf("auditor:red %s: %v; want permission denied", what, err)
		}
	}
	waitAudit(t, env, n+3, "the refused writes")
	if got := len(env.Members("red")); got != 4 {
		t.Errorf("a refused write changed state: %d red members", got)
	}
}

// TestBadInput sends malformed and hostile requests: each gets a clear,
// specific error, changes no state, and is audited.
func TestBadInput(t *testing.T) {
	env, _ := start(t)
	ctx := context.Background()
	used := env.Token("")
	// Use the token once, legitimately.
	env.StartAgent(agent.NodeConfig{Node: "pc3", EEs: []agent.EEConfig{{Name: "red-client3", Domain: "red", Role: "client-os"}}})
	tvdtest.Eventually(t, 5*time.Second, "pc3's member", func() bool { return len(env.Members("red")) == 5 })
	_ = used

	enrol := func(token, node string, ees ...*tvdv1.EESpec) error {
		_, _, caHash, err := client.ParseJoinToken(token)
		if err != nil {
			caHash = strings.Repeat("0", 64)
		}
		if h := env.Controller.CAFingerprint(); caHash != h {
			caHash = h
		}
		cl, err := client.New(env.URL, client.PinnedTLS(caHash))
		if err != nil {
			t.Fatal(err)
		}
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := ca.NewCSR(key)
		_, err = cl.Agent.Enroll(ctx, connect.NewRequest(&tvdv1.EnrollRequest{JoinToken: token, NodeName: node, Csr: csr, Ees: ees}))
		return err
	}
	fresh := func() string { return env.Token("") }
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := ca.NewCSR(key)
	expiring, err := env.Admin.Admin.CreateJoinToken(ctx, connect.NewRequest(&tvdv1.CreateJoinTokenRequest{Ttl: durationpb.New(time.Millisecond)}))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	// A token used once, by pc3 above: find it by enrolling with a copy.
	replay := env.Token("")
	if err := enrol(replay, "pc4"); err != nil {
		t.Fatalf("first use of a token: %v", err)
	}
	cases := []struct {
		name string
		call func() error
		code connect.Code
		msg  string
	}{
		{"replayed token", func() error { return enrol(replay, "pc5") }, connect.CodePermissionDenied, "already used"},
		{"expired token", func() error { return enrol(expiring.Msg.GetToken(), "pc5") }, connect.CodePermissionDenied, "expired"},
		{"malformed token", func() error { return enrol("tvd1.nope", "pc5") }, connect.CodeInvalidArgument, "malformed join token"},
		{"no token", func() error { return enrol("", "pc5") }, connect.CodeUnauthenticated, "join token"},
		{"forged secret", func() error {
			tok := fresh()
			parts := strings.Split(tok, ".")
			parts[2] = strings.Repeat("A", len(parts[2]))
			return enrol(strings.Join(parts, "."), "pc5")
		}, connect.CodePermissionDenied, "not valid"},
		{"second agent claims an enrolled node", func() error { return enrol(fresh(), "pc1") }, connect.CodeAlreadyExists, "already enrolled"},
		{"invalid node name", func() error { return enrol(fresh(), "PC/../1") }, connect.CodeInvalidArgument, "node name"},
		{"oversized request", func() error {
			cl, _ := client.New(env.URL, client.PinnedTLS(env.Controller.CAFingerprint()))
			_, err := cl.Agent.Enroll(ctx, connect.NewRequest(&tvdv1.EnrollRequest{JoinToken: fresh(), NodeName: "pc6", Csr: make([]byte, 9<<20)}))
			return err
		}, connect.CodeResourceExhausted, ""},
		{"bad CSR", func() error {
			cl, _ := client.New(env.URL, client.PinnedTLS(env.Controller.CAFingerprint()))
			_, err := cl.Agent.Enroll(ctx, connect.NewRequest(&tvdv1.EnrollRequest{JoinToken: fresh(), NodeName: "pc6", Csr: []byte("junk")}))
			return err
		}, connect.CodeInvalidArgument, "certificate request"},
		{"report without a node certificate", func() error {
			cl, _ := client.New(env.URL, client.PinnedTLS(env.Controller.CAFingerprint()))
			_, err := cl.Agent.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "pc1"}))
			return err
		}, connect.CodeUnauthenticated, "node certificate"},
		{"admin call without a certificate", func() error {
			cl, _ := client.New(env.URL, client.PinnedTLS(env.Controller.CAFingerprint()))
			_, err := cl.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{}))
			return err
		}, connect.CodeUnauthenticated, "admin certificate"},
		{"revoke an unknown member", func() error {
			_, err := env.Admin.Admin.Revoke(ctx, connect.NewRequest(&tvdv1.RevokeRequest{Target: &tvdv1.RevokeRequest_Member{Member: &tvdv1.Member{Domain: "red", Role: "client-os", Ee: "nobody"}}}))
			return err
		}, connect.CodeNotFound, "no admitted member"},
		{"policy that does not compile", func() error {
			_, err := env.Admin.Admin.ApplyPolicy(ctx, connect.NewRequest(&tvdv1.ApplyPolicyRequest{Files: []*tvdv1.PolicyFile{{Name: "bad.yaml", Content: []byte("kind: Domain\nname: x\n")}}}))
			return err
		}, connect.CodeInvalidArgument, "bad.yaml:1:1"},
	}
	_ = csr
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nodesBefore := len(nodes(t, env))
			membersBefore := len(env.Members(""))
			err := tc.call()
			if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v; want %v containing %q", err, tc.code, tc.msg)
			}
			if n := len(nodes(t, env)); n != nodesBefore {
				t.Errorf("nodes %d -> %d", nodesBefore, n)
			}
			if n := len(env.Members("")); n != membersBefore {
				t.Errorf("members %d -> %d", membersBefore, n)
			}
		})
	}

	// A revoked node's certificate no longer opens any door.
	pc3 := filepath.Join(env.Dir, "agents", "pc3", "node")
	if _, err := env.Admin.Admin.Revoke(ctx, connect.NewRequest(&tvdv1.RevokeRequest{Target: &tvdv1.RevokeRequest_Node{Node: "pc3"}, Reason: "test"})); err != nil {
		t.Fatal(err)
	}
	creds, err := client.LoadDir(pc3)
	if err != nil {
		t.Fatal(err)
	}
	cl3, err := client.Dial(creds, env.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = cl3.Agent.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "pc3"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "not enrolled") {
		t.Errorf("report from a revoked node: %v; want permission denied", err)
	}
	_, err = cl3.Agent.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "pc1"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied || !strings.Contains(err.Error(), "may not act for node") {
		t.Errorf("node pc3 acting for pc1: %v; want permission denied", err)
	}

	// EEs asking for unknown domains and roles are refused one by one, with
	// a reason, while the node itself enrols.
	n := auditSize(t, env)
	key2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr2, _ := ca.NewCSR(key2)
	err = enrol(fresh(), "pc7",
		&tvdv1.EESpec{Name: "ghost", Domain: "green", Role: "client-os", Csr: csr2},
		&tvdv1.EESpec{Name: "intruder", Domain: "red", Role: "root", Csr: csr2},
		&tvdv1.EESpec{Name: "second-dc", Domain: "yellow", Role: "domain-controller", Csr: csr2})
	if err != nil {
		t.Fatal(err)
	}
	waitAudit(t, env, n+3, "the refusals")
	for _, m := range env.Members("") {
		if slices.Contains([]string{"ghost", "intruder", "second-dc"}, m.GetMember().GetEe()) {
			t.Errorf("refused EE admitted: %v", m.GetMember())
		}
	}
	tail, err := env.Admin.Admin.AuditTail(ctx, connect.NewRequest(&tvdv1.AuditTailRequest{StartIndex: n, Limit: 100}))
	if err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range tail.Msg.GetEntries() {
		if e.GetKind() == "refuse" {
			reasons = append(reasons, string(e.GetData()))
		}
	}
	joined := strings.Join(reasons, "\n")
	for _, want := range []string{`no domain \"green\"`, `has no role \"root\"`, `is full`} {
		if !strings.Contains(joined, want) {
			t.Errorf("no audited refusal mentioning %s in:\n%s", want, joined)
		}
	}
}

func nodes(t *testing.T, env *tvdtest.Env) []*tvdv1.Node {
	t.Helper()
	resp, err := env.Admin.Admin.ListNodes(context.Background(), connect.NewRequest(&tvdv1.ListNodesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	return resp.Msg.GetNodes()
}

// TestForeignCertificateRefused connects with a node certificate from
// another deployment's CA: the TLS handshake itself fails.
func TestForeignCertificateRefused(t *testing.T) {
	env, _ := start(t)
	other, err := ca.New("tvd.local", time.Now(), nil)
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, der, err := other.IssueNode("pc1", key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	cl, err := client.New(env.URL, env.Controller.Bundle().ClientTLSConfig(&cert, "127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	n := auditSize(t, env)
	_, err = cl.Agent.Report(context.Background(), connect.NewRequest(&tvdv1.ReportRequest{Node: "pc1"}))
	if err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	// The handshake fails, so no handler answers: the client sees a
	// transport error (how it surfaces depends on timing), never an
	// application code.
	switch connect.CodeOf(err) {
	case connect.CodePermissionDenied, connect.CodeUnauthenticated, connect.CodeInvalidArgument, connect.CodeFailedPrecondition:
		t.Errorf("got %v; want a failed TLS handshake", err)
	}
	waitAudit(t, env, n, "the refused handshake")
	tail, err := env.Admin.Admin.AuditTail(context.Background(), connect.NewRequest(&tvdv1.AuditTailRequest{StartIndex: n}))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range tail.Msg.GetEntries() {
		if e.GetKind() == "refuse" && strings.Contains(string(e.GetData()), "TLS handshake") && strings.Contains(string(e.GetData()), "/node/pc1") {
			found = true
		}
	}
	if !found {
		t.Error("the refused handshake is not in the audit log")
	}
}

// TestPolicyVersions applies a change that removes a role: its members
// leave their domain, the history shows both versions, and every node
// acknowledges the new plan.
func TestPolicyVersions(t *testing.T) {
	env, agents := start(t)
	files := tvdtest.ImplicitOutsourcing(t)
	if r := env.ApplyFiles(files); r.GetChanged() {
		t.Errorf("re-applying the same policy changed it: %v", r)
	}
	for i, f := range files {
		if strings.Contains(string(f.Content), "name: yellow\n") {
			s := strings.Replace(string(f.Content), "  - name: management-console\n", "  - name: console\n", 1)
			s = strings.Replace(s, "  management-console:\n    red: via-gateway", "  console:\n    red: via-gateway", 1)
			files[i].Content = []byte(s)
		}
	}
	r := env.ApplyFiles(files)
	if !r.GetChanged() || r.GetVersion() != 2 || !strings.Contains(r.GetDiffSummary(), "changed yellow") {
		t.Fatalf("apply: %+v", r)
	}
	for _, m := range env.Members("yellow") {
		if m.GetMember().GetRole() == "management-console" {
			t.Errorf("member of a removed role remains: %v", m.GetMember())
		}
	}
	for n, a := range agents {
		tvdtest.Eventually(t, 5*time.Second, n+" on policy 2", func() bool { return a.Plan().GetPolicyVersion() == 2 })
	}
	tvdtest.Eventually(t, 5*time.Second, "acknowledgements of policy 2", func() bool {
		for _, m := range env.Members("") {
			if m.GetPolicyVersionApplied() != 2 {
				return false
			}
		}
		return true
	})
	h, err := env.Admin.Admin.PolicyHistory(context.Background(), connect.NewRequest(&tvdv1.PolicyHistoryRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Msg.GetVersions()) != 2 || h.Msg.GetVersions()[0].GetVersion() != 2 {
		t.Errorf("history: %v", h.Msg.GetVersions())
	}
}

// TestSilentNodeGoesStale stops an agent; its members must turn violating
// once their domain's deadline passes, never stay trusted.
func TestSilentNodeGoesStale(t *testing.T) {
	env := tvdtest.New(t, tvdtest.Options{})
	files := tvdtest.ImplicitOutsourcing(t)
	for i := range files {
		s := strings.ReplaceAll(string(files[i].Content), "interval: 5s", "interval: 200ms")
		files[i].Content = []byte(strings.ReplaceAll(s, "deadline: 15s", "deadline: 800ms"))
	}
	env.ApplyFiles(files)
	a := env.StartAgent(agent.NodeConfig{Node: "pc1", EEs: []agent.EEConfig{{Name: "red-client1", Domain: "red", Role: "client-os"}}})
	tvdtest.Eventually(t, 5*time.Second, "the member", func() bool { return len(env.Members("red")) == 1 })
	time.Sleep(1200 * time.Millisecond) // reports keep it fresh past one deadline
	if st := env.Members("red")[0].GetVerdict().GetStatus(); st != tvdv1.Status_STATUS_VERIFIED {
		t.Fatalf("reporting member is %v", st)
	}
	a.Stop()
	stoppedAt := time.Now()
	tvdtest.Eventually(t, 5*time.Second, "the silent member to turn violating", func() bool {
		return env.Members("red")[0].GetVerdict().GetStatus() == tvdv1.Status_STATUS_VIOLATED
	})
	t.Logf("stale after %v (deadline 800ms)", time.Since(stoppedAt).Round(10*time.Millisecond))
	if r := env.Members("red")[0].GetVerdict().GetReason(); !strings.Contains(r, "no verdict since") && !strings.Contains(r, "no fresh verdict") {
		t.Errorf("reason %q does not say the member is stale", r)
	}
}

// TestLeave withdraws one EE from its domain at its node's request, then the
// whole node.
func TestLeave(t *testing.T) {
	env, agents := start(t)
	ctx := context.Background()
	creds, err := client.LoadDir(filepath.Join(agents["pc2"].DataDir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	cl, err := client.Dial(creds, env.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Agent.Leave(ctx, connect.NewRequest(&tvdv1.LeaveRequest{Node: "pc2", Ees: []string{"red-client2"}, Reason: "decommissioned"})); err != nil {
		t.Fatal(err)
	}
	for _, m := range env.Members("red") {
		if m.GetMember().GetEe() == "red-client2" {
			t.Error("red-client2 is still a member after leaving")
		}
	}
	tvdtest.Eventually(t, 5*time.Second, "pc2's plan without red-client2", func() bool {
		return !planMentions(agents["pc2"].Plan(), "red-client2", "")
	})
	if _, err := cl.Agent.Leave(ctx, connect.NewRequest(&tvdv1.LeaveRequest{Node: "pc2", Reason: "node retired"})); err != nil {
		t.Fatal(err)
	}
	for _, m := range env.Members("") {
		if m.GetNode() == "pc2" {
			t.Errorf("%v still a member after its node left", m.GetMember())
		}
	}
	_, err = cl.Agent.Report(ctx, connect.NewRequest(&tvdv1.ReportRequest{Node: "pc2"}))
	if connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("report from a node that left: %v; want permission denied", err)
	}
}
