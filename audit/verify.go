package audit

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// ForkError is proof that the log operator signed two views of the log that
// cannot both be true: two different roots for one size, a newer checkpoint
// smaller than an older one, or a consistency proof that fails. Old and New
// are the two signed checkpoints; keep them as evidence.
type ForkError struct {
	Old, New Checkpoint
	Err      error
}

func (e *ForkError) Error() string {
	return fmt.Sprintf("audit: log fork between checkpoints of size %d and %d: %v", e.Old.Size, e.New.Size, e.Err)
}

func (e *ForkError) Unwrap() error { return e.Err }

// VerifyConsistency checks, without trusting the log operator, that the log
// whose checkpoint the user kept (oldSigned) grew append-only into the log of
// newSigned: both signatures verify with v, both have v's name as origin, the
// new size is not below the old one, equal sizes have equal roots, and proof
// is a valid RFC 6962 consistency proof between the two roots. On success it
// returns both parsed checkpoints; an inconsistency is a *ForkError.
//
// It does NOT check: that v is the log's real key (obtain it out of band);
// that newSigned is recent (checkpoints carry no time, so a stale but
// consistent checkpoint passes); that other parties were shown the same
// checkpoints (split view needs checkpoints compared across verifiers or
// witnesses); anything about the entries themselves (use VerifyInclusion or
// Fsck); nor extension lines, which are ignored.
func VerifyConsistency(v note.Verifier, oldSigned, newSigned []byte, consistency [][]byte) (oldCP, newCP Checkpoint, err error) {
	oldCP, err = OpenCheckpoint(oldSigned, v)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, fmt.Errorf("verify consistency: old: %w", err)
	}
	newCP, err = OpenCheckpoint(newSigned, v)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, fmt.Errorf("verify consistency: new: %w", err)
	}
	if newCP.Size < oldCP.Size {
		return oldCP, newCP, &ForkError{Old: oldCP, New: newCP, Err: errors.New("new checkpoint is smaller than the old one")}
	}
	if newCP.Size == oldCP.Size && string(newCP.Hash) != string(oldCP.Hash) {
		return oldCP, newCP, &ForkError{Old: oldCP, New: newCP, Err: errors.New("two different roots signed for the same size")}
	}
	if err := proof.VerifyConsistency(hasher, oldCP.Size, newCP.Size, consistency, oldCP.Hash, newCP.Hash); err != nil {
		return oldCP, newCP, &ForkError{Old: oldCP, New: newCP, Err: fmt.Errorf("consistency proof: %w", err)}
	}
	return oldCP, newCP, nil
}

// VerifyInclusion checks that leaf (the encoded entry, as returned by
// Log.Leaf) is entry index of the log whose signed checkpoint is given: the
// checkpoint's signature verifies with v and the inclusion proof leads from
// the leaf's hash to the checkpoint's root. It returns the checkpoint and the
// decoded entry.
//
// It does NOT check: that v is the log's real key; that the checkpoint is
// recent or was shown to others (pair it with VerifyConsistency against a
// checkpoint you kept); that the entry is true (the log proves only that the
// operator recorded it, not that the act happened as described); nor that
// no later entry contradicts it.
func VerifyInclusion(v note.Verifier, signed []byte, leaf []byte, index uint64, inclusion [][]byte) (Checkpoint, Entry, error) {
	cp, err := OpenCheckpoint(signed, v)
	if err != nil {
		return Checkpoint{}, Entry{}, fmt.Errorf("verify inclusion: %w", err)
	}
	if index >= cp.Size {
		return cp, Entry{}, fmt.Errorf("verify inclusion: index %d is not below the checkpoint size %d", index, cp.Size)
	}
	e, err := DecodeEntry(leaf)
	if err != nil {
		return cp, Entry{}, fmt.Errorf("verify inclusion: %w", err)
	}
	if err := proof.VerifyInclusion(hasher, index, cp.Size, hasher.HashLeaf(leaf), inclusion, cp.Hash); err != nil {
		return cp, Entry{}, fmt.Errorf("verify inclusion: %w", err)
	}
	return cp, e, nil
}

// FsckReport summarises a successful Fsck.
type FsckReport struct {
	Size        uint64     // leaves read and decoded
	Root        []byte     // root of the whole stored tree
	Checkpoint  Checkpoint // the latest stored checkpoint
	Checkpoints int        // checkpoints verified (history included)
}

