package controller

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/errgroup"

	"github.com/tvd-dev/tvd/api/client"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/audit"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/web"
)

// Version is the controller's software version, reported to admins.
const Version = "0.1.0"

// Defaults.
const (
	DefaultTrustDomain = "tvd.local"
	DefaultMemberTTL   = 5 * time.Minute
	DefaultNodeTTL     = 24 * time.Hour
	DefaultAdminTTL    = 365 * 24 * time.Hour
	DefaultTokenTTL    = time.Hour
	maxRequestBytes    = 8 << 20
)

// Config configures a Controller.
type Config struct {
	// DataDir holds the key-encryption key, the audit log and the first
	// admin credential. Required.
	DataDir string
	// Store holds the controller's state. Required; the caller owns it.
	Store store.Store
	// SharedStore says that Store is shared by controller replicas (etcd):
	// the audit log and its signing key then live in the store too, so
	// that a replica taking over continues the one log. Only one replica
	// may run at a time (the leader: see store/etcd Campaign), and every
	// replica needs the deployment's key-encryption key (DataDir/kek).
	SharedStore bool
	// Listen is the address to serve on, e.g. "127.0.0.1:7443".
	Listen string
	// Hosts are the names and addresses the server certificate is valid
	// for, besides localhost and the loopback addresses.
	Hosts []string
	// TrustDomain is the deployment's SPIFFE trust domain, fixed when the CA
	// is created. Default "tvd.local".
	TrustDomain string
	// MemberTTL is the lifetime of member certificates. Default 5m.
	MemberTTL time.Duration
	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
	// Out receives the first-start instructions. Default: discard.
	Out io.Writer
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// EKRoots are the CAs trusted to certify TPM endorsement keys (the TPM
	// manufacturers', or the lab's). Nil: TPM enrolment needs EKAllow.
	EKRoots *x509.CertPool
	// EKAllow lists the SHA-256 of endorsement keys trusted without a
	// certificate.
	EKAllow map[[32]byte]bool
}

// Controller is a domain controller.
type Controller struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	st    store.Store
	gs    *groupStore // st: every write in order, reports group-committed
	ids   idCache     // verified client certificate chains
	ca    *ca.CA
	tls   *tls.Config
	audit *auditor

	mu    sync.Mutex // guards s and the store writes that change it
	s     *state
	hub   *hub
	nonce *nonces
	att   attestation
	// webTok signs dashboard login tokens and sessions; its key lives in
	// memory only, so a restart logs every browser out.
	webTok *web.Tokens
	// refusals rate-limits the audit entries of refused handshakes.
	refusals tlsRefusals
	// matrix memoizes the serialized flow matrix of the current policy
	// (flowMatrix); guarded by mu.
	// master derives domain secrets and storage keys (secrets.go).
	master []byte
	matrix struct {
		comp *policy.Compiled
		wire []byte
		id   string
	}
}

