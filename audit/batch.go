package audit

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrClosed is returned by Batcher.Append when the batcher's Run has ended.
var ErrClosed = errors.New("audit: batcher is not running")

// BatcherConfig tunes a Batcher.
type BatcherConfig struct {
	// MaxBatch flushes once this many entries are waiting. Default 1024.
	MaxBatch int
	// MaxDelay is the longest the first waiting entry is held for more to
	// arrive. Default 1ms; a negative value flushes whatever is waiting at
	// once (pure group commit).
	MaxDelay time.Duration
}

// Batcher groups concurrent appends into one Log.Append (one storage write,
// one fsync, one signed checkpoint) to raise throughput. Callers use Append;
// one goroutine runs Run.
type Batcher struct {
	log      *Log
	maxBatch int
	maxDelay time.Duration
	reqs     chan *batchReq
	done     chan struct{}
}

type batchReq struct {
	p   prepared
	res chan batchRes
}

type batchRes struct {
	first uint64
	err   error
}

// NewBatcher returns a batcher appending to l. Call Run to start it.
func NewBatcher(l *Log, cfg BatcherConfig) *Batcher {
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1024
	}
	if cfg.MaxDelay == 0 {
		cfg.MaxDelay = time.Millisecond
	}
	return &Batcher{
		log:      l,
		maxBatch: cfg.MaxBatch,
		maxDelay: cfg.MaxDelay,
		reqs:     make(chan *batchReq),
		done:     make(chan struct{}),
	}
}

// Append encodes entries (in the caller's goroutine), hands them to Run and
// waits until they are durably stored and covered by a signed checkpoint. The
// entries of one call stay contiguous; it returns the index of the first.
// As with Log.Append, an error wrapping ErrCheckpoint means the entries were
// stored (the index is valid). If ctx ends while waiting, Append returns
// ctx's error but the entries may still be appended.
func (b *Batcher) Append(ctx context.Context, entries ...Entry) (uint64, error) {
	p, err := b.log.prepare(entries)
	if err != nil {
		return 0, fmt.Errorf("append: %w", err)
	}
	r := &batchReq{p: p, res: make(chan batchRes, 1)}
	select {
	case b.reqs <- r:
	case <-b.done:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	select {
	case res := <-r.res:
		return res.first, res.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// Run collects and flushes batches until ctx ends. A batch that is being
// flushed when ctx ends is completed first. Run returns ctx's error.
func (b *Batcher) Run(ctx context.Context) error {
	defer close(b.done)
	flushCtx := context.WithoutCancel(ctx)
	var timer *time.Timer
	for {
		var first *batchReq
		select {
		case <-ctx.Done():
			return ctx.Err()
		case first = <-b.reqs:
		}
		batch := []*batchReq{first}
		n := len(first.p.leaves)
		if b.maxDelay > 0 && n < b.maxBatch {
			if timer == nil {
				timer = time.NewTimer(b.maxDelay)
			} else {
				timer.Reset(b.maxDelay)
			}
		collect:
			for n < b.maxBatch {
				select {
				case r := <-b.reqs:
					batch = append(batch, r)
					n += len(r.p.leaves)
				case <-timer.C:
					break collect
				case <-ctx.Done():
					break collect
				}
			}
			timer.Stop()
		} else {
		drain:
			for n < b.maxBatch {
				select {
				case r := <-b.reqs:
					batch = append(batch, r)
					n += len(r.p.leaves)
				default:
					break drain
				}
			}
		}
		b.flush(flushCtx, batch, n)
	}
}

func (b *Batcher) flush(ctx context.Context, batch []*batchReq, n int) {
	all := prepared{leaves: make([][]byte, 0, n), hashes: make([][]byte, 0, n)}
	for _, r := range batch {
		all.leaves = append(all.leaves, r.p.leaves...)
		all.hashes = append(all.hashes, r.p.hashes...)
	}
	first, err := b.log.appendPrepared(ctx, all)
	if err != nil && !errors.Is(err, ErrCheckpoint) {
		for _, r := range batch {
			r.res <- batchRes{err: err}
		}
		return
	}
	for _, r := range batch {
		r.res <- batchRes{first: first, err: err}
		first += uint64(len(r.p.leaves))
	}
}
