// Package bolt is the embedded store.Store backend: one bbolt file on local
// disk, used by a single controller process.
//
// Layout: bucket "data" maps each key to an 8-byte big-endian revision
// followed by the value; bucket "meta" holds the store's revision counter
// ("rev") and the layout version ("format"). A Commit is one bbolt write
// transaction that checks the batch's conditions, applies its writes and
// advances the counter, so the counter and the data can never disagree.
// bbolt fsyncs on every commit, so a Commit that returned is durable.
//
// A Commit that returned is durable across a crash of the process (tested
// by killing a writer with SIGKILL mid-stream) and, because bbolt fsyncs
// before it returns, across a power loss as far as the disk honours fsync
// (not tested here). Commits are serialised; reads run concurrently with
// them, each in its own read-only bbolt transaction.
//
// The file is locked while open (flock); a second process, or a second Open
// in the same process, waits for the lock timeout and then fails with an
// error wrapping ErrLocked.
package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"
	bberrors "go.etcd.io/bbolt/errors"

	"github.com/tvd-dev/tvd/store"
)

// ErrLocked means another process (or another Store in this process) holds
// the store file open.
var ErrLocked = errors.New("in use by another process")

// DefaultLockTimeout is how long Open waits for the file lock.
const DefaultLockTimeout = 2 * time.Second

// formatVersion is the layout version written to meta/format.
const formatVersion = "1"

var (
	bucketData = []byte("data")
	bucketMeta = []byte("meta")
	keyRev     = []byte("rev")
	keyFormat  = []byte("format")
)

// revLen is the length of the revision prefix of each stored value.
const revLen = 8

// Option configures Open.
type Option func(*options)

type options struct {
	lockTimeout time.Duration
	logger      *slog.Logger
}

// WithLockTimeout sets how long Open waits for another holder of the file
// to let go. It must be positive; the default is DefaultLockTimeout.
func WithLockTimeout(d time.Duration) Option {
	return func(o *options) { o.lockTimeout = d }
}

// WithLogger sets the logger for open and close events. The default
// discards them.
func WithLogger(l *slog.Logger) Option {
	return func(o *options) { o.logger = l }
}

// Store is a store.Store in one bbolt file.
type Store struct {
	db   *bbolt.DB
	path string
	log  *slog.Logger

	// writer serialises Commits so that a waiting Commit can give up when
	// its context is done (bbolt's own writer lock cannot be abandoned).
	writer chan struct{}

	closeOnce sync.Once
	closeErr  error
	closed    chan struct{}
}

var _ store.Store = (*Store)(nil)

// Open opens the store file at path, creating it (mode 0600) and its layout
// if it does not exist. It fails with an error wrapping ErrLocked if the file
// stays locked by another holder for the lock timeout, and with a clear error
// if the file is not a bbolt file or not a tvd store.
func Open(path string, opts ...Option) (*Store, error) {
	o := options{lockTimeout: DefaultLockTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	if o.lockTimeout <= 0 {
		return nil, fmt.Errorf("open store %s: lock timeout %v: want a positive duration", path, o.lockTimeout)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, errors.New("open store: empty path")
	}
	_, statErr := os.Stat(path)
	created := errors.Is(statErr, os.ErrNotExist)

	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: o.lockTimeout})
	if errors.Is(err, bberrors.ErrTimeout) {
		return nil, fmt.Errorf("store %s is %w (lock not released within %v)", path, ErrLocked, o.lockTimeout)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if created {
		// Make the new file's directory entry durable too.
		if err := syncDir(filepath.Dir(path)); err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("open store %s: %w", path, err)
		}
	}
	var rev int64
	err = db.Update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if meta == nil {
			empty := true
			_ = tx.ForEach(func([]byte, *bbolt.Bucket) error { empty = false; return nil })
			if !empty {
				return errors.New("file is a bbolt database but not a tvd store (no meta bucket)")
			}
			var err error
			if meta, err = tx.CreateBucket(bucketMeta); err != nil {
				return err
			}
			if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
				return err
			}
			if err := meta.Put(keyRev, encodeRev(0)); err != nil {
				return err
			}
			_, err = tx.CreateBucket(bucketData)
			return err
		}
		if f := meta.Get(keyFormat); string(f) != formatVersion {
			return fmt.Errorf("store format %q: want %q", f, formatVersion)
		}
		if tx.Bucket(bucketData) == nil {
			return errors.New("store has no data bucket")
		}
		var err error
		rev, err = readRev(meta)
		return err
	})
	if err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	s := &Store{
		db:     db,
		path:   path,
		log:    o.logger,
		writer: make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	s.log.Info("store opened", "path", path, "created", created, "rev", rev)
	return s, nil
}

// Path returns the store file's path.
func (s *Store) Path() string { return s.path }

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check(ctx); err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, err)
	}
	if err := store.ValidateKey(key); err != nil {
		return store.KV{}, fmt.Errorf("get: %w", err)
	}
	var kv store.KV
	err := s.db.View(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketData).Get([]byte(key))
		if raw == nil {
			return store.ErrNotFound
		}
		var err error
		kv, err = decode(key, raw)
		return err
	})
	if err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, s.mapErr(err))
	}
	return kv, nil
}

// listCheckEvery is how many keys List reads between context checks.
const listCheckEvery = 256

