// Package etcd is the store.Store backend for an etcd cluster, used when
// several domain controller replicas share their state.
//
// Every key of a Store lives under the Store's key prefix (Config.Prefix,
// such as "tvd/prod/"), so several deployments can share one cluster. The
// mapping onto etcd is the one in package store's documentation:
//
//   - Get is a Range of one key; KV.Rev is the key's ModRevision.
//   - List is a Range over the prefix, read from one revision. A long list
//     is fetched in chunks, and every chunk after the first is read at the
//     first chunk's header revision (WithRev), so the whole result is one
//     snapshot. If etcd compacts that revision away mid-list, List starts
//     again at the new current revision.
//   - Commit is one Txn. Its If holds one compare per condition (Absent:
//     CreateRevision == 0; Present: CreateRevision > 0; RevIs: ModRevision
//     == n), Then holds the puts and deletes, and Else reads the condition
//     keys (keys only) so that a failed Commit names the first condition, in
//     batch order, that did not hold. Commit returns the Txn's header
//     revision, which is the ModRevision of every key it wrote.
//
// Revisions are etcd's cluster-wide revisions: they increase with every
// write to the cluster, including writes under other prefixes, so they are
// monotonic but not consecutive.
//
// # Errors
//
// Reads that fail return the cause (a context error when the deadline
// passed). A Commit that fails before it is sent, or that etcd rejects
// (too large, too many operations, permission denied), changed nothing. A
// Commit whose Txn was in flight when the connection broke, the context
// ended or the store was closed returns an error wrapping
// store.ErrIndeterminate and not the context error: etcd may still apply
// it, and the caller must re-read to find out. Every operation is bounded
// by Config.RequestTimeout even if the caller's context has no deadline, so
// a lost cluster is reported instead of waited on forever.
//
// # Cluster requirements
//
// The cluster must accept requests of MinServerRequestBytes
// (--max-request-bytes=10485760) and transactions of store.MaxBatchOps
// operations (--max-txn-ops=128, etcd's default). The tests run against
// etcd 3.4 (Debian 12's etcd-server package); the client is clientv3 3.7,
// which speaks the same v3 API to newer servers.
//
// # What this package does not do
//
// It does not authenticate with user names or tokens (use client TLS
// certificates through Config.TLS), does not watch, and does not compact:
// the cluster's operator configures auto-compaction. Prefixes are not
// checked against each other: two deployments whose prefixes nest ("tvd/"
// and "tvd/a/") see each other's keys.
package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tvd-dev/tvd/store"
)

// Defaults for Config fields left zero.
const (
	DefaultDialTimeout    = 5 * time.Second
	DefaultRequestTimeout = 10 * time.Second
)

// MinServerRequestBytes is the smallest --max-request-bytes an etcd server
// must be started with so that every batch store.Batch.Validate accepts
// fits in one Txn (etcd's default is 1.5 MiB). It is also the largest
// request the client sends.
const MinServerRequestBytes = 10 << 20

// MaxPrefixLen is the longest key prefix, in bytes.
const MaxPrefixLen = 256

// listChunk is how many keys one Range of a List fetches at most.
const listChunk = 256

// maxListRestarts bounds how often List starts again because its snapshot
// revision was compacted away.
const maxListRestarts = 3

// Config says how to reach the cluster and where the store's keys live.
type Config struct {
	// Endpoints are the cluster members' client addresses, "host:port"
	// each; at least one. Whether they speak TLS is set by TLS.
	Endpoints []string
	// Prefix is prepended to every key, such as "tvd/prod/": one or more
	// segments of letters, digits, '.', '_' and '-', each followed by '/'.
	Prefix string
	// DialTimeout bounds Open's first round trip to the cluster.
	// Zero means DefaultDialTimeout.
	DialTimeout time.Duration
	// RequestTimeout bounds each Get, List and Commit even when the
	// caller's context has no deadline. Zero means DefaultRequestTimeout.
	RequestTimeout time.Duration
	// TLS, if set, is used for every connection (server verification and,
	// with a client certificate, client authentication). Nil means
	// plaintext.
	TLS *tls.Config
	// Logger receives open and close events and the etcd client's
	// warnings. Nil discards them.
	Logger *slog.Logger
}

