// Package audittest holds the behavioural test suite that every
// audit.Storage implementation must pass, so that an adapter (for example
// the controller's key-value store) is checked against the same contract as
// audit's own memory and file storages.
package audittest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/audit"
)

// NewStorage returns a new, empty storage for one subtest. It should
// register any cleanup with t.Cleanup.
type NewStorage func(t *testing.T) audit.Storage

// TestStorage runs the Storage conformance suite against fresh storages made
// by newStorage.
func TestStorage(t *testing.T, newStorage NewStorage) {
	t.Run("Empty", func(t *testing.T) { testEmpty(t, newStorage(t)) })
	t.Run("AppendRead", func(t *testing.T) { testAppendRead(t, newStorage(t)) })
	t.Run("Conflict", func(t *testing.T) { testConflict(t, newStorage(t)) })
	t.Run("Copies", func(t *testing.T) { testCopies(t, newStorage(t)) })
	t.Run("Checkpoint", func(t *testing.T) { testCheckpoint(t, newStorage(t)) })
	t.Run("Canceled", func(t *testing.T) { testCanceled(t, newStorage(t)) })
	t.Run("Concurrent", func(t *testing.T) { testConcurrent(t, newStorage(t)) })
	t.Run("WithLog", func(t *testing.T) { testWithLog(t, newStorage(t)) })
}

func leaf(i int) []byte {
	return []byte(fmt.Sprintf(`{"leaf":%d,"pad":"%s"}`, i, bytes.Repeat([]byte{'a' + byte(i%26)}, i%50)))
}

func leaves(from, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = leaf(from + i)
	}
	return out
}

func testEmpty(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	if n, err := st.Size(ctx); err != nil || n != 0 {
		t.Fatalf("Size = %d, %v; want 0", n, err)
	}
	if cp, err := st.Checkpoint(ctx); err != nil || cp != nil {
		t.Fatalf("Checkpoint = %q, %v; want nil, nil", cp, err)
	}
	if got, err := st.ReadLeaves(ctx, 0, 0); err != nil || len(got) != 0 {
		t.Fatalf("ReadLeaves(0, 0) = %d leaves, %v", len(got), err)
	}
	if _, err := st.ReadLeaves(ctx, 0, 1); err == nil {
		t.Fatal("ReadLeaves past the end succeeded")
	}
}

func testAppendRead(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	var all [][]byte
	for _, n := range []int{1, 2, 7, 1, 100, 3} {
		batch := leaves(len(all), n)
		if err := st.AppendLeaves(ctx, uint64(len(all)), batch); err != nil {
			t.Fatal(err)
		}
		all = append(all, batch...)
		if size, err := st.Size(ctx); err != nil || size != uint64(len(all)) {
			t.Fatalf("Size = %d, %v; want %d", size, err, len(all))
		}
	}
	big := bytes.Repeat([]byte("x"), audit.MaxEntrySize)
	if err := st.AppendLeaves(ctx, uint64(len(all)), [][]byte{big}); err != nil {
		t.Fatalf("append a leaf of MaxEntrySize: %v", err)
	}
	all = append(all, big)
	if err := st.AppendLeaves(ctx, uint64(len(all)), [][]byte{append(big, 'x')}); err == nil {
		t.Fatal("appended a leaf above MaxEntrySize")
	}
	for _, r := range [][2]int{{0, len(all)}, {0, 1}, {5, 10}, {len(all) - 1, 1}, {len(all), 0}, {50, 60}} {
		got, err := st.ReadLeaves(ctx, uint64(r[0]), uint64(r[1]))
		if err != nil {
			t.Fatalf("ReadLeaves(%d, %d): %v", r[0], r[1], err)
		}
		if len(got) != r[1] {
			t.Fatalf("ReadLeaves(%d, %d) returned %d leaves", r[0], r[1], len(got))
		}
		for i, l := range got {
			if !bytes.Equal(l, all[r[0]+i]) {
				t.Fatalf("leaf %d differs", r[0]+i)
			}
		}
	}
	if _, err := st.ReadLeaves(ctx, uint64(len(all))-2, 3); err == nil {
		t.Fatal("ReadLeaves across the end succeeded")
	}
	if _, err := st.ReadLeaves(ctx, uint64(len(all))+1, 0); err == nil {
		t.Fatal("ReadLeaves starting past the end succeeded")
	}
	if _, err := st.ReadLeaves(ctx, 1, ^uint64(0)); err == nil {
		t.Fatal("ReadLeaves with an overflowing count succeeded")
	}
}

