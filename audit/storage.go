package audit

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// Storage persists the log's leaves (encoded entries) and its latest signed
// checkpoint. Implementations must be safe for concurrent use; the [Log]
// calls AppendLeaves and PutCheckpoint from one goroutine at a time.
type Storage interface {
	// AppendLeaves durably stores leaves at indices [start, start+len(leaves)).
	// start must equal the current Size, otherwise ErrConflict is returned.
	// When it returns nil every leaf is durable; when it returns an error none
	// of them may be visible (the storage must roll back or fail from then on).
	AppendLeaves(ctx context.Context, start uint64, leaves [][]byte) error
	// ReadLeaves returns the n leaves starting at index start. Reading past
	// Size is an error. A leaf that fails an integrity check of the storage
	// is reported as a *CorruptError naming its index.
	ReadLeaves(ctx context.Context, start, n uint64) ([][]byte, error)
	// Size returns the number of stored leaves.
	Size(ctx context.Context) (uint64, error)
	// PutCheckpoint stores a signed checkpoint as the latest one. It need
	// not be durable when it returns: a Log whose stored checkpoint lags its
	// leaves signs a new one when it opens.
	PutCheckpoint(ctx context.Context, signed []byte) error
	// Checkpoint returns the latest stored checkpoint, or nil and no error if
	// none was ever stored.
	Checkpoint(ctx context.Context) ([]byte, error)
}

// CheckpointHistory is implemented by storages that keep every checkpoint
// ever stored, oldest first. [Fsck] uses it to narrow a root mismatch down
// to the range of leaves between two checkpoints.
type CheckpointHistory interface {
	Checkpoints(ctx context.Context) ([][]byte, error)
}

var (
	// ErrConflict is returned by Storage.AppendLeaves when start is not the
	// current size: another writer appended, or the caller is out of date.
	ErrConflict = errors.New("audit: append position is not the end of the log")
	// ErrRootMismatch means that a signed checkpoint does not match the
	// leaves: the leaves or the checkpoint were altered.
	ErrRootMismatch = errors.New("audit: root hash does not match the signed checkpoint")
)

// CorruptError reports damage found in a log: the first bad leaf index and
// what is wrong. When the damage can only be located to a range (a root
// mismatch against a checkpoint), the bad leaf is somewhere in [Index, End);
// otherwise End is Index+1.
type CorruptError struct {
	Index uint64
	End   uint64
	Err   error
}

func (e *CorruptError) Error() string {
	if e.End > e.Index+1 {
		return fmt.Sprintf("audit: log corrupt in leaves [%d, %d): %v", e.Index, e.End, e.Err)
	}
	return fmt.Sprintf("audit: log corrupt at leaf %d: %v", e.Index, e.Err)
}

func (e *CorruptError) Unwrap() error { return e.Err }

// MemoryStorage is a Storage held in memory, for tests and for tools that
// verify a log they loaded. It also implements CheckpointHistory.
type MemoryStorage struct {
	mu     sync.RWMutex
	leaves [][]byte
	cps    [][]byte
}

// NewMemoryStorage returns an empty in-memory storage.
func NewMemoryStorage() *MemoryStorage { return &MemoryStorage{} }

// AppendLeaves implements Storage.
func (m *MemoryStorage) AppendLeaves(ctx context.Context, start uint64, leaves [][]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, l := range leaves {
		if len(l) > MaxEntrySize {
			return fmt.Errorf("append leaves: leaf %d has %d bytes, the limit is %d", start+uint64(i), len(l), MaxEntrySize)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if start != uint64(len(m.leaves)) {
		return fmt.Errorf("append leaves at %d, size %d: %w", start, len(m.leaves), ErrConflict)
	}
	for _, l := range leaves {
		m.leaves = append(m.leaves, append([]byte(nil), l...))
	}
	return nil
}

// ReadLeaves implements Storage.
func (m *MemoryStorage) ReadLeaves(ctx context.Context, start, n uint64) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	size := uint64(len(m.leaves))
	if start > size || n > size-start {
		return nil, fmt.Errorf("read leaves [%d, %d+%d): past the end of the log (size %d)", start, start, n, size)
	}
	out := make([][]byte, n)
	for i := range out {
		out[i] = append([]byte(nil), m.leaves[start+uint64(i)]...)
	}
	return out, nil
}

// Size implements Storage.
func (m *MemoryStorage) Size(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return uint64(len(m.leaves)), nil
}

// PutCheckpoint implements Storage.
func (m *MemoryStorage) PutCheckpoint(ctx context.Context, signed []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(signed) == 0 || len(signed) > MaxCheckpointSize {
		return fmt.Errorf("put checkpoint: %d bytes, expected 1 to %d", len(signed), MaxCheckpointSize)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cps = append(m.cps, append([]byte(nil), signed...))
	return nil
}

// Checkpoint implements Storage.
func (m *MemoryStorage) Checkpoint(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if len(m.cps) == 0 {
		return nil, nil
	}
	return append([]byte(nil), m.cps[len(m.cps)-1]...), nil
}

// Checkpoints implements CheckpointHistory.
func (m *MemoryStorage) Checkpoints(ctx context.Context) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([][]byte, len(m.cps))
	for i, c := range m.cps {
		out[i] = append([]byte(nil), c...)
	}
	return out, nil
}

// SetLeaf overwrites leaf i, bypassing every check. It exists so that tests
// and tamper drills can simulate an operator who edits the log.
func (m *MemoryStorage) SetLeaf(i uint64, leaf []byte) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leaves[i] = append([]byte(nil), leaf...)
}
