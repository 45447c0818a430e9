package bolt_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
	"github.com/tvd-dev/tvd/store/storetest"
)

func openTemp(t *testing.T) *bolt.Store {
	t.Helper()
	s, err := bolt.Open(filepath.Join(t.TempDir(), "tvd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	storetest.Run(t,
		func(t *testing.T) store.Store { return openTemp(t) },
		storetest.WithReopen(func(t *testing.T, s store.Store) store.Store {
			path := s.(*bolt.Store).Path()
			if err := s.Close(); err != nil {
				t.Fatalf("close before reopen: %v", err)
			}
			s2, err := bolt.Open(path)
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			if err := s2.Check(context.Background()); err != nil {
				t.Fatalf("check after reopen: %v", err)
			}
			return s2
		}),
	)
}

// TestRevisionNumbering pins what the conformance suite leaves open: the
// bolt store's revision starts at 1 and grows by exactly one per commit
// that changes something, and survives reopening.
func TestRevisionNumbering(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	for want := int64(1); want <= 3; want++ {
		rev, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", nil), store.Put("j", nil)}})
		if err != nil || rev != want {
			t.Fatalf("commit %d = %d, %v", want, rev, err)
		}
	}
	// Deleting absent keys changes nothing and returns the current revision.
	if rev, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Delete("absent")}}); err != nil || rev != 3 {
		t.Fatalf("no-op delete = %d, %v; want 3", rev, err)
	}
	// A failed commit does not use up a revision.
	if _, err := s.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent("k")}, Ops: []store.Op{store.Put("x", nil)}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conflicting commit: %v", err)
	}
	if rev, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Delete("k")}}); err != nil || rev != 4 {
		t.Fatalf("delete = %d, %v; want 4", rev, err)
	}
	path := s.Path()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if rev, err := s2.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", nil)}}); err != nil || rev != 5 {
		t.Fatalf("commit after reopen = %d, %v; want 5", rev, err)
	}
}

func TestLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tvd.db")
	s, err := bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s2, err := bolt.Open(path, bolt.WithLockTimeout(200*time.Millisecond))
	if err == nil {
		s2.Close()
		t.Fatal("second open of a held store succeeded")
	}
	if !errors.Is(err, bolt.ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	want := "store " + path + " is in use by another process"
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("error %q does not say %q", err, want)
	}
	if d := time.Since(start); d < 100*time.Millisecond || d > 5*time.Second {
		t.Fatalf("lock wait took %v, want about the 200ms timeout", d)
	}
	// Once released, the file opens again, within the wait.
	go func() {
		time.Sleep(100 * time.Millisecond)
		s.Close()
	}()
	s3, err := bolt.Open(path, bolt.WithLockTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("open after release: %v", err)
	}
	s3.Close()
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()

	if _, err := bolt.Open(""); err == nil {
		t.Error("open of empty path succeeded")
	}
	if _, err := bolt.Open(filepath.Join(dir, "x.db"), bolt.WithLockTimeout(0)); err == nil || !strings.Contains(err.Error(), "positive") {
		t.Errorf("zero lock timeout: %v, want an error asking for a positive duration", err)
	}
	if _, err := bolt.Open(filepath.Join(dir, "missing", "x.db")); err == nil {
		t.Error("open in a missing directory succeeded")
	}

	garbage := filepath.Join(dir, "garbage.db")
	if err := os.WriteFile(garbage, []byte(strings.Repeat("not a database ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := bolt.Open(garbage); err == nil || !strings.Contains(err.Error(), garbage) {
		t.Errorf("open of a garbage file: %v, want an error naming it", err)
	}

	// A bbolt file of some other program.
	foreign := filepath.Join(dir, "foreign.db")
	db, err := bbolt.Open(foreign, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucket([]byte("theirs"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := bolt.Open(foreign); err == nil || !strings.Contains(err.Error(), "not a tvd store") {
		t.Errorf("open of a foreign bbolt file: %v, want 'not a tvd store'", err)
	}

	// A tvd store of a future layout.
	future := filepath.Join(dir, "future.db")
	s, err := bolt.Open(future)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err = bbolt.Open(future, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("2")) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := bolt.Open(future); err == nil || !strings.Contains(err.Error(), `format "2"`) {
		t.Errorf("open of a future layout: %v, want a format error", err)
	}
}

func TestFileMode(t *testing.T) {
	s := openTemp(t)
	fi, err := os.Stat(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("store file mode %v, want 0600: it holds CA keys", fi.Mode().Perm())
	}
}

func TestCheckFindsCorruptValue(t *testing.T) {
	ctx := context.Background()
	s := openTemp(t)
	if _, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("good", []byte("v"))}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("check of a good store: %v", err)
	}
	path := s.Path()
	s.Close()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return tx.Bucket([]byte("data")).Put([]byte("bad"), []byte{1}) }); err != nil {
		t.Fatal(err)
	}
	db.Close()
	s, err = bolt.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), `"bad"`) {
		t.Fatalf("check of a corrupt value: %v, want an error naming the key", err)
	}
	if _, err := s.Get(ctx, "bad"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Fatalf("get of a corrupt value: %v, want a corruption error", err)
	}
}
