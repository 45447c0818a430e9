// Package storetest is the behavioural conformance suite for store.Store
// backends. Every backend's tests call Run with a function that opens a
// fresh, empty, isolated store:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			s, err := bolt.Open(filepath.Join(t.TempDir(), "tvd.db"))
//			if err != nil {
//				t.Fatal(err)
//			}
//			return s
//		}, storetest.WithReopen(...))
//	}
//
// The suite checks reads, writes and deletes; list order, prefix boundaries
// and paging; revision monotonicity; conditional commits and the conflict
// error; batch atomicity; validation of keys, values and batches; lost
// updates under concurrent conditional increments; context cancellation;
// behaviour after Close; and, when the backend can reopen a store,
// persistence across reopening.
//
// The suite only assumes that revisions increase, not that they increase by
// one per commit: a backend whose revision counter is shared with other
// writers (one etcd cluster, several namespaces) must pass too. Exact
// numbering belongs in the backend's own tests.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"

	"github.com/tvd-dev/tvd/store"
)

// Option configures Run.
type Option func(*config)

type config struct {
	reopen func(t *testing.T, s store.Store) store.Store
}

// WithReopen enables the persistence tests. reopen must close s and return
// a new handle on the same data, failing t if it cannot.
func WithReopen(reopen func(t *testing.T, s store.Store) store.Store) Option {
	return func(c *config) { c.reopen = reopen }
}

// env is what each test gets: the store under test, and a way to reopen it.
type env struct {
	s      store.Store
	reopen func() // replaces s with a reopened handle; nil if unsupported
}

// Run runs the conformance suite as subtests of t. open must return a new,
// empty store that no other test uses; Run closes it when the subtest ends
// (open may also register its own cleanup: Close is idempotent).
func Run(t *testing.T, open func(t *testing.T) store.Store, opts ...Option) {
	var cfg config
	for _, o := range opts {
		o(&cfg)
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, e *env)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"Overwrite", testOverwrite},
		{"Delete", testDelete},
		{"EmptyValue", testEmptyValue},
		{"ValueOwnership", testValueOwnership},
		{"ListOrderAndPrefix", testListOrderAndPrefix},
		{"ListPaging", testListPaging},
		{"ListInvalid", testListInvalid},
		{"Revisions", testRevisions},
		{"CondAbsent", testCondAbsent},
		{"CondRev", testCondRev},
		{"CondPresent", testCondPresent},
		{"ConflictNamesFirstFailedCond", testConflictNamesFirstFailed},
		{"CondsSeeStateBeforeBatch", testCondsSeePreState},
		{"BatchAtomicity", testBatchAtomicity},
		{"Validation", testValidation},
		{"ValidationLimitsAccepted", testValidationLimitsAccepted},
		{"GetInvalidKey", testGetInvalidKey},
		{"ConcurrentIncrements", testConcurrentIncrements},
		{"ConcurrentCreate", testConcurrentCreate},
		{"Update", testUpdate},
		{"ContextCanceled", testContextCanceled},
		{"Closed", testClosed},
		{"Reopen", testReopen},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := &env{s: open(t)}
			if e.s == nil {
				t.Fatal("open returned a nil store")
			}
			t.Cleanup(func() {
				if err := e.s.Close(); err != nil {
					t.Errorf("close: %v", err)
				}
			})
			if cfg.reopen != nil {
				e.reopen = func() {
					t.Helper()
					e.s = cfg.reopen(t, e.s)
					if e.s == nil {
						t.Fatal("reopen returned a nil store")
					}
				}
			}
			tc.fn(t, e)
		})
	}
}

// --- helpers ---

func commit(t *testing.T, s store.Store, b store.Batch) int64 {
	t.Helper()
	rev, err := s.Commit(context.Background(), b)
	if err != nil {
		t.Fatalf("commit %+v: %v", b, err)
	}
	return rev
}

func put(t *testing.T, s store.Store, key, value string) int64 {
	t.Helper()
	return commit(t, s, store.Batch{Ops: []store.Op{store.Put(key, []byte(value))}})
}

func get(t *testing.T, s store.Store, key string) store.KV {
	t.Helper()
	kv, err := s.Get(context.Background(), key)
	if err != nil {
		t.Fatalf("get %q: %v", key, err)
	}
	if kv.Key != key {
		t.Fatalf("get %q: returned key %q", key, kv.Key)
	}
	return kv
}

