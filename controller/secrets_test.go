package controller_test

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/tvdtest"
)

// TestSecretServiceRefusals: the controller releases a member's secrets
// only to the node hosting it, never to another node or an admin, and
// answers bad peer checks with clear errors. Values are stable (derived)
// and differ per domain and, for storage keys, per EE.
func TestSecretServiceRefusals(t *testing.T) {
	env := tvdtest.New(t, tvdtest.Options{})
	env.ApplyPolicy("../examples/shop/shop.yaml", "../examples/shop/reference-values.yaml")
	env.StartAgent(agent.NodeConfig{Node: "n1", EEs: []agent.EEConfig{
		{Name: "web", Domain: "shop", Role: "web"}, {Name: "alice", Domain: "shop", Role: "customer"}}})
	env.StartAgent(agent.NodeConfig{Node: "n2", EEs: []agent.EEConfig{{Name: "walkin", Domain: "guest", Role: "client"}}})
	tvdtest.Eventually(t, 10*time.Second, "3 members", func() bool { return len(env.Members("")) == 3 })
	ctx := context.Background()
	node := func(n string) *client.Client {
		creds, err := client.LoadDir(filepath.Join(env.Dir, "agents", n, "node"))
		if err != nil {
			t.Fatal(err)
		}
		cl, err := client.Dial(creds, env.URL)
		if err != nil {
			t.Fatal(err)
		}
		return cl
	}
	n1, n2 := node("n1"), node("n2")
	web := &tvdv1.Member{Domain: "shop", Role: "web", Ee: "web"}
	alice := &tvdv1.Member{Domain: "shop", Role: "customer", Ee: "alice"}

	rel := func(cl *client.Client, nodeName string, m *tvdv1.Member) (*tvdv1.ReleaseResponse, error) {
		r, err := cl.Secrets.Release(ctx, connect.NewRequest(&tvdv1.ReleaseRequest{Node: nodeName, Member: m}))
		if err != nil {
			return nil, err
		}
		return r.Msg, nil
	}
	w1, err := rel(n1, "n1", web)
	if err != nil {
		t.Fatal(err)
	}
	w2, _ := rel(n1, "n1", web)
	a1, err := rel(n1, "n1", alice)
	if err != nil {
		t.Fatal(err)
	}
	names := func(r *tvdv1.ReleaseResponse) (out []string) {
		for _, s := range r.GetSecrets() {
			out = append(out, s.GetName())
		}
		return out
	}
	if got := strings.Join(names(w1), ","); got != "order-signing-key,loyalty-key" {
		t.Errorf("web's secrets: %s", got)
	}
	if got := strings.Join(names(a1), ","); got != "loyalty-key" {
		t.Errorf("customer's secrets: %s", got)
	}
	if !bytes.Equal(w1.GetSecrets()[0].GetValue(), w2.GetSecrets()[0].GetValue()) || !bytes.Equal(w1.GetStorageKey(), w2.GetStorageKey()) {
		t.Error("derived values changed between two releases")
	}
	if !bytes.Equal(w1.GetSecrets()[1].GetValue(), a1.GetSecrets()[0].GetValue()) {
		t.Error("the domain's loyalty-key differs between members")
	}
	if bytes.Equal(w1.GetStorageKey(), a1.GetStorageKey()) || w1.GetStorageKeyId() == a1.GetStorageKeyId() || w1.GetStorageScope() != "ee" {
		t.Errorf("per-EE storage keys: web %s, alice %s (scope %s)", w1.GetStorageKeyId(), a1.GetStorageKeyId(), w1.GetStorageScope())
	}

	for _, tc := range []struct {
		name string
		call func() error
		code connect.Code
		msg  string
	}{
		{"another node's member", func() error { _, err := rel(n2, "n2", web); return err }, connect.CodeNotFound, `not on node "n2"`},
		{"acting for another node", func() error { _, err := rel(n2, "n1", web); return err }, connect.CodePermissionDenied, "may not act for node"},
		{"an admin", func() error { _, err := rel(env.Admin, "n1", web); return err }, connect.CodeUnauthenticated, "node certificate"},
		{"no member", func() error { _, err := rel(n1, "n1", nil); return err }, connect.CodeInvalidArgument, "member"},
		{"wrong role", func() error {
			_, err := rel(n1, "n1", &tvdv1.Member{Domain: "shop", Role: "web", Ee: "alice"})
			return err
		}, connect.CodeNotFound, "not on node"},
		{"empty peer chain", func() error {
			_, err := n1.Secrets.CheckPeer(ctx, connect.NewRequest(&tvdv1.SecretServiceCheckPeerRequest{Node: "n1", Member: web}))
			return err
		}, connect.CodeInvalidArgument, "want 1 to 8 certificates"},
	} {
		err := tc.call()
		if connect.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: %v; want %v containing %q", tc.name, err, tc.code, tc.msg)
		}
	}
	// A chain that is no certificate at all is a peer that is no member.
	r, err := n1.Secrets.CheckPeer(ctx, connect.NewRequest(&tvdv1.SecretServiceCheckPeerRequest{Node: "n1", Member: web, CertChain: [][]byte{[]byte("garbage")}}))
	if err != nil || r.Msg.GetPeer().GetAuthorized() || !strings.Contains(r.Msg.GetPeer().GetReason(), "not a valid identity") {
		t.Errorf("garbage chain: %v, %v", r, err)
	}
	// A node certificate is not a member identity.
	creds, _ := client.LoadDir(filepath.Join(env.Dir, "agents", "n2", "node"))
	r, err = n1.Secrets.CheckPeer(ctx, connect.NewRequest(&tvdv1.SecretServiceCheckPeerRequest{Node: "n1", Member: web, CertChain: creds.Cert.Certificate}))
	if err != nil || r.Msg.GetPeer().GetAuthorized() || !strings.Contains(r.Msg.GetPeer().GetReason(), "not a member identity") {
		t.Errorf("node certificate as a peer: %v, %v", r, err)
	}
}
