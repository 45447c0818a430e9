package audit

import (
	"context"
	"errors"
	"testing"
)

func TestVerifyConsistencyAndFork(t *testing.T) {
	ctx := context.Background()
	a, verifier := openTestLog(t, NewMemoryStorage())
	b, _ := openTestLog(t, NewMemoryStorage()) // same key: an operator running two forks
	for _, l := range []*Log{a, b} {
		if _, err := l.Append(ctx, testEntries(0, 5)...); err != nil {
			t.Fatal(err)
		}
	}
	cp5 := a.Checkpoint()
	if _, err := a.Append(ctx, testEntry(100)); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Append(ctx, testEntry(200)); err != nil {
		t.Fatal(err)
	}
	cpA6, cpB6 := a.Checkpoint(), b.Checkpoint()
	if _, err := b.Append(ctx, testEntries(201, 4)...); err != nil {
		t.Fatal(err)
	}
	cpB10 := b.Checkpoint()

	// Honest growth verifies, on both branches, from the common prefix.
	for _, tc := range []struct {
		l        *Log
		newCP    []byte
		from, to uint64
	}{{a, cpA6, 5, 6}, {b, cpB10, 5, 10}, {b, cpB10, 6, 10}} {
		old := cp5
		if tc.from == 6 {
			old = cpB6
		}
		p, err := tc.l.ConsistencyProof(ctx, tc.from, tc.to)
		if err != nil {
			t.Fatal(err)
		}
		o, n, err := VerifyConsistency(verifier, old, tc.newCP, p)
		if err != nil {
			t.Fatalf("%d -> %d: %v", tc.from, tc.to, err)
		}
		if o.Size != tc.from || n.Size != tc.to {
			t.Fatalf("sizes %d, %d", o.Size, n.Size)
		}
	}
	// Same checkpoint twice: consistent with an empty proof.
	if _, _, err := VerifyConsistency(verifier, cpB10, cpB10, nil); err != nil {
		t.Fatal(err)
	}

	var fe *ForkError
	// Two different roots signed for size 6.
	if _, _, err := VerifyConsistency(verifier, cpA6, cpB6, nil); !errors.As(err, &fe) || fe.Old.Size != 6 || fe.New.Size != 6 {
		t.Fatalf("same-size fork: %v", err)
	}
	// A user who kept A's checkpoint at 6 is shown B's log at 10: B can give
	// no proof that verifies.
	p, _ := b.ConsistencyProof(ctx, 6, 10)
	if _, _, err := VerifyConsistency(verifier, cpA6, cpB10, p); !errors.As(err, &fe) {
		t.Fatalf("diverged log: %v", err)
	}
	// A shrinking log.
	if _, _, err := VerifyConsistency(verifier, cpB10, cp5, nil); !errors.As(err, &fe) {
		t.Fatalf("shrinking log: %v", err)
	}
	// A wrong proof for honest checkpoints is still refused.
	p, _ = b.ConsistencyProof(ctx, 5, 10)
	p[len(p)-1][0] ^= 1
	if _, _, err := VerifyConsistency(verifier, cp5, cpB10, p); err == nil {
		t.Fatal("altered consistency proof verified")
	}
	// Checkpoints signed by another key are refused before any proof check.
	_, other, _ := testKeys(t, testOrigin, 9)
	if _, _, err := VerifyConsistency(other, cp5, cpB10, nil); err == nil || errors.As(err, &fe) {
		t.Fatalf("wrong key: %v", err)
	}
}

func TestVerifyInclusion(t *testing.T) {
	ctx := context.Background()
	l, verifier := openTestLog(t, NewMemoryStorage())
	if _, err := l.Append(ctx, testEntries(0, 13)...); err != nil {
		t.Fatal(err)
	}
	cp := l.Checkpoint()
	for i := uint64(0); i < 13; i++ {
		leaf, err := l.Leaf(ctx, i)
		if err != nil {
			t.Fatal(err)
		}
		p, err := l.InclusionProof(ctx, i, 13)
		if err != nil {
			t.Fatal(err)
		}
		c, e, err := VerifyInclusion(verifier, cp, leaf, i, p)
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		if c.Size != 13 || e.Subject != testEntry(int(i)).Subject {
			t.Fatalf("entry %d: got %+v in %+v", i, e, c)
		}
		// The same proof does not prove another entry or another index.
		other, _ := testEntry(int(i) + 1).Encode()
		if _, _, err := VerifyInclusion(verifier, cp, other, i, p); err == nil {
			t.Fatalf("entry %d: proof accepted for another entry", i)
		}
		if _, _, err := VerifyInclusion(verifier, cp, leaf, (i+1)%13, p); err == nil {
			t.Fatalf("entry %d: proof accepted at another index", i)
		}
	}
	leaf, _ := l.Leaf(ctx, 0)
	p, _ := l.InclusionProof(ctx, 0, 13)
	if _, _, err := VerifyInclusion(verifier, cp, leaf, 13, p); err == nil {
		t.Fatal("index beyond the checkpoint accepted")
	}
	if _, _, err := VerifyInclusion(verifier, cp, []byte(`{"v":1}`), 0, p); err == nil {
		t.Fatal("undecodable entry accepted")
	}
}