func wantValue(t *testing.T, s store.Store, key, value string) store.KV {
	t.Helper()
	kv := get(t, s, key)
	if string(kv.Value) != value {
		t.Fatalf("get %q = %q, want %q", key, kv.Value, value)
	}
	return kv
}

func wantMissing(t *testing.T, s store.Store, key string) {
	t.Helper()
	kv, err := s.Get(context.Background(), key)
	if !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("get %q = %+v, %v; want ErrNotFound", key, kv, err)
	}
}

func list(t *testing.T, s store.Store, prefix string, opts store.ListOptions) []store.KV {
	t.Helper()
	kvs, err := s.List(context.Background(), prefix, opts)
	if err != nil {
		t.Fatalf("list %q %+v: %v", prefix, opts, err)
	}
	return kvs
}

func keys(kvs []store.KV) []string {
	out := make([]string, len(kvs))
	for i, kv := range kvs {
		out[i] = kv.Key
	}
	return out
}

// snapshot is the whole store as text, for before/after comparisons.
func snapshot(t *testing.T, s store.Store) string {
	t.Helper()
	var b strings.Builder
	for _, kv := range list(t, s, "", store.ListOptions{}) {
		fmt.Fprintf(&b, "%q=%q@%d\n", kv.Key, kv.Value, kv.Rev)
	}
	return b.String()
}

func wantConflict(t *testing.T, err error, cond store.Cond) *store.ConflictError {
	t.Helper()
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("commit error = %v, want ErrConflict", err)
	}
	var ce *store.ConflictError
	if !errors.As(err, &ce) {
		t.Fatalf("commit error %v (%T) is not a *store.ConflictError", err, err)
	}
	if ce.Cond != cond {
		t.Fatalf("conflict names condition %v, want %v", ce.Cond, cond)
	}
	if !strings.Contains(err.Error(), cond.Key) {
		t.Fatalf("conflict error %q does not name key %q", err, cond.Key)
	}
	return ce
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// --- tests ---

func testGetMissing(t *testing.T, e *env) {
	wantMissing(t, e.s, "nodes/none")
	put(t, e.s, "nodes/n1", "x")
	wantMissing(t, e.s, "nodes/n")   // a prefix of a key is not a key
	wantMissing(t, e.s, "nodes/n10") // nor is an extension of one
}

func testPutGet(t *testing.T, e *env) {
	rev := put(t, e.s, "nodes/n1", "v1")
	if rev <= 0 {
		t.Fatalf("commit rev = %d, want > 0", rev)
	}
	kv := wantValue(t, e.s, "nodes/n1", "v1")
	if kv.Rev != rev {
		t.Fatalf("kv.Rev = %d, want commit rev %d", kv.Rev, rev)
	}
	bin := []byte{0, 1, 2, 0xff, 0xfe, 0}
	commit(t, e.s, store.Batch{Ops: []store.Op{store.Put("bin", bin)}})
	if got := get(t, e.s, "bin").Value; !bytes.Equal(got, bin) {
		t.Fatalf("binary value = %x, want %x", got, bin)
	}
}

func testOverwrite(t *testing.T, e *env) {
	r1 := put(t, e.s, "k", "v1")
	r2 := put(t, e.s, "k", "v2")
	if r2 <= r1 {
		t.Fatalf("second commit rev %d not after first %d", r2, r1)
	}
	if kv := wantValue(t, e.s, "k", "v2"); kv.Rev != r2 {
		t.Fatalf("kv.Rev = %d, want %d", kv.Rev, r2)
	}
	// Writing the same value again is still a write.
	r3 := put(t, e.s, "k", "v2")
	if r3 <= r2 {
		t.Fatalf("rewrite rev %d not after %d", r3, r2)
	}
	if kv := get(t, e.s, "k"); kv.Rev != r3 {
		t.Fatalf("kv.Rev after identical rewrite = %d, want %d", kv.Rev, r3)
	}
}