// New opens (or, on first start, creates) the deployment: the CA, the
// audit log and the first admin credential.
func New(ctx context.Context, cfg Config) (_ *Controller, err error) {
	if cfg.DataDir == "" || cfg.Store == nil {
		return nil, errors.New("controller: DataDir and Store are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = DefaultTrustDomain
	}
	if cfg.MemberTTL <= 0 {
		cfg.MemberTTL = DefaultMemberTTL
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("controller: data dir: %w", err)
	}
	c := &Controller{cfg: cfg, log: cfg.Logger, now: cfg.Now, hub: newHub(), nonce: newNonces()}
	c.gs = newGroupStore(cfg.Store, cfg.Logger)
	c.st = c.gs
	defer func() {
		if err != nil {
			c.gs.close()
		}
	}()
	c.att.pending = map[string]*pendingEnrol{}
	c.att.states = map[string]cachedState{}
	c.webTok = web.NewTokens(c.now)
	c.att.ekPolicy = attest.EKPolicy{Roots: cfg.EKRoots, Allow: cfg.EKAllow}
	kek, err := ca.LoadOrCreateKEK(filepath.Join(cfg.DataDir, "kek"), nil)
	if err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	first := false
	switch kv, err := c.st.Get(ctx, keyCA); {
	case err == nil:
		c.ca, err = ca.Unmarshal(kv.Value, kek, nil)
		if err != nil {
			return nil, fmt.Errorf("controller: open the deployment CA: %w", err)
		}
	case errors.Is(err, store.ErrNotFound):
		c.ca, err = ca.New(cfg.TrustDomain, c.now(), nil)
		if err != nil {
			return nil, fmt.Errorf("controller: create the deployment CA: %w", err)
		}
		b, err := c.ca.Marshal(kek)
		if err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
		if _, err := c.st.Commit(ctx, store.Batch{Conds: []store.Cond{store.Absent(keyCA)}, Ops: []store.Op{store.Put(keyCA, b)}}); err != nil {
			return nil, fmt.Errorf("controller: store the deployment CA: %w", err)
		}
		first = true
	default:
		return nil, fmt.Errorf("controller: read the store: %w", err)
	}
	c.ca.SetClock(c.now)
	if c.ca.TrustDomain() != cfg.TrustDomain && cfg.TrustDomain != DefaultTrustDomain {
		return nil, fmt.Errorf("controller: the store's CA is for trust domain %q, not %q", c.ca.TrustDomain(), cfg.TrustDomain)
	}
	if c.master, err = loadOrCreateMaster(ctx, c.st, kek); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	var shared *sharedAudit
	if cfg.SharedStore {
		shared = &sharedAudit{st: c.st, kek: kek}
	}
	if c.audit, err = openAuditor(ctx, filepath.Join(cfg.DataDir, "audit"), c.ca.TrustDomain(), c.log, c.now, shared); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if c.s, err = load(ctx, c.st); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if c.s.policy != nil {
		if c.att.verifier, err = c.newVerifier(c.s.policy); err != nil {
			return nil, fmt.Errorf("controller: %w", err)
		}
	}
	if c.s.epoch, err = nextEpoch(ctx, c.st); err != nil {
		return nil, fmt.Errorf("controller: %w", err)
	}
	if err := c.serverTLS(); err != nil {
		return nil, err
	}
	if first {
		if err := c.firstStart(ctx); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// TrustDomain returns the deployment's trust domain.
func (c *Controller) TrustDomain() string { return c.ca.TrustDomain() }

// Bundle returns the deployment's trust bundle.
func (c *Controller) Bundle() *ca.Bundle { return c.ca.Bundle() }

// CAFingerprint returns the hex SHA-256 of the root certificate, which join
// tokens carry so that an agent can authenticate the controller before it
// holds the bundle.
func (c *Controller) CAFingerprint() string {
	sum := sha256.Sum256(c.ca.Certificate().Raw)
	return hex.EncodeToString(sum[:])
}

func (c *Controller) serverTLS() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("controller: server key: %w", err)
	}
	hosts := append([]string{"localhost", "127.0.0.1", "::1"}, c.cfg.Hosts...)
	if h, _, err := net.SplitHostPort(c.cfg.Listen); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
		hosts = append(hosts, h)
	}
	hosts = dedupe(hosts)
	_, der, err := c.ca.IssueServer(hosts, key.Public(), DefaultNodeTTL)
	if err != nil {
		return fmt.Errorf("controller: server certificate: %w", err)
	}
	// The root travels with the leaf so that an enrolling agent can match
	// it against the CA hash in its join token.
	cert := tls.Certificate{Certificate: [][]byte{der, c.ca.Certificate().Raw}, PrivateKey: key}
	// RequestClientCert: the bundle's VerifyPeerCertificate checks every
	// presented chain itself (crypto/tls would otherwise refuse a foreign
	// chain before any hook sees it, and the refusal could not be audited).
	c.tls = c.ca.Bundle().ServerTLSConfig(cert, tls.RequestClientCert)
	c.tls.NextProtos = []string{"h2", "http/1.1"}
	// A client certificate the deployment does not accept (another CA,
	// expired) ends the handshake; the refusal is audited too.
	verify := c.tls.VerifyPeerCertificate
	c.tls.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		err := verify(raw, chains)
		if err != nil {
			c.auditTLSRefusal(raw, err)
		}
		return err
	}
	return nil
}

