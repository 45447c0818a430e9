package audit

import (
	"context"
	"crypto/sha256"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
)

// cpuTime returns the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchEntries is a ring of distinct realistic entries and their encodings.
func benchEntries(b *testing.B) ([]Entry, [][]byte) {
	b.Helper()
	es := testEntries(0, 1024)
	enc := make([][]byte, len(es))
	for i, e := range es {
		var err error
		if enc[i], err = e.Encode(); err != nil {
			b.Fatal(err)
		}
	}
	return es, enc
}

// sha256Baseline returns the time per SHA-256 of one encoded entry, measured
// over n hashes of the same bytes the benchmark appends.
func sha256Baseline(enc [][]byte, n int) time.Duration {
	n = max(n, 100_000)
	start := time.Now()
	var sink byte
	for i := range n {
		h := sha256.Sum256(enc[i%len(enc)])
		sink ^= h[0]
	}
	_ = sink
	return time.Since(start) / time.Duration(n)
}

// reportAppend reports throughput for n appends that took wall and cpu, and
// the cost of one append relative to one SHA-256 of its bytes.
func reportAppend(b *testing.B, n int, wall, cpu, base time.Duration) {
	b.ReportMetric(float64(n)/wall.Seconds(), "appends/s")
	if cpu > 0 {
		b.ReportMetric(float64(n)/cpu.Seconds(), "appends/cpu-s")
	}
	perAppend := float64(wall) / float64(n)
	b.ReportMetric(perAppend/float64(base), "x-vs-sha256")
}

// BenchmarkAppend appends batches of entries with Log.Append.
func BenchmarkAppend(b *testing.B) {
	for _, storage := range []string{"memory", "file"} {
		for _, batch := range []int{1, 64, 512} {
			b.Run(fmt.Sprintf("%s/batch=%d", storage, batch), func(b *testing.B) {
				es, enc := benchEntries(b)
				var st Storage = NewMemoryStorage()
				if storage == "file" {
					fs, err := OpenFile(b.TempDir(), nil)
					if err != nil {
						b.Fatal(err)
					}
					defer fs.Close()
					st = fs
				}
				l, _ := openTestLog(b, st)
				ctx := context.Background()
				b.ResetTimer()
				c0, t0 := cpuTime(), time.Now()
				for done := 0; done < b.N; {
					k := min(batch, b.N-done)
					off := done % len(es)
					k = min(k, len(es)-off)
					if _, err := l.Append(ctx, es[off:off+k]...); err != nil {
						b.Fatal(err)
					}
					done += k
				}
				wall, cpu := time.Since(t0), cpuTime()-c0
				b.StopTimer()
				reportAppend(b, b.N, wall, cpu, sha256Baseline(enc, b.N))
			})
		}
	}
}

// BenchmarkBatcher appends one entry per call from many goroutines through a
// Batcher, the way the controller does.
func BenchmarkBatcher(b *testing.B) {
	for _, storage := range []string{"memory", "file"} {
		b.Run(storage, func(b *testing.B) {
			es, enc := benchEntries(b)
			var st Storage = NewMemoryStorage()
			if storage == "file" {
				fs, err := OpenFile(b.TempDir(), nil)
				if err != nil {
					b.Fatal(err)
				}
				defer fs.Close()
				st = fs
			}
			l, _ := openTestLog(b, st)
			ctx, cancel := context.WithCancel(context.Background())
			bt := NewBatcher(l, BatcherConfig{MaxBatch: 1024, MaxDelay: 200 * time.Microsecond})
			done := make(chan struct{})
			go func() { bt.Run(ctx); close(done) }()
			b.SetParallelism(64)
			b.ResetTimer()
			c0, t0 := cpuTime(), time.Now()
			var mu sync.Mutex
			next := 0
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				i := next
				next += 7
				mu.Unlock()
				for pb.Next() {
					if _, err := bt.Append(ctx, es[i%len(es)]); err != nil {
						b.Error(err)
						return
					}
					i++
				}
			})
			wall, cpu := time.Since(t0), cpuTime()-c0
			b.StopTimer()
			cancel()
			<-done
			reportAppend(b, b.N, wall, cpu, sha256Baseline(enc, b.N))
		})
	}
}

var (
	bigLogOnce sync.Once
	bigLog     *Log
	bigLeaves  [][]byte
)

const bigLogSize = 1 << 20

// bigTestLog builds a log of 2^20 entries in memory once per run.
func bigTestLog(b *testing.B) (*Log, [][]byte) {
	bigLogOnce.Do(func() {
		st := NewMemoryStorage()
		l, _ := openTestLog(b, st)
		ctx := context.Background()
		batch := make([]Entry, 0, 4096)
		for i := 0; i < bigLogSize; i++ {
			batch = append(batch, testEntry(i))
			if len(batch) == cap(batch) {
				if _, err := l.Append(ctx, batch...); err != nil {
					b.Fatal(err)
				}
				batch = batch[:0]
			}
		}
		leaves, err := st.ReadLeaves(ctx, 0, bigLogSize)
		if err != nil {
			b.Fatal(err)
		}
		bigLog, bigLeaves = l, leaves
	})
	if bigLog == nil {
		b.Fatal("building the large log failed")
	}
	return bigLog, bigLeaves
}

