package controller

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/store/bolt"
)

// TestStoreAudit: two auditors on one store (as two replicas, one after
// the other) continue one log, signed with one key kept sealed in the
// store; a stale append position is a conflict; the log passes fsck.
func TestStoreAudit(t *testing.T) {
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	kek := make([]byte, 32)
	kek[0] = 7
	shared := &sharedAudit{st: st, kek: kek}
	now := func() time.Time { return time.Date(2026, 11, 28, 1, 0, 0, 0, time.UTC) }
	entry := func(s string) audit.Entry {
		return audit.Entry{Time: now(), Kind: audit.KindAdmit, Actor: "controller", Subject: s}
	}
	a1, err := openAuditor(ctx, t.TempDir(), "tvd.test", slog.New(slog.DiscardHandler), now, shared)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := a1.append(ctx, entry(string(rune('a'+i)))); err != nil {
			t.Fatal(err)
		}
	}
	a2, err := openAuditor(ctx, t.TempDir(), "tvd.test", slog.New(slog.DiscardHandler), now, shared)
	if err != nil {
		t.Fatal(err)
	}
	if a2.log.Size() != 5 {
		t.Fatalf("the second replica sees %d entries, want 5", a2.log.Size())
	}
	if idx, err := a2.append(ctx, entry("f")); err != nil || idx != 5 {
		t.Fatalf("append on the second replica: %d, %v", idx, err)
	}
	// The first replica's view is stale: its append position is taken.
	sa := storeAudit{st}
	if err := sa.AppendLeaves(ctx, 5, [][]byte{[]byte("x")}); !errors.Is(err, audit.ErrConflict) {
		t.Fatalf("stale append: %v, want ErrConflict", err)
	}
	vk, err := audit.VerifierKeyFor(mustSigner(t, ctx, shared))
	if err != nil {
		t.Fatal(err)
	}
	v, err := audit.NewVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Fsck(ctx, sa, v)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != 6 {
		t.Fatalf("fsck: %+v", rep)
	}
	// A wrong key-encryption key cannot open the signer key.
	bad := make([]byte, 32)
	if _, err := openAuditor(ctx, t.TempDir(), "tvd.test", slog.New(slog.DiscardHandler), now, &sharedAudit{st: st, kek: bad}); err == nil {
		t.Fatal("opened the shared log with the wrong key-encryption key")
	}
}

func mustSigner(t *testing.T, ctx context.Context, s *sharedAudit) string {
	t.Helper()
	sk, err := sharedSignerKey(ctx, s.st, s.kek, func() (string, error) { t.Fatal("a new key was generated"); return "", nil })
	if err != nil {
		t.Fatal(err)
	}
	return sk
}
