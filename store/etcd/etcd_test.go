package etcd_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/etcd"
	"github.com/tvd-dev/tvd/store/storetest"
)

var prefixSeq atomic.Int64

// uniquePrefix returns a key prefix no other test in this run uses.
func uniquePrefix(t testing.TB) string {
	var b strings.Builder
	for _, r := range t.Name() {
		switch {
		case 'a' <= r && r <= 'z', 'A' <= r && r <= 'Z', '0' <= r && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	name := b.String()
	if len(name) > 100 {
		name = name[:100]
	}
	return fmt.Sprintf("tvdtest/%d-%s/", prefixSeq.Add(1), name)
}

func openAt(t testing.TB, e *etcdServer, prefix string) *etcd.Store {
	t.Helper()
	return openWith(t, etcd.Config{
		Endpoints: []string{e.endpoint()},
		Prefix:    prefix,
		Logger:    slog.New(slog.DiscardHandler),
	})
}

func openWith(t testing.TB, cfg etcd.Config) *etcd.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := etcd.Open(ctx, cfg)
	if err != nil {
		t.Fatalf("open %s: %v", cfg.URL(), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// rawClient is a plain clientv3 client on e, closed when t ends.
func rawClient(t testing.TB, e *etcdServer) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:          []string{e.endpoint()},
		Logger:             zap.NewNop(),
		MaxCallSendMsgSize: etcd.MinServerRequestBytes,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

func TestConformance(t *testing.T) {
	e := requireEtcd(t)
	storetest.Run(t,
		func(t *testing.T) store.Store { return openAt(t, e, uniquePrefix(t)) },
		storetest.WithReopen(func(t *testing.T, s store.Store) store.Store {
			prefix := s.(*etcd.Store).Prefix()
			if err := s.Close(); err != nil {
				t.Fatalf("close before reopen: %v", err)
			}
			return openAt(t, e, prefix)
		}),
	)
}

// TestRevisionsAreModRevisions pins the mapping onto etcd: a key's Rev is
// its ModRevision, Commit returns the Txn's revision, keys live under the
// prefix, and a commit that changes nothing does not advance the cluster.
func TestRevisionsAreModRevisions(t *testing.T) {
	e := requireEtcd(t)
	ctx := context.Background()
	prefix := uniquePrefix(t)
	s := openAt(t, e, prefix)
	raw := rawClient(t, e)

	rev, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("nodes/n1", []byte("one")), store.Put("nodes/n2", nil)}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := raw.Get(ctx, prefix+"nodes/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 2 {
		t.Fatalf("raw etcd has %d keys under %snodes/, want 2", len(resp.Kvs), prefix)
	}
	for _, kv := range resp.Kvs {
		if kv.ModRevision != rev || kv.CreateRevision != rev {
			t.Fatalf("raw %s: mod %d create %d, want both %d", kv.Key, kv.ModRevision, kv.CreateRevision, rev)
		}
	}
	if string(resp.Kvs[0].Key) != prefix+"nodes/n1" || string(resp.Kvs[0].Value) != "one" {
		t.Fatalf("raw key %q = %q", resp.Kvs[0].Key, resp.Kvs[0].Value)
	}
	if resp.Header.Revision != rev {
		t.Fatalf("cluster revision %d after commit %d with no other writer", resp.Header.Revision, rev)
	}

	// Deleting an absent key changes nothing: same revision, no write.
	same, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Delete("absent")}})
	if err != nil || same != rev {
		t.Fatalf("no-op delete = %d, %v; want %d", same, err, rev)
	}
	// A write by someone else, outside the prefix, advances the revision
	// the store sees but not its keys.
	pr, err := raw.Put(ctx, "outside-"+prefix+"x", "y")
	if err != nil {
		t.Fatal(err)
	}
	if pr.Header.Revision <= rev {
		t.Fatalf("raw put revision %d not after %d", pr.Header.Revision, rev)
	}
	kvs, err := s.List(ctx, "", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 2 {
		t.Fatalf("store lists %d keys, want its own 2: %+v", len(kvs), kvs)
	}
	next, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("nodes/n1", []byte("again"))}})
	if err != nil {
		t.Fatal(err)
	}
	if next != pr.Header.Revision+1 {
		t.Fatalf("next commit rev %d, want %d (one after the outside write)", next, pr.Header.Revision+1)
	}
}