func testDelete(t *testing.T, e *env) {
	r1 := put(t, e.s, "a", "1")
	put(t, e.s, "b", "2")
	r2 := commit(t, e.s, store.Batch{Ops: []store.Op{store.Delete("a")}})
	if r2 <= r1 {
		t.Fatalf("delete rev %d not after put rev %d", r2, r1)
	}
	wantMissing(t, e.s, "a")
	wantValue(t, e.s, "b", "2")
	if got := keys(list(t, e.s, "", store.ListOptions{})); !equalStrings(got, []string{"b"}) {
		t.Fatalf("list after delete = %q, want [b]", got)
	}
	before := snapshot(t, e.s)
	r3 := commit(t, e.s, store.Batch{Ops: []store.Op{store.Delete("a")}})
	if r3 < r2 {
		t.Fatalf("deleting an absent key returned rev %d, before the last commit %d", r3, r2)
	}
	if after := snapshot(t, e.s); after != before {
		t.Fatalf("deleting an absent key changed the store:\n%s\nwant\n%s", after, before)
	}
	// A deleted key can be created again, at a new revision.
	r4 := put(t, e.s, "a", "again")
	if kv := wantValue(t, e.s, "a", "again"); kv.Rev != r4 || r4 <= r2 {
		t.Fatalf("recreated key rev %d (commit %d), want > %d", kv.Rev, r4, r2)
	}
}

func testEmptyValue(t *testing.T, e *env) {
	commit(t, e.s, store.Batch{Ops: []store.Op{store.Put("nil", nil), store.Put("empty", []byte{})}})
	for _, k := range []string{"nil", "empty"} {
		if kv := get(t, e.s, k); len(kv.Value) != 0 {
			t.Fatalf("get %q = %q, want empty", k, kv.Value)
		}
	}
	if n := len(list(t, e.s, "", store.ListOptions{})); n != 2 {
		t.Fatalf("list found %d keys with empty values, want 2", n)
	}
}

func testValueOwnership(t *testing.T, e *env) {
	// Enough data that a backend's storage is past any small-size special
	// case (bbolt keeps a small bucket inline in its parent page).
	var fill []store.Op
	for i := range 64 {
		fill = append(fill, store.Put(fmt.Sprintf("fill/%02d", i), bytes.Repeat([]byte{byte(i)}, 1024)))
	}
	commit(t, e.s, store.Batch{Ops: fill})
	buf := []byte("abc")
	commit(t, e.s, store.Batch{Ops: []store.Op{store.Put("k", buf)}})
	buf[0] = 'X'
	kv := wantValue(t, e.s, "k", "abc")
	kv.Value[0] = 'Y'
	wantValue(t, e.s, "k", "abc")
	kvs := list(t, e.s, "k", store.ListOptions{})
	kvs[0].Value[0] = 'Z'
	wantValue(t, e.s, "k", "abc")
}

func testListOrderAndPrefix(t *testing.T, e *env) {
	all := []string{
		"a", "a.", "a/", "a/1", "a/10", "a/2", "a/b/c", "a0", "ab", "ab/1",
		"b", "nodes/n1", "nodes/n10", "nodes/n2", "nodes2/x", "z", "é/x", "\U0001F600",
	}
	shuffled := append([]string(nil), all...)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	revs := map[string]int64{}
	// Several commits of a few keys each, in random order.
	for len(shuffled) > 0 {
		n := min(len(shuffled), 1+rand.IntN(4))
		var ops []store.Op
		for _, k := range shuffled[:n] {
			ops = append(ops, store.Put(k, []byte("v:"+k)))
		}
		rev := commit(t, e.s, store.Batch{Ops: ops})
		for _, k := range shuffled[:n] {
			revs[k] = rev
		}
		shuffled = shuffled[n:]
	}
	for _, tc := range []struct {
		prefix string
		want   []string
	}{
		{"", all},
		{"a/", []string{"a/", "a/1", "a/10", "a/2", "a/b/c"}},
		{"a/b/", []string{"a/b/c"}},
		{"ab", []string{"ab", "ab/1"}},
		{"a", []string{"a", "a.", "a/", "a/1", "a/10", "a/2", "a/b/c", "a0", "ab", "ab/1"}},
		{"nodes/", []string{"nodes/n1", "nodes/n10", "nodes/n2"}},
		{"nodes/n1", []string{"nodes/n1", "nodes/n10"}},
		{"nodes", []string{"nodes/n1", "nodes/n10", "nodes/n2", "nodes2/x"}},
		{"é", []string{"é/x"}},
		{"c", nil},
		{"zz", nil},
		{"a/1/", nil},
	} {
		kvs := list(t, e.s, tc.prefix, store.ListOptions{})
		if got := keys(kvs); !equalStrings(got, tc.want) {
			t.Errorf("list %q = %q, want %q", tc.prefix, got, tc.want)
			continue
		}
		for _, kv := range kvs {
			if string(kv.Value) != "v:"+kv.Key || kv.Rev != revs[kv.Key] {
				t.Errorf("list %q: %q = %q@%d, want %q@%d", tc.prefix, kv.Key, kv.Value, kv.Rev, "v:"+kv.Key, revs[kv.Key])
			}
		}
	}
}

