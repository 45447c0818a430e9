package audit

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"
)

func TestBatcherConcurrent(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := NewMemoryStorage()
	l, verifier := openTestLog(t, st)
	b := NewBatcher(l, BatcherConfig{MaxBatch: 50, MaxDelay: 2 * time.Millisecond})
	runErr := make(chan error, 1)
	go func() { runErr <- b.Run(ctx) }()

	const workers, per = 8, 60
	type span struct{ first, n uint64 }
	var mu sync.Mutex
	var spans []span
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range per {
				k := 1 + (w+i)%4
				first, err := b.Append(ctx, testEntries(w*10000+i*10, k)...)
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				spans = append(spans, span{first, uint64(k)})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The spans tile [0, size) exactly: no entry lost, none reported twice,
	// each call's entries contiguous.
	sort.Slice(spans, func(i, j int) bool { return spans[i].first < spans[j].first })
	next := uint64(0)
	for _, s := range spans {
		if s.first != next {
			t.Fatalf("span starts at %d, want %d", s.first, next)
		}
		next += s.n
	}
	if l.Size() != next {
		t.Fatalf("log size %d, spans cover %d", l.Size(), next)
	}
	// Fewer checkpoints than calls: appends were grouped.
	cps, _ := st.Checkpoints(ctx)
	if len(cps) >= workers*per {
		t.Fatalf("%d checkpoints for %d calls: nothing was batched", len(cps), workers*per)
	}
	t.Logf("%d calls in %d batches", workers*per, len(cps)-1)
	if _, err := Fsck(ctx, st, verifier); err != nil {
		t.Fatal(err)
	}
	// An invalid entry fails only its own call.
	if _, err := b.Append(ctx, Entry{Kind: "admit"}); err == nil {
		t.Fatal("invalid entry accepted")
	}
	cancel()
	if err := <-runErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v", err)
	}
	if _, err := b.Append(context.Background(), testEntry(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after Run ended: %v", err)
	}
}

func TestBatcherFlushesBySizeAndDelay(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := NewMemoryStorage()
	l, _ := openTestLog(t, st)
	// A long delay: a lone append is held until it passes.
	b := NewBatcher(l, BatcherConfig{MaxBatch: 10, MaxDelay: 150 * time.Millisecond})
	go b.Run(ctx)
	if _, err := b.Append(ctx, testEntries(0, 10)...); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := b.Append(ctx, testEntry(10)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < 150*time.Millisecond {
		t.Errorf("a lone append was flushed after %v, before MaxDelay", d)
	}
	// A caller whose context ends while queued gets its error.
	short, c2 := context.WithTimeout(ctx, 10*time.Millisecond)
	defer c2()
	if _, err := b.Append(short, testEntry(11)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
}
