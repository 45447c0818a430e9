package audit

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/proof"
)

func TestLogProofsManySizes(t *testing.T) {
	ctx := context.Background()
	st := NewMemoryStorage()
	l, verifier := openTestLog(t, st)
	const n = 70
	var leaves [][]byte
	roots := [][]byte{refRoot(nil)}
	for i := range n {
		// Mixed batch sizes: 1, 2 or 3 entries per append.
		if len(leaves) >= n {
			break
		}
		k := min(1+i%3, n-len(leaves))
		first, err := l.Append(ctx, testEntries(len(leaves), k)...)
		if err != nil {
			t.Fatal(err)
		}
		if first != uint64(len(leaves)) {
			t.Fatalf("first index %d, want %d", first, len(leaves))
		}
		base := len(leaves)
		for j := range k {
			b, _ := testEntry(base + j).Encode()
			leaves = append(leaves, b)
		}
		for len(roots) <= len(leaves) {
			roots = append(roots, refRoot(leaves[:len(roots)]))
		}
		size, root := l.Root()
		if size != uint64(len(leaves)) || !bytes.Equal(root, roots[size]) {
			t.Fatalf("root after %d leaves differs from the reference", len(leaves))
		}
		cp, err := OpenCheckpoint(l.Checkpoint(), verifier)
		if err != nil || cp.Size != size || !bytes.Equal(cp.Hash, root) {
			t.Fatalf("checkpoint %+v, %v: want size %d", cp, err, size)
		}
	}
	for size := uint64(1); size <= n; size++ {
		r, err := l.RootAt(ctx, size)
		if err != nil || !bytes.Equal(r, roots[size]) {
			t.Fatalf("RootAt(%d) differs from the reference: %v", size, err)
		}
		for i := uint64(0); i < size; i++ {
			p, err := l.InclusionProof(ctx, i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(hasher, i, size, hasher.HashLeaf(leaves[i]), p, roots[size]); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
			if i == size/2 && len(p) > 0 {
				p[0][0] ^= 1
				if proof.VerifyInclusion(hasher, i, size, hasher.HashLeaf(leaves[i]), p, roots[size]) == nil {
					t.Fatalf("altered inclusion proof %d in %d verified", i, size)
				}
			}
		}
		for from := uint64(0); from <= size; from++ {
			p, err := l.ConsistencyProof(ctx, from, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(hasher, from, size, p, roots[from], roots[size]); err != nil {
				t.Fatalf("consistency %d -> %d: %v", from, size, err)
			}
		}
	}
	if _, err := l.InclusionProof(ctx, 3, n+1); err == nil {
		t.Fatal("proof for a size beyond the log")
	}
	if _, err := l.InclusionProof(ctx, 5, 5); err == nil {
		t.Fatal("inclusion proof for index == size")
	}
	if _, err := l.ConsistencyProof(ctx, 6, 5); err == nil {
		t.Fatal("consistency proof with from > to")
	}
	if _, err := l.RootAt(ctx, n+1); err == nil {
		t.Fatal("RootAt beyond the log")
	}
}

func TestLogEntryAndReopen(t *testing.T) {
	ctx := context.Background()
	st := NewMemoryStorage()
	l, _ := openTestLog(t, st)
	if l.Size() != 0 || l.Checkpoint() == nil {
		t.Fatal("a new log has size 0 and a signed checkpoint of the empty tree")
	}
	// A zero time is stamped from the injected clock.
	if _, err := l.Append(ctx, Entry{Kind: KindAdmin, Actor: "spiffe://tvd.test/admin/alice", Subject: "login"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, testEntries(1, 9)...); err != nil {
		t.Fatal(err)
	}
	e, err := l.Entry(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if want := time.Date(2026, 1, 1, 0, 0, 0, int(time.Millisecond), time.UTC); !e.Time.Equal(want) || e.Actor != "spiffe://tvd.test/admin/alice" {
		t.Fatalf("entry 0 = %+v", e)
	}
	e, err = l.Entry(ctx, 7)
	if err != nil || e.Subject != testEntry(7).Subject {
		t.Fatalf("entry 7 = %+v, %v", e, err)
	}
	if _, err := l.Entry(ctx, 10); err == nil {
		t.Fatal("entry past the end")
	}
	if _, err := l.Append(ctx, Entry{Kind: "BAD", Actor: "x", Time: time.Now()}); err == nil {
		t.Fatal("appended an invalid entry")
	}
	if l.Size() != 10 {
		t.Fatalf("size %d after a refused append", l.Size())
	}

	// Reopening the same storage gives the same tree and checkpoint.
	size, root := l.Root()
	cp := l.Checkpoint()
	l2, _ := openTestLog(t, st)
	size2, root2 := l2.Root()
	if size2 != size || !bytes.Equal(root, root2) || !bytes.Equal(l2.Checkpoint(), cp) {
		t.Fatal("reopened log differs")
	}

	// An entry altered in storage after Open is caught by Entry.
	st.SetLeaf(3, []byte(`{"v":1}`))
	if _, err := l2.Entry(ctx, 3); !isCorruptAt(err, 3) {
		t.Fatalf("Entry on altered leaf: %v", err)
	}
	// And Open refuses the altered storage.
	signer, verifier, _ := testKeys(t, testOrigin, 1)
	if _, err := Open(ctx, st, Config{Signer: signer, Verifier: verifier}); !errors.Is(err, ErrRootMismatch) {
		t.Fatalf("Open on altered storage: %v", err)
	}
}

func TestLogOpenRecoversLaggingCheckpoint(t *testing.T) {
	ctx := context.Background()
	st := NewMemoryStorage()
	l, verifier := openTestLog(t, st)
	if _, err := l.Append(ctx, testEntries(0, 5)...); err != nil {
		t.Fatal(err)
	}
	// Simulate a crash after storing leaves but before the checkpoint.
	var leaves [][]byte
	for i := range 3 {
		b, _ := testEntry(5 + i).Encode()
		leaves = append(leaves, b)
	}
	if err := st.AppendLeaves(ctx, 5, leaves); err != nil {
		t.Fatal(err)
	}
	l2, _ := openTestLog(t, st)
	cp, err := OpenCheckpoint(l2.Checkpoint(), verifier)
	if err != nil || cp.Size != 8 {
		t.Fatalf("checkpoint after recovery: %+v %v", cp, err)
	}
	if _, err := Fsck(ctx, st, verifier); err != nil {
		t.Fatal(err)
	}
}

func TestConfigValidate(t *testing.T) {
	s1, v1, _ := testKeys(t, testOrigin, 1)
	_, v2, _ := testKeys(t, testOrigin, 2)
	if err := (Config{Signer: s1, Verifier: v2}).Validate(); err == nil {
		t.Fatal("mismatched key pair accepted")
	}
	if err := (Config{Signer: s1}).Validate(); err == nil {
		t.Fatal("missing verifier accepted")
	}
	if err := (Config{Signer: s1, Verifier: v1}).Validate(); err != nil {
		t.Fatal(err)
	}
}

func isCorruptAt(err error, index uint64) bool {
	var ce *CorruptError
	return errors.As(err, &ce) && ce.Index <= index && index < max(ce.End, ce.Index+1)
}

func TestLogLargerTreeAndTileChecks(t *testing.T) {
	ctx := context.Background()
	st := NewMemoryStorage()
	l, _ := openTestLog(t, st)
	const n = 300
	if _, err := l.Append(ctx, testEntries(0, n)...); err != nil {
		t.Fatal(err)
	}
	leaves, _ := st.ReadLeaves(ctx, 0, n)
	for _, size := range []uint64{1, 15, 16, 17, 31, 32, 33, 64, 100, 255, 256, 257, n} {
		want := refRoot(leaves[:size])
		if r, err := l.RootAt(ctx, size); err != nil || !bytes.Equal(r, want) {
			t.Fatalf("RootAt(%d): %v", size, err)
		}
		for _, i := range []uint64{0, 1, size / 3, size / 2, size - 1} {
			if i >= size {
				continue
			}
			p, err := l.InclusionProof(ctx, i, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyInclusion(hasher, i, size, hasher.HashLeaf(leaves[i]), p, want); err != nil {
				t.Fatalf("inclusion %d in %d: %v", i, size, err)
			}
		}
		for _, from := range []uint64{0, 1, size / 2, size} {
			p, err := l.ConsistencyProof(ctx, from, size)
			if err != nil {
				t.Fatal(err)
			}
			if err := proof.VerifyConsistency(hasher, from, size, p, refRoot(leaves[:from]), want); err != nil {
				t.Fatalf("consistency %d -> %d: %v", from, size, err)
			}
		}
	}
	// A leaf altered in storage after Open: proofs that need its tile and
	// Entry report it rather than serve a wrong proof.
	forged, _ := testEntry(1000).Encode()
	st.SetLeaf(40, forged)
	if _, err := l.Entry(ctx, 40); !isCorruptAt(err, 40) {
		t.Fatalf("Entry(40): %v", err)
	}
	if _, err := l.InclusionProof(ctx, 41, n); !isCorruptAt(err, 40) {
		t.Fatalf("InclusionProof(41): %v", err)
	}
	if _, err := l.Entry(ctx, 299); err != nil {
		t.Fatalf("an untouched entry: %v", err)
	}
	// In the last, incomplete tile the root catches it.
	st.SetLeaf(298, forged)
	if _, err := l.Entry(ctx, 298); !isCorruptAt(err, 298) {
		t.Fatalf("Entry(298): %v", err)
	}
}