func testListPaging(t *testing.T, e *env) {
	var want []string
	for i := range 25 {
		want = append(want, fmt.Sprintf("p/%02d", i))
	}
	for i := 0; i < len(want); i += 10 {
		var ops []store.Op
		for _, k := range want[i:min(i+10, len(want))] {
			ops = append(ops, store.Put(k, []byte(k)))
		}
		commit(t, e.s, store.Batch{Ops: ops})
	}
	put(t, e.s, "o", "before the prefix")
	put(t, e.s, "q", "after the prefix")

	var got []string
	after := ""
	for pages := 0; ; pages++ {
		if pages > len(want) {
			t.Fatalf("paging does not terminate: %q", got)
		}
		page := list(t, e.s, "p/", store.ListOptions{After: after, Limit: 7})
		if len(page) > 7 {
			t.Fatalf("page of %d keys, limit 7", len(page))
		}
		if len(page) == 0 {
			break
		}
		got = append(got, keys(page)...)
		after = page[len(page)-1].Key
	}
	if !equalStrings(got, want) {
		t.Fatalf("paged list = %q, want %q", got, want)
	}
	for _, tc := range []struct {
		opts store.ListOptions
		want []string
	}{
		{store.ListOptions{Limit: 100}, want},
		{store.ListOptions{Limit: 1}, want[:1]},
		{store.ListOptions{After: "o"}, want},         // before the prefix
		{store.ListOptions{After: "p/"}, want},        // the prefix itself
		{store.ListOptions{After: "p/05"}, want[6:]},  // an existing key
		{store.ListOptions{After: "p/055"}, want[6:]}, // between keys
		{store.ListOptions{After: "p/24"}, nil},       // the last key
		{store.ListOptions{After: "q"}, nil},          // beyond the prefix
		{store.ListOptions{After: "p/1", Limit: 2}, want[10:12]},
	} {
		if got := keys(list(t, e.s, "p/", tc.opts)); !equalStrings(got, tc.want) {
			t.Errorf("list p/ %+v = %q, want %q", tc.opts, got, tc.want)
		}
	}
}

func testListInvalid(t *testing.T, e *env) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		prefix string
		opts   store.ListOptions
	}{
		{"negative limit", "", store.ListOptions{Limit: -1}},
		{"prefix not UTF-8", "a/\xff", store.ListOptions{}},
		{"prefix too long", strings.Repeat("p", store.MaxKeyLen+1), store.ListOptions{}},
		{"after not UTF-8", "", store.ListOptions{After: "\xc3"}},
		{"after too long", "", store.ListOptions{After: strings.Repeat("a", store.MaxKeyLen+1)}},
	} {
		if _, err := e.s.List(ctx, tc.prefix, tc.opts); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: list error = %v, want ErrInvalid", tc.name, err)
		}
	}
}

func testRevisions(t *testing.T, e *env) {
	var last int64
	for i := range 10 {
		rev := put(t, e.s, fmt.Sprintf("r/%d", i%3), fmt.Sprint(i))
		if rev <= last {
			t.Fatalf("commit %d rev %d not after %d", i, rev, last)
		}
		last = rev
	}
	before := get(t, e.s, "r/0")
	rev := commit(t, e.s, store.Batch{Ops: []store.Op{
		store.Put("r/1", []byte("x")), store.Put("r/2", []byte("y")), store.Put("r/new", []byte("z")),
	}})
	if rev <= last {
		t.Fatalf("batch rev %d not after %d", rev, last)
	}
	for _, k := range []string{"r/1", "r/2", "r/new"} {
		if kv := get(t, e.s, k); kv.Rev != rev {
			t.Fatalf("%q rev %d, want batch rev %d", k, kv.Rev, rev)
		}
	}
	if kv := get(t, e.s, "r/0"); kv.Rev != before.Rev {
		t.Fatalf("untouched key rev moved from %d to %d", before.Rev, kv.Rev)
	}
}

