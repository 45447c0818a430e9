package etcd

import (
	"context"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/tvd-dev/tvd/store"
)

// ErrNotLeader is what Commit returns (wrapping store.ErrConflict) once the
// Store has lost the leadership it won with Campaign: nothing was written.
var ErrNotLeader = fmt.Errorf("%w: this replica is no longer the leader", store.ErrConflict)

// fence is the election key a leader's writes are conditioned on.
type fence struct {
	key string
	rev int64
}

// Leadership is a won election. Lost is closed when the leadership ends
// (the lease expired or was revoked, the session's connection broke, or
// Resign was called); from then on every Commit of the Store fails with
// ErrNotLeader, so a replica that lost the leadership cannot write even
// before it notices.
type Leadership struct {
	s    *Store
	sess *concurrency.Session
	el   *concurrency.Election
	// Lost is closed when the leadership ends.
	Lost <-chan struct{}
}

// Campaign blocks until this replica leads the election named name (under
// the Store's prefix), with id as its value, or ctx ends. The leadership
// lives on a lease of ttl (at least one second): a leader that dies is
// replaced within about ttl. While it leads, every Commit of the Store is
// conditioned on the leadership (the fence), in the same transaction as
// its writes.
func (s *Store) Campaign(ctx context.Context, name, id string, ttl time.Duration) (*Leadership, error) {
	secs := int(ttl / time.Second)
	if secs < 1 {
		secs = 1
	}
	sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(secs), concurrency.WithContext(ctx))
	if err != nil {
		return nil, fmt.Errorf("election %q: session: %w", name, err)
	}
	el := concurrency.NewElection(sess, s.prefix+"election/"+name)
	if err := el.Campaign(ctx, id); err != nil {
		sess.Close()
		return nil, fmt.Errorf("election %q: campaign: %w", name, err)
	}
	s.fence.Store(&fence{key: el.Key(), rev: el.Rev()})
	lost := make(chan struct{})
	go func() {
		<-sess.Done()
		s.fence.Store(&fence{key: el.Key(), rev: -1}) // never matches again
		close(lost)
	}()
	s.log.Info("election won", "election", name, "id", id, "key", el.Key(), "lease_ttl", secs)
	return &Leadership{s: s, sess: sess, el: el, Lost: lost}, nil
}

// Leader returns the value (id) of the current leader of the election
// named name, or "" if there is none.
func (s *Store) Leader(ctx context.Context, name string) (string, error) {
	resp, err := s.cli.Get(ctx, s.prefix+"election/"+name+"/", clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend), clientv3.WithLimit(1))
	if err != nil {
		return "", fmt.Errorf("election %q: %w", name, err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// Resign gives the leadership up (the next candidate takes over at once)
// and ends the session.
func (l *Leadership) Resign(ctx context.Context) error {
	err := l.el.Resign(ctx)
	return errors.Join(err, l.sess.Close())
}
