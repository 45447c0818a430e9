package etcd_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/etcd"
)

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestKillEtcd kills etcd (SIGKILL) while several writers commit, then
// restarts it on the same data. Every Commit that failed must say so
// clearly (ErrIndeterminate, or a context error if it never started),
// reads during the outage must fail with the deadline, and after the
// restart every acknowledged commit must be there, at its revision, read
// through the same Store handle (which reconnects) and a fresh one.
func TestKillEtcd(t *testing.T) {
	t.Parallel() // runs its own etcd
	e := privateEtcd(t)
	var logs syncBuffer
	cfg := etcd.Config{
		Endpoints:      []string{e.endpoint()},
		Prefix:         uniquePrefix(t),
		RequestTimeout: 800 * time.Millisecond,
		Logger:         slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	s := openWith(t, cfg)
	doomed := openWith(t, cfg) // closed during the outage

	type outcome struct {
		key string
		rev int64
		err error
	}
	const writers = 4
	var (
		mu       sync.Mutex
		outcomes []outcome
		acked    = make(chan struct{}, 1000)
		stop     = make(chan struct{})
		wg       sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := fmt.Sprintf("w%d/%06d", w, i)
				rev, err := s.Commit(context.Background(), store.Batch{
					Conds: []store.Cond{store.Absent(key)},
					Ops:   []store.Op{store.Put(key, []byte(key)), store.Put(fmt.Sprintf("last/w%d", w), []byte(key))},
				})
				mu.Lock()
				outcomes = append(outcomes, outcome{key, rev, err})
				mu.Unlock()
				if err == nil {
					select {
					case acked <- struct{}{}:
					default:
					}
				}
			}
		})
	}
	// Let the writers get going, then kill etcd under them.
	for range 40 {
		select {
		case <-acked:
		case <-time.After(10 * time.Second):
			close(stop)
			wg.Wait()
			t.Fatalf("writers made no progress before the kill: %v", outcomes)
		}
	}
	e.kill()
	killed := time.Now()
	time.Sleep(1500 * time.Millisecond)

	// Reads during the outage fail with the deadline and say why.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := s.Get(ctx, "w0/000000")
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("get during the outage: %v, want a deadline error", err)
	}
	t.Logf("get during the outage: %v", err)
	// A commit with a context that is already done did not start.
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if _, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("never", nil)}}); !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrIndeterminate) {
		t.Errorf("commit with a canceled context: %v, want context.Canceled only", err)
	}

	// Closing a store under a commit that waits for the lost cluster ends
	// the commit at once, and the outcome is unknown, not "closed".
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := doomed.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("doomed", nil)}})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	closedAt := time.Now()
	if err := doomed.Close(); err != nil {
		t.Errorf("close during the outage: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrIndeterminate) || errors.Is(err, store.ErrClosed) || !strings.Contains(err.Error(), "store closed") {
			t.Errorf("commit cut off by close: %v, want ErrIndeterminate saying the store closed", err)
		}
		if d := time.Since(closedAt); d > 2*time.Second {
			t.Errorf("commit returned %v after close", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("commit did not return after close")
	}

	close(stop)
	wg.Wait()

	var ok, failed int
	var sample error
	for _, o := range outcomes {
		if o.err == nil {
			ok++
			continue
		}
		failed++
		if !errors.Is(o.err, store.ErrIndeterminate) && !errors.Is(o.err, context.DeadlineExceeded) {
			t.Errorf("commit of %s: %v, want ErrIndeterminate or a deadline error", o.key, o.err)
		}
		if errors.Is(o.err, store.ErrConflict) || errors.Is(o.err, store.ErrInvalid) || errors.Is(o.err, store.ErrClosed) {
			t.Errorf("commit of %s: %v claims a definite outcome", o.key, o.err)
		}
		sample = o.err
	}
	if failed == 0 {
		t.Fatalf("no commit failed in the %v after the kill", time.Since(killed))
	}
	t.Logf("%d commits acknowledged, %d failed; e.g. %v", ok, failed, sample)

	if err := e.start(); err != nil {
		t.Fatalf("restart etcd: %v", err)
	}
	// The old handle reconnects; give it a generous deadline, as gRPC
	// backs off between reconnection attempts.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var kvs []store.KV
	for {
		kvs, err = s.List(ctx, "", store.ListOptions{})
		if err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("list after restart through the old handle: %v", err)
	}
	fresh := openWith(t, cfg)
	freshKVs, err := fresh.List(ctx, "", store.ListOptions{})
	if err != nil {
		t.Fatalf("list through a new handle: %v", err)
	}
	if len(freshKVs) != len(kvs) {
		t.Fatalf("old handle lists %d keys, new one %d", len(kvs), len(freshKVs))
	}
	have := map[string]store.KV{}
	for _, kv := range kvs {
		have[kv.Key] = kv
	}
	var present, lost int
	for _, o := range outcomes {
		kv, found := have[o.key]
		switch {
		case o.err == nil && !found:
			t.Errorf("acknowledged commit of %s (rev %d) lost after restart", o.key, o.rev)
		case o.err == nil && (kv.Rev != o.rev || string(kv.Value) != o.key):
			t.Errorf("%s = %q at rev %d after restart, acknowledged at rev %d", o.key, kv.Value, kv.Rev, o.rev)
		case o.err != nil && found:
			present++
		case o.err != nil:
			lost++
		}
	}
	t.Logf("of the failed commits, %d applied anyway and %d did not", present, lost)
	for _, o := range outcomes {
		if o.err == nil {
			continue
		}
		// A writer recovers by re-reading; its next commit goes through.
		if _, err := s.Commit(ctx, store.Batch{Ops: []store.Op{store.Put("after/restart", []byte("yes"))}}); err != nil {
			t.Fatalf("commit after restart: %v", err)
		}
		break
	}
	if n := strings.Count(logs.String(), "\n"); n > 0 {
		t.Logf("client logged %d warnings during the outage, first: %s", n, strings.SplitN(logs.String(), "\n", 2)[0])
	}
}