func testCondAbsent(t *testing.T, e *env) {
	ctx := context.Background()
	c := store.Absent("tokens/t1")
	rev := commit(t, e.s, store.Batch{Conds: []store.Cond{c}, Ops: []store.Op{store.Put("tokens/t1", []byte("first"))}})
	before := snapshot(t, e.s)
	_, err := e.s.Commit(ctx, store.Batch{Conds: []store.Cond{c}, Ops: []store.Op{store.Put("tokens/t1", []byte("second"))}})
	ce := wantConflict(t, err, c)
	if !ce.Found || ce.Rev != rev {
		t.Fatalf("conflict reports found=%v rev=%d, want found at %d", ce.Found, ce.Rev, rev)
	}
	if after := snapshot(t, e.s); after != before {
		t.Fatalf("failed commit changed the store:\n%s\nwant\n%s", after, before)
	}
}

func testCondRev(t *testing.T, e *env) {
	ctx := context.Background()
	r1 := put(t, e.s, "k", "v1")
	r2 := commit(t, e.s, store.Batch{Conds: []store.Cond{store.RevIs("k", r1)}, Ops: []store.Op{store.Put("k", []byte("v2"))}})
	wantValue(t, e.s, "k", "v2")

	before := snapshot(t, e.s)
	stale := store.RevIs("k", r1)
	_, err := e.s.Commit(ctx, store.Batch{Conds: []store.Cond{stale}, Ops: []store.Op{store.Put("k", []byte("v3"))}})
	ce := wantConflict(t, err, stale)
	if !ce.Found || ce.Rev != r2 {
		t.Fatalf("conflict reports found=%v rev=%d, want found at %d", ce.Found, ce.Rev, r2)
	}
	missing := store.RevIs("nope", r2)
	_, err = e.s.Commit(ctx, store.Batch{Conds: []store.Cond{missing}, Ops: []store.Op{store.Put("k", []byte("v4"))}})
	if ce := wantConflict(t, err, missing); ce.Found {
		t.Fatal("conflict on an absent key reports it found")
	}
	if after := snapshot(t, e.s); after != before {
		t.Fatalf("failed commits changed the store:\n%s\nwant\n%s", after, before)
	}
	// A delete guarded by the current revision.
	commit(t, e.s, store.Batch{Conds: []store.Cond{store.RevIs("k", r2)}, Ops: []store.Op{store.Delete("k")}})
	wantMissing(t, e.s, "k")
}

func testCondPresent(t *testing.T, e *env) {
	ctx := context.Background()
	c := store.Present("nodes/n1")
	_, err := e.s.Commit(ctx, store.Batch{Conds: []store.Cond{c}, Ops: []store.Op{store.Put("members/m1", []byte("x"))}})
	if ce := wantConflict(t, err, c); ce.Found {
		t.Fatal("conflict on an absent key reports it found")
	}
	wantMissing(t, e.s, "members/m1")
	put(t, e.s, "nodes/n1", "node")
	commit(t, e.s, store.Batch{Conds: []store.Cond{c}, Ops: []store.Op{store.Put("members/m1", []byte("x"))}})
	wantValue(t, e.s, "members/m1", "x")
}

func testConflictNamesFirstFailed(t *testing.T, e *env) {
	ctx := context.Background()
	ra := put(t, e.s, "a", "1")
	put(t, e.s, "b", "2")
	conds := []store.Cond{store.Present("a"), store.RevIs("a", ra), store.Absent("c"), store.Absent("b"), store.Present("d")}
	_, err := e.s.Commit(ctx, store.Batch{Conds: conds, Ops: []store.Op{store.Put("x", nil)}})
	wantConflict(t, err, store.Absent("b"))
	wantMissing(t, e.s, "x")
}

func testCondsSeePreState(t *testing.T, e *env) {
	// Conditions are checked against the state before the batch, even for
	// keys the batch writes.
	r := put(t, e.s, "k", "v")
	commit(t, e.s, store.Batch{
		Conds: []store.Cond{store.RevIs("k", r), store.Absent("new")},
		Ops:   []store.Op{store.Put("new", []byte("n")), store.Delete("k")},
	})
	wantValue(t, e.s, "new", "n")
	wantMissing(t, e.s, "k")
}