// TestFsckMemoryTamper simulates an operator who rewrites leaves with valid
// entries: only the signed checkpoints reveal it.
func TestFsckMemoryTamper(t *testing.T) {
	ctx := context.Background()
	build := func() (*MemoryStorage, [][]byte) {
		st := NewMemoryStorage()
		l, _ := openTestLog(t, st)
		for i := range 20 {
			if _, err := l.Append(ctx, testEntries(2*i, 2)...); err != nil {
				t.Fatal(err)
			}
		}
		leaves, err := st.ReadLeaves(ctx, 0, 40)
		if err != nil {
			t.Fatal(err)
		}
		return st, leaves
	}
	_, verifier, _ := testKeys(t, testOrigin, 1)
	st, leaves := build()
	rep, err := Fsck(ctx, st, verifier)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != 40 || rep.Checkpoints != 21 || rep.Checkpoint.Size != 40 {
		t.Fatalf("report %+v", rep)
	}

	for _, pos := range []uint64{0, 1, 17, 39} {
		// Altered: a different but valid entry.
		st, _ = build()
		forged, _ := testEntry(1000).Encode()
		st.SetLeaf(pos, forged)
		if _, err := Fsck(ctx, st, verifier); !isCorruptAt(err, pos) || !errors.Is(err, ErrRootMismatch) {
			t.Errorf("altered %d: %v", pos, err)
		}
		// Altered to garbage: caught exactly by decoding.
		st, _ = build()
		st.SetLeaf(pos, []byte("garbage"))
		var ce *CorruptError
		if _, err := Fsck(ctx, st, verifier); !errors.As(err, &ce) || ce.Index != pos || ce.End != pos+1 {
			t.Errorf("garbage %d: %v", pos, err)
		}
		// Reordered with the next leaf.
		if pos < 39 {
			st, leaves = build()
			st.SetLeaf(pos, leaves[pos+1])
			st.SetLeaf(pos+1, leaves[pos])
			if _, err := Fsck(ctx, st, verifier); !isCorruptAt(err, pos) {
				t.Errorf("swapped %d: %v", pos, err)
			}
		}
		// Removed: the leaves after it shift down.
		st, leaves = build()
		cps, _ := st.Checkpoints(ctx)
		cut := NewMemoryStorage()
		rest := append(append([][]byte{}, leaves[:pos]...), leaves[pos+1:]...)
		if err := cut.AppendLeaves(ctx, 0, rest); err != nil {
			t.Fatal(err)
		}
		for _, c := range cps {
			cut.PutCheckpoint(ctx, c)
		}
		if _, err := Fsck(ctx, cut, verifier); !isCorruptAt(err, pos) {
			t.Errorf("removed %d: %v", pos, err)
		}
	}

	// A log without checkpoints, or whose checkpoint is signed by another key.
	if _, err := Fsck(ctx, NewMemoryStorage(), verifier); err == nil {
		t.Fatal("fsck accepted a log without checkpoint")
	}
	st, _ = build()
	_, other, _ := testKeys(t, testOrigin, 5)
	if _, err := Fsck(ctx, st, other); err == nil {
		t.Fatal("fsck accepted checkpoints of another key")
	}
}

