package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
)

// countingStore counts the transactions that reach the store and can be
// told to fail them.
type countingStore struct {
	store.Store
	commits atomic.Int64
	fail    atomic.Bool
}

func (s *countingStore) Commit(ctx context.Context, b store.Batch) (int64, error) {
	s.commits.Add(1)
	if s.fail.Load() {
		return 0, errors.New("disk on fire")
	}
	return s.Store.Commit(ctx, b)
}

// TestGroupCommit: concurrent unconditional writes are merged into fewer
// transactions, each key ends with its last write in submission order, a
// conditional batch keeps its own transaction and its conflict, and a
// write that fails for good marks the store failed.
func TestGroupCommit(t *testing.T) {
	ctx := context.Background()
	b, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	cs := &countingStore{Store: b}
	g := newGroupStore(cs, slog.New(slog.DiscardHandler))
	defer g.close()

	// Queue in order from one goroutine (as reports do under the lock),
	// then wait from many.
	var reqs []*commitReq
	for i := range 400 {
		reqs = append(reqs, g.submit(store.Batch{Ops: []store.Op{
			store.Put(fmt.Sprintf("k/%d", i%10), []byte(fmt.Sprint(i))),
			store.Put(fmt.Sprintf("n/%d", i), []byte("x")),
		}}))
	}
	var wg sync.WaitGroup
	for _, r := range reqs {
		wg.Add(1)
		go func() { defer wg.Done(); <-r.done }()
	}
	wg.Wait()
	for i, r := range reqs {
		if r.err != nil {
			t.Fatalf("write %d: %v", i, r.err)
		}
	}
	if n := cs.commits.Load(); n >= 400 {
		t.Errorf("%d transactions for 400 writes: nothing was merged", n)
	}
	for k := range 10 {
		kv, err := g.Get(ctx, fmt.Sprintf("k/%d", k))
		if want := fmt.Sprint(390 + k); err != nil || string(kv.Value) != want {
			t.Errorf("k/%d = %q, %v; want the last write %s", k, kv.Value, err, want)
		}
	}
	// A conditional batch: its own transaction, its own conflict.
	if _, err := g.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent("k/1")}, Ops: []store.Op{store.Put("k/1", nil)}}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("conditional write on a present key: %v", err)
	}
	select {
	case <-g.failed:
		t.Fatal("a conflict marked the store failed")
	default:
	}
	// A write that cannot land marks the store failed; later writes are
	// refused at once.
	cs.fail.Store(true)
	if _, err := g.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("z", nil)}}); err == nil {
		t.Fatal("a failing write succeeded")
	}
	<-g.failed
	cs.fail.Store(false)
	if _, err := g.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("z", nil)}}); err == nil {
		t.Fatal("a write after the failure was taken")
	}
}