// tlsRefusals limits how many refused handshakes per second reach the audit
// log, so a flood of them cannot flood the log; the rest are counted in the
// operational log.
type tlsRefusals struct {
	mu      sync.Mutex
	second  int64
	n       int
	dropped int
}

const maxAuditedRefusalsPerSecond = 20

// auditTLSRefusal records a refused client certificate.
func (c *Controller) auditTLSRefusal(raw [][]byte, reason error) {
	now := c.now()
	c.refusals.mu.Lock()
	if s := now.Unix(); s != c.refusals.second {
		if c.refusals.dropped > 0 {
			c.log.Warn("refused TLS handshakes not audited (rate limit)", "count", c.refusals.dropped)
		}
		c.refusals.second, c.refusals.n, c.refusals.dropped = s, 0, 0
	}
	c.refusals.n++
	over := c.refusals.n > maxAuditedRefusalsPerSecond
	if over {
		c.refusals.dropped++
	}
	c.refusals.mu.Unlock()
	if over {
		return
	}
	subject := "unknown client"
	if len(raw) > 0 {
		if leaf, err := x509.ParseCertificate(raw[0]); err == nil {
			subject = leaf.Subject.String()
			if len(leaf.URIs) > 0 {
				subject = leaf.URIs[0].String()
			}
		}
	}
	c.record(context.Background(), audit.Entry{Kind: audit.KindRefuse, Subject: subject, Detail: map[string]string{"reason": "client certificate refused at the TLS handshake: " + reason.Error()}})
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// firstStart creates the first admin credential and says how to use it.
func (c *Controller) firstStart(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("controller: admin key: %w", err)
	}
	_, der, err := c.ca.IssueAdmin("admin", ca.Role{Kind: ca.RoleAdmin}, key.Public(), DefaultAdminTTL)
	if err != nil {
		return fmt.Errorf("controller: admin certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("controller: admin key: %w", err)
	}
	dir := filepath.Join(c.cfg.DataDir, "admin")
	url := "https://" + c.advertised()
	err = client.WriteCredentials(dir, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), c.ca.Bundle().PEM(), url)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	c.record(ctx, audit.Entry{Kind: audit.KindAdmin, Actor: c.self(), Subject: "admin", Detail: map[string]string{"action": "create-deployment", "trust_domain": c.ca.TrustDomain(), "ca_sha256": c.CAFingerprint()}})
	fmt.Fprintf(c.cfg.Out, `tvd controller: created the deployment CA for trust domain %q (root SHA-256 %s).
An admin credential (role admin) is in %s. Use it with:
  export TVD_CREDS=%s
  tvd status
  tvd policy apply examples/outsourcing
  tvd admin token --node NODE      # a one-time join token for an agent
`, c.ca.TrustDomain(), c.CAFingerprint()[:16], dir, dir)
	return nil
}

// advertised is the host:port clients should dial.
func (c *Controller) advertised() string {
	h, p, err := net.SplitHostPort(c.cfg.Listen)
	if err != nil {
		return c.cfg.Listen
	}
	if h == "" || h == "0.0.0.0" || h == "::" {
		h = "127.0.0.1"
		if len(c.cfg.Hosts) > 0 {
			h = c.cfg.Hosts[0]
		}
	}
	return net.JoinHostPort(h, p)
}

// self is the controller's identity as an audit actor.
func (c *Controller) self() string { return "spiffe://" + c.ca.TrustDomain() + "/controller" }

