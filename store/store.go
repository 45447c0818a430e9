// Package store defines the key-value store in which the domain controller
// keeps all of its state: CA keys, enrolled nodes, members, policy versions,
// IP address assignments, audit log leaves and join tokens.
//
// The interface is deliberately small so that it maps one to one onto the two
// backends tvd has: an embedded bbolt file (package store/bolt, the default)
// and an etcd cluster shared by several controller replicas. Every backend
// must pass the behavioural conformance suite in package store/storetest.
//
// # Data model
//
// Keys are UTF-8 strings whose segments are separated by '/', such as
// "nodes/n1"; values are opaque bytes. Keys sort by their bytes, as Go
// compares strings. The store has one revision counter: every Commit that
// changes something advances it and stamps each key it writes with the new
// revision (KV.Rev), so revisions are monotonic across the whole store, like
// etcd's ModRevision. A revision is never 0 for a stored key.
//
// # Writes
//
// All writes go through Commit, which applies a Batch atomically: either every
// Put and Delete of the batch is applied, at one revision, or none is. A batch
// may be guarded by conditions on keys (absent, present, at revision n), which
// are checked in the same transaction as the writes. That is one bbolt write
// transaction, or one etcd Txn whose compares are on CreateRevision (absent,
// present) and ModRevision (revision n). Optimistic read-modify-write is
// therefore: Get the key, compute, Commit guarded by RevIs(key, kv.Rev), and
// retry on ErrConflict; Update does exactly that.
//
// # Mapping onto etcd
//
// Get is a Range of one key (Rev is its ModRevision). List is a Range from
// max(prefix, After+"\x00") to the prefix's end with the limit, which etcd
// answers from one revision. Commit is one Txn: If holds a compare per
// condition (Absent: CreateRevision == 0; Present: CreateRevision > 0;
// RevIs: ModRevision == n), Then holds the puts and deletes, and Else reads
// the condition keys so that the backend can name the failed condition in
// its ConflictError. The Txn's header revision is Commit's result; etcd
// also leaves the revision alone when a Txn changes nothing. The limits
// above are etcd's default --max-txn-ops and a request size the cluster
// must be configured to accept.
//
// # What is not here
//
// There is no Watch: a watch that is correct on both backends needs a history
// of changes that bbolt does not keep and that etcd compacts away, and a
// watch that may silently skip events would be worse than polling List. There
// are no range deletes and no leases; callers list and delete explicitly.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Limits enforced by every backend, so that a batch accepted by one backend
// is accepted by all. An etcd cluster used as a backend must be started with
// --max-txn-ops >= MaxBatchOps and --max-request-bytes > MaxBatchBytes.
const (
	// MaxKeyLen is the longest key, in bytes.
	MaxKeyLen = 1024
	// MaxValueLen is the longest value, in bytes (4 MiB).
	MaxValueLen = 4 << 20
	// MaxBatchOps is the largest number of Puts and Deletes in one batch,
	// and separately the largest number of conditions. It is etcd's default
	// --max-txn-ops.
	MaxBatchOps = 128
	// MaxBatchBytes bounds the sum of the lengths of all keys and values in
	// one batch (8 MiB).
	MaxBatchBytes = 8 << 20
)

// Sentinel errors. Backends wrap them, so test with errors.Is.
var (
	// ErrNotFound means the key does not exist. Get returns it.
	ErrNotFound = errors.New("store: key not found")
	// ErrConflict means a condition of a batch did not hold, so nothing was
	// applied. The error is a *ConflictError that names the key. The caller
	// re-reads and retries, or gives up.
	ErrConflict = errors.New("store: condition failed")
	// ErrInvalid means the request itself is wrong (bad key, oversized value,
	// malformed batch) and will never succeed. Nothing was applied.
	ErrInvalid = errors.New("store: invalid request")
	// ErrClosed means the store was closed.
	ErrClosed = errors.New("store: closed")
	// ErrIndeterminate means a remote backend lost contact while a Commit
	// was in flight, so it may or may not have been applied. The caller
	// re-reads to find out. The bbolt backend never returns it.
	ErrIndeterminate = errors.New("store: commit outcome unknown")
)

