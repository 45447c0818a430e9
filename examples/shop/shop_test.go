package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/workload"
)

// deployment is a real controller and three real agents: the shop's node,
// a registered customer's node and a walk-in guest's node. The test process
// plays each EE's application by opening that EE's Workload API socket.
type deployment struct {
	env                *tvdtest.Env
	shopNode, custNode *tvdtest.RunningAgent
	guestNode          *tvdtest.RunningAgent
	web, alice, walkin *workload.Client
	url                string
	ledger             string
}

func setup(t *testing.T, ttl time.Duration) *deployment {
	t.Helper()
	env := tvdtest.New(t, tvdtest.Options{MemberTTL: ttl})
	env.ApplyPolicy("shop.yaml", "reference-values.yaml")
	d := &deployment{env: env}
	d.shopNode = env.StartAgent(agent.NodeConfig{Node: "tvdwl-shop", EEs: []agent.EEConfig{{Name: "shop-web", Domain: "shop", Role: "web", Owner: "example-shop"}}})
	d.custNode = env.StartAgent(agent.NodeConfig{Node: "tvdwl-cust", EEs: []agent.EEConfig{{Name: "alice", Domain: "shop", Role: "customer", Owner: "alice"}}})
	d.guestNode = env.StartAgent(agent.NodeConfig{Node: "tvdwl-guest", EEs: []agent.EEConfig{{Name: "walkin", Domain: "guest", Role: "client", Owner: "walkin"}}})
	tvdtest.Eventually(t, 15*time.Second, "3 verified members", func() bool {
		ms := env.Members("")
		n := 0
		for _, m := range ms {
			if m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED {
				n++
			}
		}
		return n == 3
	})
	open := func(a *tvdtest.RunningAgent, ee string) *workload.Client {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := workload.OpenSocket(ctx, a.WorkloadSocket(ee))
		if err != nil {
			t.Fatalf("workload API of %s: %v", ee, err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	d.web, d.alice, d.walkin = open(d.shopNode, "shop-web"), open(d.custNode, "alice"), open(d.guestNode, "walkin")

	// The shop, as main runs it: the SDK's listener and store.
	l, err := d.web.Listen("tcp", "127.0.0.1:0", workload.AllowNonMembers())
	if err != nil {
		t.Fatal(err)
	}
	d.ledger = filepath.Join(env.Dir, "shop-data")
	st, err := d.web.OpenStore(d.ledger)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: NewShop(d.web, st), ErrorLog: nil}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	d.url = "https://" + l.Addr().String()
	return d
}

func order(t *testing.T, hc *http.Client, url string, cents int64) (Receipt, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, code, err := PlaceOrder(ctx, hc, url, Order{Item: "tvdwl-unique-item-7f3a", AmountCents: cents})
	if err != nil {
		t.Fatalf("order of %d cents: %v", cents, err)
	}
	return rc, code
}

// TestMemberAndNonMember: the $100 cap applies to the guest (a member of
// another domain) and to an anonymous TLS client, never to the shop's own
// customer.
func TestMemberAndNonMember(t *testing.T) {
	d := setup(t, 0)
	anon := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	for _, tc := range []struct {
		who    string
		hc     *http.Client
		cents  int64
		accept bool
		member bool
	}{
		{"customer", d.alice.HTTPClient(), 150_00, true, true},
		{"customer", d.alice.HTTPClient(), 5_000_00, true, true},
		{"customer", d.alice.HTTPClient(), 20_00, true, true},
		{"guest", d.walkin.HTTPClient(), 100_00, true, false},
		{"guest", d.walkin.HTTPClient(), 100_01, false, false},
		{"anonymous", anon, 50_00, true, false},
		{"anonymous", anon, 150_00, false, false},
	} {
		rc, code := order(t, tc.hc, d.url, tc.cents)
		if rc.Accepted != tc.accept || rc.Member != tc.member {
			t.Errorf("%s, %d cents: accepted=%v member=%v (HTTP %d, %q); want accepted=%v member=%v", tc.who, tc.cents, rc.Accepted, rc.Member, code, rc.Reason, tc.accept, tc.member)
		}
		if rc.Accepted && len(rc.Signature) != 64 {
			t.Errorf("%s: accepted order not signed: %+v", tc.who, rc)
		}
	}
	// An EE gets only what its own role receives, and only its own identity.
	if _, err := d.alice.Secret(context.Background(), "order-signing-key"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("customer asked for the web role's secret: got %v, want NotFound", err)
	}
	id, err := d.alice.Identity()
	if err != nil || id.EE != "alice" || id.Domain != "shop" || id.Role != "customer" {
		t.Errorf("alice's identity: %+v, %v", id, err)
	}
	// A guest cannot reach the shop's customers: the flow matrix says no.
	cl, err := d.alice.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	go func() {
		for {
			c, err := cl.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := d.walkin.Dial(ctx, "tcp", cl.Addr().String()); err == nil {
		c.Close()
		t.Error("a guest's handshake with a shop customer succeeded; the flow matrix forbids guest/client -> shop/customer")
	} else if !strings.Contains(err.Error(), "not authorised") {
		t.Errorf("guest -> customer: %v; want a refusal naming the flow matrix", err)
	}
}

// TestRevokedMemberLosesSecretAndAccess: after the revocation, within one
// plan push to its node, the member's secrets and storage key are withdrawn
// and the shop treats it as a non-member; the release and the withdrawal
// are in the audit log.
func TestRevokedMemberLosesSecretAndAccess(t *testing.T) {
	d := setup(t, 0)
	ctx := context.Background()
	if v, err := d.alice.Secret(ctx, "loyalty-key"); err != nil || len(v) != 32 {
		t.Fatalf("alice's loyalty key: %d bytes, %v", len(v), err)
	}
	st, err := d.alice.OpenStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Put(ctx, "wallet", []byte("alice's wallet")); err != nil {
		t.Fatal(err)
	}
	hc := d.alice.HTTPClient()
	if rc, _ := order(t, hc, d.url, 500_00); !rc.Accepted {
		t.Fatalf("alice's order before the revocation: %+v", rc)
	}
	before := d.custNode.Plan().GetVersion()
	if _, err := d.env.Admin.Admin.Revoke(ctx, connect.NewRequest(&tvdv1.RevokeRequest{
		Target: &tvdv1.RevokeRequest_Member{Member: &tvdv1.Member{Domain: "shop", Role: "customer", Ee: "alice"}}, Reason: "test: card fraud"})); err != nil {
		t.Fatal(err)
	}
	tvdtest.Eventually(t, 5*time.Second, "the next plan on alice's node", func() bool { return d.custNode.Plan().GetVersion() > before })
	if v := d.custNode.Plan().GetVersion(); v != before+1 {
		t.Errorf("plan version %d -> %d; want one push", before, v)
	}
	if _, err := d.alice.Secret(ctx, "loyalty-key"); err == nil {
		t.Error("a revoked member still gets its secret")
	}
	if _, err := st.Get(ctx, "wallet"); err == nil {
		t.Error("a revoked member still decrypts its store")
	}
	// Its keep-alive connection to the shop: the next check after
	// CheckInterval no longer finds a member.
	time.Sleep(workload.CheckInterval)
	rc, code := orderMaybe(hc, d.url, 500_00)
	if rc.Accepted || rc.Member {
		t.Errorf("revoked member's $500 order: %+v (HTTP %d); want refused", rc, code)
	}
	// A new connection fails outright once its identity is gone.
	tvdtest.Eventually(t, 5*time.Second, "alice's identity to be withdrawn", func() bool {
		_, err := d.alice.Identity()
		return err != nil
	})
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if c, err := d.alice.Dial(dctx, "tcp", strings.TrimPrefix(d.url, "https://")); err == nil {
		c.Close()
		t.Error("a revoked member could still open a channel")
	}
	// Audit: the release and the withdrawal.
	tvdtest.Eventually(t, 5*time.Second, "secret release and withdrawal in the audit log", func() bool {
		resp, err := d.env.Admin.Admin.AuditTail(ctx, connect.NewRequest(&tvdv1.AuditTailRequest{Domain: "shop", Limit: 1000}))
		if err != nil {
			return false
		}
		var rel, wd bool
		for _, e := range resp.Msg.GetEntries() {
			s := string(e.GetData())
			if e.GetKind() == "secret" && strings.Contains(s, "/ee/alice") {
				rel = rel || strings.Contains(s, `"release"`)
				wd = wd || strings.Contains(s, `"withdraw"`)
			}
		}
		return rel && wd
	})
}

func orderMaybe(hc *http.Client, url string, cents int64) (Receipt, int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, code, _ := PlaceOrder(ctx, hc, url, Order{Item: "x", AmountCents: cents})
	return rc, code
}

// TestNoPlaintextSecretOnDisk scans the whole deployment's disk (controller
// store, audit log, agents' data directories, the shop's ledger) for the
// secret values and storage keys, raw, hex and base64, and for the
// ledger's content.
func TestNoPlaintextSecretOnDisk(t *testing.T) {
	d := setup(t, 0)
	ctx := context.Background()
	for _, c := range []int64{150_00, 30_00} {
		if rc, _ := order(t, d.alice.HTTPClient(), d.url, c); !rc.Accepted {
			t.Fatalf("order: %+v", rc)
		}
	}
	var needles [][]byte
	for _, q := range []struct {
		c    *workload.Client
		name string
	}{{d.web, "order-signing-key"}, {d.web, "loyalty-key"}, {d.alice, "loyalty-key"}} {
		v, err := q.c.Secret(ctx, q.name)
		if err != nil {
			t.Fatal(err)
		}
		needles = append(needles, v)
	}
	for _, a := range []struct {
		n  *tvdtest.RunningAgent
		ee string
	}{{d.shopNode, "shop-web"}, {d.custNode, "alice"}} {
		k := storageKey(t, a.n.WorkloadSocket(a.ee))
		needles = append(needles, k)
	}
	all := needlesOf(needles...)
	all = append(all, []byte("tvdwl-unique-item-7f3a"))
	// Stop everything so that every byte is on disk.
	for _, a := range []*tvdtest.RunningAgent{d.shopNode, d.custNode, d.guestNode} {
		a.Stop()
	}
	files := scanDisk(t, d.env.Dir, all)
	if files < 10 {
		t.Fatalf("scanned only %d files; the deployment's disk is elsewhere?", files)
	}
	if _, err := os.Stat(filepath.Join(d.ledger, "ledger.sealed")); err != nil {
		t.Errorf("the shop's ledger was not written: %v", err)
	}
	t.Logf("scanned %d files for %d needles", files, len(all))
}

// needlesOf returns each value raw, in hex and in base64.
func needlesOf(vals ...[]byte) [][]byte {
	var all [][]byte
	for _, n := range vals {
		all = append(all, n, []byte(hex.EncodeToString(n)), []byte(base64.StdEncoding.EncodeToString(n)), []byte(base64.RawURLEncoding.EncodeToString(n)))
	}
	return all
}

// scanDisk reads every regular file below dir and fails the test for each
// needle found; it returns how many files it read.
func scanDisk(t *testing.T, dir string, needles [][]byte) int {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for i, n := range needles {
			if bytes.Contains(b, n) {
				t.Errorf("%s holds needle %d (%q...) in plaintext", p, i, n[:min(8, len(n))])
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// storageKey reads an EE's storage key straight from its socket, as the
// SDK's Store does.
func storageKey(t *testing.T, sock string) []byte {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}}
	resp, err := tvdv1connect.NewWorkloadServiceClient(hc, "http://workload.tvd").GetStorageKey(context.Background(), connect.NewRequest(&tvdv1.GetStorageKeyRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Msg.GetKey()) != 32 {
		t.Fatalf("storage key: %d bytes", len(resp.Msg.GetKey()))
	}
	return resp.Msg.GetKey()
}

// TestRotationUnderLiveConnection: member certificates of 4s are renewed
// every 2s while a customer keeps one connection to the shop busy; no
// request fails, and new connections after the rotations work.
func TestRotationUnderLiveConnection(t *testing.T) {
	d := setup(t, 4*time.Second)
	var dials atomic.Int32
	hc := &http.Client{Transport: &http.Transport{DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return d.alice.Dial(ctx, network, addr)
	}}}
	r0w, r0a := d.web.Rotations(), d.alice.Rotations()
	deadline := time.Now().Add(9 * time.Second)
	n := 0
	for time.Now().Before(deadline) {
		rc, code := order(t, hc, d.url, 200_00)
		if !rc.Accepted || !rc.Member {
			t.Fatalf("order %d during rotation: %+v (HTTP %d)", n, rc, code)
		}
		n++
		time.Sleep(100 * time.Millisecond)
	}
	if d.web.Rotations()-r0w < 2 || d.alice.Rotations()-r0a < 2 {
		t.Fatalf("rotations: web %d, alice %d; want at least 2 each", d.web.Rotations()-r0w, d.alice.Rotations()-r0a)
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d connections; want the one live connection throughout", n)
	}
	t.Logf("%d orders over one live connection; rotations web %d, alice %d", n, d.web.Rotations()-r0w, d.alice.Rotations()-r0a)
	// A fresh connection presents the newest certificate.
	fresh := d.alice.HTTPClient()
	if rc, _ := order(t, fresh, d.url, 200_00); !rc.Accepted {
		t.Fatalf("order on a new connection after rotation: %+v", rc)
	}
	id, _ := d.alice.Identity()
	if time.Until(id.Expires) <= 0 {
		t.Errorf("alice's identity expired at %v", id.Expires)
	}
}

// TestControllerLost: with the controller gone, peers are judged from
// their certificates alone: a customer still gets a channel to the shop
// (same domain), but its verdict is not fresh, so the shop caps it; the
// shop keeps signing with the secret its agent holds in memory.
func TestControllerLost(t *testing.T) {
	d := setup(t, 0)
	if rc, _ := order(t, d.alice.HTTPClient(), d.url, 150_00); !rc.Accepted || !rc.Member {
		t.Fatalf("before: %+v", rc)
	}
	d.env.StopController()
	time.Sleep(workload.CheckInterval)
	hc := d.alice.HTTPClient() // a new connection: both ends check the peer
	rc, code := order(t, hc, d.url, 50_00)
	if !rc.Accepted || rc.Member {
		t.Errorf("customer's $50 without the controller: %+v (HTTP %d); want accepted as a non-fresh peer", rc, code)
	}
	rc, _ = order(t, hc, d.url, 150_00)
	if rc.Accepted || !strings.Contains(rc.Reason, "controller unreachable") {
		t.Errorf("customer's $150 without the controller: %+v; want capped, saying why", rc)
	}
	// Another domain's member is not authorised on the certificate alone.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := d.walkin.Dial(ctx, "tcp", strings.TrimPrefix(d.url, "https://")); err == nil {
		c.Close()
		t.Error("a guest got a channel on its certificate alone")
	}
}

// TestPolicyRotatesSecretsAndScopes: a new generation in the policy
// rotates a secret at every member with the next plan; storage: domain
// gives the domain's members one storage key, so a blob sealed by one
// member opens at another.
func TestPolicyRotatesSecretsAndScopes(t *testing.T) {
	d := setup(t, 0)
	ctx := context.Background()
	old, err := d.alice.Secret(ctx, "loyalty-key")
	if err != nil {
		t.Fatal(err)
	}
	shared := t.TempDir()
	st, _ := d.web.OpenStore(shared)
	if err := st.Put(ctx, "menu", []byte("today: books")); err != nil {
		t.Fatal(err)
	}
	ast, _ := d.alice.OpenStore(shared)
	if _, err := ast.Get(ctx, "menu"); !errors.Is(err, workload.ErrWrongKey) {
		t.Fatalf("per-EE storage: alice opened web's blob: %v", err)
	}

	var files []policy.File
	for _, n := range []string{"shop.yaml", "reference-values.yaml"} {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		s := string(b)
		s = strings.Replace(s, "  - name: loyalty-key\n", "  - name: loyalty-key\n    generation: 2\n", 1)
		s = strings.Replace(s, "storage: ee\n", "storage: domain\n", 1)
		files = append(files, policy.File{Name: n, Content: []byte(s)})
	}
	d.env.ApplyFiles(files)
	var cur []byte
	tvdtest.Eventually(t, 5*time.Second, "the rotated loyalty-key at alice", func() bool {
		cur, err = d.alice.Secret(ctx, "loyalty-key")
		return err == nil && !bytes.Equal(cur, old)
	})
	wv, err := d.web.Secret(ctx, "loyalty-key")
	if err != nil || !bytes.Equal(wv, cur) {
		t.Errorf("web's loyalty-key after the rotation differs from alice's (%v)", err)
	}
	// Domain-scoped storage: a blob sealed now by web opens at alice; the
	// one sealed under web's old per-EE key no longer opens.
	if err := st.Put(ctx, "menu2", []byte("tomorrow: games")); err != nil {
		t.Fatal(err)
	}
	if b, err := ast.Get(ctx, "menu2"); err != nil || string(b) != "tomorrow: games" {
		t.Errorf("domain storage: alice reads %q, %v", b, err)
	}
	if _, err := st.Get(ctx, "menu"); !errors.Is(err, workload.ErrWrongKey) {
		t.Errorf("blob sealed under the per-EE key after the scope change: %v; want ErrWrongKey", err)
	}
}