// Validate reports whether the configuration is complete and well formed.
func (c Config) Validate() error {
	if len(c.Endpoints) == 0 {
		return errors.New("no etcd endpoints: want at least one host:port")
	}
	seen := map[string]bool{}
	for i, ep := range c.Endpoints {
		norm, err := parseEndpoint(ep)
		if err != nil {
			return fmt.Errorf("endpoint %d: %w", i, err)
		}
		if seen[norm] {
			return fmt.Errorf("endpoint %d: %q is listed twice", i, ep)
		}
		seen[norm] = true
	}
	if err := validatePrefix(c.Prefix); err != nil {
		return err
	}
	if c.DialTimeout < 0 {
		return fmt.Errorf("dial timeout %v: want zero (default) or positive", c.DialTimeout)
	}
	if c.RequestTimeout < 0 {
		return fmt.Errorf("request timeout %v: want zero (default) or positive", c.RequestTimeout)
	}
	return nil
}

// Store is a store.Store on an etcd cluster, under one key prefix.
type Store struct {
	cli     *clientv3.Client
	where   string // endpoints and prefix, for errors
	prefix  string
	timeout time.Duration
	log     *slog.Logger

	chunk int // keys per Range in List; listChunk except in tests
	// betweenChunks, if set, runs between the Ranges of one List (tests).
	betweenChunks func()

	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	fence atomic.Pointer[fence] // set while leading an election (see Campaign)
}

var _ store.Store = (*Store)(nil)

// Open connects to the cluster and checks that it answers a read under the
// prefix within the dial timeout (or ctx, if that ends first). The Store
// owns the connection until Close; ctx only bounds Open itself.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("open etcd store: %w", err)
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	endpoints := make([]string, len(cfg.Endpoints))
	for i, ep := range cfg.Endpoints {
		endpoints[i], _ = parseEndpoint(ep) // validated above
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          cfg.DialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		MaxCallSendMsgSize:   MinServerRequestBytes,
		TLS:                  cfg.TLS,
		Logger:               zap.New(newSlogCore(log.With("component", "etcd-client"))),
	})
	if err != nil {
		return nil, fmt.Errorf("open etcd store %s: %w", describe(endpoints, cfg.Prefix), err)
	}
	s := &Store{
		cli:     cli,
		where:   describe(endpoints, cfg.Prefix),
		prefix:  cfg.Prefix,
		timeout: cfg.RequestTimeout,
		log:     log,
		chunk:   listChunk,
	}
	pctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	resp, err := firstRead(pctx, cli, cfg.Prefix)
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("open etcd store %s: first read: %w", describe(endpoints, cfg.Prefix), err)
	}
	log.Info("etcd store opened", "endpoints", endpoints, "prefix", cfg.Prefix,
		"rev", resp.Header.Revision, "keys", resp.Count, "tls", cfg.TLS != nil)
	return s, nil
}

// firstRead counts the keys under prefix, retrying while the cluster is
// unavailable until ctx ends. It goes through the raw gRPC client because
// clientv3 replaces a deadline error that names the connection failure (a
// TLS handshake, a refused connection) with the bare context error; the
// returned error keeps the last such failure.
func firstRead(ctx context.Context, cli *clientv3.Client, prefix string) (*pb.RangeResponse, error) {
	kv := pb.NewKVClient(cli.ActiveConnection())
	req := &pb.RangeRequest{
		Key:       []byte(prefix),
		RangeEnd:  []byte(clientv3.GetPrefixRangeEnd(prefix)),
		CountOnly: true,
	}
	var last error
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		resp, err := kv.Range(ctx, req)
		if err == nil {
			return resp, nil
		}
		if ctx.Err() != nil {
			if last == nil || grpcCode(err) != codes.DeadlineExceeded && grpcCode(err) != codes.Canceled {
				last = err
			}
			return nil, ctxError(ctx, last)
		}
		if grpcCode(err) != codes.Unavailable {
			return nil, rpctypes.Error(err)
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, ctxError(ctx, last)
		case <-time.After(wait):
		}
	}
}

