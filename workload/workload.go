// Package workload is the Go SDK of the TVD API for applications running in
// an execution environment (paper §2.4): an application gets mutually
// authenticated, policy-authorised channels, learns who its peers are,
// reads its domain's secrets and keeps data encrypted at rest, without
// implementing any of it.
//
// It talks to the node agent's Workload API on the unix socket mounted into
// every EE at /run/tvd/workload.sock (DefaultSocket; the TVD_WORKLOAD_SOCKET
// environment variable overrides it). Nothing needs configuring inside an
// EE:
//
//	l, err := workload.Listen("tcp", ":8443")        // mutual TLS, peers checked
//	peer, err := workload.PeerInfo(conn)             // domain, role, trust, verdict
//	key, err := workload.Secret(ctx, "db-password")  // a domain secret
//	st, err := workload.OpenStore("/data")           // AES-GCM at rest
//
// # Identity and rotation
//
// The agent streams the EE's member identity (certificate chain, key,
// trust bundle) and a new one at every renewal (half the certificate's
// five-minute life). Every new handshake uses the newest; connections
// already open are not touched by a rotation.
//
// # Authorisation
//
// A handshake verifies the peer's chain against the trust bundle, then asks
// the agent (which asks the controller) about the peer: it is authorised if
// it is an admitted member in good standing with a fresh verdict, and the
// flow matrix lets the two members' domains and roles talk directly. An
// unauthorised peer's handshake fails, unless the listener was opened with
// AllowNonMembers, which admits it (and clients without a certificate) for
// the application to treat as a non-member.
//
// # What it does NOT do
//
//   - Hide secrets from the application: once Secret returns a value, the
//     application holds it. Withdrawal (a violation, a quarantine, a
//     revocation) stops further releases; Store asks for the key at every
//     operation, so a withdrawn member can no longer decrypt its store.
//   - Re-check a peer for every byte: a peer check is cached for
//     CheckInterval; PeerInfo after that asks again.
package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/ca"
)

// DefaultSocket is where the agent's Workload API socket is mounted in an
// EE.
const DefaultSocket = "/run/tvd/workload.sock"

// EnvSocket names the environment variable that overrides DefaultSocket.
const EnvSocket = "TVD_WORKLOAD_SOCKET"

// CheckInterval is how long a peer check is reused.
const CheckInterval = time.Second

// ErrNoIdentity is returned while the EE has no member identity (not yet
// admitted, or no longer a member).
var ErrNoIdentity = errors.New("workload: the EE holds no member identity")

// Identity is the EE's member identity.
type Identity struct {
	SPIFFEID string
	Domain   string
	Role     string
	EE       string
	Expires  time.Time
}

// Peer is what the TVD says about the other end of a connection.
type Peer struct {
	// SPIFFEID is the peer's identity; empty if it presented none or one
	// that is not a member identity of this deployment.
	SPIFFEID           string
	Domain, Role, EE   string
	SameDomain         bool // a member of this EE's domain
	Authorized         bool // policy lets the two talk, and the peer is in good standing
	Assurance          string
	Isolation          string
	Status             string // "verified", "violated", ...
	VerifiedAt         time.Time
	VerdictFresh       bool
	Quarantined        bool
	Reason             string // why not authorised, if so
	checked            time.Time
	leaf               [32]byte
	anonymousNonMember bool
}

// Member reports whether the peer is an authorised member of this EE's own
// domain: the shop's "TVD member".
func (p *Peer) Member() bool { return p != nil && p.SameDomain && p.Authorized && p.VerdictFresh }

// Client is a connection to the Workload API.
type Client struct {
	api    tvdv1connect.WorkloadServiceClient
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	cert   *tls.Certificate
	id     Identity
	bundle *ca.Bundle
	idErr  error
	ready  chan struct{} // closed at the first identity or a final error
	rot    int           // identities received
	peers  map[[32]byte]*Peer
}

// Open connects to the Workload API at the socket named by EnvSocket, or
// DefaultSocket, and waits until the EE's first identity arrives or ctx
// ends.
func Open(ctx context.Context) (*Client, error) {
	path := os.Getenv(EnvSocket)
	if path == "" {
		path = DefaultSocket
	}
	return OpenSocket(ctx, path)
}

// OpenSocket is Open for the socket at path; it waits for the socket to
// appear.
func OpenSocket(ctx context.Context, path string) (*Client, error) {
	// The application may start before the agent serves its socket: wait
	// for it as long as ctx allows.
	for {
		_, err := os.Stat(path)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("workload: API socket: %w (is this an EE of a TVD node? set %s to override)", err, EnvSocket)
		case <-time.After(100 * time.Millisecond):
		}
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		MaxIdleConns: 4,
	}
	c := &Client{
		api:   tvdv1connect.NewWorkloadServiceClient(&http.Client{Transport: tr}, "http://workload.tvd"),
		ready: make(chan struct{}),
		done:  make(chan struct{}),
		peers: map[[32]byte]*Peer{},
	}
	wctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.watch(wctx)
	select {
	case <-ctx.Done():
		c.Close()
		return nil, fmt.Errorf("workload: waiting for the EE's identity: %w", ctx.Err())
	case <-c.ready:
	}
	c.mu.Lock()
	err := c.idErr
	c.mu.Unlock()
	if err != nil && c.cert == nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close stops the identity stream.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	return nil
}