func testConflict(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	if err := st.AppendLeaves(ctx, 0, leaves(0, 3)); err != nil {
		t.Fatal(err)
	}
	for _, start := range []uint64{0, 2, 4, 100} {
		if err := st.AppendLeaves(ctx, start, leaves(9, 1)); !errors.Is(err, audit.ErrConflict) {
			t.Fatalf("append at %d with size 3: %v, want ErrConflict", start, err)
		}
	}
	if size, _ := st.Size(ctx); size != 3 {
		t.Fatalf("a refused append changed the size to %d", size)
	}
	if err := st.AppendLeaves(ctx, 3, nil); err != nil {
		t.Fatalf("empty append: %v", err)
	}
}

func testCopies(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	in := leaves(0, 2)
	if err := st.AppendLeaves(ctx, 0, in); err != nil {
		t.Fatal(err)
	}
	in[0][0] ^= 0xff
	got, err := st.ReadLeaves(ctx, 0, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[0], leaf(0)) {
		t.Fatal("storage kept a reference to the caller's leaf")
	}
	got[1][0] ^= 0xff
	again, _ := st.ReadLeaves(ctx, 1, 1)
	if !bytes.Equal(again[0], leaf(1)) {
		t.Fatal("storage returned its own buffer to the caller")
	}
	cp := []byte("checkpoint\n")
	if err := st.PutCheckpoint(ctx, cp); err != nil {
		t.Fatal(err)
	}
	cp[0] = 'X'
	if got, _ := st.Checkpoint(ctx); string(got) != "checkpoint\n" {
		t.Fatalf("checkpoint aliased: %q", got)
	}
}

func testCheckpoint(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	for i := range 5 {
		cp := []byte(fmt.Sprintf("cp %d\n", i))
		if err := st.PutCheckpoint(ctx, cp); err != nil {
			t.Fatal(err)
		}
		if got, err := st.Checkpoint(ctx); err != nil || !bytes.Equal(got, cp) {
			t.Fatalf("Checkpoint = %q, %v; want %q", got, err, cp)
		}
	}
	if h, ok := st.(audit.CheckpointHistory); ok {
		all, err := h.Checkpoints(ctx)
		if err != nil || len(all) != 5 || string(all[0]) != "cp 0\n" || string(all[4]) != "cp 4\n" {
			t.Fatalf("Checkpoints = %q, %v", all, err)
		}
	}
}

func testCanceled(t *testing.T, st audit.Storage) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := st.AppendLeaves(ctx, 0, leaves(0, 1)); err == nil {
		t.Fatal("append with a canceled context succeeded")
	}
	if size, _ := st.Size(context.Background()); size != 0 {
		t.Fatal("append with a canceled context stored a leaf")
	}
}

func testConcurrent(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				size, err := st.Size(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				got, err := st.ReadLeaves(ctx, 0, size)
				if err != nil {
					t.Error(err)
					return
				}
				for i, l := range got {
					if !bytes.Equal(l, leaf(i)) {
						t.Errorf("leaf %d differs during concurrent appends", i)
						return
					}
				}
			}
		}()
	}
	for i := 0; i < 200; i += 4 {
		if err := st.AppendLeaves(ctx, uint64(i), leaves(i, 4)); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
}

func testWithLog(t *testing.T, st audit.Storage) {
	ctx := context.Background()
	skey, vkey, err := audit.KeyFromSeed("audittest.example/log", bytes.Repeat([]byte{3}, 32))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := audit.NewSigner(skey)
	verifier, _ := audit.NewVerifier(vkey)
	l, err := audit.Open(ctx, st, audit.Config{Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		e := audit.Entry{Time: time.Unix(int64(i), 0), Kind: audit.KindAdmin, Actor: "admin", Subject: fmt.Sprint(i)}
		if _, err := l.Append(ctx, e, e); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := audit.Fsck(ctx, st, verifier)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != 20 || rep.Checkpoint.Size != 20 {
		t.Fatalf("fsck report %+v", rep)
	}
	l2, err := audit.Open(ctx, st, audit.Config{Signer: signer, Verifier: verifier})
	if err != nil {
		t.Fatal(err)
	}
	if s, r := l2.Root(); s != 20 || !bytes.Equal(r, rep.Root) {
		t.Fatal("reopened log differs")
	}
}
