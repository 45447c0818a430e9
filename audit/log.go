package audit

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// hasher is the RFC 6962 SHA-256 tree hasher used for every tree in tvd.
var hasher = rfc6962.DefaultHasher

var rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}

// readChunk is how many leaves are read from storage at once when the whole
// log is scanned.
const readChunk = 4096

// tileHeight is the lowest tree level kept in memory. Nodes below it are
// recomputed from the 2^tileHeight stored leaves of their tile.
const tileHeight = 4

// ErrCheckpoint wraps an error from storing the checkpoint after the leaves
// of an append were stored: the entries are in the log (the returned index
// is valid) and the next append stores a checkpoint that covers them.
var ErrCheckpoint = errors.New("audit: entries appended but checkpoint not stored")

// Config configures a Log.
type Config struct {
	// Signer signs a checkpoint after every append. Its name is the log's
	// origin. Required.
	Signer note.Signer
	// Verifier is the public key of Signer; the log checks the stored
	// checkpoint with it when it opens. Required.
	Verifier note.Verifier
	// Logger receives operational messages (not audit events). Default: discard.
	Logger *slog.Logger
	// Now stamps entries whose Time is zero. It is called from the
	// goroutines that append, so it must be safe for concurrent use.
	// Default: time.Now.
	Now func() time.Time
}

// Validate reports a missing or inconsistent field.
func (c Config) Validate() error {
	if c.Signer == nil || c.Verifier == nil {
		return errors.New("audit config: signer and verifier are required")
	}
	if c.Signer.Name() != c.Verifier.Name() || c.Signer.KeyHash() != c.Verifier.KeyHash() {
		return fmt.Errorf("audit config: signer %q and verifier %q are not one key pair", c.Signer.Name(), c.Verifier.Name())
	}
	return validOrigin(c.Signer.Name())
}

// Log is an append-only RFC 6962 Merkle log of encoded entries with a signed
// checkpoint after every append. It keeps the complete tree nodes from level
// tileHeight up in memory (about 4 bytes per leaf); a proof recomputes the
// few nodes below from one tile of 16 stored leaves, which also checks those
// leaves against the tree. A Log is safe for concurrent use; appends are
// serialised, reads run alongside them.
type Log struct {
	st       Storage
	signer   note.Signer
	verifier note.Verifier
	logger   *slog.Logger
	now      func() time.Time

	wmu sync.Mutex // serialises appends

	mu     sync.RWMutex // guards the fields below
	levels [][]byte     // levels[l], l >= tileHeight: hashes of the complete nodes at level l, 32 bytes each
	rng    *compact.Range
	root   []byte
	cp     []byte // latest signed checkpoint, covering the whole tree once stored
}

// Open loads the log held in st: it reads every leaf, rebuilds the tree,
// and checks the stored checkpoint's signature and root hash. If the
// checkpoint covers fewer leaves than are stored (a crash between storing
// leaves and checkpoint) it signs and stores a new one. A checkpoint for
// more leaves than are stored, or one whose root does not match, is
// reported as a *CorruptError: the log refuses to continue from a state it
// cannot vouch for. Open does not decode entries; run [Fsck] for that.
//
// Open cannot tell leaves left unsigned by a crash from leaves added to the
// storage by someone else while the log was closed: it signs both (and logs
// a warning with the count). Protect the storage like the signing key.
func Open(ctx context.Context, st Storage, cfg Config) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Log{
		st:       st,
		signer:   cfg.Signer,
		verifier: cfg.Verifier,
		logger:   cfg.Logger,
		now:      cfg.Now,
		rng:      rangeFactory.NewEmptyRange(0),
	}
	if l.logger == nil {
		l.logger = slog.New(slog.DiscardHandler)
	}
	if l.now == nil {
		l.now = time.Now
	}
	size, err := st.Size(ctx)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	for start := uint64(0); start < size; {
		n := min(size-start, readChunk)
		leaves, err := st.ReadLeaves(ctx, start, n)
		if err != nil {
			return nil, fmt.Errorf("open audit log: %w", err)
		}
		if uint64(len(leaves)) != n {
			return nil, fmt.Errorf("open audit log: storage returned %d leaves, expected %d", len(leaves), n)
		}
		for _, leaf := range leaves {
			if err := l.rng.Append(hasher.HashLeaf(leaf), l.visit); err != nil {
				return nil, fmt.Errorf("open audit log: %w", err)
			}
		}
		start += n
	}
	if size == 0 {
		l.root = hasher.EmptyRoot()
	} else if l.root, err = l.rng.GetRootHash(nil); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}

	signed, err := st.Checkpoint(ctx)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	if signed != nil {
		cp, err := OpenCheckpoint(signed, l.verifier)
		if err != nil {
			return nil, &CorruptError{Index: 0, End: size, Err: fmt.Errorf("stored checkpoint: %w", err)}
		}
		if cp.Size > size {
			return nil, &CorruptError{Index: size, End: cp.Size, Err: fmt.Errorf("checkpoint covers %d leaves but only %d are stored", cp.Size, size)}
		}
		root, err := l.rootAt(ctx, cp.Size)
		if err != nil {
			return nil, fmt.Errorf("open audit log: %w", err)
		}
		if string(cp.Hash) != string(root) {
			return nil, &CorruptError{Index: 0, End: cp.Size, Err: ErrRootMismatch}
		}
		if cp.Size == size {
			l.cp = signed
			return l, nil
		}
		l.logger.WarnContext(ctx, "audit checkpoint behind stored leaves, signing a new one",
			"checkpoint_size", cp.Size, "size", size)
	} else if size > 0 {
		l.logger.WarnContext(ctx, "audit log has leaves but no checkpoint, signing one", "size", size)
	}
	if err := l.checkpoint(ctx, size, l.root); err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	return l, nil
}