// Store is a transactional key-value store. Implementations are safe for
// concurrent use.
//
// A method that returns an error wrapping ErrInvalid, ErrConflict, ErrClosed
// or a context error has changed nothing.
type Store interface {
	// Get returns the key's current value and revision, or an error
	// wrapping ErrNotFound. The returned Value belongs to the caller.
	Get(ctx context.Context, key string) (KV, error)
	// List returns the keys that start with prefix, in ascending key order,
	// read from one consistent snapshot. The empty prefix lists every key.
	// Prefix matching is on bytes: "a/" does not match "ab". See ListOptions
	// for paging. A list with no match is empty, not an error.
	List(ctx context.Context, prefix string, opts ListOptions) ([]KV, error)
	// Commit checks the batch's conditions and applies its writes in one
	// atomic step, and returns the store's revision after the commit. If a
	// condition fails it returns a *ConflictError (wrapping ErrConflict) and
	// applies nothing. A batch that changes nothing (it only deletes absent
	// keys) does not advance the revision and returns the current one.
	// Commit does not retain the batch or its slices.
	Commit(ctx context.Context, b Batch) (rev int64, err error)
	// Close releases the store. Operations after Close return ErrClosed;
	// Close itself may be called more than once.
	Close() error
}

// KV is one stored key with its value and modification revision.
type KV struct {
	Key   string
	Value []byte
	// Rev is the revision of the commit that last wrote the key.
	Rev int64
}

// ListOptions pages through a List. The zero value lists everything.
type ListOptions struct {
	// After, if not empty, skips keys that sort at or before it; pass the
	// last key of the previous page.
	After string
	// Limit, if positive, returns at most that many keys. Zero means no
	// limit; negative is invalid.
	Limit int
}

// Validate reports whether the options are well formed.
func (o ListOptions) Validate() error {
	if o.Limit < 0 {
		return fmt.Errorf("%w: list limit %d: want 0 (no limit) or more", ErrInvalid, o.Limit)
	}
	if o.After != "" {
		if err := ValidateKey(o.After); err != nil {
			return fmt.Errorf("list after: %w", err)
		}
	}
	return nil
}

// CondKind is what a condition requires of its key.
type CondKind int

const (
	// CondAbsent requires that the key does not exist.
	CondAbsent CondKind = iota + 1
	// CondPresent requires that the key exists.
	CondPresent
	// CondRev requires that the key exists and its Rev equals Cond.Rev.
	CondRev
)

// String returns the condition kind's name.
func (k CondKind) String() string {
	switch k {
	case CondAbsent:
		return "absent"
	case CondPresent:
		return "present"
	case CondRev:
		return "rev"
	default:
		return fmt.Sprintf("CondKind(%d)", int(k))
	}
}

// Cond is a condition on one key that must hold for a batch to apply. Build
// one with Absent, Present or RevIs.
type Cond struct {
	Kind CondKind
	Key  string
	Rev  int64 // for CondRev only
}

// Absent requires that key does not exist.
func Absent(key string) Cond { return Cond{Kind: CondAbsent, Key: key} }

// Present requires that key exists.
func Present(key string) Cond { return Cond{Kind: CondPresent, Key: key} }

// RevIs requires that key exists and was last written at revision rev.
func RevIs(key string, rev int64) Cond { return Cond{Kind: CondRev, Key: key, Rev: rev} }

// String describes the condition, for error messages.
func (c Cond) String() string {
	switch c.Kind {
	case CondRev:
		return fmt.Sprintf("%q at rev %d", c.Key, c.Rev)
	default:
		return fmt.Sprintf("%q %s", c.Key, c.Kind)
	}
}