func testBatchAtomicity(t *testing.T, e *env) {
	ctx := context.Background()
	put(t, e.s, "x", "old-x")
	put(t, e.s, "y", "old-y")
	rw := put(t, e.s, "w", "exists")
	ops := []store.Op{
		store.Put("x", []byte("new-x")),
		store.Delete("y"),
		store.Put("z", []byte("new-z")),
	}
	before := snapshot(t, e.s)
	failing := store.Absent("w")
	_, err := e.s.Commit(ctx, store.Batch{Conds: []store.Cond{store.Present("x"), failing}, Ops: ops})
	wantConflict(t, err, failing)
	if after := snapshot(t, e.s); after != before {
		t.Fatalf("failed batch was partly applied:\n%s\nwant\n%s", after, before)
	}
	rev := commit(t, e.s, store.Batch{Conds: []store.Cond{store.Present("x"), store.RevIs("w", rw)}, Ops: ops})
	if kv := wantValue(t, e.s, "x", "new-x"); kv.Rev != rev {
		t.Fatalf("x rev %d, want %d", kv.Rev, rev)
	}
	if kv := wantValue(t, e.s, "z", "new-z"); kv.Rev != rev {
		t.Fatalf("z rev %d, want %d", kv.Rev, rev)
	}
	wantMissing(t, e.s, "y")
	wantValue(t, e.s, "w", "exists")
}

func testValidation(t *testing.T, e *env) {
	ctx := context.Background()
	put(t, e.s, "existing", "v")
	big := make([]byte, 3<<20)
	tooManyOps := make([]store.Op, store.MaxBatchOps+1)
	for i := range tooManyOps {
		tooManyOps[i] = store.Put(fmt.Sprintf("many/%03d", i), nil)
	}
	tooManyConds := make([]store.Cond, store.MaxBatchOps+1)
	for i := range tooManyConds {
		tooManyConds[i] = store.Absent(fmt.Sprintf("c/%03d", i))
	}
	ok := store.Put("valid", []byte("v"))
	for _, tc := range []struct {
		name string
		b    store.Batch
		want string // a fragment the error message must contain
	}{
		{"no ops", store.Batch{}, "no puts or deletes"},
		{"conditions only", store.Batch{Conds: []store.Cond{store.Absent("valid")}}, "no puts or deletes"},
		{"empty key", store.Batch{Ops: []store.Op{ok, store.Put("", []byte("v"))}}, "empty key"},
		{"empty delete key", store.Batch{Ops: []store.Op{ok, store.Delete("")}}, "empty key"},
		{"key too long", store.Batch{Ops: []store.Op{ok, store.Put(strings.Repeat("k", store.MaxKeyLen+1), nil)}}, "at most 1024"},
		{"key not UTF-8", store.Batch{Ops: []store.Op{ok, store.Put("nodes/\xff\xfe", nil)}}, "UTF-8"},
		{"value too large", store.Batch{Ops: []store.Op{ok, store.Put("big", make([]byte, store.MaxValueLen+1))}}, "value"},
		{"batch too large", store.Batch{Ops: []store.Op{ok, store.Put("b1", big), store.Put("b2", big), store.Put("b3", big)}}, "bytes of keys and values"},
		{"duplicate put", store.Batch{Ops: []store.Op{ok, store.Put("valid", nil)}}, "twice"},
		{"put and delete", store.Batch{Ops: []store.Op{ok, store.Delete("valid")}}, "twice"},
		{"too many ops", store.Batch{Ops: tooManyOps}, "at most 128"},
		{"too many conds", store.Batch{Conds: tooManyConds, Ops: []store.Op{ok}}, "at most 128"},
		{"rev zero", store.Batch{Conds: []store.Cond{store.RevIs("existing", 0)}, Ops: []store.Op{ok}}, "positive revision"},
		{"rev negative", store.Batch{Conds: []store.Cond{store.RevIs("existing", -3)}, Ops: []store.Op{ok}}, "positive revision"},
		{"absent with rev", store.Batch{Conds: []store.Cond{{Kind: store.CondAbsent, Key: "x", Rev: 4}}, Ops: []store.Op{ok}}, "no revision"},
		{"unknown cond kind", store.Batch{Conds: []store.Cond{{Kind: 99, Key: "x"}}, Ops: []store.Op{ok}}, "unknown kind"},
		{"zero cond", store.Batch{Conds: []store.Cond{{}}, Ops: []store.Op{ok}}, "empty key"},
		{"cond key not UTF-8", store.Batch{Conds: []store.Cond{store.Present("\x80")}, Ops: []store.Op{ok}}, "UTF-8"},
		{"delete with value", store.Batch{Ops: []store.Op{ok, {Key: "existing", Value: []byte("v"), Delete: true}}}, "carries a value"},
	} {
		before := snapshot(t, e.s)
		_, err := e.s.Commit(ctx, tc.b)
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: commit error = %v, want ErrInvalid", tc.name, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %q does not say %q", tc.name, err, tc.want)
		}
		if after := snapshot(t, e.s); after != before {
			t.Errorf("%s: invalid batch changed the store:\n%s\nwant\n%s", tc.name, after, before)
		}
	}
	wantMissing(t, e.s, "valid")
}

