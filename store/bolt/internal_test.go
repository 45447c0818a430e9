package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/store"
)

// TestCommitQueuedBehindWriter holds the writer slot, as a long Commit
// would, and checks that a queued Commit gives up when its context ends or
// the store closes, and applies nothing.
func TestCommitQueuedBehindWriter(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "tvd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	b := store.Batch{Ops: []store.Op{store.Put("k", []byte("v"))}}

	s.writer <- struct{}{} // hold the slot
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Commit(ctx, b); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("queued commit: %v, want DeadlineExceeded", err)
	}
	<-s.writer // release
	if _, err := s.Get(context.Background(), "k"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("timed-out commit applied something: %v", err)
	}

	s.writer <- struct{}{}
	errc := make(chan error, 1)
	go func() {
		_, err := s.Commit(context.Background(), b)
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, store.ErrClosed) {
			t.Fatalf("commit queued across close: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("commit queued across close did not return")
	}
	<-s.writer
}
