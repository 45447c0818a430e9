package etcd_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/etcd"
)

// TestCampaignFencesWrites: one of two replicas leads; when its lease is
// revoked (as when it dies or is cut off), its writes fail with
// ErrNotLeader, before and after it notices, and the other replica takes
// over and writes.
func TestCampaignFencesWrites(t *testing.T) {
	e := requireEtcd(t)
	prefix := uniquePrefix(t)
	a, b := openAt(t, e, prefix), openAt(t, e, prefix)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	la, err := a.Campaign(ctx, "controller", "a", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if id, err := a.Leader(ctx, "controller"); err != nil || id != "a" {
		t.Fatalf("leader %q, %v", id, err)
	}
	won := make(chan *etcd.Leadership, 1)
	go func() {
		lb, err := b.Campaign(ctx, "controller", "b", 2*time.Second)
		if err != nil {
			t.Error(err)
		}
		won <- lb
	}()
	if _, err := a.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", []byte("from a"))}}); err != nil {
		t.Fatalf("the leader's write: %v", err)
	}
	select {
	case <-won:
		t.Fatal("b won while a leads")
	case <-time.After(500 * time.Millisecond):
	}

	// Revoke a's lease behind its back, as expiry would.
	raw := rawClient(t, e)
	resp, err := raw.Get(ctx, prefix+"election/controller/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election keys: %v %v", resp, err)
	}
	if _, err := raw.Revoke(ctx, clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	// Right away, even before a notices, its writes are refused.
	if _, err := a.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", []byte("stale a"))}}); !errors.Is(err, etcd.ErrNotLeader) || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("write after the lease was revoked: %v, want ErrNotLeader", err)
	}
	select {
	case <-la.Lost:
	case <-time.After(10 * time.Second):
		t.Fatal("a never noticed it lost the leadership")
	}
	var lb *etcd.Leadership
	select {
	case lb = <-won:
	case <-time.After(10 * time.Second):
		t.Fatal("b never took over")
	}
	if _, err := b.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", []byte("from b"))}}); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	kv, err := b.Get(ctx, "k")
	if err != nil || string(kv.Value) != "from b" {
		t.Fatalf("k = %q, %v", kv.Value, err)
	}
	if err := lb.Resign(ctx); err != nil {
		t.Fatal(err)
	}
}