// visit records a complete node reported by the compact range.
func (l *Log) visit(id compact.NodeID, hash []byte) {
	if id.Level < tileHeight {
		return
	}
	for uint(len(l.levels)) <= id.Level {
		l.levels = append(l.levels, nil)
	}
	l.levels[id.Level] = append(l.levels[id.Level], hash...)
}

// memNode returns the hash of a complete node at level >= tileHeight; the
// caller holds mu.
func (l *Log) memNode(id compact.NodeID) ([]byte, bool) {
	if id.Level < tileHeight || id.Level >= uint(len(l.levels)) {
		return nil, false
	}
	lv := l.levels[id.Level]
	off := id.Index * sha256.Size
	if off+sha256.Size > uint64(len(lv)) || off/sha256.Size != id.Index {
		return nil, false
	}
	return lv[off : off+sha256.Size : off+sha256.Size], true
}

// nodes returns the hashes of complete nodes of the tree of the given size
// (size <= Size()). Nodes below tileHeight are recomputed from the stored
// leaves of their tile; every tile that is complete is checked against its
// node in memory, so a stored leaf altered after Open is reported.
func (l *Log) nodes(ctx context.Context, ids []compact.NodeID, size uint64) ([][]byte, error) {
	out := make([][]byte, len(ids))
	var low []int
	l.mu.RLock()
	cur := l.rng.End()
	if size > cur {
		l.mu.RUnlock()
		return nil, fmt.Errorf("tree size %d is above the log size %d", size, cur)
	}
	for i, id := range ids {
		if id.Level < tileHeight {
			low = append(low, i)
			continue
		}
		h, ok := l.memNode(id)
		if !ok {
			l.mu.RUnlock()
			return nil, fmt.Errorf("node %d/%d missing", id.Level, id.Index)
		}
		out[i] = append([]byte(nil), h...)
	}
	l.mu.RUnlock()
	tiles := make(map[uint64][][]byte) // tile index -> hashes per level within it
	for _, i := range low {
		id := ids[i]
		if _, end := id.Coverage(); end > size {
			return nil, fmt.Errorf("node %d/%d is not complete in the tree of size %d", id.Level, id.Index, size)
		}
		tile := id.Index >> (tileHeight - id.Level)
		t, ok := tiles[tile]
		if !ok {
			var err error
			if t, err = l.tile(ctx, tile, size); err != nil {
				return nil, err
			}
			tiles[tile] = t
		}
		j := id.Index - tile<<(tileHeight-id.Level)
		lv := t[id.Level]
		if (j+1)*sha256.Size > uint64(len(lv)) {
			return nil, fmt.Errorf("node %d/%d missing from its tile", id.Level, id.Index)
		}
		out[i] = append([]byte(nil), lv[j*sha256.Size:(j+1)*sha256.Size]...)
	}
	return out, nil
}