// List implements store.Store.
func (s *Store) List(ctx context.Context, prefix string, opts store.ListOptions) ([]store.KV, error) {
	if err := s.check(ctx); err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	if err := store.ValidatePrefix(prefix); err != nil {
		return nil, fmt.Errorf("list: %w", err)
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, err)
	}
	start := []byte(prefix)
	if opts.After != "" && opts.After >= prefix {
		// The first key strictly after opts.After.
		start = append([]byte(opts.After), 0)
	}
	var out []store.KV
	err := s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketData).Cursor()
		n := 0
		for k, v := c.Seek(start); k != nil && bytes.HasPrefix(k, []byte(prefix)); k, v = c.Next() {
			if opts.Limit > 0 && len(out) == opts.Limit {
				break
			}
			if n++; n%listCheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			kv, err := decode(string(k), v)
			if err != nil {
				return err
			}
			out = append(out, kv)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list %q: %w", prefix, s.mapErr(err))
	}
	return out, nil
}

// Commit implements store.Store.
func (s *Store) Commit(ctx context.Context, b store.Batch) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	if err := b.Validate(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	select {
	case s.writer <- struct{}{}:
	case <-ctx.Done():
		return 0, fmt.Errorf("commit: %w", ctx.Err())
	case <-s.closed:
		return 0, fmt.Errorf("commit: %w", store.ErrClosed)
	}
	defer func() { <-s.writer }()
	// Re-check: the context may have ended, or the store closed, while
	// this Commit waited for the writer slot.
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	var rev int64
	err := s.db.Update(func(tx *bbolt.Tx) error {
		data, meta := tx.Bucket(bucketData), tx.Bucket(bucketMeta)
		cur, err := readRev(meta)
		if err != nil {
			return err
		}
		for _, c := range b.Conds {
			raw := data.Get([]byte(c.Key))
			var r int64
			if raw != nil {
				if r, err = rawRev(c.Key, raw); err != nil {
					return err
				}
			}
			if !c.Holds(raw != nil, r) {
				return &store.ConflictError{Cond: c, Found: raw != nil, Rev: r}
			}
		}
		next := cur + 1
		changed := false
		for _, op := range b.Ops {
			k := []byte(op.Key)
			if op.Delete {
				if data.Get(k) == nil {
					continue
				}
				if err := data.Delete(k); err != nil {
					return err
				}
				changed = true
				continue
			}
			if err := data.Put(k, encode(next, op.Value)); err != nil {
				return err
			}
			changed = true
		}
		if !changed {
			rev = cur
			return nil
		}
		rev = next
		return meta.Put(keyRev, encodeRev(next))
	})
	if err != nil {
		return 0, fmt.Errorf("commit: %w", s.mapErr(err))
	}
	return rev, nil
}

// Close implements store.Store. It waits for running operations to finish.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		close(s.closed)
		s.closeErr = s.db.Close()
		if s.closeErr != nil {
			s.closeErr = fmt.Errorf("close store %s: %w", s.path, s.closeErr)
		}
		s.log.Info("store closed", "path", s.path)
	})
	return s.closeErr
}

// Check verifies the integrity of the whole file (bbolt's page-level
// consistency check) and that every stored value carries a revision no
// greater than the store's counter. It reads the whole file.
func (s *Store) Check(ctx context.Context) error {
	if err := s.check(ctx); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	err := s.db.View(func(tx *bbolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		cur, err := readRev(tx.Bucket(bucketMeta))
		if err != nil {
			return err
		}
		n := 0
		return tx.Bucket(bucketData).ForEach(func(k, v []byte) error {
			if n++; n%listCheckEvery == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			r, err := rawRev(string(k), v)
			if err != nil {
				return err
			}
			if r <= 0 || r > cur {
				return fmt.Errorf("key %q has rev %d outside 1..%d", k, r, cur)
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("check %s: %w", s.path, s.mapErr(err))
	}
	return nil
}

// check returns the error for a done context or a closed store.
func (s *Store) check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-s.closed:
		return store.ErrClosed
	default:
		return nil
	}
}

// mapErr turns bbolt's closed-database error into store.ErrClosed.
func (s *Store) mapErr(err error) error {
	if errors.Is(err, bberrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}

func encode(rev int64, value []byte) []byte {
	buf := make([]byte, revLen+len(value))
	binary.BigEndian.PutUint64(buf, uint64(rev))
	copy(buf[revLen:], value)
	return buf
}

func decode(key string, raw []byte) (store.KV, error) {
	rev, err := rawRev(key, raw)
	if err != nil {
		return store.KV{}, err
	}
	return store.KV{Key: key, Value: bytes.Clone(raw[revLen:]), Rev: rev}, nil
}

func rawRev(key string, raw []byte) (int64, error) {
	if len(raw) < revLen {
		return 0, fmt.Errorf("stored value of %q is %d bytes: want at least %d (corrupt store)", key, len(raw), revLen)
	}
	return int64(binary.BigEndian.Uint64(raw)), nil
}

func encodeRev(rev int64) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(rev))
}

func readRev(meta *bbolt.Bucket) (int64, error) {
	raw := meta.Get(keyRev)
	if len(raw) != revLen {
		return 0, fmt.Errorf("store revision counter is %d bytes: want %d (corrupt store)", len(raw), revLen)
	}
	return int64(binary.BigEndian.Uint64(raw)), nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