func TestVerifyExtension(t *testing.T) {
	ctx := context.Background()
	l, verifier := openTestLog(t, NewMemoryStorage())
	b, _ := openTestLog(t, NewMemoryStorage())
	var cps [][]byte
	sizes := []uint64{0}
	cps = append(cps, l.Checkpoint())
	for _, n := range []int{1, 4, 2, 9} {
		if _, err := l.Append(ctx, testEntries(int(l.Size()), n)...); err != nil {
			t.Fatal(err)
		}
		cps = append(cps, l.Checkpoint())
		sizes = append(sizes, l.Size())
	}
	for i := range cps {
		for j := i; j < len(cps); j++ {
			rng, err := l.RangeHashes(ctx, sizes[i])
			if err != nil {
				t.Fatal(err)
			}
			leaves, err := l.Leaves(ctx, sizes[i], sizes[j]-sizes[i])
			if err != nil {
				t.Fatal(err)
			}
			_, _, entries, err := VerifyExtension(verifier, cps[i], cps[j], rng, leaves)
			if err != nil {
				t.Fatalf("%d -> %d: %v", sizes[i], sizes[j], err)
			}
			if uint64(len(entries)) != sizes[j]-sizes[i] {
				t.Fatalf("%d entries", len(entries))
			}
			for k, e := range entries {
				if e.Subject != testEntry(int(sizes[i])+k).Subject {
					t.Fatalf("entry %d differs", int(sizes[i])+k)
				}
			}
		}
	}
	rng, _ := l.RangeHashes(ctx, 5)
	leaves, _ := l.Leaves(ctx, 5, 11)
	// One entry altered, one dropped, one added, or the order changed.
	forged, _ := testEntry(999).Encode()
	cases := map[string][][]byte{
		"altered":   append(append([][]byte{}, leaves[:3]...), append([][]byte{forged}, leaves[4:]...)...),
		"reordered": append(append([][]byte{}, leaves[1], leaves[0]), leaves[2:]...),
	}
	var fe *ForkError
	for name, ls := range cases {
		if _, _, _, err := VerifyExtension(verifier, cps[2], cps[4], rng, ls); !errors.As(err, &fe) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, _, _, err := VerifyExtension(verifier, cps[2], cps[4], rng, leaves[1:]); err == nil {
		t.Error("a missing entry was accepted")
	}
	if _, _, _, err := VerifyExtension(verifier, cps[2], cps[4], rng, append(leaves, forged)); err == nil {
		t.Error("an extra entry was accepted")
	}
	// A range that is not the old tree's.
	bad, _ := l.RangeHashes(ctx, 5)
	bad[0] = append([]byte(nil), bad[0]...)
	bad[0][0] ^= 1
	if _, _, _, err := VerifyExtension(verifier, cps[2], cps[4], bad, leaves); !errors.Is(err, ErrRootMismatch) {
		t.Errorf("bad old range: %v", err)
	}
	// A fork: b signs another history with the same key.
	if _, err := b.Append(ctx, testEntries(0, 5)...); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Append(ctx, testEntries(500, 11)...); err != nil {
		t.Fatal(err)
	}
	bLeaves, _ := b.Leaves(ctx, 5, 11)
	if _, _, _, err := VerifyExtension(verifier, cps[2], b.Checkpoint(), rng, bLeaves); err != nil {
		t.Fatalf("b's own extension of the shared prefix: %v", err)
	}
	if _, _, _, err := VerifyExtension(verifier, cps[2], b.Checkpoint(), rng, leaves); !errors.As(err, &fe) {
		t.Errorf("forked checkpoint with the honest entries: %v", err)
	}
}

// FuzzVerifyProofs feeds arbitrary proofs, indices and checkpoints to the
// offline verifiers: they must never panic, and a proof that passes for the
// real checkpoints must be the real one.
func FuzzVerifyProofs(f *testing.F) {
	ctx := context.Background()
	l, verifier := openTestLog(f, NewMemoryStorage())
	if _, err := l.Append(ctx, testEntries(0, 7)...); err != nil {
		f.Fatal(err)
	}
	cp7 := l.Checkpoint()
	if _, err := l.Append(ctx, testEntries(7, 13)...); err != nil {
		f.Fatal(err)
	}
	cp20 := l.Checkpoint()
	join := func(p [][]byte) []byte {
		var b []byte
		for _, h := range p {
			b = append(b, h...)
		}
		return b
	}
	incl, _ := l.InclusionProof(ctx, 5, 20)
	cons, _ := l.ConsistencyProof(ctx, 7, 20)
	f.Add(join(incl), uint64(5), join(cons), cp7, cp20)
	f.Add([]byte{}, uint64(0), []byte{}, cp20, cp7)
	f.Add(join(incl)[:40], uint64(1<<63), join(cons)[3:], []byte("x"), cp20)
	split := func(b []byte) [][]byte {
		var p [][]byte
		for len(b) >= 32 {
			p = append(p, b[:32])
			b = b[32:]
		}
		if len(b) > 0 {
			p = append(p, b)
		}
		return p
	}
	leaf5, _ := l.Leaf(ctx, 5)
	f.Fuzz(func(t *testing.T, inclBytes []byte, index uint64, consBytes []byte, oldCP, newCP []byte) {
		ip, cpr := split(inclBytes), split(consBytes)
		if _, _, err := VerifyInclusion(verifier, newCP, leaf5, index, ip); err == nil {
			if index != 5 || string(join(ip)) != string(join(incl)) || string(newCP) != string(cp20) {
				t.Fatalf("accepted inclusion of leaf 5 at %d with another proof", index)
			}
		}
		if o, n, err := VerifyConsistency(verifier, oldCP, newCP, cpr); err == nil && o.Size != n.Size && o.Size > 0 {
			real, _ := l.ConsistencyProof(ctx, o.Size, n.Size)
			if string(join(cpr)) != string(join(real)) {
				t.Fatalf("accepted a consistency proof %d -> %d that the log did not make", o.Size, n.Size)
			}
		}
		_, _, _, _ = VerifyExtension(verifier, oldCP, newCP, ip, cpr)
	})
}