// Fsck checks a stored log from scratch: it reads and strictly decodes every
// leaf, recomputes the tree, and checks the latest stored checkpoint (and,
// when st implements CheckpointHistory, every earlier one) for a valid
// signature by v, a size within the stored leaves and sizes that never
// shrink, and a root equal to the recomputed root at its size. Damage is
// reported as a *CorruptError with the first bad index: exact for a leaf that
// fails the storage's own integrity check or does not decode; for a root
// mismatch, the range between the last checkpoint that matched and the
// first that does not. A log with leaves beyond the latest checkpoint is
// accepted (a crash between the two writes leaves it so) and reported in
// FsckReport.Size.
//
// It does NOT check: that v is the right key; that the stored checkpoint is
// the newest one ever published (an operator can truncate the log and its
// checkpoints together: only a checkpoint kept elsewhere, checked with
// VerifyConsistency, reveals that); that leaves after the latest checkpoint
// are authentic (no signature covers them yet); nor that the entries are
// true or complete.
func Fsck(ctx context.Context, st Storage, v note.Verifier) (FsckReport, error) {
	latest, err := st.Checkpoint(ctx)
	if err != nil {
		return FsckReport{}, fmt.Errorf("fsck: %w", err)
	}
	if latest == nil {
		return FsckReport{}, errors.New("fsck: the log has no checkpoint")
	}
	signed := [][]byte{latest}
	if h, ok := st.(CheckpointHistory); ok {
		all, err := h.Checkpoints(ctx)
		if err != nil {
			return FsckReport{}, fmt.Errorf("fsck: %w", err)
		}
		if len(all) > 0 && string(all[len(all)-1]) != string(latest) {
			return FsckReport{}, errors.New("fsck: the checkpoint history does not end with the latest checkpoint")
		}
		if len(all) > 0 {
			signed = all
		}
	}
	size, err := st.Size(ctx)
	if err != nil {
		return FsckReport{}, fmt.Errorf("fsck: %w", err)
	}
	cps := make([]Checkpoint, len(signed))
	for i, s := range signed {
		cp, err := OpenCheckpoint(s, v)
		if err != nil {
			return FsckReport{}, &CorruptError{Index: 0, End: size, Err: fmt.Errorf("checkpoint %d of %d: %w", i+1, len(signed), err)}
		}
		if i > 0 && cp.Size < cps[i-1].Size {
			return FsckReport{}, &CorruptError{Index: cp.Size, End: cps[i-1].Size, Err: fmt.Errorf("checkpoint %d shrinks the log from %d to %d leaves", i+1, cps[i-1].Size, cp.Size)}
		}
		cps[i] = cp
	}
	last := cps[len(cps)-1]
	// Checkpoints sorted by size (they already are) with duplicates of one
	// size allowed; each is compared when the scan reaches its size.
	sort.SliceStable(cps, func(i, j int) bool { return cps[i].Size < cps[j].Size })

	rng := rangeFactory.NewEmptyRange(0)
	next := 0 // next checkpoint to compare
	good := uint64(0)
	check := func() error {
		for next < len(cps) && cps[next].Size == rng.End() {
			root := hasher.EmptyRoot()
			if rng.End() > 0 {
				r, err := rng.GetRootHash(nil)
				if err != nil {
					return fmt.Errorf("fsck: %w", err)
				}
				root = r
			}
			if string(root) != string(cps[next].Hash) {
				return &CorruptError{Index: good, End: max(cps[next].Size, good+1), Err: fmt.Errorf("checkpoint of size %d: %w", cps[next].Size, ErrRootMismatch)}
			}
			good = cps[next].Size
			next++
		}
		return nil
	}
	if err := check(); err != nil {
		return FsckReport{}, err
	}
	for start := uint64(0); start < size; {
		n := min(size-start, readChunk)
		leaves, err := st.ReadLeaves(ctx, start, n)
		if err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				return FsckReport{}, ce
			}
			return FsckReport{}, fmt.Errorf("fsck: %w", err)
		}
		if uint64(len(leaves)) != n {
			return FsckReport{}, fmt.Errorf("fsck: storage returned %d leaves, expected %d", len(leaves), n)
		}
		for i, leaf := range leaves {
			idx := start + uint64(i)
			if _, err := DecodeEntry(leaf); err != nil {
				return FsckReport{}, &CorruptError{Index: idx, End: idx + 1, Err: err}
			}
			if err := rng.Append(hasher.HashLeaf(leaf), nil); err != nil {
				return FsckReport{}, fmt.Errorf("fsck: %w", err)
			}
			if err := check(); err != nil {
				return FsckReport{}, err
			}
		}
		start += n
	}
	if last.Size > size {
		// Checked after the scan so that a removed leaf is located by the
		// older checkpoints rather than reported only as a short log.
		return FsckReport{}, &CorruptError{Index: good, End: last.Size, Err: fmt.Errorf("checkpoint covers %d leaves but only %d are stored", last.Size, size)}
	}
	root := hasher.EmptyRoot()
	if size > 0 {
		if root, err = rng.GetRootHash(nil); err != nil {
			return FsckReport{}, fmt.Errorf("fsck: %w", err)
		}
	}
	return FsckReport{Size: size, Root: root, Checkpoint: last, Checkpoints: len(cps)}, nil
}

