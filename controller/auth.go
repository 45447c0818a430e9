package controller

import (
	"context"
	"net/http"

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
			cl.id, cl.err = c.ca.Bundle().PeerIdentity(r.TLS, c.now())
			cl.ok = cl.err == nil
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), identityKey{}, cl)))
	})
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