// Holds reports whether the condition holds for the key's current state:
// found says whether the key exists and rev is its revision if it does.
// Backends that evaluate conditions themselves use it.
func (c Cond) Holds(found bool, rev int64) bool {
	switch c.Kind {
	case CondAbsent:
		return !found
	case CondPresent:
		return found
	case CondRev:
		return found && rev == c.Rev
	default:
		return false
	}
}

// Op is one write of a batch: a Put of Value at Key, or a Delete of Key.
// Build one with Put or Delete.
type Op struct {
	Key    string
	Value  []byte
	Delete bool
}

// Put writes value at key. A nil value stores an empty value.
func Put(key string, value []byte) Op { return Op{Key: key, Value: value} }

// Delete removes key. Deleting a key that does not exist is not an error
// and changes nothing.
func Delete(key string) Op { return Op{Key: key, Delete: true} }

// Batch is a set of writes applied atomically if all conditions hold.
type Batch struct {
	// Conds must all hold, checked against the state before the batch.
	Conds []Cond
	// Ops are applied together. Each key appears at most once.
	Ops []Op
}

// Validate reports whether the batch is well formed and within the limits.
// Every backend calls it before touching its storage.
func (b Batch) Validate() error {
	if len(b.Ops) == 0 {
		return fmt.Errorf("%w: batch has no puts or deletes", ErrInvalid)
	}
	if len(b.Ops) > MaxBatchOps {
		return fmt.Errorf("%w: batch has %d puts and deletes: want at most %d", ErrInvalid, len(b.Ops), MaxBatchOps)
	}
	if len(b.Conds) > MaxBatchOps {
		return fmt.Errorf("%w: batch has %d conditions: want at most %d", ErrInvalid, len(b.Conds), MaxBatchOps)
	}
	total := 0
	for i, c := range b.Conds {
		if err := ValidateKey(c.Key); err != nil {
			return fmt.Errorf("condition %d: %w", i, err)
		}
		switch c.Kind {
		case CondAbsent, CondPresent:
			if c.Rev != 0 {
				return fmt.Errorf("%w: condition %d on %q: kind %s takes no revision, got %d", ErrInvalid, i, c.Key, c.Kind, c.Rev)
			}
		case CondRev:
			if c.Rev <= 0 {
				return fmt.Errorf("%w: condition %d on %q: revision %d: want a positive revision (use Absent for a missing key)", ErrInvalid, i, c.Key, c.Rev)
			}
		default:
			return fmt.Errorf("%w: condition %d on %q: unknown kind %d: want absent, present or rev", ErrInvalid, i, c.Key, int(c.Kind))
		}
		total += len(c.Key)
	}
	seen := make(map[string]struct{}, len(b.Ops))
	for i, op := range b.Ops {
		if err := ValidateKey(op.Key); err != nil {
			return fmt.Errorf("op %d: %w", i, err)
		}
		if _, dup := seen[op.Key]; dup {
			return fmt.Errorf("%w: op %d: key %q is written twice in one batch", ErrInvalid, i, op.Key)
		}
		seen[op.Key] = struct{}{}
		if op.Delete && op.Value != nil {
			return fmt.Errorf("%w: op %d: delete of %q carries a value", ErrInvalid, i, op.Key)
		}
		if len(op.Value) > MaxValueLen {
			return fmt.Errorf("%w: op %d: value of %q is %d bytes: want at most %d", ErrInvalid, i, op.Key, len(op.Value), MaxValueLen)
		}
		total += len(op.Key) + len(op.Value)
	}
	if total > MaxBatchBytes {
		return fmt.Errorf("%w: batch holds %d bytes of keys and values: want at most %d", ErrInvalid, total, MaxBatchBytes)
	}
	return nil
}

// ValidateKey reports whether key is a valid key: not empty, at most
// MaxKeyLen bytes, valid UTF-8.
func ValidateKey(key string) error {
	if key == "" {
		return fmt.Errorf("%w: empty key", ErrInvalid)
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("%w: key %.32q... is %d bytes: want at most %d", ErrInvalid, key, len(key), MaxKeyLen)
	}
	if !utf8.ValidString(key) {
		return fmt.Errorf("%w: key %q is not valid UTF-8", ErrInvalid, key)
	}
	return nil
}