// TestConflictReadsState checks the Else branch: a failed commit reports
// the failed key's state as etcd saw it in the same Txn.
func TestConflictReadsState(t *testing.T) {
	e := requireEtcd(t)
	ctx := context.Background()
	s := openAt(t, e, uniquePrefix(t))
	r1, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("a", []byte("1")), store.Put("b", []byte("2"))}})
	if err != nil {
		t.Fatal(err)
	}
	// Conditions on the same key twice, and a present key that is absent.
	conds := []store.Cond{store.Present("a"), store.RevIs("a", r1), store.Absent("b"), store.Present("c")}
	_, err = s.Commit(ctx, store.Batch{Conds: conds, Ops: []store.Op{store.Put("d", nil)}})
	var ce *store.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("commit: %v, want a *store.ConflictError", err)
	}
	if ce.Cond != store.Absent("b") || !ce.Found || ce.Rev != r1 {
		t.Fatalf("conflict %+v, want b absent failing with b found at %d", ce, r1)
	}
	_, err = s.Commit(ctx, store.Batch{Conds: []store.Cond{store.RevIs("c", 7)}, Ops: []store.Op{store.Put("d", nil)}})
	if !errors.As(err, &ce) || ce.Cond != store.RevIs("c", 7) || ce.Found || ce.Rev != 0 {
		t.Fatalf("conflict on missing key: %v (%+v)", err, ce)
	}
	if !strings.Contains(err.Error(), `"c" at rev 7, key is absent`) {
		t.Fatalf("conflict error %q does not describe the key", err)
	}
}

// TestPrefixIsolation checks that stores under sibling prefixes, one a
// string prefix of the other's name, do not see each other.
func TestPrefixIsolation(t *testing.T) {
	e := requireEtcd(t)
	ctx := context.Background()
	base := uniquePrefix(t)
	a := openAt(t, e, base+"a/")
	ab := openAt(t, e, base+"ab/")
	if _, err := a.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", []byte("from a"))}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ab.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", []byte("from ab")), store.Put("only-ab", nil)}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s    *etcd.Store
		want string
		n    int
	}{{a, "from a", 1}, {ab, "from ab", 2}} {
		kv, err := tc.s.Get(ctx, "k")
		if err != nil || string(kv.Value) != tc.want {
			t.Fatalf("%s: get k = %q, %v; want %q", tc.s.Prefix(), kv.Value, err, tc.want)
		}
		kvs, err := tc.s.List(ctx, "", store.ListOptions{})
		if err != nil || len(kvs) != tc.n {
			t.Fatalf("%s: list = %+v, %v; want %d keys", tc.s.Prefix(), kvs, err, tc.n)
		}
	}
	if _, err := a.Get(ctx, "only-ab"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a sees ab's key: %v", err)
	}
}

