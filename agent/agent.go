// Package agent is the TVD node agent, the paper's container (§2.3): it
// enrols its node with the domain controller, declares the EEs the node
// hosts, keeps a plan stream open, applies each plan incrementally, reports
// back continuously, renews member certificates while they are in good
// standing, and keeps working on its last plan when the controller is
// unreachable, as the domains' controller-loss rule says.
//
// It also serves each EE's Workload API (workload.go, docs/workload.md) on
// a unix socket of its own: the EE's member identity, peer checks, domain
// secrets and the protected storage key, the last two held in memory only.
//
// The agent reaches the controller only through api/client.
package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
	"github.com/tvd-dev/tvd/ca"
)

// Version is the agent's software version.
const Version = "0.1.0"

// Config configures an Agent.
type Config struct {
	// Controller is the controller's URL, https://HOST:PORT, or several
	// replicas' URLs separated by commas (see api/client.New).
	Controller string
	// DataDir holds the node's keys, certificates and last plan.
	DataDir string
	// JoinToken enrols the node the first time (tvd admin token).
	JoinToken string
	// Node is the node's configuration: its name and EEs.
	Node *NodeConfig
	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// ReportEvery is the longest time between reports when the controller
	// asks for none sooner. Default 5s.
	ReportEvery time.Duration
	// DataPlane programs the node's overlay and flow rules from each plan;
	// nil leaves the data plane alone (the node only holds identities).
	DataPlane DataPlane
	// EEs runs the node's execution environments; nil runs none.
	EEs EEHost
	// TPM, when set, enrols the node at TPM assurance and quotes every
	// report; nil enrols by join token alone (implicit assurance).
	TPM *tpm.TPM
}

// DataPlane programs the node's protected channels and flow enforcement
// (ARCHITECTURE §6). The agent calls Apply with every new plan, in order,
// from one goroutine; Apply changes only what differs from the previous
// plan, and returns the per-domain state to acknowledge and the node's
// channel public keys to publish.
type DataPlane interface {
	Apply(ctx context.Context, p *tvdv1.Plan) (acks []*tvdv1.DomainAck, keys []*tvdv1.ChannelKey, err error)
	Close() error
}

// imageResolver is implemented by EE hosts that know the digest of the
// image an EE runs.
type imageResolver interface {
	ResolveImage(ref string) (dir, digest string, err error)
}

// isolationReporter is implemented by EE hosts that know how strongly
// their driver isolates EEs ("strong" or "weak").
type isolationReporter interface{ Isolation() string }

// trustMarker is implemented by EE hosts that keep a trusted snapshot of
// each EE for the rollback reaction.
type trustMarker interface {
	MarkTrusted(ctx context.Context, ee string) error
}

// EEHost creates, runs and controls the node's EEs (the paper's
// container). The agent starts it before enrolling, asks it for status on
// every report, and hands it the plan's instructions (freeze, rollback).
type EEHost interface {
	Start(ctx context.Context, ees []EEConfig) error
	Status() []*tvdv1.EEStatus
	Do(ctx context.Context, in *tvdv1.Instruction) error
	Close() error
}

// Agent is a node agent.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	now  func() time.Time
	name string

	nodeKey *ecdsa.PrivateKey
	keyHash [32]byte // SHA-256 of the node TLS key, bound into quotes
	att     *attester
	creds   *client.Credentials
	cl      *client.Client

	mu          sync.Mutex
	plan        *tvdv1.Plan // the plan in force
	nonce       []byte
	pendingAcks []*tvdv1.PlanAck
	domains     []*tvdv1.DomainAck // the data plane per domain after the last plan
	lastContact time.Time
	lost        bool
	kick        chan struct{}
	// renewStream, set while a plan stream is open, ends it so that the
	// watch loop reopens it at once: a new stream starts with a fresh nonce.
	renewStream context.CancelFunc
	channelKeys []*tvdv1.ChannelKey
	done        map[string]bool         // instructions and EE operations carried out
	jr          *journal                // the same, durably (see journal)
	wl          map[string]*http.Server // Workload API servers, by EE
	wlCtx       context.Context         // Run's, for the servers; nil when not running
	eeOps       chan *tvdv1.EEOperationRequest
	eeResults   []*tvdv1.EEOperationResult // for the next report
	joins       []*tvdv1.EESpec            // EEs created since, asking to join
	trusted     map[string]bool            // EEs with a trusted snapshot from a verified state
	// Workload API (workload.go): idWake is closed when a member identity
	// changes; released holds what the controller released per EE, in
	// memory only.
	idWake   chan struct{}
	released map[string]*released
}