func describe(endpoints []string, prefix string) string {
	return fmt.Sprintf("etcd://%s/%s", strings.Join(endpoints, ","), strings.TrimSuffix(prefix, "/"))
}

// Prefix returns the key prefix under which the store keeps its keys.
func (s *Store) Prefix() string { return s.prefix }

// Get implements store.Store.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check(ctx); err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, err)
	}
	if err := store.ValidateKey(key); err != nil {
		return store.KV{}, fmt.Errorf("get: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+key)
	if err != nil {
		return store.KV{}, fmt.Errorf("get %q: %w", key, s.readError(ctx, err))
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("get %q: %w", key, store.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return store.KV{Key: key, Value: value(kv.Value), Rev: kv.ModRevision}, nil
}

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
	from := s.prefix + prefix
	if opts.After != "" && opts.After+"\x00" > prefix {
		from = s.prefix + opts.After + "\x00"
	}
	end := clientv3.GetPrefixRangeEnd(s.prefix + prefix)
	if from >= end {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	for restarts := 0; ; restarts++ {
		kvs, err := s.listRange(ctx, from, end, opts.Limit)
		if errors.Is(err, rpctypes.ErrCompacted) && restarts < maxListRestarts {
			s.log.DebugContext(ctx, "list snapshot compacted, starting again", "prefix", prefix)
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("list %q: %w", prefix, s.readError(ctx, err))
		}
		return kvs, nil
	}
}

// listRange reads [from, end) in chunks, all at the first chunk's revision,
// stopping after limit keys if limit is positive.
func (s *Store) listRange(ctx context.Context, from, end string, limit int) ([]store.KV, error) {
	var (
		out []store.KV
		rev int64
	)
	for {
		n := s.chunk
		if limit > 0 {
			n = min(n, limit-len(out))
		}
		ropts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(n))}
		if rev != 0 {
			ropts = append(ropts, clientv3.WithRev(rev))
		}
		resp, err := s.cli.Get(ctx, from, ropts...)
		if err != nil {
			return nil, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			key, ok := strings.CutPrefix(string(kv.Key), s.prefix)
			if !ok {
				return nil, fmt.Errorf("etcd returned key %q outside prefix %q", kv.Key, s.prefix)
			}
			out = append(out, store.KV{Key: key, Value: value(kv.Value), Rev: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 || (limit > 0 && len(out) >= limit) {
			return out, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		if s.betweenChunks != nil {
			s.betweenChunks()
		}
	}
}

// Commit implements store.Store.
func (s *Store) Commit(ctx context.Context, b store.Batch) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	if err := b.Validate(); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	cmps := make([]clientv3.Cmp, len(b.Conds), len(b.Conds)+1)
	var reads []clientv3.Op
	f := s.fence.Load()
	readIdx := make(map[string]int, len(b.Conds))
	for i, c := range b.Conds {
		k := s.prefix + c.Key
		switch c.Kind {
		case store.CondAbsent:
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(k), "=", 0)
		case store.CondPresent:
			cmps[i] = clientv3.Compare(clientv3.CreateRevision(k), ">", 0)
		case store.CondRev:
			cmps[i] = clientv3.Compare(clientv3.ModRevision(k), "=", c.Rev)
		}
		if _, ok := readIdx[c.Key]; !ok {
			readIdx[c.Key] = len(reads)
			reads = append(reads, clientv3.OpGet(k, clientv3.WithKeysOnly()))
		}
	}
	if f != nil {
		// Only the leader writes: the leader's election key must still be
		// the one it created.
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev))
		reads = append(reads, clientv3.OpGet(f.key, clientv3.WithKeysOnly()))
	}
	ops := make([]clientv3.Op, len(b.Ops))
	for i, op := range b.Ops {
		if op.Delete {
			ops[i] = clientv3.OpDelete(s.prefix + op.Key)
		} else {
			ops[i] = clientv3.OpPut(s.prefix+op.Key, string(op.Value))
		}
	}
	tctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	resp, err := s.cli.Txn(tctx).If(cmps...).Then(ops...).Else(reads...).Commit()
	if err != nil {
		return 0, s.commitError(tctx, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	if len(resp.Responses) != len(reads) {
		return 0, fmt.Errorf("commit: %w: etcd answered a failed txn with %d reads, want %d", store.ErrConflict, len(resp.Responses), len(reads))
	}
	if f != nil {
		rr := resp.Responses[len(reads)-1].GetResponseRange()
		if rr == nil || len(rr.Kvs) == 0 || rr.Kvs[0].CreateRevision != f.rev {
			return 0, fmt.Errorf("commit: %w", ErrNotLeader)
		}
	}
	for _, c := range b.Conds {
		rr := resp.Responses[readIdx[c.Key]].GetResponseRange()
		found, rev := rr != nil && len(rr.Kvs) > 0, int64(0)
		if found {
			rev = rr.Kvs[0].ModRevision
		}
		if !c.Holds(found, rev) {
			return 0, &store.ConflictError{Cond: c, Found: found, Rev: rev}
		}
	}
	// The compares failed but the reads in the same txn say every condition
	// holds: a server bug. Nothing was applied either way.
	return 0, fmt.Errorf("commit: %w: etcd reported a failed compare but every condition holds at rev %d", store.ErrConflict, resp.Header.Revision)
}

// Close implements store.Store. It closes the connection to the cluster;
// a Commit in flight returns an error wrapping store.ErrIndeterminate.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		err := s.cli.Close()
		if err != nil && !errors.Is(err, context.Canceled) {
			s.closeErr = fmt.Errorf("close etcd store: %w", err)
		}
		s.log.Info("etcd store closed", "prefix", s.prefix)
	})
	return s.closeErr
}

