package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/tvd-dev/tvd/store"
)

// groupStore passes every Commit of the controller through one goroutine,
// in the order the calls were made, and merges runs of unconditional
// batches into one store transaction (group commit: with bbolt, one fsync
// for many reports). Reads go straight to the store.
//
// Order matters because the controller applies a report's changes to its
// memory before they are durable (see Controller.report): a later write of
// the same key, by any path, is queued behind it and so lands after it.
//
// A merged transaction that fails is retried a few times; if it still
// fails, every waiting caller gets the error and the store is marked
// failed: the controller's memory may then be ahead of the store, so Run
// stops (fail-stop; a restart reloads the store).
type groupStore struct {
	store.Store
	log  *slog.Logger
	reqs chan *commitReq

	mu     sync.Mutex
	closed bool
	failed chan struct{} // closed when a commit failed for good
	ferr   error
	done   chan struct{} // closed when run returns
}

type commitReq struct {
	b    store.Batch
	rev  int64
	err  error
	done chan struct{}
}

func newGroupStore(st store.Store, log *slog.Logger) *groupStore {
	g := &groupStore{Store: st, log: log, reqs: make(chan *commitReq, 4096), failed: make(chan struct{}), done: make(chan struct{})}
	go g.run()
	return g
}

// submit queues b and returns the request to wait on (its done channel).
func (g *groupStore) submit(b store.Batch) *commitReq {
	r := &commitReq{b: b, done: make(chan struct{})}
	if err := b.Validate(); err != nil {
		r.err = fmt.Errorf("commit: %w", err)
		close(r.done)
		return r
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		r.err = errors.New("commit: the controller is closing")
		close(r.done)
		return r
	}
	select {
	case <-g.failed:
		r.err = fmt.Errorf("commit: the store failed earlier: %w", g.ferr)
		close(r.done)
		return r
	default:
	}
	g.reqs <- r
	return r
}

// Commit implements store.Store: it waits for the batch's turn and its
// transaction. It does not give up when ctx ends: a queued write is
// applied in order or not at all.
func (g *groupStore) Commit(ctx context.Context, b store.Batch) (int64, error) {
	r := g.submit(b)
	<-r.done
	return r.rev, r.err
}

// close stops the committer after the queued batches are written.
func (g *groupStore) close() {
	g.mu.Lock()
	if !g.closed {
		g.closed = true
		close(g.reqs)
	}
	g.mu.Unlock()
	<-g.done
}

func (g *groupStore) run() {
	defer close(g.done)
	var next *commitReq
	for {
		r := next
		next = nil
		if r == nil {
			var ok bool
			if r, ok = <-g.reqs; !ok {
				return
			}
		}
		group := []*commitReq{r}
		merged := r.b
		if len(r.b.Conds) == 0 {
			// Take queued unconditional batches while they fit in one
			// transaction; a later write of a key replaces an earlier one.
			ops, size := len(r.b.Ops), batchBytes(r.b)
		take:
			for {
				select {
				case n, ok := <-g.reqs:
					if !ok {
						break take
					}
					nb := batchBytes(n.b)
					if len(n.b.Conds) > 0 || ops+len(n.b.Ops) > store.MaxBatchOps || size+nb > store.MaxBatchBytes {
						next = n
						break take
					}
					group = append(group, n)
					ops += len(n.b.Ops)
					size += nb
				default:
					break take
				}
			}
			if len(group) > 1 {
				merged = mergeBatches(group)
			}
		}
		rev, err := g.Store.Commit(context.Background(), merged)
		for attempt := 1; err != nil && len(merged.Conds) == 0 && attempt <= 4 && !errors.Is(err, store.ErrInvalid) && !errors.Is(err, store.ErrConflict); attempt++ {
			g.log.Warn("store commit failed; retrying", "attempt", attempt, "batches", len(group), "err", err)
			time.Sleep(time.Duration(attempt) * 100 * time.Millisecond)
			rev, err = g.Store.Commit(context.Background(), merged)
		}
		if err != nil && len(merged.Conds) == 0 && !errors.Is(err, store.ErrInvalid) {
			g.fail(err)
		}
		for _, q := range group {
			q.rev, q.err = rev, err
			close(q.done)
		}
	}
}

// fail marks the store failed: an unconditional write (a report's, whose
// changes the controller already holds in memory) did not land.
func (g *groupStore) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-g.failed:
	default:
		g.ferr = err
		close(g.failed)
		g.log.Error("store write failed for good: the controller's memory may be ahead of the store; stopping", "err", err)
	}
}

func batchBytes(b store.Batch) int {
	n := 0
	for _, op := range b.Ops {
		n += len(op.Key) + len(op.Value)
	}
	return n
}

// mergeBatches joins unconditional batches in order; a key written by
// several keeps its last write, at the position of that write.
func mergeBatches(group []*commitReq) store.Batch {
	last := map[string]int{}
	var all []store.Op
	for _, r := range group {
		for _, op := range r.b.Ops {
			last[op.Key] = len(all)
			all = append(all, op)
		}
	}
	out := store.Batch{Ops: make([]store.Op, 0, len(last))}
	for i, op := range all {
		if last[op.Key] == i {
			out.Ops = append(out.Ops, op)
		}
	}
	return out
}