// hashChildrenBaseline is the time of one interior node hash.
func hashChildrenBaseline() time.Duration {
	l, r := make([]byte, 32), make([]byte, 32)
	const n = 200_000
	start := time.Now()
	for range n {
		l = hasher.HashChildren(l, r)
	}
	return time.Since(start) / n
}

// BenchmarkInclusionProof generates and verifies inclusion proofs in a tree
// of 2^20 leaves; the ratio is against one interior node hash.
func BenchmarkInclusionProof(b *testing.B) {
	l, leaves := bigTestLog(b)
	size, root := l.Root()
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		idx := uint64(i*7919) % size
		p, err := l.InclusionProof(ctx, idx, size)
		if err != nil {
			b.Fatal(err)
		}
		if err := proof.VerifyInclusion(hasher, idx, size, hasher.HashLeaf(leaves[idx]), p, root); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := float64(b.Elapsed()) / float64(b.N)
	b.ReportMetric(per/float64(hashChildrenBaseline()), "x-vs-nodehash")
	l.mu.RLock()
	mem := 0
	for _, lv := range l.levels {
		mem += len(lv)
	}
	l.mu.RUnlock()
	b.ReportMetric(float64(mem)/float64(size), "tree-bytes/entry")
}

// BenchmarkConsistencyProof generates and verifies consistency proofs from
// varying older sizes to the full tree of 2^20 leaves.
func BenchmarkConsistencyProof(b *testing.B) {
	l, _ := bigTestLog(b)
	size, root := l.Root()
	ctx := context.Background()
	roots := make(map[uint64][]byte)
	froms := make([]uint64, 64)
	for i := range froms {
		froms[i] = 1 + uint64(i*104729)%(size-1)
		r, err := l.RootAt(ctx, froms[i])
		if err != nil {
			b.Fatal(err)
		}
		roots[froms[i]] = r
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		from := froms[i%len(froms)]
		p, err := l.ConsistencyProof(ctx, from, size)
		if err != nil {
			b.Fatal(err)
		}
		if err := proof.VerifyConsistency(hasher, from, size, p, roots[from], root); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := float64(b.Elapsed()) / float64(b.N)
	b.ReportMetric(per/float64(hashChildrenBaseline()), "x-vs-nodehash")
}

// BenchmarkFsck checks a whole 2^20-entry log (read, strict decode, rehash,
// checkpoint check); the ratio is per entry against SHA-256 of its bytes.
func BenchmarkFsck(b *testing.B) {
	l, leaves := bigTestLog(b)
	_, verifier, _ := testKeys(b, testOrigin, 1)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Fsck(ctx, l.st, verifier); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	per := float64(b.Elapsed()) / float64(b.N) / float64(len(leaves))
	b.ReportMetric(per, "ns/entry")
	b.ReportMetric(per/float64(sha256Baseline(leaves[:4096], len(leaves))), "x-vs-sha256")
}

// BenchmarkOpenFile measures a controller start-up: reopening a file log of
// 2^18 entries (read every leaf, rebuild the tree, check the checkpoint);
// the ratio is per entry against SHA-256 of its bytes.
func BenchmarkOpenFile(b *testing.B) {
	const n = 1 << 18
	dir := b.TempDir()
	st, err := OpenFile(dir, nil)
	if err != nil {
		b.Fatal(err)
	}
	l, _ := openTestLog(b, st)
	ctx := context.Background()
	for i := 0; i < n; i += 4096 {
		if _, err := l.Append(ctx, testEntries(i, 4096)...); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	_, enc := benchEntries(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := OpenFile(dir, nil)
		if err != nil {
			b.Fatal(err)
		}
		if l2, _ := openTestLog(b, st); l2.Size() != n {
			b.Fatalf("reopened %d entries", l2.Size())
		}
		st.Close()
	}
	b.StopTimer()
	per := float64(b.Elapsed()) / float64(b.N) / n
	b.ReportMetric(per, "ns/entry")
	b.ReportMetric(per/float64(sha256Baseline(enc, n)), "x-vs-sha256")
}

// BenchmarkEntryCodec encodes and strictly decodes entries; the ratio is
// against SHA-256 of the encoded bytes.
func BenchmarkEntryCodec(b *testing.B) {
	es, enc := benchEntries(b)
	for _, op := range []string{"encode", "decode"} {
		b.Run(op, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				var err error
				if op == "encode" {
					_, err = es[i%len(es)].Encode()
				} else {
					_, err = DecodeEntry(enc[i%len(enc)])
				}
				if err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			per := float64(b.Elapsed()) / float64(b.N)
			b.ReportMetric(per/float64(sha256Baseline(enc, b.N)), "x-vs-sha256")
		})
	}
}
