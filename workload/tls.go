package workload

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// Option tunes TLSConfig, Listen and Dial.
type Option func(*options)

type options struct {
	nonMembers bool
}

// AllowNonMembers lets peers through that policy does not authorise, and
// (on a listener) clients without a certificate, so that the application
// can serve them as non-members (Peer.Member reports false). Chains that
// do not verify against the trust bundle are still refused.
func AllowNonMembers() Option { return func(o *options) { o.nonMembers = true } }

// connStater is a connection with a TLS state (*tls.Conn).
type connStater interface {
	ConnectionState() tls.ConnectionState
}

// TLSConfig returns a TLS configuration for a server (server true) or a
// client: it presents the newest member identity at every handshake and
// verifies and authorises the peer as the package comment says.
func (c *Client) TLSConfig(server bool, opts ...Option) *tls.Config {
	var o options
	for _, f := range opts {
		f(&o)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		// The chain is verified against the trust bundle in
		// VerifyConnection: member certificates name a SPIFFE ID, not a
		// host.
		InsecureSkipVerify: true,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, _, err := c.current()
			return cert, err
		},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _, err := c.current()
			if err != nil && o.nonMembers {
				return &tls.Certificate{}, nil
			}
			return cert, err
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, err := c.authorise(cs, o, true)
			return err
		},
	}
	if server {
		cfg.ClientAuth = tls.RequireAnyClientCert
		if o.nonMembers {
			cfg.ClientAuth = tls.RequestClientCert
		}
	}
	return cfg
}

// authorise verifies the peer's chain and asks about the peer. At a
// handshake the chain must be valid now; later (a live connection across
// a rotation) it must have been valid, and the peer's current standing
// decides.
func (c *Client) authorise(cs tls.ConnectionState, o options, handshake bool) (*Peer, error) {
	if len(cs.PeerCertificates) == 0 {
		if o.nonMembers {
			return &Peer{Reason: "the peer presented no certificate", anonymousNonMember: true, checked: time.Now()}, nil
		}
		return nil, errors.New("workload: the peer presented no certificate")
	}
	_, bundle, err := c.current()
	if err != nil && bundle == nil {
		c.mu.Lock()
		bundle = c.bundle
		c.mu.Unlock()
		if bundle == nil {
			return nil, err
		}
	}
	at := time.Now()
	if leaf := cs.PeerCertificates[0]; !handshake && leaf.NotAfter.Before(at) {
		at = leaf.NotAfter
	}
	if _, err := bundle.Verify(cs.PeerCertificates, at); err != nil {
		return nil, fmt.Errorf("workload: peer certificate: %w", err)
	}
	raw := make([][]byte, len(cs.PeerCertificates))
	for i, crt := range cs.PeerCertificates {
		raw[i] = crt.Raw
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := c.CheckPeer(ctx, raw)
	if err != nil {
		return nil, err
	}
	if !p.Authorized && !o.nonMembers {
		return nil, fmt.Errorf("workload: peer %s is not authorised: %s", p.SPIFFEID, p.Reason)
	}
	return p, nil
}

// PeerInfo says who is at the other end of conn (a connection from Listen
// or Dial, or any *tls.Conn whose handshake is done), checking again when
// the last check is older than CheckInterval.
func (c *Client) PeerInfo(conn net.Conn) (*Peer, error) {
	cs, ok := conn.(connStater)
	if !ok {
		return nil, fmt.Errorf("workload: %T is not a TLS connection", conn)
	}
	if tc, ok := conn.(*tls.Conn); ok {
		if err := tc.Handshake(); err != nil {
			return nil, fmt.Errorf("workload: handshake: %w", err)
		}
	}
	return c.PeerInfoState(cs.ConnectionState())
}

// PeerInfoState is PeerInfo for a connection's TLS state, such as an
// http.Request's TLS field.
func (c *Client) PeerInfoState(cs tls.ConnectionState) (*Peer, error) {
	return c.authorise(cs, options{nonMembers: true}, false)
}

// PeerFromRequest is PeerInfoState for an HTTP request served over a
// Listen listener.
func (c *Client) PeerFromRequest(r *http.Request) (*Peer, error) {
	if r.TLS == nil {
		return nil, errors.New("workload: the request did not come over TLS")
	}
	return c.PeerInfoState(*r.TLS)
}

// Listen announces on the local address with mutual TLS.
func (c *Client) Listen(network, addr string, opts ...Option) (net.Listener, error) {
	l, err := net.Listen(network, addr)
	if err != nil {
		return nil, err
	}
	return tls.NewListener(l, c.TLSConfig(true, opts...)), nil
}

// Dial connects to addr with mutual TLS and completes the handshake.
func (c *Client) Dial(ctx context.Context, network, addr string, opts ...Option) (*tls.Conn, error) {
	d := tls.Dialer{Config: c.TLSConfig(false, opts...)}
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	return conn.(*tls.Conn), nil
}

// HTTPClient returns an HTTP client whose connections are Dial's.
func (c *Client) HTTPClient(opts ...Option) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return c.Dial(ctx, network, addr, opts...)
		},
		ForceAttemptHTTP2: false,
	}}
}