// tile reads the stored leaves of tile t that lie below size and returns the
// hashes of the complete nodes within it, per level. A complete tile must
// hash to its node in memory.
func (l *Log) tile(ctx context.Context, t, size uint64) ([][]byte, error) {
	start := t << tileHeight
	end := min(start+1<<tileHeight, size)
	leaves, err := l.st.ReadLeaves(ctx, start, end-start)
	if err != nil {
		return nil, fmt.Errorf("read tile %d: %w", t, err)
	}
	if uint64(len(leaves)) != end-start {
		return nil, fmt.Errorf("read tile %d: storage returned %d leaves, expected %d", t, len(leaves), end-start)
	}
	levels := make([][]byte, tileHeight+1)
	for _, leaf := range leaves {
		levels[0] = append(levels[0], hasher.HashLeaf(leaf)...)
	}
	for lv := 1; lv <= tileHeight; lv++ {
		below := levels[lv-1]
		for k := 0; k+2*sha256.Size <= len(below); k += 2 * sha256.Size {
			levels[lv] = append(levels[lv], hasher.HashChildren(below[k:k+sha256.Size], below[k+sha256.Size:k+2*sha256.Size])...)
		}
	}
	if len(levels[tileHeight]) == sha256.Size {
		l.mu.RLock()
		h, ok := l.memNode(compact.NewNodeID(tileHeight, t))
		l.mu.RUnlock()
		if !ok || string(h) != string(levels[tileHeight]) {
			return nil, &CorruptError{Index: start, End: end, Err: errors.New("stored leaves do not match the tree")}
		}
	}
	return levels, nil
}

// rootAt returns the root of the tree of the first size leaves.
func (l *Log) rootAt(ctx context.Context, size uint64) ([]byte, error) {
	if size == 0 {
		return hasher.EmptyRoot(), nil
	}
	hashes, err := l.nodes(ctx, compact.RangeNodes(0, size, nil), size)
	if err != nil {
		return nil, err
	}
	r, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return nil, err
	}
	return r.GetRootHash(nil)
}

// checkpoint signs and stores the checkpoint for size and root.
func (l *Log) checkpoint(ctx context.Context, size uint64, root []byte) error {
	signed, err := SignCheckpoint(Checkpoint{Origin: l.signer.Name(), Size: size, Hash: root}, l.signer)
	if err != nil {
		return err
	}
	if err := l.st.PutCheckpoint(ctx, signed); err != nil {
		return fmt.Errorf("store checkpoint: %w", err)
	}
	l.mu.Lock()
	if l.rng.End() == size {
		l.cp = signed
	}
	l.mu.Unlock()
	return nil
}

// Origin returns the log's origin, the name of its signing key.
func (l *Log) Origin() string { return l.signer.Name() }

// Size returns the number of entries in the log.
func (l *Log) Size() uint64 {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rng.End()
}

// Root returns the current size and root hash of the log.
func (l *Log) Root() (size uint64, root []byte) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return l.rng.End(), append([]byte(nil), l.root...)
}

// RootAt returns the root hash of the tree of the first size entries.
func (l *Log) RootAt(ctx context.Context, size uint64) ([]byte, error) {
	r, err := l.rootAt(ctx, size)
	if err != nil {
		return nil, fmt.Errorf("root at %d: %w", size, err)
	}
	return r, nil
}

// RangeHashes returns the compact range of the tree of the first size
// entries: the roots of its maximal perfect subtrees, left to right. With it
// a verifier can extend an old tree by new leaves (see VerifyExtension).
func (l *Log) RangeHashes(ctx context.Context, size uint64) ([][]byte, error) {
	out, err := l.nodes(ctx, compact.RangeNodes(0, size, nil), size)
	if err != nil {
		return nil, fmt.Errorf("range hashes at %d: %w", size, err)
	}
	return out, nil
}

// Checkpoint returns the latest signed checkpoint. It covers the whole log
// except while an append is between storing its leaves and its checkpoint,
// or after that checkpoint could not be stored (see ErrCheckpoint).
func (l *Log) Checkpoint() []byte {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return append([]byte(nil), l.cp...)
}

// Leaf returns the stored encoding of entry index, the bytes that are hashed
// into the tree and that [VerifyInclusion] takes.
func (l *Log) Leaf(ctx context.Context, index uint64) ([]byte, error) {
	if size := l.Size(); index >= size {
		return nil, fmt.Errorf("leaf %d: log size is %d", index, size)
	}
	leaves, err := l.st.ReadLeaves(ctx, index, 1)
	if err != nil {
		return nil, fmt.Errorf("leaf %d: %w", index, err)
	}
	if len(leaves) != 1 {
		return nil, fmt.Errorf("leaf %d: storage returned %d leaves", index, len(leaves))
	}
	return leaves[0], nil
}

// Leaves returns the stored encodings of entries [start, start+n), as an
// auditor needs them for VerifyExtension. n is capped at the log's size.
func (l *Log) Leaves(ctx context.Context, start, n uint64) ([][]byte, error) {
	size := l.Size()
	if start > size {
		return nil, fmt.Errorf("leaves from %d: log size is %d", start, size)
	}
	n = min(n, size-start)
	leaves, err := l.st.ReadLeaves(ctx, start, n)
	if err != nil {
		return nil, fmt.Errorf("leaves [%d, %d): %w", start, start+n, err)
	}
	return leaves, nil
}

