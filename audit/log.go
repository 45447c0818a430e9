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
// checkpoint after every append. It keeps every complete tree node in memory
// (64 bytes per leaf) so that proofs need no storage reads. A Log is safe for
// concurrent use; appends are serialised, reads run alongside them.
type Log struct {
	st       Storage
	signer   note.Signer
	verifier note.Verifier
	logger   *slog.Logger
	now      func() time.Time

	wmu sync.Mutex // serialises appends

	mu     sync.RWMutex // guards the fields below
	levels [][]byte     // levels[l]: hashes of the complete nodes at level l, 32 bytes each
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
	l.root = l.rootAt(size)

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
		if string(cp.Hash) != string(l.rootAt(cp.Size)) {
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
	for uint(len(l.levels)) <= id.Level {
		l.levels = append(l.levels, nil)
	}
	l.levels[id.Level] = append(l.levels[id.Level], hash...)
}

// node returns the hash of a complete node; the caller holds mu.
func (l *Log) node(id compact.NodeID) ([]byte, bool) {
	if id.Level >= uint(len(l.levels)) {
		return nil, false
	}
	lv := l.levels[id.Level]
	off := id.Index * sha256.Size
	if off+sha256.Size > uint64(len(lv)) || off/sha256.Size != id.Index {
		return nil, false
	}
	return lv[off : off+sha256.Size : off+sha256.Size], true
}

// rootAt returns the root of the tree of the first size leaves; size must
// not exceed the current size. The caller holds mu or is the only user.
func (l *Log) rootAt(size uint64) []byte {
	if size == 0 {
		return hasher.EmptyRoot()
	}
	ids := compact.RangeNodes(0, size, nil)
	hashes := make([][]byte, len(ids))
	for i, id := range ids {
		h, ok := l.node(id)
		if !ok {
			panic(fmt.Sprintf("audit: node %v missing for size %d", id, size)) // internal invariant
		}
		hashes[i] = h
	}
	r, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		panic(fmt.Sprintf("audit: compact range for size %d: %v", size, err)) // internal invariant
	}
	root, err := r.GetRootHash(nil)
	if err != nil {
		panic(fmt.Sprintf("audit: root for size %d: %v", size, err)) // internal invariant
	}
	return root
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
func (l *Log) RootAt(size uint64) ([]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if size > l.rng.End() {
		return nil, fmt.Errorf("root at %d: log size is %d", size, l.rng.End())
	}
	return l.rootAt(size), nil
}

// RangeHashes returns the compact range of the tree of the first size
// entries: the roots of its maximal perfect subtrees, left to right. With it
// a verifier can extend an old tree by new leaves (see VerifyExtension).
func (l *Log) RangeHashes(size uint64) ([][]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if size > l.rng.End() {
		return nil, fmt.Errorf("range hashes at %d: log size is %d", size, l.rng.End())
	}
	ids := compact.RangeNodes(0, size, nil)
	out := make([][]byte, len(ids))
	for i, id := range ids {
		h, ok := l.node(id)
		if !ok {
			return nil, fmt.Errorf("range hashes at %d: node %d/%d missing", size, id.Level, id.Index)
		}
		out[i] = append([]byte(nil), h...)
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
// the leaf hash in the tree, so storage altered after Open is reported.
func (l *Log) Entry(ctx context.Context, index uint64) (Entry, error) {
	leaf, err := l.Leaf(ctx, index)
	if err != nil {
		return Entry{}, err
	}
	l.mu.RLock()
	h, ok := l.node(compact.NewNodeID(0, index))
	l.mu.RUnlock()
	if !ok || string(h) != string(hasher.HashLeaf(leaf)) {
		return Entry{}, &CorruptError{Index: index, End: index + 1, Err: errors.New("stored leaf does not match its hash in the tree")}
	}
	e, err := DecodeEntry(leaf)
	if err != nil {
		return Entry{}, &CorruptError{Index: index, End: index + 1, Err: err}
	}
	return e, nil
}

// InclusionProof returns the proof that entry index is in the tree of the
// given size (index < size <= Size()).
func (l *Log) InclusionProof(index, size uint64) ([][]byte, error) {
	if index >= size {
		return nil, fmt.Errorf("inclusion proof: index %d not below size %d", index, size)
	}
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, fmt.Errorf("inclusion proof: %w", err)
	}
	return l.buildProof(nodes, size)
}

// ConsistencyProof returns the proof that the tree of size from is a prefix
// of the tree of size to (from <= to <= Size()). It is empty if from is 0 or
// from equals to.
func (l *Log) ConsistencyProof(from, to uint64) ([][]byte, error) {
	if from > to {
		return nil, fmt.Errorf("consistency proof: from %d is above to %d", from, to)
	}
	nodes, err := proof.Consistency(from, to)
	if err != nil {
		return nil, fmt.Errorf("consistency proof: %w", err)
	}
	return l.buildProof(nodes, to)
}

func (l *Log) buildProof(nodes proof.Nodes, size uint64) ([][]byte, error) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if cur := l.rng.End(); size > cur {
		return nil, fmt.Errorf("proof for size %d: log size is %d", size, cur)
	}
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		h, ok := l.node(id)
		if !ok {
			return nil, fmt.Errorf("proof for size %d: node %d/%d missing", size, id.Level, id.Index)
		}
		hashes[i] = append([]byte(nil), h...)
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
