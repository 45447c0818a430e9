package controller

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"net/http"
	"sync"
	"time"

	"github.com/tvd-dev/tvd/ca"
)

type identityKey struct{}

// caller is who made a request: a verified identity, or none.
type caller struct {
	id  ca.Identity
	ok  bool
	err error // why the presented certificate was not accepted
}

// identify verifies the client certificate of every request and puts the
// caller in the request context. TLS has already checked the chain; this
// parses the identity once for the handlers.
func (c *Controller) identify(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var cl caller
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			cl.id, cl.err = c.ids.identity(c.ca.Bundle(), r.TLS.PeerCertificates, c.now())
			cl.ok = cl.err == nil
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, cl)))
	})
}

// idCache remembers the identities of certificate chains already verified
// against the bundle, so that an agent's chain is verified once, not on
// every report. An entry holds only while every certificate of the chain
// is within its validity period; a different bundle empties the cache.
// Revocation is not the cache's business: the callers compare serials with
// the current records (requireNode).
type idCache struct {
	mu     sync.Mutex
	bundle *ca.Bundle
	m      map[[32]byte]cachedID
}

type cachedID struct {
	id          ca.Identity
	from, until time.Time
}

// maxCachedIDs bounds the cache; when full it starts again.
const maxCachedIDs = 1 << 16

func (ic *idCache) identity(b *ca.Bundle, chain []*x509.Certificate, now time.Time) (ca.Identity, error) {
	h := sha256.New()
	from, until := time.Time{}, time.Time{}
	for i, c := range chain {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(c.Raw)))
		h.Write(n[:])
		h.Write(c.Raw)
		if i == 0 || c.NotBefore.After(from) {
			from = c.NotBefore
		}
		if i == 0 || c.NotAfter.Before(until) {
			until = c.NotAfter
		}
	}
	var key [32]byte
	h.Sum(key[:0])
	ic.mu.Lock()
	if ic.bundle != b {
		ic.bundle, ic.m = b, map[[32]byte]cachedID{}
	}
	e, ok := ic.m[key]
	ic.mu.Unlock()
	if ok && !now.Before(e.from) && now.Before(e.until) {
		return e.id, nil
	}
	id, err := b.Verify(chain, now)
	if err != nil {
		return id, err
	}
	ic.mu.Lock()
	if ic.bundle == b {
		if len(ic.m) >= maxCachedIDs {
			ic.m = map[[32]byte]cachedID{}
		}
		ic.m[key] = cachedID{id: id, from: from, until: until}
	}
	ic.mu.Unlock()
	return id, nil
}

func callerOf(ctx context.Context) caller {
	cl, _ := ctx.Value(identityKey{}).(caller)
	return cl
}

// requireNode returns the calling node, which must be the node named in the
// request, enrolled and not departed.
func (c *Controller) requireNode(ctx context.Context, named string) (*nodeRec, error) {
	cl := callerOf(ctx)
	if !cl.ok || cl.id.Kind != ca.KindNode {
		return nil, errUnauthenticated("this call needs a node certificate from the deployment CA")
	}
	if named != cl.id.Node {
		return nil, errDenied("node %q may not act for node %q", cl.id.Node, named)
	}
	n := c.s.nodes[named]
	if n == nil || n.Left {
		return nil, errDenied("node %q is not enrolled", named)
	}
	if n.CertSerial != cl.id.Serial {
		return nil, errDenied("node %q presented a certificate that is no longer its current one", named)
	}
	return n, nil
}

// requireAdmin returns the calling administrator's identity.
func requireAdmin(ctx context.Context) (ca.Identity, error) {
	cl := callerOf(ctx)
	if !cl.ok || cl.id.Kind != ca.KindAdmin {
		return ca.Identity{}, errUnauthenticated("this call needs an admin certificate from the deployment CA (tvd admin cert)")
	}
	return cl.id, nil
}
