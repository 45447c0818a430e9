package bolt_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
)

// BenchmarkCommit measures Commit throughput (every commit is fsynced)
// and, in the same run and on the same disk, a raw bbolt Update that writes
// the same keys and values; it reports the ratio as x-vs-raw-bbolt. The
// cond variant guards each put with RevIs on the key, against a raw Update
// that reads the key before writing it.
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
	const keySpace = 4096
	ctx := context.Background()
	dir := b.TempDir()
	s, err := bolt.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	raw, err := bbolt.Open(filepath.Join(dir, "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	bucket := []byte("data")
	if err := raw.Update(func(tx *bbolt.Tx) error { _, err := tx.CreateBucket(bucket); return err }); err != nil {
		b.Fatal(err)
	}
	value := make([]byte, 256)
	for i := range value {
		value[i] = byte(i)
	}
	key := func(i, j int) string { return fmt.Sprintf("bench/%06d", (i*keys+j)%keySpace) }
	revs := map[string]int64{}

	rawUpdate := func(i int) error {
		return raw.Update(func(tx *bbolt.Tx) error {
			bk := tx.Bucket(bucket)
			for j := range keys {
				k := []byte(key(i, j))
				if cond {
					_ = bk.Get(k)
				}
				if err := bk.Put(k, value); err != nil {
					return err
				}
			}
			return nil
		})
	}
	storeCommit := func(i int) error {
		batch := store.Batch{Ops: make([]store.Op, keys)}
		for j := range keys {
			k := key(i, j)
			batch.Ops[j] = store.Put(k, value)
			if cond {
				if r, ok := revs[k]; ok {
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
				revs[op.Key] = rev
			}
		}
		return nil
	}

	// Interleave the two so that both see the same disk conditions (fsync
	// latency on shared disks drifts over seconds).
	var storeDur, rawDur time.Duration
	b.ResetTimer()
	for i := range b.N {
		t0 := time.Now()
		if err := storeCommit(i); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := rawUpdate(i); err != nil {
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
	b.ReportMetric(storeNs/rawNs, "x-vs-raw-bbolt")
}

// BenchmarkGet measures a point read, which has no fsync to hide the
// store's own cost (validation, revision decoding, copying the value out of
// the read transaction), against a raw bbolt View that copies the same
// value, in the same run: x-vs-raw-bbolt.
func BenchmarkGet(b *testing.B) {
	const keySpace = 1024
	ctx := context.Background()
	dir := b.TempDir()
	s, err := bolt.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	raw, err := bbolt.Open(filepath.Join(dir, "raw.db"), 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	bucket := []byte("data")
	value := make([]byte, 256)
	keys := make([]string, keySpace)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench/%06d", i)
	}
	for i := 0; i < keySpace; i += store.MaxBatchOps {
		var ops []store.Op
		for _, k := range keys[i:min(i+store.MaxBatchOps, keySpace)] {
			ops = append(ops, store.Put(k, value))
		}
		if _, err := s.Commit(ctx, store.Batch{Ops: ops}); err != nil {
			b.Fatal(err)
		}
	}
	if err := raw.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucket(bucket)
		if err != nil {
			return err
		}
		for _, k := range keys {
			if err := bk.Put([]byte(k), value); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		b.Fatal(err)
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
		if err := raw.View(func(tx *bbolt.Tx) error {
			v := tx.Bucket(bucket).Get([]byte(k))
			sink += len(append([]byte(nil), v...))
			return nil
		}); err != nil {
			b.Fatal(err)
		}
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
	b.ReportMetric(storeNs/rawNs, "x-vs-raw-bbolt")
}