// check returns the error for an operation that must not start: the store
// is closed or ctx is already done.
func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return ctx.Err()
}

// readError turns the client's error for a read into the store's: closed,
// a context error naming the last transport failure, or the cause.
func (s *Store) readError(ctx context.Context, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("%w (during the read: %v)", store.ErrClosed, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w (no answer from %s)", ctxError(ctx, err), s.where)
	}
	return err
}

// ctxError is ctx's error, with the client's error appended when it says
// more (such as the connection failure that made the deadline pass).
func ctxError(ctx context.Context, err error) error {
	cerr := ctx.Err()
	if err == nil || errors.Is(err, cerr) || err.Error() == cerr.Error() {
		return cerr
	}
	return fmt.Errorf("%w (etcd: %v)", cerr, err)
}

// commitError classifies a failed Txn. etcd's verdicts that reject a request
// before it is proposed (invalid, too large, not permitted) mean nothing
// was applied; anything else (connection lost, timeout, leader change,
// context done or store closed while in flight) may have been applied and
// wraps store.ErrIndeterminate. The context error is deliberately not
// wrapped: store.Store promises that an error wrapping one changed nothing.
func (s *Store) commitError(ctx context.Context, err error) error {
	switch grpcCode(err) {
	case codes.InvalidArgument, codes.ResourceExhausted, codes.FailedPrecondition,
		codes.PermissionDenied, codes.Unauthenticated, codes.OutOfRange, codes.Unimplemented:
		return fmt.Errorf("commit: etcd rejected the transaction: %w", err)
	}
	var why string
	switch {
	case s.closed.Load():
		why = "store closed"
	case ctx.Err() != nil:
		why = ctx.Err().Error()
	default:
		why = "etcd connection failed"
	}
	return fmt.Errorf("commit: %w: %s while the transaction was in flight to %s, re-read to learn whether it applied (etcd: %v)",
		store.ErrIndeterminate, why, s.where, err)
}

// grpcCode is the gRPC status code of an error from the client, or
// codes.Unknown if it has none.
func grpcCode(err error) codes.Code {
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		return ee.Code()
	}
	if st, ok := status.FromError(err); ok {
		return st.Code()
	}
	return codes.Unknown
}

// value returns v, or an empty non-nil slice: etcd returns nil for an
// empty value.
func value(v []byte) []byte {
	if v == nil {
		return []byte{}
	}
	return v
}