// compressMinBytes is the smallest response the API compresses.
const compressMinBytes = 4 << 10

// Handler returns the HTTP handler serving both services. It expects to
// run behind the controller's TLS configuration (see Serve).
func (c *Controller) Handler() http.Handler {
	mux := http.NewServeMux()
	// Responses under compressMinBytes go uncompressed: gzip of a report's
	// answer (a nonce and a few verdicts) cost a fifth of the report path's
	// CPU and saved nothing; plans and listings are still compressed.
	opts := []connect.HandlerOption{connect.WithReadMaxBytes(maxRequestBytes), connect.WithCompressMinBytes(compressMinBytes)}
	mux.Handle(tvdv1connect.NewAgentServiceHandler(&agentService{c}, opts...))
	mux.Handle(tvdv1connect.NewAdminServiceHandler(&adminService{c}, opts...))
	mux.Handle(tvdv1connect.NewEEServiceHandler(&eeService{c}, opts...))
	// Migration archives are bigger than any other request.
	mux.Handle(tvdv1connect.NewEEAgentServiceHandler(&eeAgentService{c}, connect.WithReadMaxBytes(maxArchiveBytes+1<<20)))
	mux.Handle(tvdv1connect.NewSecretServiceHandler(&secretService{c}, opts...))
	mux.Handle(web.Prefix, c.WebHandler())
	return c.identify(mux)
}

// TLSConfig returns the server TLS configuration.
func (c *Controller) TLSConfig() *tls.Config { return c.tls.Clone() }

// Serve serves the API on l until ctx ends.
func (c *Controller) Serve(ctx context.Context, l net.Listener) error {
	srv := &http.Server{
		Handler:           c.Handler(),
		TLSConfig:         c.TLSConfig(),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(c.log.Handler(), slog.LevelDebug),
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	// HTTP/2 comes with the TLS listener: NextProtos offers h2.
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		err := srv.Serve(tls.NewListener(l, srv.TLSConfig))
		if errors.Is(err, http.ErrServerClosed) {
			return nil
		}
		return err
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		c.hub.closeAll()
		return srv.Shutdown(sctx)
	})
	return g.Wait()
}

// Run runs the controller: the API server on cfg.Listen, the audit batcher
// and the deadline sweep, until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	l, err := net.Listen("tcp", c.cfg.Listen)
	if err != nil {
		return fmt.Errorf("controller: listen: %w", err)
	}
	c.log.InfoContext(ctx, "controller listening", "addr", l.Addr().String(), "trust_domain", c.ca.TrustDomain())
	return c.RunListener(ctx, l)
}

// RunListener is Run on a listener the caller opened.
func (c *Controller) RunListener(ctx context.Context, l net.Listener) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.audit.run(gctx) })
	g.Go(func() error { return c.Serve(gctx, l) })
	g.Go(func() error { return c.sweep(gctx) })
	g.Go(func() error {
		select {
		case <-c.gs.failed:
			return fmt.Errorf("controller: stopping: %w", c.gs.ferr)
		case <-gctx.Done():
			return nil
		}
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// Close releases the audit log. The store belongs to the caller.
func (c *Controller) Close() error {
	err := c.audit.close()
	c.gs.close()
	return err
}

// nextEpoch counts this start of the controller in the store. Plan versions
// are epoch<<32 plus a counter, so an agent never sees a version go back
// after a restart.
func nextEpoch(ctx context.Context, st store.Store) (uint64, error) {
	var epoch uint64
	_, err := store.Update(ctx, st, keyEpoch, func(kv store.KV, found bool) ([]byte, error) {
		epoch = 1
		if found {
			v, err := strconv.ParseUint(string(kv.Value), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("epoch %q: %w", kv.Value, err)
			}
			epoch = v + 1
		}
		return []byte(strconv.FormatUint(epoch, 10)), nil
	})
	if err != nil {
		return 0, fmt.Errorf("count controller starts: %w", err)
	}
	return epoch, nil
}