// Entry returns entry index, decoded. The stored bytes are checked against
// the tree by an inclusion proof, so storage altered after Open is reported.
func (l *Log) Entry(ctx context.Context, index uint64) (Entry, error) {
	leaf, err := l.Leaf(ctx, index)
	if err != nil {
		return Entry{}, err
	}
	size, root := l.Root()
	p, err := l.InclusionProof(ctx, index, size)
	if err != nil {
		return Entry{}, fmt.Errorf("entry %d: %w", index, err)
	}
	if err := proof.VerifyInclusion(hasher, index, size, hasher.HashLeaf(leaf), p, root); err != nil {
		return Entry{}, &CorruptError{Index: index, End: index + 1, Err: fmt.Errorf("stored leaf does not match the tree: %w", err)}
	}
	e, err := DecodeEntry(leaf)
	if err != nil {
		return Entry{}, &CorruptError{Index: index, End: index + 1, Err: err}
	}
	return e, nil
}

// InclusionProof returns the proof that entry index is in the tree of the
// given size (index < size <= Size()).
func (l *Log) InclusionProof(ctx context.Context, index, size uint64) ([][]byte, error) {
	if index >= size {
		return nil, fmt.Errorf("inclusion proof: index %d not below size %d", index, size)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("inclusion proof: %w", err)
	}
	return l.buildProof(ctx, nodes, size)
}

// ConsistencyProof returns the proof that the tree of size from is a prefix
// of the tree of size to (from <= to <= Size()). It is empty if from is 0 or
// from equals to.
func (l *Log) ConsistencyProof(ctx context.Context, from, to uint64) ([][]byte, error) {
	if from > to {
		return nil, fmt.Errorf("consistency proof: from %d is above to %d", from, to)
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("consistency proof: %w", err)
	}
	return l.buildProof(ctx, nodes, to)
}

func (l *Log) buildProof(ctx context.Context, nodes proof.Nodes, size uint64) ([][]byte, error) {
	hashes, err := l.nodes(ctx, nodes.IDs, size)
	if err != nil {
		return nil, fmt.Errorf("proof for size %d: %w", size, err)
	}
	p, err := nodes.Rehash(hashes, hasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("proof for size %d: %w", size, err)
	}
	return p, nil
}

// prepared is an encoded entry with its leaf hash, computed before the
// append lock is taken so that callers encode and hash in parallel.
type prepared struct {
	leaves [][]byte
	hashes [][]byte
}

func (l *Log) prepare(entries []Entry) (prepared, error) {
	p := prepared{leaves: make([][]byte, len(entries)), hashes: make([][]byte, len(entries))}
	for i, e := range entries {
		if e.Time.IsZero() {
			e.Time = l.now()
		}
		b, err := e.Encode()
		if err != nil {
			return prepared{}, fmt.Errorf("entry %d: %w", i, err)
		}
		p.leaves[i] = b
		p.hashes[i] = hasher.HashLeaf(b)
	}
	return p, nil
}

// Append adds entries to the log as one batch, stores them durably, then
// signs and stores a checkpoint for the new tree. It returns the index of the
// first entry. Entries with a zero Time are stamped with the log's clock.
// An error wrapping ErrCheckpoint means the entries were stored; any other
// error means none were.
func (l *Log) Append(ctx context.Context, entries ...Entry) (uint64, error) {
	p, err := l.prepare(entries)
	if err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	return l.appendPrepared(ctx, p)
}

func (l *Log) appendPrepared(ctx context.Context, p prepared) (uint64, error) {
	if len(p.leaves) == 0 {
		return l.Size(), nil
	}
	l.wmu.Lock()
	defer l.wmu.Unlock()
	start := l.Size()
	if err := l.st.AppendLeaves(ctx, start, p.leaves); err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	l.mu.Lock()
	for _, h := range p.hashes {
		if err := l.rng.Append(h, l.visit); err != nil {
			l.mu.Unlock()
			panic(fmt.Sprintf("audit: append to compact range: %v", err)) // internal invariant
		}
	}
	size := l.rng.End()
	root, err := l.rng.GetRootHash(nil)
	if err != nil {
		l.mu.Unlock()
		panic(fmt.Sprintf("audit: root hash: %v", err)) // internal invariant
	}
	l.root = root
	l.mu.Unlock()
	if err := l.checkpoint(ctx, size, root); err != nil {
		return start, fmt.Errorf("%w: %w", ErrCheckpoint, err)
	}
	return start, nil
}