// TestTwoReplicas runs what several controller replicas do: two Stores
// (two clients) on one cluster and prefix see each other's writes at once,
// conflict on stale revisions, and lose no update when they race.
func TestTwoReplicas(t *testing.T) {
	e := requireEtcd(t)
	ctx := context.Background()
	prefix := uniquePrefix(t)
	s1, s2 := openAt(t, e, prefix), openAt(t, e, prefix)

	r1, err := s1.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent("policy")}, Ops: []store.Op{store.Put("policy", []byte("v1"))}})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := s2.Get(ctx, "policy")
	if err != nil || string(kv.Value) != "v1" || kv.Rev != r1 {
		t.Fatalf("replica 2 reads %+v, %v; want v1 at %d", kv, err, r1)
	}
	// Replica 2 creates too: it must lose.
	_, err = s2.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent("policy")}, Ops: []store.Op{store.Put("policy", []byte("other"))}})
	var ce *store.ConflictError
	if !errors.As(err, &ce) || ce.Cond.Key != "policy" || ce.Rev != r1 {
		t.Fatalf("second create: %v, want a conflict on policy at %d", err, r1)
	}
	// Replica 1 moves on; replica 2's read-modify-write at the old revision
	// fails, names the new one, and succeeds on retry.
	r2, err := s1.Commit(ctx, store.Batch{Conds: []store.Cond{store.RevIs("policy", r1)}, Ops: []store.Op{store.Put("policy", []byte("v2"))}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s2.Commit(ctx, store.Batch{Conds: []store.Cond{store.RevIs("policy", r1)}, Ops: []store.Op{store.Put("policy", []byte("v2-from-2"))}})
	if !errors.As(err, &ce) || ce.Cond != store.RevIs("policy", r1) || !ce.Found || ce.Rev != r2 {
		t.Fatalf("stale update: %v, want a conflict naming rev %d", err, r2)
	}
	if _, err := s2.Commit(ctx, store.Batch{Conds: []store.Cond{store.RevIs("policy", r2)}, Ops: []store.Op{store.Put("policy", []byte("v3"))}}); err != nil {
		t.Fatalf("update at the current rev: %v", err)
	}
	kvs, err := s1.List(ctx, "", store.ListOptions{})
	if err != nil || len(kvs) != 1 || string(kvs[0].Value) != "v3" {
		t.Fatalf("replica 1 lists %+v, %v; want policy=v3", kvs, err)
	}

	// Both replicas increment one counter concurrently through Update.
	const workers, each = 4, 20
	var wg sync.WaitGroup
	errs := make(chan error, 2*workers)
	for _, s := range []*etcd.Store{s1, s2} {
		for range workers {
			wg.Go(func() {
				for range each {
					if _, err := store.Update(ctx, s, "counter", func(kv store.KV, found bool) ([]byte, error) {
						n := 0
						if found {
							if _, err := fmt.Sscan(string(kv.Value), &n); err != nil {
								return nil, err
							}
						}
						return []byte(fmt.Sprint(n + 1)), nil
					}); err != nil {
						errs <- err
						return
					}
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	kv, err = s2.Get(ctx, "counter")
	if want := fmt.Sprint(2 * workers * each); err != nil || string(kv.Value) != want {
		t.Fatalf("counter = %q, %v; want %s", kv.Value, err, want)
	}
}

// TestListOneSnapshot writes between the chunks of one List and checks
// that the List still returns the state at its first chunk.
func TestListOneSnapshot(t *testing.T) {
	e := requireEtcd(t)
	ctx := context.Background()
	s := openAt(t, e, uniquePrefix(t))
	writer := openAt(t, e, s.Prefix())
	var ops []store.Op
	for i := range 10 {
		ops = append(ops, store.Put(fmt.Sprintf("k/%02d", i), []byte("old")))
	}
	rev, err := s.Commit(ctx, store.Batch{Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	etcd.SetListChunk(s, 3, func() {
		calls++
		if calls > 1 {
			return
		}
		// Rewrite a key of a later chunk, delete one, add one at the end.
		if _, err := writer.Commit(ctx, store.Batch{Ops: []store.Op{
			store.Put("k/05", []byte("new")), store.Delete("k/08"), store.Put("k/99", []byte("new")),
		}}); err != nil {
			t.Errorf("write between chunks: %v", err)
		}
	})
	kvs, err := s.List(ctx, "k/", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if calls != 3 {
		t.Fatalf("list ran %d Ranges after the first, want 3 (chunks of 3 of 10 keys)", calls)
	}
	if len(kvs) != 10 {
		t.Fatalf("list returned %d keys, want the 10 of its snapshot", len(kvs))
	}
	for i, kv := range kvs {
		if want := fmt.Sprintf("k/%02d", i); kv.Key != want || string(kv.Value) != "old" || kv.Rev != rev {
			t.Fatalf("key %d = %q=%q@%d, want %s=old@%d", i, kv.Key, kv.Value, kv.Rev, want, rev)
		}
	}
	// Limit and After still apply across chunks.
	kvs, err = s.List(ctx, "k/", store.ListOptions{After: "k/01", Limit: 5})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, kv := range kvs {
		got = append(got, kv.Key)
	}
	if strings.Join(got, ",") != "k/02,k/03,k/04,k/05,k/06" {
		t.Fatalf("list after k/01 limit 5 = %q", got)
	}
}

// TestListRestartsAfterCompaction compacts the cluster between the chunks
// of a List: the List starts again and returns the newer snapshot whole.
func TestListRestartsAfterCompaction(t *testing.T) {
	t.Parallel()        // runs its own etcd
	e := privateEtcd(t) // compaction is cluster-wide: keep it away from the shared etcd
	ctx := context.Background()
	s := openAt(t, e, uniquePrefix(t))
	raw := rawClient(t, e)
	var ops []store.Op
	for i := range 6 {
		ops = append(ops, store.Put(fmt.Sprintf("k/%d", i), []byte("old")))
	}
	if _, err := s.Commit(ctx, store.Batch{Ops: ops}); err != nil {
		t.Fatal(err)
	}
	calls := 0
	etcd.SetListChunk(s, 2, func() {
		calls++
		if calls > 1 {
			return
		}
		rev, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k/5", []byte("new"))}})
		if err != nil {
			t.Errorf("write between chunks: %v", err)
			return
		}
		if _, err := raw.Compact(ctx, rev, clientv3.WithCompactPhysical()); err != nil {
			t.Errorf("compact: %v", err)
		}
	})
	kvs, err := s.List(ctx, "k/", store.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 6 || string(kvs[5].Value) != "new" || string(kvs[0].Value) != "old" {
		t.Fatalf("list after compaction = %+v, want 6 keys with k/5 new", kvs)
	}
}

// TestRejected checks that a Txn etcd itself refuses is reported as a plain
// error (nothing applied), not as indeterminate: this cluster allows only
// 1 MiB requests, below MinServerRequestBytes.
func TestRejected(t *testing.T) {
	t.Parallel() // runs its own etcd
	requireEtcd(t)
	bin, _ := findEtcd()
	e, err := startEtcdWith(bin, t.TempDir(), etcdOptions{extra: []string{"--max-request-bytes", "1048576"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.kill)
	ctx := context.Background()
	s := openAt(t, e, uniquePrefix(t))
	// Over etcd's limit (etcd's verdict), and over its gRPC limit (gRPC's).
	for _, size := range []int{1<<20 + 1<<18, 2 << 20} {
		_, err = s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("big", make([]byte, size))}})
		if err == nil {
			t.Fatalf("%d byte commit to a 1 MiB cluster succeeded", size)
		}
		if errors.Is(err, store.ErrIndeterminate) || !strings.Contains(err.Error(), "rejected") {
			t.Fatalf("%d byte commit: %v, want a rejection that is not indeterminate", size, err)
		}
		t.Logf("%d bytes: %v", size, err)
		if _, err := s.Get(ctx, "big"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("rejected value is there: %v", err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		cfg  etcd.Config
		want string
	}{
		{"no endpoints", etcd.Config{Prefix: "tvd/"}, "no etcd endpoints"},
		{"bad endpoint", etcd.Config{Endpoints: []string{"localhost"}, Prefix: "tvd/"}, "want host:port"},
		{"scheme", etcd.Config{Endpoints: []string{"http://localhost:2379"}, Prefix: "tvd/"}, "has a scheme"},
		{"twice", etcd.Config{Endpoints: []string{"a:1", "a:01"}, Prefix: "tvd/"}, "listed twice"},
		{"no prefix", etcd.Config{Endpoints: []string{"a:1"}}, "empty key prefix"},
		{"no slash", etcd.Config{Endpoints: []string{"a:1"}, Prefix: "tvd"}, "end in '/'"},
		{"leading slash", etcd.Config{Endpoints: []string{"a:1"}, Prefix: "/tvd/"}, "segment"},
		{"dotdot", etcd.Config{Endpoints: []string{"a:1"}, Prefix: "tvd/../"}, "segment"},
		{"negative timeout", etcd.Config{Endpoints: []string{"a:1"}, Prefix: "tvd/", RequestTimeout: -time.Second}, "request timeout"},
	} {
		if _, err := etcd.Open(ctx, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: open error %v, want one saying %q", tc.name, err, tc.want)
		}
	}

	// Nothing listens: Open gives up after the dial timeout and says so.
	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = etcd.Open(ctx, etcd.Config{
		Endpoints:   []string{fmt.Sprintf("127.0.0.1:%d", ports[0])},
		Prefix:      "tvd/",
		DialTimeout: 300 * time.Millisecond,
	})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), fmt.Sprint(ports[0])) {
		t.Fatalf("open of a dead endpoint: %v, want a deadline error naming the endpoint", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("open of a dead endpoint took %v, want about the 300ms dial timeout", d)
	}
}