// VerifyExtension checks, without trusting the log operator, that the log of
// oldSigned grew into the log of newSigned by appending exactly leaves, and
// returns the decoded new entries: both checkpoints verify with v, oldRange
// (from Log.RangeHashes at the old size) hashes to the old root, and appending
// the leaves' hashes to it gives the new size and root. An auditor who kept
// the old checkpoint so sees every entry added since, and that nothing else
// changed. A mismatch of the roots is a *ForkError; a leaf that does not
// decode is reported with its index.
//
// It does NOT check: that v is the log's real key; that newSigned is recent
// or was shown to others (split view); nor that the entries are true.
func VerifyExtension(v note.Verifier, oldSigned, newSigned []byte, oldRange [][]byte, leaves [][]byte) (oldCP, newCP Checkpoint, entries []Entry, err error) {
	oldCP, err = OpenCheckpoint(oldSigned, v)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, nil, fmt.Errorf("verify extension: old: %w", err)
	}
	newCP, err = OpenCheckpoint(newSigned, v)
	if err != nil {
		return Checkpoint{}, Checkpoint{}, nil, fmt.Errorf("verify extension: new: %w", err)
	}
	if newCP.Size < oldCP.Size || newCP.Size-oldCP.Size != uint64(len(leaves)) {
		return oldCP, newCP, nil, fmt.Errorf("verify extension: %d leaves given, expected %d between sizes %d and %d",
			len(leaves), int64(newCP.Size)-int64(oldCP.Size), oldCP.Size, newCP.Size)
	}
	for i, h := range oldRange {
		if len(h) != hasher.Size() {
			return oldCP, newCP, nil, fmt.Errorf("verify extension: old range hash %d has %d bytes, expected %d", i, len(h), hasher.Size())
		}
	}
	// The compact range appends into its slice: give it a copy.
	rng, err := rangeFactory.NewRange(0, oldCP.Size, append([][]byte(nil), oldRange...))
	if err != nil {
		return oldCP, newCP, nil, fmt.Errorf("verify extension: old range: %w", err)
	}
	rootOf := func() []byte {
		if rng.End() == 0 {
			return hasher.EmptyRoot()
		}
		r, _ := rng.GetRootHash(nil)
		return r
	}
	if string(rootOf()) != string(oldCP.Hash) {
		return oldCP, newCP, nil, fmt.Errorf("verify extension: old range does not hash to the old root: %w", ErrRootMismatch)
	}
	entries = make([]Entry, len(leaves))
	for i, leaf := range leaves {
		e, err := DecodeEntry(leaf)
		if err != nil {
			return oldCP, newCP, nil, fmt.Errorf("verify extension: entry %d: %w", oldCP.Size+uint64(i), err)
		}
		entries[i] = e
		if err := rng.Append(hasher.HashLeaf(leaf), nil); err != nil {
			return oldCP, newCP, nil, fmt.Errorf("verify extension: %w", err)
		}
	}
	if string(rootOf()) != string(newCP.Hash) {
		return oldCP, newCP, nil, &ForkError{Old: oldCP, New: newCP, Err: errors.New("the given entries do not extend the old tree to the new root")}
	}
	return oldCP, newCP, entries, nil
}
