package workload_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/workload"
)

func open(t *testing.T, path string) *workload.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	c, err := workload.OpenSocket(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestStore: sealed blobs are not plaintext, do not open when tampered
// with or renamed, and another EE's storage key does not open them.
func TestStore(t *testing.T) {
	ctx := context.Background()
	web := open(t, os.Getenv(workload.EnvSocket))
	alice := open(t, aliceSocket)
	dir := t.TempDir()
	st, err := web.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	secret := []byte("the shop's card-processor token 9f8e7d")
	if err := st.Put(ctx, "token", secret); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "token.sealed")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := st.Get(ctx, "token"); err != nil || string(got) != string(secret) {
		t.Fatalf("get: %q, %v", got, err)
	}
	// Renamed: the name is bound.
	if err := os.WriteFile(filepath.Join(dir, "other.sealed"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "other"); err == nil {
		t.Error("a renamed blob opened")
	}
	// Tampered.
	bad := append([]byte(nil), b...)
	bad[len(bad)-1] ^= 1
	if err := os.WriteFile(p, bad, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(ctx, "token"); err == nil {
		t.Error("a tampered blob opened")
	}
	// Another EE (per-EE storage): its key does not fit.
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	ast, err := alice.OpenStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ast.Get(ctx, "token"); !errors.Is(err, workload.ErrWrongKey) {
		t.Errorf("alice reading shop-web's blob: %v; want ErrWrongKey", err)
	}
	for _, name := range []string{"", "../x", ".hidden", "a/b"} {
		if err := st.Put(ctx, name, nil); err == nil {
			t.Errorf("blob name %q accepted", name)
		}
	}
	// Per-role secrets: alice is a customer.
	if _, err := alice.Secret(ctx, "order-signing-key"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("customer asking for the web role's secret: %v; want NotFound", err)
	}
	if _, err := web.Secret(ctx, "no-such-secret"); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("unknown secret: %v; want NotFound", err)
	}
	wa, _ := web.Secret(ctx, "loyalty-key")
	aa, _ := alice.Secret(ctx, "loyalty-key")
	if len(wa) != 32 || string(wa) != string(aa) {
		t.Error("the domain's loyalty-key differs between its members")
	}
}