func testValidationLimitsAccepted(t *testing.T, e *env) {
	longKey := strings.Repeat("k", store.MaxKeyLen)
	bigValue := make([]byte, store.MaxValueLen)
	for i := range bigValue {
		bigValue[i] = byte(i * 7)
	}
	commit(t, e.s, store.Batch{Ops: []store.Op{store.Put(longKey, bigValue)}})
	if kv := get(t, e.s, longKey); !bytes.Equal(kv.Value, bigValue) {
		t.Fatalf("largest value read back with %d bytes, want %d equal bytes", len(kv.Value), len(bigValue))
	}
	ops := make([]store.Op, store.MaxBatchOps)
	conds := make([]store.Cond, store.MaxBatchOps)
	for i := range ops {
		k := fmt.Sprintf("max/%03d", i)
		ops[i] = store.Put(k, []byte(k))
		conds[i] = store.Absent(k)
	}
	rev := commit(t, e.s, store.Batch{Conds: conds, Ops: ops})
	kvs := list(t, e.s, "max/", store.ListOptions{})
	if len(kvs) != store.MaxBatchOps {
		t.Fatalf("largest batch stored %d keys, want %d", len(kvs), store.MaxBatchOps)
	}
	for _, kv := range kvs {
		if kv.Rev != rev {
			t.Fatalf("%q rev %d, want %d", kv.Key, kv.Rev, rev)
		}
	}
}

func testGetInvalidKey(t *testing.T, e *env) {
	for _, k := range []string{"", "\xff", strings.Repeat("x", store.MaxKeyLen+1)} {
		if _, err := e.s.Get(context.Background(), k); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("get %.20q: error %v, want ErrInvalid", k, err)
		}
	}
}