// Key joins segments into a key with '/' between them, such as
// Key("nodes", id) == "nodes/"+id. Each segment must be non-empty, valid
// UTF-8 and free of '/', so that a name taken from a peer or a user cannot
// reach into another key's subtree (a node named "n1/x" would otherwise
// show up in List("nodes/n1/")). The joined key must be valid.
func Key(segments ...string) (string, error) {
	if len(segments) == 0 {
		return "", fmt.Errorf("%w: key with no segments", ErrInvalid)
	}
	for i, seg := range segments {
		switch {
		case seg == "":
			return "", fmt.Errorf("%w: key segment %d is empty", ErrInvalid, i)
		case strings.Contains(seg, "/"):
			return "", fmt.Errorf("%w: key segment %d %.64q contains '/'", ErrInvalid, i, seg)
		case !utf8.ValidString(seg):
			return "", fmt.Errorf("%w: key segment %d %.64q is not valid UTF-8", ErrInvalid, i, seg)
		}
	}
	key := strings.Join(segments, "/")
	if err := ValidateKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// Prefix is Key followed by '/': the List prefix of everything under the
// segments, such as Prefix("nodes") == "nodes/".
func Prefix(segments ...string) (string, error) {
	key, err := Key(segments...)
	if err != nil {
		return "", err
	}
	if len(key)+1 > MaxKeyLen {
		return "", fmt.Errorf("%w: prefix %.32q... is %d bytes: want at most %d", ErrInvalid, key, len(key)+1, MaxKeyLen)
	}
	return key + "/", nil
}

// ValidatePrefix reports whether prefix is a valid List prefix: like a key,
// except that it may be empty.
func ValidatePrefix(prefix string) error {
	if prefix == "" {
		return nil
	}
	if err := ValidateKey(prefix); err != nil {
		return fmt.Errorf("prefix: %w", err)
	}
	return nil
}

// ConflictError is returned by Commit when a condition did not hold. It
// wraps ErrConflict.
type ConflictError struct {
	// Cond is the first condition, in batch order, that did not hold.
	Cond Cond
	// Found and Rev describe the key's state when the condition was checked.
	Found bool
	Rev   int64
}

func (e *ConflictError) Error() string {
	state := "absent"
	if e.Found {
		state = fmt.Sprintf("at rev %d", e.Rev)
	}
	return fmt.Sprintf("store: condition failed: want %s, key is %s", e.Cond, state)
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *ConflictError) Unwrap() error { return ErrConflict }

// Update performs an optimistic read-modify-write of one key. It reads the
// key, calls fn with its current state (found is false and kv has only Key
// set if it does not exist), and commits the returned value guarded by the
// key's revision (or its absence). On a conflict it starts again, until ctx
// is done. An error from fn stops Update and is returned as is. Update
// returns the committed revision.
//
// fn may be called several times and must not have side effects that
// matter if its result is discarded.
func Update(ctx context.Context, s Store, key string, fn func(kv KV, found bool) ([]byte, error)) (int64, error) {
	for {
		kv, err := s.Get(ctx, key)
		found := err == nil
		switch {
		case errors.Is(err, ErrNotFound):
			kv = KV{Key: key}
		case err != nil:
			return 0, fmt.Errorf("update %q: %w", key, err)
		}
		val, err := fn(kv, found)
		if err != nil {
			return 0, err
		}
		cond := Absent(key)
		if found {
			cond = RevIs(key, kv.Rev)
		}
		rev, err := s.Commit(ctx, Batch{Conds: []Cond{cond}, Ops: []Op{Put(key, val)}})
		if errors.Is(err, ErrConflict) {
			if cerr := ctx.Err(); cerr != nil {
				return 0, fmt.Errorf("update %q: %w", key, cerr)
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("update %q: %w", key, err)
		}
		return rev, nil
	}
}