// New prepares an agent: it loads or creates the node's key and, if the
// node is not enrolled yet, enrols it with the join token.
func New(ctx context.Context, cfg Config) (*Agent, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("agent: --data DIR is required")
	}
	if cfg.Node == nil {
		cfg.Node = &NodeConfig{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ReportEvery <= 0 {
		cfg.ReportEvery = 5 * time.Second
	}
	a := &Agent{cfg: cfg, log: cfg.Logger, now: cfg.Now, kick: make(chan struct{}, 1), done: map[string]bool{}, eeOps: make(chan *tvdv1.EEOperationRequest, 64), trusted: map[string]bool{}, idWake: make(chan struct{}), released: map[string]*released{}}
	a.name = cfg.Node.Node
	if a.name == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("agent: node name: %w", err)
		}
		a.name = h
	}
	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "members"), 0o700); err != nil {
		return nil, fmt.Errorf("agent: data dir: %w", err)
	}
	var err error
	if a.nodeKey, err = loadOrCreateKey(filepath.Join(cfg.DataDir, "node.key")); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.keyHash, err = attest.TLSKeyHash(a.nodeKey.Public()); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.TPM != nil {
		if a.att, err = openAttester(cfg.TPM, cfg.DataDir); err != nil {
			return nil, fmt.Errorf("agent: TPM: %w", err)
		}
	}
	credDir := filepath.Join(cfg.DataDir, "node")
	if _, err := os.Stat(filepath.Join(credDir, "cert.pem")); errors.Is(err, os.ErrNotExist) {
		if err := a.enroll(ctx, credDir); err != nil {
			return nil, err
		}
	}
	if a.creds, err = client.LoadDir(credDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.cl, err = client.Dial(a.creds, cfg.Controller); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	created, err := loadCreated(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	for _, e := range created {
		if !slices.ContainsFunc(cfg.Node.EEs, func(x EEConfig) bool { return x.Name == e.Name }) {
			cfg.Node.EEs = append(cfg.Node.EEs, e)
		}
	}
	if a.jr, err = openJournal(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	for id := range a.jr.entries {
		a.done[id] = true
	}
	if rec := a.jr.recovered(); len(rec) > 0 {
		a.eeResults = append(a.eeResults, rec...)
		a.log.Info("operation journal: outcomes to report again", "operations", len(rec))
	}
	if p, err := a.loadPlan(); err == nil {
		a.plan = p
		a.log.Info("resuming on the last plan", "version", p.GetVersion(), "members", len(p.GetMembers()))
	}
	return a, nil
}

// Name returns the node's name.
func (a *Agent) Name() string { return a.name }

func (a *Agent) eeSpecs() ([]*tvdv1.EESpec, error) {
	var out []*tvdv1.EESpec
	for _, e := range a.cfg.Node.EEs {
		s, err := a.specFor(e)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// specFor is the request of one EE to join its domain, with a certificate
// request for its member key.
func (a *Agent) specFor(e EEConfig) (*tvdv1.EESpec, error) {
	key, err := loadOrCreateKey(filepath.Join(a.cfg.DataDir, "members", e.Name+".key"))
	if err != nil {
		return nil, err
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		return nil, err
	}
	digest := e.Image
	claims := e.Claims
	if r, ok := a.cfg.EEs.(imageResolver); ok {
		if _, d, err := r.ResolveImage(e.Image); err == nil {
			digest = d
		} else {
			return nil, fmt.Errorf("EE %s: %w", e.Name, err)
		}
	}
	if iso, ok := a.cfg.EEs.(isolationReporter); ok {
		// The EE's isolation is the driver's to say, not the config's.
		claims = maps.Clone(claims)
		if claims == nil {
			claims = map[string]string{}
		}
		claims["ee.isolation"] = iso.Isolation()
	}
	return &tvdv1.EESpec{Name: e.Name, ImageDigest: digest, Domain: e.Domain, Role: e.Role, Owner: e.Owner, Claims: claims, Csr: csr}, nil
}

// enroll registers the node with the join token and writes its credentials.
func (a *Agent) enroll(ctx context.Context, dir string) error {
	if a.cfg.JoinToken == "" {
		return errors.New("agent: the node is not enrolled yet; pass --join-token (from tvd admin token)")
	}
	if a.cfg.Controller == "" {
		return errors.New("agent: pass --controller https://HOST:PORT")
	}
	_, _, caHash, err := client.ParseJoinToken(a.cfg.JoinToken)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	cl, err := client.New(a.cfg.Controller, client.PinnedTLS(caHash))
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	csr, err := ca.NewCSR(a.nodeKey)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	specs, err := a.eeSpecs()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	req := &tvdv1.EnrollRequest{JoinToken: a.cfg.JoinToken, NodeName: a.name, Csr: csr, Ees: specs, AgentVersion: Version}
	var cr *tvdv1.NodeCredentials
	var nonce []byte
	assurance := "implicit"
	if a.att != nil {
		if cr, nonce, err = a.enrollTPM(ctx, cl, req); err != nil {
			return err
		}
		assurance = "tpm"
	} else {
		resp, err := cl.Agent.Enroll(ctx, connect.NewRequest(req))
		if err != nil {
			return fmt.Errorf("agent: enrol node %q: %w", a.name, err)
		}
		cr, nonce = resp.Msg.GetCredentials(), resp.Msg.GetNonce()
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(a.nodeKey)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	err = client.WriteCredentials(dir, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cr.GetNodeCert()}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), cr.GetCaBundle(), a.cfg.Controller)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	a.nonce = nonce
	a.log.Info("node enrolled", "node", a.name, "assurance", assurance, "trust_domain", cr.GetTrustDomain())
	return nil
}

// Run keeps the plan stream open, reports and renews until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	// The Workload API sockets exist before the EEs start, so that their
	// applications find them at once.
	err := a.serveWorkload(ctx)
	defer a.closeWorkload()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	for i := range a.cfg.Node.EEs {
		a.cfg.Node.EEs[i].WorkloadDir = a.WorkloadDir(a.cfg.Node.EEs[i].Name)
	}
	if a.cfg.EEs != nil {
		// The EEs start before the node talks to the controller: their
		// images and first execs are measured, and the first report
		// carries them.
		if err := a.cfg.EEs.Start(ctx, a.cfg.Node.EEs); err != nil {
			return fmt.Errorf("agent: start EEs: %w", err)
		}
		if r, ok := a.cfg.DataPlane.(interface {
			Reconcile(context.Context) ([]*tvdv1.DomainAck, []*tvdv1.ChannelKey, error)
		}); ok && a.plan != nil {
			if _, _, err := r.Reconcile(ctx); err != nil {
				a.log.Warn("data plane: re-attach EEs", "err", err)
			}
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return a.watchLoop(gctx) })
	g.Go(func() error { return a.reportLoop(gctx) })
	g.Go(func() error { return a.renewLoop(gctx) })
	g.Go(func() error { return a.lossLoop(gctx) })
	g.Go(func() error { return a.eeOpLoop(gctx) })
	err = g.Wait()
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// backoff returns the delay before retry n: 200ms doubling to 10s, with
// jitter.
func backoff(n int) time.Duration {
	d := time.Duration(float64(200*time.Millisecond) * math.Pow(2, float64(min(n, 6))))
	d = min(d, 10*time.Second)
	var b [1]byte
	rand.Read(b[:])
	return d/2 + time.Duration(int64(d/2)*int64(b[0])/255)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (a *Agent) watchLoop(ctx context.Context) error {
	for attempt := 0; ; attempt++ {
		a.mu.Lock()
		last := a.plan.GetVersion()
		a.mu.Unlock()
		sctx, cancel := context.WithCancel(ctx)
		a.mu.Lock()
		a.renewStream = cancel
		a.mu.Unlock()
		stream, err := a.cl.Agent.Watch(sctx, connect.NewRequest(&tvdv1.WatchRequest{Node: a.name, LastPlanVersion: last}))
		if err == nil {
			for stream.Receive() {
				attempt = 0
				a.apply(ctx, stream.Msg().GetPlan())
			}
			err = stream.Err()
			stream.Close()
		}
		renewed := sctx.Err() != nil
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if renewed {
			a.log.Debug("plan stream reopened for a fresh nonce")
			attempt = 0
			continue
		}
		if connect.CodeOf(err) == connect.CodePermissionDenied || connect.CodeOf(err) == connect.CodeUnauthenticated {
			a.log.Error("the controller refuses this node", "err", err)
		} else {
			a.log.Warn("plan stream lost; reconnecting", "err", err)
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return nil
		}
	}
}

// apply makes p the plan in force. Only the differences to the previous
// plan are acted on.
func (a *Agent) apply(ctx context.Context, p *tvdv1.Plan) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastContact = a.now()
	if a.lost {
		a.lost = false
		a.log.Info("controller reachable again")
		if a.cfg.DataPlane != nil && a.plan != nil {
			if _, _, err := a.cfg.DataPlane.Apply(ctx, a.plan); err != nil {
				a.log.Error("data plane", "err", err)
			}
		}
	}
	if n := p.GetNextNonce(); len(n) > 0 {
		a.nonce = n
	}
	if a.att != nil {
		a.att.setCursor(p.GetCursor())
	}
	prev := a.plan
	if prev != nil && p.GetVersion() <= prev.GetVersion() && prev.GetVersion() != 0 {
		// The same plan again (a reconnect): only the nonce and freshness
		// are new.
		prev.NextNonce, prev.FreshUntil = p.GetNextNonce(), p.GetFreshUntil()
		return
	}
	ack := &tvdv1.PlanAck{PlanVersion: p.GetVersion()}
	added, removed := diffMembers(prev, p)
	for _, m := range added {
		if err := a.writeMemberCert(m); err != nil {
			a.log.Error("member certificate", "member", memberString(m.GetMember()), "err", err)
		}
	}
	for _, m := range removed {
		os.Remove(filepath.Join(a.cfg.DataDir, "members", m.GetMember().GetEe()+".crt"))
		a.log.Info("member removed by the plan", "member", memberString(m.GetMember()))
	}
	for _, m := range added {
		a.log.Info("member in force", "member", memberString(m.GetMember()), "address", m.GetOverlayAddress())
	}
	if a.cfg.DataPlane != nil {
		domains, keys, err := a.cfg.DataPlane.Apply(ctx, p)
		if err != nil {
			a.log.Error("data plane", "plan_version", p.GetVersion(), "err", err)
		}
		ack.Domains = domains
		if keys != nil {
			a.channelKeys = keys
		}
	} else {
		for _, d := range p.GetPeers() {
			ack.Domains = append(ack.Domains, &tvdv1.DomainAck{Domain: d.GetDomain(), Channel: tvdv1.ChannelState_CHANNEL_STATE_DOWN, FlowMatrixId: p.GetFlow().GetMatrixId(), Error: "this node runs no data plane"})
		}
	}
	a.domains = ack.Domains
	if err := a.jr.prune(p); err != nil {
		a.log.Warn("operation journal", "err", err)
	}
	for _, in := range p.GetInstructions() {
		if a.done[in.GetId()] {
			continue
		}
		a.done[in.GetId()] = true
		ia := &tvdv1.InstructionAck{Id: in.GetId(), Done: true}
		if err := a.jr.begin(in.GetId(), "instruction", a.now()); err != nil {
			// Not carried out: the agent could not record that it began.
			ia.Done, ia.Error = false, err.Error()
		} else if a.cfg.EEs == nil {
			ia.Done, ia.Error = false, "this node runs no EEs"
		} else if err := a.cfg.EEs.Do(ctx, in); err != nil {
			ia.Done, ia.Error = false, err.Error()
		}
		a.log.Info("instruction", "id", in.GetId(), "reaction", in.GetReaction().String(), "member", memberString(in.GetMember()), "done", ia.Done, "err", ia.Error)
		ack.Instructions = append(ack.Instructions, ia)
	}
	a.queueEEOps(p)
	ack.AppliedAt = timestamppb.New(a.now())
	a.dropReleased(p)
	a.plan = p
	a.identityChanged()
	a.pendingAcks = append(a.pendingAcks, ack)
	if err := a.savePlan(p); err != nil {
		a.log.Error("save plan", "err", err)
	}
	a.log.Info("plan applied", "version", p.GetVersion(), "policy_version", p.GetPolicyVersion(), "members", len(p.GetMembers()), "added", len(added), "removed", len(removed))
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// diffMembers returns the members of cur that are new or changed since
// prev, and those of prev that cur no longer has.
func diffMembers(prev, cur *tvdv1.Plan) (added, removed []*tvdv1.PlanMember) {
	old := map[string]*tvdv1.PlanMember{}
	for _, m := range prev.GetMembers() {
		old[m.GetMember().GetEe()] = m
	}
	seen := map[string]bool{}
	for _, m := range cur.GetMembers() {
		ee := m.GetMember().GetEe()
		seen[ee] = true
		if o, ok := old[ee]; !ok || !proto.Equal(o, m) {
			added = append(added, m)
		}
	}
	for ee, m := range old {
		if !seen[ee] {
			removed = append(removed, m)
		}
	}
	sort.Slice(removed, func(i, j int) bool { return removed[i].GetMember().GetEe() < removed[j].GetMember().GetEe() })
	return added, removed
}

func memberString(m *tvdv1.Member) string {
	return m.GetDomain() + "/" + m.GetRole() + "/" + m.GetEe()
}

func (a *Agent) writeMemberCert(m *tvdv1.PlanMember) error {
	var buf []byte
	for _, der := range m.GetCertChain() {
		buf = append(buf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	path := filepath.Join(a.cfg.DataDir, "members", m.GetMember().GetEe()+".crt")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, buf, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func (a *Agent) reportLoop(ctx context.Context) error {
	next := a.cfg.ReportEvery
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-a.kick:
		case <-time.After(next):
		}
		resp, err := a.report(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			failures++
			if connect.CodeOf(err) == connect.CodeFailedPrecondition {
				a.log.Info("report refused; waiting for a fresh nonce from the plan stream", "err", err)
			} else {
				a.log.Warn("report failed", "err", err)
			}
			next = backoff(failures)
			continue
		}
		failures = 0
		next = a.cfg.ReportEvery
		if by := resp.GetNextReportBy(); by != nil {
			if d := by.AsTime().Sub(a.now()) / 2; d > 0 && d < next {
				next = d
			}
		}
	}
}

func (a *Agent) report(ctx context.Context) (*tvdv1.ReportResponse, error) {
	a.mu.Lock()
	nonce := a.nonce
	acks := a.pendingAcks
	var ees []*tvdv1.EEStatus
	if a.cfg.EEs != nil {
		ees = a.cfg.EEs.Status()
	}
	keys := a.channelKeys
	results, joins := a.eeResults, a.joins
	a.mu.Unlock()
	if nonce == nil {
		a.freshNonce()
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("no nonce yet"))
	}
	req := &tvdv1.ReportRequest{Node: a.name, Nonce: nonce, Acks: acks, Ees: ees, ChannelKeys: keys, EeResults: results, Join: joins}
	if a.att != nil {
		if err := a.att.evidence(req, nonce, a.keyHash); err != nil {
			return nil, fmt.Errorf("quote: %w", err)
		}
	}
	// A report stuck longer than this is retried (with the same nonce,
	// unless the controller answered) rather than left to hang past the
	// member's deadline.
	rctx, cancel := context.WithTimeout(ctx, max(2*a.cfg.ReportEvery, 10*time.Second))
	defer cancel()
	resp, err := a.cl.Agent.Report(rctx, connect.NewRequest(req))
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) && ce.Code() != connect.CodeUnavailable && ce.Code() != connect.CodeDeadlineExceeded && ce.Code() != connect.CodeCanceled {
			// The controller answered: whatever it said, the nonce is
			// spent. The next one comes with a reopened plan stream.
			a.nonce = nil
			if ce.Code() == connect.CodeInvalidArgument {
				a.pendingAcks = nil // the controller cannot use them
			}
		}
		return nil, err
	}
	a.nonce = resp.Msg.GetNextNonce()
	if a.att != nil {
		a.att.setCursor(resp.Msg.GetCursor())
	}
	if tm, ok := a.cfg.EEs.(trustMarker); ok {
		for _, v := range resp.Msg.GetVerdicts() {
			ee := v.GetMember().GetEe()
			if op, ok := a.cfg.EEs.(eeOperator); ok {
				if _, here := op.EEConfig(ee); !here {
					continue // it left the node (removed, migrated away)
				}
			}
			if v.GetStatus() == tvdv1.Status_STATUS_VERIFIED && !a.trusted[ee] {
				a.trusted[ee] = true
				go func() {
					if err := tm.MarkTrusted(context.WithoutCancel(ctx), ee); err != nil {
						a.log.Warn("trusted snapshot", "ee", ee, "err", err)
					}
				}()
			}
		}
	}
	a.pendingAcks = a.pendingAcks[len(acks):]
	a.eeResults, a.joins = a.eeResults[len(results):], a.joins[len(joins):]
	a.lastContact = a.now()
	return resp.Msg, nil
}

// freshNonce asks the watch loop to reopen the plan stream, which starts
// with a fresh nonce.
func (a *Agent) freshNonce() {
	a.mu.Lock()
	cancel := a.renewStream
	a.renewStream = nil
	a.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// renewLoop renews each member's certificate once half its lifetime has
// passed.
func (a *Agent) renewLoop(ctx context.Context) error {
	for {
		if err := sleep(ctx, time.Second); err != nil {
			return nil
		}
		a.mu.Lock()
		var due []*tvdv1.PlanMember
		now := a.now()
		for _, m := range a.plan.GetMembers() {
			if len(m.GetCertChain()) == 0 {
				continue
			}
			leaf, err := x509.ParseCertificate(m.GetCertChain()[0])
			if err != nil {
				continue
			}
			half := leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
			if now.After(half) {
				due = append(due, m)
			}
		}
		a.mu.Unlock()
		for _, m := range due {
			if err := a.renew(ctx, m); err != nil && ctx.Err() == nil {
				a.log.Warn("member certificate not renewed", "member", memberString(m.GetMember()), "err", err)
			}
		}
	}
}

func (a *Agent) renew(ctx context.Context, m *tvdv1.PlanMember) error {
	key, err := loadOrCreateKey(filepath.Join(a.cfg.DataDir, "members", m.GetMember().GetEe()+".key"))
	if err != nil {
		return err
	}
	csr, err := ca.NewCSR(key)
	if err != nil {
		return err
	}
	resp, err := a.cl.Agent.RenewMember(ctx, connect.NewRequest(&tvdv1.RenewMemberRequest{Node: a.name, Member: m.GetMember(), Csr: csr}))
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, pm := range a.plan.GetMembers() {
		if pm.GetMember().GetEe() == m.GetMember().GetEe() {
			pm.CertChain, pm.Expires = resp.Msg.GetCertChain(), resp.Msg.GetExpires()
			a.identityChanged()
			return a.writeMemberCert(pm)
		}
	}
	return nil
}

// lossLoop applies the controller-loss rule when the plan goes stale.
func (a *Agent) lossLoop(ctx context.Context) error {
	for {
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return nil
		}
		a.mu.Lock()
		// A plan stays fresh for as long after the last contact with the
		// controller (a report or a plan) as the controller granted when it
		// made the plan.
		fresh := a.plan.GetFreshUntil().AsTime().Sub(a.plan.GetIssuedAt().AsTime())
		if a.plan.GetFreshUntil() != nil && fresh > 0 && !a.lost && a.now().Sub(a.lastContact) > fresh {
			a.lost = true
			a.log.Warn("controller lost: keeping the last plan under the domains' rule",
				"rule", a.plan.GetOnControllerLoss(), "plan_version", a.plan.GetVersion(), "last_contact", a.lastContact.UTC().Format(time.RFC3339))
			if a.cfg.DataPlane != nil {
				if d, err := degrade(a.plan); err != nil {
					a.log.Error("controller-loss rule", "err", err)
				} else if _, _, err := a.cfg.DataPlane.Apply(ctx, d); err != nil {
					a.log.Error("controller-loss rule: data plane", "err", err)
				}
			}
		}
		a.mu.Unlock()
	}
}

// Status is a snapshot of the agent's state.
type Status struct {
	Node           string
	PlanVersion    uint64
	PolicyVersion  uint64
	Members        []string // domain/role/ee
	ControllerLost bool
	LastContact    time.Time
	// Domains is the data plane per domain (channel and flow rules) as
	// the last plan left it.
	Domains []*tvdv1.DomainAck
}

// Status returns the agent's current state.
func (a *Agent) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Status{Node: a.name, PlanVersion: a.plan.GetVersion(), PolicyVersion: a.plan.GetPolicyVersion(), ControllerLost: a.lost, LastContact: a.lastContact}
	for _, d := range a.domains {
		s.Domains = append(s.Domains, proto.Clone(d).(*tvdv1.DomainAck))
	}
	for _, m := range a.plan.GetMembers() {
		s.Members = append(s.Members, memberString(m.GetMember()))
	}
	return s
}

// Plan returns a copy of the plan in force, nil before the first.
func (a *Agent) Plan() *tvdv1.Plan {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.plan == nil {
		return nil
	}
	return proto.Clone(a.plan).(*tvdv1.Plan)
}

func (a *Agent) planPath() string { return filepath.Join(a.cfg.DataDir, "plan.pb") }

func (a *Agent) savePlan(p *tvdv1.Plan) error {
	b, err := proto.Marshal(p)
	if err != nil {
		return err
	}
	tmp := a.planPath() + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, a.planPath())
}

func (a *Agent) loadPlan() (*tvdv1.Plan, error) {
	b, err := os.ReadFile(a.planPath())
	if err != nil {
		return nil, err
	}
	var p tvdv1.Plan
	if err := proto.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("last plan: %w", err)
	}
	return &p, nil
}

// loadOrCreateKey returns the P-256 key in path, creating it (0600) if
// missing.
func loadOrCreateKey(path string) (*ecdsa.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		blk, _ := pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("key %s: not PEM", path)
		}
		k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("key %s: %w", path, err)
		}
		ek, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("key %s: not an ECDSA key", path)
		}
		return ek, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	return k, nil
}
