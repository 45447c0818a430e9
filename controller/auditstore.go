package controller

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strconv"

	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/store"
)

// storeAudit keeps the audit log in the controller's store, so that every
// replica sharing the store (etcd) appends to the one log. Leaves are keys
// auditLeafPrefix + 20-digit index; auditSizeKey holds the size and guards
// appends (each append is one store transaction conditioned on the size
// it read, so two writers can never interleave); auditCheckpointKey holds
// the latest signed checkpoint.
type storeAudit struct{ st store.Store }

const (
	auditLeafPrefix    = "audit/leaf/"
	auditSizeKey       = "audit/size"
	auditCheckpointKey = "audit/checkpoint"
	auditSignerKey     = "audit/signer"
	// maxStoreAuditLeaves is the most leaves one append may carry: one
	// store batch holds them and the size.
	maxStoreAuditLeaves = store.MaxBatchOps - 1
)

func leafKey(i uint64) string { return fmt.Sprintf("%s%020d", auditLeafPrefix, i) }

func (s storeAudit) size(ctx context.Context) (uint64, store.KV, bool, error) {
	kv, err := s.st.Get(ctx, auditSizeKey)
	if errors.Is(err, store.ErrNotFound) {
		return 0, kv, false, nil
	}
	if err != nil {
		return 0, kv, false, fmt.Errorf("audit size: %w", err)
	}
	n, err := strconv.ParseUint(string(kv.Value), 10, 64)
	if err != nil {
		return 0, kv, true, fmt.Errorf("audit size %q: %w", kv.Value, err)
	}
	return n, kv, true, nil
}

// AppendLeaves implements audit.Storage: all leaves in one transaction, or
// none.
func (s storeAudit) AppendLeaves(ctx context.Context, start uint64, leaves [][]byte) error {
	if len(leaves) > maxStoreAuditLeaves {
		return fmt.Errorf("audit: %d leaves in one append; the store takes at most %d", len(leaves), maxStoreAuditLeaves)
	}
	size, kv, found, err := s.size(ctx)
	if err != nil {
		return err
	}
	if size != start {
		return fmt.Errorf("append leaves at %d, size %d: %w", start, size, audit.ErrConflict)
	}
	cond := store.Absent(auditSizeKey)
	if found {
		cond = store.RevIs(auditSizeKey, kv.Rev)
	}
	b := store.Batch{Conds: []store.Cond{cond}}
	for i, l := range leaves {
		b.Ops = append(b.Ops, store.Put(leafKey(start+uint64(i)), l))
	}
	b.Ops = append(b.Ops, store.Put(auditSizeKey, []byte(strconv.FormatUint(start+uint64(len(leaves)), 10))))
	if _, err := s.st.Commit(ctx, b); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("append leaves at %d: %w (%w)", start, audit.ErrConflict, err)
		}
		return fmt.Errorf("append leaves at %d: %w", start, err)
	}
	return nil
}

// ReadLeaves implements audit.Storage.
func (s storeAudit) ReadLeaves(ctx context.Context, start, n uint64) ([][]byte, error) {
	size, _, _, err := s.size(ctx)
	if err != nil {
		return nil, err
	}
	if start+n > size || start+n < start {
		return nil, fmt.Errorf("audit: read leaves %d..%d past the size %d", start, start+n, size)
	}
	out := make([][]byte, 0, n)
	after := ""
	if start > 0 {
		after = leafKey(start - 1)
	}
	for uint64(len(out)) < n {
		want := n - uint64(len(out))
		if want > 1000 {
			want = 1000
		}
		kvs, err := s.st.List(ctx, auditLeafPrefix, store.ListOptions{After: after, Limit: int(want)})
		if err != nil {
			return nil, fmt.Errorf("audit: read leaves: %w", err)
		}
		if len(kvs) == 0 {
			return nil, &audit.CorruptError{Index: start + uint64(len(out)), End: start + n, Err: errors.New("leaf missing from the store")}
		}
		for _, kv := range kvs {
			i := start + uint64(len(out))
			if kv.Key != leafKey(i) {
				return nil, &audit.CorruptError{Index: i, End: i + 1, Err: fmt.Errorf("leaf missing from the store (next key %s)", kv.Key)}
			}
			out = append(out, kv.Value)
			after = kv.Key
		}
	}
	return out, nil
}

// Size implements audit.Storage.
func (s storeAudit) Size(ctx context.Context) (uint64, error) {
	n, _, _, err := s.size(ctx)
	return n, err
}

// PutCheckpoint implements audit.Storage.
func (s storeAudit) PutCheckpoint(ctx context.Context, signed []byte) error {
	_, err := s.st.Commit(ctx, store.Batch{Ops: []store.Op{store.Put(auditCheckpointKey, signed)}})
	return err
}

// Checkpoint implements audit.Storage.
func (s storeAudit) Checkpoint(ctx context.Context) ([]byte, error) {
	kv, err := s.st.Get(ctx, auditCheckpointKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return kv.Value, nil
}

func (storeAudit) Close() error { return nil }

// sharedSignerKey returns the audit signing key kept in the store,
// encrypted under the key-encryption key, creating it on first use. Every
// replica that shares the store (and the KEK) signs with it.
func sharedSignerKey(ctx context.Context, st store.Store, kek []byte, generate func() (string, error)) (string, error) {
	aead, err := kekAEAD(kek)
	if err != nil {
		return "", err
	}
	aad := []byte("tvd audit signer v1")
	for range 3 {
		kv, err := st.Get(ctx, auditSignerKey)
		switch {
		case err == nil:
			if len(kv.Value) < aead.NonceSize() {
				return "", errors.New("audit signer key in the store: too short")
			}
			pt, err := aead.Open(nil, kv.Value[:aead.NonceSize()], kv.Value[aead.NonceSize():], aad)
			if err != nil {
				return "", fmt.Errorf("audit signer key in the store: %w (is this replica's key-encryption key the deployment's?)", err)
			}
			return string(pt), nil
		case !errors.Is(err, store.ErrNotFound):
			return "", fmt.Errorf("audit signer key: %w", err)
		}
		sk, err := generate()
		if err != nil {
			return "", err
		}
		nonce := make([]byte, aead.NonceSize())
		rand.Read(nonce)
		sealed := aead.Seal(nonce, nonce, []byte(sk), aad)
		_, err = st.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent(auditSignerKey)}, Ops: []store.Op{store.Put(auditSignerKey, sealed)}})
		if err == nil {
			return sk, nil
		}
		if !errors.Is(err, store.ErrConflict) {
			return "", fmt.Errorf("audit signer key: %w", err)
		}
		// Another replica created it first: read theirs.
	}
	return "", errors.New("audit signer key: the store keeps changing it")
}