func testConcurrentIncrements(t *testing.T, e *env) {
	const workers, each = 8, 25
	ctx := context.Background()
	var (
		mu   sync.Mutex
		revs = map[int64]bool{}
		wg   sync.WaitGroup
		errs = make(chan error, workers)
	)
	for w := range workers {
		wg.Go(func() {
			for range each {
				rev, err := store.Update(ctx, e.s, "counter", func(kv store.KV, found bool) ([]byte, error) {
					n := 0
					if found {
						if _, err := fmt.Sscan(string(kv.Value), &n); err != nil {
							return nil, fmt.Errorf("counter value %q: %w", kv.Value, err)
						}
					}
					return []byte(fmt.Sprint(n + 1)), nil
				})
				if err != nil {
					errs <- fmt.Errorf("worker %d: %w", w, err)
					return
				}
				mu.Lock()
				if revs[rev] {
					mu.Unlock()
					errs <- fmt.Errorf("worker %d: revision %d returned to two commits", w, rev)
					return
				}
				revs[rev] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	wantValue(t, e.s, "counter", fmt.Sprint(workers*each))
}

func testConcurrentCreate(t *testing.T, e *env) {
	const n = 10
	ctx := context.Background()
	results := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, results[i] = e.s.Commit(ctx, store.Batch{
				Conds: []store.Cond{store.Absent("leader")},
				Ops:   []store.Op{store.Put("leader", []byte(fmt.Sprint(i)))},
			})
		})
	}
	wg.Wait()
	winner := -1
	for i, err := range results {
		switch {
		case err == nil:
			if winner >= 0 {
				t.Fatalf("both %d and %d created the key", winner, i)
			}
			winner = i
		case !errors.Is(err, store.ErrConflict):
			t.Fatalf("creator %d: %v, want nil or ErrConflict", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no creator won")
	}
	wantValue(t, e.s, "leader", fmt.Sprint(winner))
}

func testUpdate(t *testing.T, e *env) {
	ctx := context.Background()
	r1, err := store.Update(ctx, e.s, "u", func(kv store.KV, found bool) ([]byte, error) {
		if found || kv.Key != "u" {
			return nil, fmt.Errorf("fn got %+v found=%v for an absent key", kv, found)
		}
		return []byte("one"), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if kv := wantValue(t, e.s, "u", "one"); kv.Rev != r1 {
		t.Fatalf("rev %d, want %d", kv.Rev, r1)
	}
	_, err = store.Update(ctx, e.s, "u", func(kv store.KV, found bool) ([]byte, error) {
		if !found || string(kv.Value) != "one" || kv.Rev != r1 {
			return nil, fmt.Errorf("fn got %+v found=%v, want one@%d", kv, found, r1)
		}
		return append(kv.Value, "+two"...), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	wantValue(t, e.s, "u", "one+two")
	stop := errors.New("stop")
	before := snapshot(t, e.s)
	if _, err := store.Update(ctx, e.s, "u", func(store.KV, bool) ([]byte, error) { return nil, stop }); !errors.Is(err, stop) {
		t.Fatalf("update error = %v, want fn's error", err)
	}
	if after := snapshot(t, e.s); after != before {
		t.Fatal("update whose fn failed changed the store")
	}
	if _, err := store.Update(ctx, e.s, "", func(store.KV, bool) ([]byte, error) { return nil, nil }); !errors.Is(err, store.ErrInvalid) {
		t.Fatalf("update of empty key: %v, want ErrInvalid", err)
	}
}

func testContextCanceled(t *testing.T, e *env) {
	put(t, e.s, "k", "v")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("c", []byte("x")), store.Delete("k")}}); !errors.Is(err, context.Canceled) {
		t.Fatalf("commit with canceled context: %v, want context.Canceled", err)
	}
	wantMissing(t, e.s, "c")
	wantValue(t, e.s, "k", "v")
	if _, err := e.s.Get(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("get with canceled context: %v, want context.Canceled", err)
	}
	if _, err := e.s.List(ctx, "", store.ListOptions{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("list with canceled context: %v, want context.Canceled", err)
	}
	if _, err := store.Update(ctx, e.s, "k", func(store.KV, bool) ([]byte, error) { return []byte("u"), nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("update with canceled context: %v, want context.Canceled", err)
	}
	wantValue(t, e.s, "k", "v")
}

func testClosed(t *testing.T, e *env) {
	ctx := context.Background()
	put(t, e.s, "k", "v")
	if err := e.s.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := e.s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if _, err := e.s.Get(ctx, "k"); !errors.Is(err, store.ErrClosed) {
		t.Errorf("get after close: %v, want ErrClosed", err)
	}
	if _, err := e.s.List(ctx, "", store.ListOptions{}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("list after close: %v, want ErrClosed", err)
	}
	if _, err := e.s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("k", nil)}}); !errors.Is(err, store.ErrClosed) {
		t.Errorf("commit after close: %v, want ErrClosed", err)
	}
}

func testReopen(t *testing.T, e *env) {
	if e.reopen == nil {
		t.Skip("the backend's opener gives no way to reopen a store (no WithReopen)")
	}
	put(t, e.s, "nodes/n1", "one")
	put(t, e.s, "nodes/n2", "two")
	commit(t, e.s, store.Batch{Ops: []store.Op{store.Delete("nodes/n1"), store.Put("ca/key", []byte{0, 1, 2})}})
	last := put(t, e.s, "nodes/n2", "two again")
	before := snapshot(t, e.s)
	e.reopen()
	if after := snapshot(t, e.s); after != before {
		t.Fatalf("store after reopen:\n%s\nwant\n%s", after, before)
	}
	if rev := put(t, e.s, "nodes/n3", "three"); rev <= last {
		t.Fatalf("first commit after reopen has rev %d, not after %d", rev, last)
	}
	e.reopen()
	wantValue(t, e.s, "nodes/n3", "three")
}