// watch keeps the identity stream open.
func (c *Client) watch(ctx context.Context) {
	defer close(c.done)
	readyOnce := sync.OnceFunc(func() { close(c.ready) })
	defer readyOnce()
	for attempt := 0; ctx.Err() == nil; attempt++ {
		stream, err := c.api.WatchIdentity(ctx, connect.NewRequest(&tvdv1.WatchIdentityRequest{}))
		if err == nil {
			for stream.Receive() {
				attempt = 0
				if err := c.setIdentity(stream.Msg().GetIdentity()); err != nil {
					c.setErr(err)
				}
				readyOnce()
			}
			err = stream.Err()
			stream.Close()
		}
		if ctx.Err() != nil {
			return
		}
		if connect.CodeOf(err) == connect.CodeFailedPrecondition {
			// No longer a member: forget the identity.
			c.mu.Lock()
			c.cert, c.idErr = nil, fmt.Errorf("%w: %v", ErrNoIdentity, err)
			c.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(time.Duration(attempt+1)*200*time.Millisecond, 3*time.Second)):
		}
	}
}

func (c *Client) setErr(err error) {
	c.mu.Lock()
	c.idErr = err
	c.mu.Unlock()
}

func (c *Client) setIdentity(w *tvdv1.WorkloadIdentity) error {
	if len(w.GetCertChain()) == 0 {
		return errors.New("workload: identity without a certificate")
	}
	k, err := x509.ParsePKCS8PrivateKey(w.GetPrivateKey())
	if err != nil {
		return fmt.Errorf("workload: identity key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return errors.New("workload: identity key is not ECDSA")
	}
	leaf, err := x509.ParseCertificate(w.GetCertChain()[0])
	if err != nil {
		return fmt.Errorf("workload: identity certificate: %w", err)
	}
	td, _, _ := splitSPIFFE(w.GetSpiffeId())
	b, err := ca.ParseBundle(td, w.GetTrustBundle())
	if err != nil {
		return fmt.Errorf("workload: trust bundle: %w", err)
	}
	m := w.GetMember()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cert = &tls.Certificate{Certificate: w.GetCertChain(), PrivateKey: key, Leaf: leaf}
	c.id = Identity{SPIFFEID: w.GetSpiffeId(), Domain: m.GetDomain(), Role: m.GetRole(), EE: m.GetEe(), Expires: leaf.NotAfter}
	c.bundle = b
	c.idErr = nil
	c.rot++
	return nil
}

func splitSPIFFE(id string) (td, path string, ok bool) {
	const p = "spiffe://"
	if len(id) < len(p) || id[:len(p)] != p {
		return "", "", false
	}
	rest := id[len(p):]
	for i := range len(rest) {
		if rest[i] == '/' {
			return rest[:i], rest[i:], true
		}
	}
	return rest, "", true
}

// Identity returns the EE's current identity.
func (c *Client) Identity() (Identity, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert == nil {
		if c.idErr != nil {
			return Identity{}, c.idErr
		}
		return Identity{}, ErrNoIdentity
	}
	return c.id, nil
}

// Rotations returns how many identities the stream has delivered.
func (c *Client) Rotations() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rot
}

func (c *Client) current() (*tls.Certificate, *ca.Bundle, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cert == nil {
		if c.idErr != nil {
			return nil, nil, c.idErr
		}
		return nil, nil, ErrNoIdentity
	}
	return c.cert, c.bundle, nil
}

// Secret returns the domain secret name.
func (c *Client) Secret(ctx context.Context, name string) ([]byte, error) {
	resp, err := c.api.GetSecret(ctx, connect.NewRequest(&tvdv1.GetSecretRequest{Name: name}))
	if err != nil {
		return nil, fmt.Errorf("workload: secret %q: %w", name, err)
	}
	return resp.Msg.GetValue(), nil
}

// CheckPeer asks the TVD about the holder of a certificate chain (DER,
// leaf first).
func (c *Client) CheckPeer(ctx context.Context, chain [][]byte) (*Peer, error) {
	if len(chain) == 0 {
		return &Peer{Reason: "the peer presented no certificate", anonymousNonMember: true, checked: time.Now()}, nil
	}
	leaf := sha256.Sum256(chain[0])
	c.mu.Lock()
	if p := c.peers[leaf]; p != nil && time.Since(p.checked) < CheckInterval {
		c.mu.Unlock()
		cp := *p
		return &cp, nil
	}
	c.mu.Unlock()
	resp, err := c.api.CheckPeer(ctx, connect.NewRequest(&tvdv1.CheckPeerRequest{CertChain: chain}))
	if err != nil {
		return nil, fmt.Errorf("workload: check peer: %w", err)
	}
	pi := resp.Msg.GetPeer()
	p := &Peer{SPIFFEID: pi.GetSpiffeId(), Domain: pi.GetMember().GetDomain(), Role: pi.GetMember().GetRole(), EE: pi.GetMember().GetEe(),
		SameDomain: pi.GetSameDomain(), Authorized: pi.GetAuthorized(), Assurance: pi.GetAssurance(), Isolation: pi.GetIsolation(),
		VerdictFresh: pi.GetVerdictFresh(), Quarantined: pi.GetQuarantined(), Reason: pi.GetReason(), checked: time.Now(), leaf: leaf}
	if s := pi.GetStatus(); s != tvdv1.Status_STATUS_UNSPECIFIED {
		p.Status = statusName(s)
	}
	if pi.GetVerifiedAt() != nil {
		p.VerifiedAt = pi.GetVerifiedAt().AsTime()
	}
	c.mu.Lock()
	if len(c.peers) > 4096 {
		clear(c.peers)
	}
	c.peers[leaf] = p
	c.mu.Unlock()
	cp := *p
	return &cp, nil
}

func statusName(s tvdv1.Status) string {
	switch s {
	case tvdv1.Status_STATUS_VERIFIED:
		return "verified"
	case tvdv1.Status_STATUS_VIOLATED:
		return "violated"
	}
	return "unknown"
}
