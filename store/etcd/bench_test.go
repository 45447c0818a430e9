package etcd_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/tvd-dev/tvd/store"
)

// BenchmarkCommit measures Commit against the same etcd, in the same run,
// doing the same writes through a raw clientv3 client: a Put for one key, a
// Txn of Puts for a batch, and for the conditional variant a Txn guarded by
// a ModRevision compare. The two are interleaved so both see the same
// cluster and disk; the ratio is reported as x-vs-raw-clientv3.
func BenchmarkCommit(b *testing.B) {
	for _, bc := range []struct {
		name string
		keys int
		cond bool
	}{
		{"put1", 1, false},
		{"batch10", 10, false},
		{"cond-put1", 1, true},
	} {
		b.Run(bc.name, func(b *testing.B) { benchCommit(b, bc.keys, bc.cond) })
	}
}

func benchCommit(b *testing.B, keys int, cond bool) {
	const keySpace = 1024
	e := requireEtcd(b)
	ctx := context.Background()
	prefix := uniquePrefix(b)
	s := openAt(b, e, prefix)
	raw := rawClient(b, e)
	rawPrefix := "raw-" + prefix
	value := make([]byte, 256)
	for i := range value {
		value[i] = byte(i)
	}
	key := func(i, j int) string { return fmt.Sprintf("bench/%06d", (i*keys+j)%keySpace) }
	storeRevs := map[string]int64{}
	rawRevs := map[string]int64{}

	storeCommit := func(i int) error {
		batch := store.Batch{Ops: make([]store.Op, keys)}
		for j := range keys {
			k := key(i, j)
			batch.Ops[j] = store.Put(k, value)
			if cond {
				if r, ok := storeRevs[k]; ok {
					batch.Conds = append(batch.Conds, store.RevIs(k, r))
				} else {
					batch.Conds = append(batch.Conds, store.Absent(k))
				}
			}
		}
		rev, err := s.Commit(ctx, batch)
		if err != nil {
			return err
		}
		if cond {
			for _, op := range batch.Ops {
				storeRevs[op.Key] = rev
			}
		}
		return nil
	}
	rawCommit := func(i int) error {
		if keys == 1 && !cond {
			_, err := raw.Put(ctx, rawPrefix+key(i, 0), string(value))
			return err
		}
		var cmps []clientv3.Cmp
		ops := make([]clientv3.Op, keys)
		for j := range keys {
			k := rawPrefix + key(i, j)
			ops[j] = clientv3.OpPut(k, string(value))
			if cond {
				cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rawRevs[k]))
			}
		}
		resp, err := raw.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return fmt.Errorf("raw txn %d: compare failed", i)
		}
		if cond {
			for j := range keys {
				rawRevs[rawPrefix+key(i, j)] = resp.Header.Revision
			}
		}
		return nil
	}

	var storeDur, rawDur time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := storeCommit(i); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := rawCommit(i); err != nil {
			b.Fatal(err)
		}
		storeDur += t1.Sub(t0)
		rawDur += time.Since(t1)
	}
	b.StopTimer()
	storeNs := float64(storeDur.Nanoseconds()) / float64(b.N)
	rawNs := float64(rawDur.Nanoseconds()) / float64(b.N)
	b.ReportMetric(storeNs, "ns/op")
	b.ReportMetric(rawNs, "raw-ns/op")
	b.ReportMetric(storeNs/rawNs, "x-vs-raw-clientv3")
}

// BenchmarkGet measures a point read against a raw clientv3 Get of the same
// key in the same run: x-vs-raw-clientv3.
func BenchmarkGet(b *testing.B) {
	const keySpace = 256
	e := requireEtcd(b)
	ctx := context.Background()
	prefix := uniquePrefix(b)
	s := openAt(b, e, prefix)
	raw := rawClient(b, e)
	value := make([]byte, 256)
	keys := make([]string, keySpace)
	var ops []store.Op
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/%06d", i)
		ops = append(ops, store.Put(keys[i], value))
		if len(ops) == store.MaxBatchOps || i == keySpace-1 {
			if _, err := s.Commit(ctx, store.Batch{Ops: ops}); err != nil {
				b.Fatal(err)
			}
			ops = nil
		}
	}
	var storeDur, rawDur time.Duration
	var sink int
	b.ResetTimer()
	for i := range b.N {
		k := keys[i%keySpace]
		t0 := time.Now()
		kv, err := s.Get(ctx, k)
		if err != nil {
			b.Fatal(err)
		}
		sink += len(kv.Value)
		t1 := time.Now()
		resp, err := raw.Get(ctx, prefix+k)
		if err != nil || len(resp.Kvs) != 1 {
			b.Fatalf("raw get %s: %v", k, err)
		}
		sink += len(resp.Kvs[0].Value)
		storeDur += t1.Sub(t0)
		rawDur += time.Since(t1)
	}
	b.StopTimer()
	if sink != 2*b.N*len(value) {
		b.Fatalf("read %d bytes, want %d", sink, 2*b.N*len(value))
	}
	storeNs := float64(storeDur.Nanoseconds()) / float64(b.N)
	rawNs := float64(rawDur.Nanoseconds()) / float64(b.N)
	b.ReportMetric(storeNs, "ns/op")
	b.ReportMetric(rawNs, "raw-ns/op")
	b.ReportMetric(storeNs/rawNs, "x-vs-raw-clientv3")
}
