package fleet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/url"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/ca"
)

// Config configures Run.
type Config struct {
	// Controller is the controller's URL, https://HOST:PORT. Required.
	Controller string
	// Admin is an admin client of that controller: it applies the fleet
	// policy, makes join tokens and reads the members' verdicts. Required.
	Admin *client.Client
	// EKCA certifies the nodes' endorsement keys; the controller must trust
	// it. Required.
	EKCA *EKCA
	// Agents is the number of simulated nodes (one EE each). Required.
	Agents int
	// Interval is the reporting interval, written into the fleet policy.
	// Default 10s.
	Interval time.Duration
	// Duration is the measured window. Default 30s.
	Duration time.Duration
	// Warmup is the time between the last enrolment and the window, so
	// that every node has reported once (opened its connection) before
	// measuring. Default: one Interval.
	Warmup time.Duration
	// Domain names the fleet's domain. Default "fleet".
	Domain string
	// NodePrefix starts every node name. Default "fleet-".
	NodePrefix string
	// EventsPerReport is how many new measurements each node appends
	// before each report. Default 1.
	EventsPerReport int
	// EnrolConcurrency bounds the enrolments in flight. Default 16.
	EnrolConcurrency int
	// Watch has each node keep a plan stream (AgentService.Watch) open and
	// drain it, as a real agent does: a goroutine, a subscription and a
	// plan per node on the controller.
	Watch bool
	// SkipPolicy leaves the controller's policy alone: it must already
	// hold the fleet policy (Policy(Domain, Interval)).
	SkipPolicy bool
	// Profile takes a CPU profile of the measured window (Result.Profile)
	// and splits the CPU time by the goroutine label "side" (Local labels
	// the controller's goroutines "controller", Run the agents' "fleet").
	// It fails the run if another CPU profile is running.
	Profile bool
	// Progress, if set, is called about every second.
	Progress func(Progress)
	// Logger receives debug logs. Default: discard.
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Rand is the source of key material. Default crypto/rand.
	Rand io.Reader
}

func (c *Config) validate() error {
	switch {
	case c.Controller == "":
		return errors.New("fleet: Controller URL is required")
	case c.Admin == nil:
		return errors.New("fleet: an Admin client is required")
	case c.EKCA == nil:
		return errors.New("fleet: EKCA is required")
	case c.Agents <= 0:
		return fmt.Errorf("fleet: %d agents: want at least 1", c.Agents)
	}
	if c.Interval <= 0 {
		c.Interval = 10 * time.Second
	}
	if c.Interval < time.Second {
		return fmt.Errorf("fleet: interval %v: want at least 1s (the policy's unit)", c.Interval)
	}
	if c.Duration <= 0 {
		c.Duration = 30 * time.Second
	}
	if c.Warmup <= 0 {
		c.Warmup = c.Interval
	}
	if c.Domain == "" {
		c.Domain = "fleet"
	}
	if c.NodePrefix == "" {
		c.NodePrefix = "fleet-"
	}
	if c.EventsPerReport <= 0 {
		c.EventsPerReport = 1
	}
	if c.EnrolConcurrency <= 0 {
		c.EnrolConcurrency = 16
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Rand == nil {
		c.Rand = cryptoRand
	}
	return nil
}

// Phase is where a run is.
type Phase string

// Phases of a run.
const (
	PhaseEnrol   Phase = "enrol"
	PhaseWarmup  Phase = "warmup"
	PhaseMeasure Phase = "measure"
)

// Progress is a snapshot of a running fleet.
type Progress struct {
	Phase    Phase
	Elapsed  time.Duration // since the phase began
	Enrolled int
	Agents   int
	Reports  int // in the measured window so far
	Errors   int
	P99      time.Duration // of the window so far
}

// String is a one-line progress report.
func (p Progress) String() string {
	switch p.Phase {
	case PhaseEnrol:
		return fmt.Sprintf("enrol  %6.1fs  %d/%d nodes enrolled, %d errors", p.Elapsed.Seconds(), p.Enrolled, p.Agents, p.Errors)
	case PhaseWarmup:
		return fmt.Sprintf("warmup %6.1fs  every node reports once before the window, %d errors", p.Elapsed.Seconds(), p.Errors)
	}
	rate := 0.0
	if p.Elapsed > 0 {
		rate = float64(p.Reports) / p.Elapsed.Seconds()
	}
	return fmt.Sprintf("run    %6.1fs  %d reports (%.0f/s), p99 %v, %d errors", p.Elapsed.Seconds(), p.Reports, rate, p.P99.Round(10*time.Microsecond), p.Errors)
}

// Result is what a run measured.
type Result struct {
	Agents    int
	Enrolled  int
	Interval  time.Duration
	EnrolTime time.Duration // from the first enrolment to the last
	Window    time.Duration // the measured window
	Reports   int           // answered reports sent in the window
	Errors    int           // reports or enrolments that failed
	// LostNodes stopped reporting after the controller refused a report
	// (their nonce was spent); their members go stale.
	LostNodes int
	// StarvedNodes could not open a connection for want of a file
	// descriptor in this process (the open files limit; see
	// EnsureOpenFiles): the fleet's failure, not the controller's, though
	// their members go stale too.
	StarvedNodes int
	// AppraisalsPerSec is Reports over Window.
	AppraisalsPerSec float64
	// Verdict latency: report sent → response received.
	P50, P99, Max time.Duration
	// The members' verdicts at the end of the run, from the controller.
	Members, Verified, Stale, Violated int
	// NotVerified counts verdicts in report responses that were not
	// "verified".
	NotVerified int
	// Reasons counts the controller's reasons for the members that are not
	// verified at the end.
	Reasons map[string]int
	// Plans counts the plans received on the nodes' plan streams (with
	// Config.Watch) over the whole run, PlansInWindow those in the window.
	Plans, PlansInWindow int
	// CPU is this process's CPU time (user+system) during the window, and
	// HeapInuse its heap in use at the end: they include the simulated
	// agents when the controller runs in this process.
	CPU       time.Duration
	HeapInuse uint64
	// With Config.Profile: the window's CPU profile (gzipped
	// profile.proto) and its CPU time by the "side" label ("controller",
	// "fleet", and "" for the runtime's unlabelled work such as garbage
	// collection).
	Profile   []byte
	CPUBySide map[string]time.Duration
	// With Config.Profile: the live heap at the end of the window by who
	// allocated it, and the goroutine stacks in use (both sides).
	Heap       Heap
	StackInuse uint64
}

// ControllerHeapPerMember is the heap attributed to the controller per
// member (Heap.Other, the unattributed rest, is left out). Zero without a
// profile.
func (r *Result) ControllerHeapPerMember() uint64 {
	if r.Members == 0 {
		return 0
	}
	return r.Heap.Controller / uint64(r.Members)
}

// ControllerCPU estimates the controller's CPU time in the window: its
// labelled samples plus its share (by labelled time) of the unlabelled
// ones. Zero without a profile.
func (r *Result) ControllerCPU() time.Duration {
	c, f, u := r.CPUBySide["controller"], r.CPUBySide["fleet"], r.CPUBySide[""]
	if c+f == 0 {
		return 0
	}
	return c + time.Duration(float64(u)*float64(c)/float64(c+f))
}

// DeadlineMisses is the number of members the controller marked stale.
func (r *Result) DeadlineMisses() int { return r.Stale }

// stats collects report latencies.
type stats struct {
	mu          sync.Mutex
	since       time.Time
	measuring   bool
	lat         []time.Duration
	errors      atomic.Int64
	lost        atomic.Int64
	starved     sync.Map // node names whose reports failed for want of a file descriptor
	notVerified atomic.Int64
	plans       atomic.Int64
}

func (s *stats) record(sent time.Time, d time.Duration) {
	s.mu.Lock()
	if s.measuring && !sent.Before(s.since) {
		s.lat = append(s.lat, d)
	}
	s.mu.Unlock()
}

func (s *stats) start(t time.Time) {
	s.mu.Lock()
	s.since, s.measuring = t, true
	s.lat = s.lat[:0]
	s.mu.Unlock()
}

// snapshot returns the window's report count and p99 so far.
func (s *stats) snapshot() (int, time.Duration) {
	s.mu.Lock()
	lat := slices.Clone(s.lat)
	s.mu.Unlock()
	if len(lat) == 0 {
		return 0, 0
	}
	slices.Sort(lat)
	return len(lat), percentile(lat, 0.99)
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted))*p+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// node is one simulated node after enrolment.
type node struct {
	name    string
	ee      string
	tpm     *SoftTPM
	cl      *client.Client
	keyHash [32]byte
	nonce   []byte
	cursor  attest.Cursor
	rng     *mrand.Rand

	// A refused report spends the nonce: as the real agent does, the node
	// reopens its plan stream (reopen), whose first plan carries a fresh
	// one (fresh).
	reopen chan struct{}
	fresh  chan []byte
}

// Run enrols cfg.Agents simulated nodes with the controller, has each
// report every cfg.Interval, and measures cfg.Duration once all are
// enrolled. Each node reports from the moment it is enrolled, so the
// controller's deadlines hold during enrolment too.
//
// Connections: the controller knows a node by the client certificate of
// its TLS connection, so nodes cannot share one; each node has its own
// HTTP/2 connection, as a real agent does. Enrolment, which needs no
// client certificate, shares one connection (one stream per call).
func Run(ctx context.Context, cfg Config) (*Result, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	u, err := url.Parse(cfg.Controller)
	if err != nil || u.Scheme != "https" {
		return nil, fmt.Errorf("fleet: controller URL %q: want https://HOST:PORT", cfg.Controller)
	}
	if !cfg.SkipPolicy {
		req := &tvdv1.ApplyPolicyRequest{Comment: "tvd bench fleet"}
		for _, f := range Policy(cfg.Domain, cfg.Interval) {
			req.Files = append(req.Files, &tvdv1.PolicyFile{Name: f.Name, Content: f.Content})
		}
		if _, err := cfg.Admin.Admin.ApplyPolicy(ctx, connect.NewRequest(req)); err != nil {
			return nil, fmt.Errorf("fleet: apply the fleet policy: %w", err)
		}
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	st := &stats{}
	res := &Result{Agents: cfg.Agents, Interval: cfg.Interval}
	var enrolled atomic.Int64
	var enrolClient *client.Client
	var enrolOnce sync.Once
	var enrolErr error
	nodes := make(chan *node, cfg.Agents)

	var wg sync.WaitGroup // the nodes' report loops
	defer func() {
		// Stop every node and close its connection, whatever happened.
		stop()
		wg.Wait()
		for {
			select {
			case n := <-nodes:
				n.cl.HTTP.CloseIdleConnections()
			default:
				return
			}
		}
	}()
	start := cfg.Now()
	eg, ectx := errgroup.WithContext(ctx)
	eg.SetLimit(cfg.EnrolConcurrency)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ectx.Done():
				return
			case <-t.C:
			}
			if int(enrolled.Load()) >= cfg.Agents {
				return
			}
			if cfg.Progress != nil {
				cfg.Progress(Progress{Phase: PhaseEnrol, Elapsed: cfg.Now().Sub(start), Enrolled: int(enrolled.Load()), Agents: cfg.Agents, Errors: int(st.errors.Load())})
			}
		}
	}()
	pprof.Do(ectx, pprof.Labels("side", "fleet"), func(lctx context.Context) {
		for i := range cfg.Agents {
			eg.Go(func() error {
				name := fmt.Sprintf("%s%05d", cfg.NodePrefix, i)
				tok, err := cfg.Admin.Admin.CreateJoinToken(lctx, connect.NewRequest(&tvdv1.CreateJoinTokenRequest{NodeName: name, Ttl: durationpb.New(time.Hour)}))
				if err != nil {
					return fmt.Errorf("join token for %s: %w", name, err)
				}
				enrolOnce.Do(func() {
					_, _, caHash, err := client.ParseJoinToken(tok.Msg.GetToken())
					if err != nil {
						enrolErr = err
						return
					}
					enrolClient, enrolErr = client.New(cfg.Controller, client.PinnedTLS(caHash))
				})
				if enrolErr != nil {
					return fmt.Errorf("enrolment client: %w", enrolErr)
				}
				n, err := enrol(lctx, &cfg, enrolClient, u.Hostname(), name, tok.Msg.GetToken(), i)
				if err != nil {
					return err
				}
				enrolled.Add(1)
				nodes <- n
				wg.Add(1)
				go func() {
					defer wg.Done()
					n.run(ctx, &cfg, st)
				}()
				if cfg.Watch {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n.watch(ctx, &cfg, st)
					}()
				}
				return nil
			})
		}
	})
	err = eg.Wait()
	<-progressDone
	if err != nil {
		return nil, fmt.Errorf("fleet: enrol: %w", err)
	}
	res.Enrolled = int(enrolled.Load())
	res.EnrolTime = cfg.Now().Sub(start)
	if enrolClient != nil {
		enrolClient.HTTP.CloseIdleConnections()
	}
	cfg.Logger.InfoContext(ctx, "fleet enrolled", "nodes", res.Enrolled, "took", res.EnrolTime)

	// Warm up: every node reports once.
	wu := cfg.Now()
	warm := time.NewTimer(cfg.Warmup)
	tick := time.NewTicker(time.Second)
warmup:
	for {
		select {
		case <-ctx.Done():
			tick.Stop()
			return nil, ctx.Err()
		case <-warm.C:
			break warmup
		case <-tick.C:
			if cfg.Progress != nil {
				cfg.Progress(Progress{Phase: PhaseWarmup, Elapsed: cfg.Now().Sub(wu), Enrolled: res.Enrolled, Agents: cfg.Agents, Errors: int(st.errors.Load())})
			}
		}
	}
	tick.Stop()

	// The measured window.
	var prof bytes.Buffer
	if cfg.Profile {
		if err := pprof.StartCPUProfile(&prof); err != nil {
			return nil, fmt.Errorf("fleet: cpu profile: %w", err)
		}
	}
	cpu0 := processCPU()
	wstart := cfg.Now()
	st.start(wstart)
	errs0, plans0 := st.errors.Load(), st.plans.Load()
	t := time.NewTicker(time.Second)
	deadline := time.NewTimer(cfg.Duration)
measure:
	for {
		select {
		case <-ctx.Done():
			t.Stop()
			if cfg.Profile {
				pprof.StopCPUProfile()
			}
			return nil, ctx.Err()
		case <-deadline.C:
			break measure
		case <-t.C:
			if cfg.Progress != nil {
				n, p99 := st.snapshot()
				cfg.Progress(Progress{Phase: PhaseMeasure, Elapsed: cfg.Now().Sub(wstart), Enrolled: res.Enrolled, Agents: cfg.Agents, Reports: n, Errors: int(st.errors.Load() - errs0), P99: p99})
			}
		}
	}
	t.Stop()
	res.Window = cfg.Now().Sub(wstart)
	res.CPU = processCPU() - cpu0
	if cfg.Profile {
		pprof.StopCPUProfile()
		res.Profile = prof.Bytes()
		if res.CPUBySide, err = CPUByLabel(res.Profile, "side"); err != nil {
			return nil, fmt.Errorf("fleet: %w", err)
		}
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapInuse, res.StackInuse = ms.HeapInuse, ms.StackInuse
	if cfg.Profile {
		res.Heap = HeapBySide()
	}
	st.mu.Lock()
	st.measuring = false
	lat := slices.Clone(st.lat)
	st.mu.Unlock()
	slices.Sort(lat)
	res.Reports = len(lat)
	res.AppraisalsPerSec = float64(len(lat)) / res.Window.Seconds()
	res.P50, res.P99 = percentile(lat, 0.50), percentile(lat, 0.99)
	if len(lat) > 0 {
		res.Max = lat[len(lat)-1]
	}
	res.Errors = int(st.errors.Load())
	res.LostNodes = int(st.lost.Load())
	st.starved.Range(func(_, _ any) bool { res.StarvedNodes++; return true })
	res.NotVerified = int(st.notVerified.Load())
	res.Plans = int(st.plans.Load())
	res.PlansInWindow = int(st.plans.Load() - plans0)

	// The members' verdicts, from the controller.
	vctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	ml, err := cfg.Admin.Admin.ListMembers(vctx, connect.NewRequest(&tvdv1.ListMembersRequest{Domain: cfg.Domain}))
	if err != nil {
		return res, fmt.Errorf("fleet: list members: %w", err)
	}
	for _, m := range ml.Msg.GetMembers() {
		if !strings.HasPrefix(m.GetNode(), cfg.NodePrefix) {
			continue
		}
		res.Members++
		v := m.GetVerdict()
		switch {
		case v.GetStatus() == tvdv1.Status_STATUS_VERIFIED:
			res.Verified++
		case strings.HasPrefix(v.GetReason(), "stale"):
			res.Stale++
		default:
			res.Violated++
		}
		if v.GetStatus() != tvdv1.Status_STATUS_VERIFIED {
			if res.Reasons == nil {
				res.Reasons = map[string]int{}
			}
			r := v.GetReason()
			if i := strings.Index(r, "since"); strings.HasPrefix(r, "stale") && i > 0 {
				r = r[:i] + "…" // the times differ per member
			}
			res.Reasons[r]++
		}
	}
	return res, nil
}

// enrol makes node i: its soft TPM, TLS and member keys; Enroll with the
// TPM evidence; credential activation; and its own mutual-TLS client.
func enrol(ctx context.Context, cfg *Config, enrolClient *client.Client, host, name, token string, i int) (*node, error) {
	tp, err := NewSoftTPM(cfg.Rand, cfg.Now, cfg.EKCA)
	if err != nil {
		return nil, err
	}
	nodeKey, err := ecdsa.GenerateKey(elliptic.P256(), cfg.Rand)
	if err != nil {
		return nil, fmt.Errorf("node key: %w", err)
	}
	memberKey, err := ecdsa.GenerateKey(elliptic.P256(), cfg.Rand)
	if err != nil {
		return nil, fmt.Errorf("member key: %w", err)
	}
	csr, err := ca.NewCSR(nodeKey)
	if err != nil {
		return nil, err
	}
	mcsr, err := ca.NewCSR(memberKey)
	if err != nil {
		return nil, err
	}
	ee := fmt.Sprintf("%s-w", name)
	req := &tvdv1.EnrollRequest{
		JoinToken: token, NodeName: name, Csr: csr, AgentVersion: "tvd-fleet",
		Ees:      []*tvdv1.EESpec{{Name: ee, Domain: cfg.Domain, Role: "worker", Owner: "tvd-bench", Csr: mcsr}},
		Platform: &tvdv1.EnrollRequest_Tpm{Tpm: &tvdv1.TPMEnrollment{EkPublic: tp.EKPublic(), EkCert: tp.EKCert(), AkPublic: tp.AKPublic()}},
	}
	resp, err := enrolClient.Agent.Enroll(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, fmt.Errorf("enrol %s: %w", name, err)
	}
	ch := resp.Msg.GetChallenge()
	if ch == nil {
		return nil, fmt.Errorf("enrol %s: the controller sent no credential challenge", name)
	}
	secret, err := tp.ActivateCredential(ch.GetCredentialBlob(), ch.GetEncryptedSecret())
	if err != nil {
		return nil, fmt.Errorf("enrol %s: %w", name, err)
	}
	act, err := enrolClient.Agent.ActivateCredential(ctx, connect.NewRequest(&tvdv1.ActivateCredentialRequest{EnrollmentId: resp.Msg.GetEnrollmentId(), Secret: secret}))
	if err != nil {
		return nil, fmt.Errorf("enrol %s: activate credential: %w", name, err)
	}
	creds := act.Msg.GetCredentials()
	bundle, err := ca.ParseBundle(creds.GetTrustDomain(), creds.GetCaBundle())
	if err != nil {
		return nil, fmt.Errorf("enrol %s: trust bundle: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(creds.GetNodeCert())
	if err != nil {
		return nil, fmt.Errorf("enrol %s: node certificate: %w", name, err)
	}
	cert := tls.Certificate{Certificate: [][]byte{creds.GetNodeCert()}, PrivateKey: nodeKey, Leaf: leaf}
	cl, err := client.New(cfg.Controller, bundle.ClientTLSConfig(&cert, host))
	if err != nil {
		return nil, fmt.Errorf("enrol %s: %w", name, err)
	}
	kh, err := attest.TLSKeyHash(nodeKey.Public())
	if err != nil {
		return nil, err
	}
	return &node{name: name, ee: ee, tpm: tp, cl: cl, keyHash: kh, nonce: act.Msg.GetNonce(),
		rng: mrand.New(mrand.NewPCG(uint64(i), 0x7476_6466)), reopen: make(chan struct{}, 1), fresh: make(chan []byte, 1)}, nil
}

// run reports every interval, starting at a random phase within the
// first interval so that the fleet's reports spread evenly.
func (n *node) run(ctx context.Context, cfg *Config, st *stats) {
	next := time.Duration(n.rng.Int64N(int64(cfg.Interval)))
	timer := time.NewTimer(next)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		began := cfg.Now()
		retry, err := n.report(ctx, cfg, st)
		if ctx.Err() != nil {
			return
		}
		next := max(0, cfg.Interval-cfg.Now().Sub(began))
		if err != nil {
			st.errors.Add(1)
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				st.starved.Store(n.name, true)
			}
			cfg.Logger.DebugContext(ctx, "report failed", "node", n.name, "err", err)
			if !retry {
				// The nonce is spent: a fresh one from a reopened plan
				// stream (not one an earlier stream left), then report.
				select {
				case <-n.fresh:
				default:
				}
				select {
				case n.reopen <- struct{}{}:
				default:
				}
				select {
				case <-ctx.Done():
					return
				case n.nonce = <-n.fresh:
				case <-time.After(cfg.Interval):
					st.lost.Add(1)
					return
				}
			}
			next = min(next, time.Second) // retry soon, as the agent backs off
		}
		timer.Reset(next)
	}
}

// watch keeps the node's plan stream open and drains it until ctx ends,
// reopening it a second after it breaks.
func (n *node) watch(ctx context.Context, cfg *Config, st *stats) {
	var last uint64
	for ctx.Err() == nil {
		sctx, cancel := context.WithCancel(ctx)
		stream, err := n.cl.Agent.Watch(sctx, connect.NewRequest(&tvdv1.WatchRequest{Node: n.name, LastPlanVersion: last}))
		reopened := make(chan struct{})
		go func() {
			select {
			case <-n.reopen:
				cancel()
			case <-sctx.Done():
			}
			close(reopened)
		}()
		if err == nil {
			first := true
			for stream.Receive() {
				last = stream.Msg().GetPlan().GetVersion()
				st.plans.Add(1)
				if nonce := stream.Msg().GetPlan().GetNextNonce(); first && len(nonce) > 0 {
					select { // the report loop takes it if it waits for one
					case <-n.fresh:
					default:
					}
					n.fresh <- nonce
				}
				first = false
			}
			err = stream.Err()
			stream.Close()
		}
		cancel()
		<-reopened
		if ctx.Err() != nil {
			return
		}
		st.errors.Add(1)
		cfg.Logger.DebugContext(ctx, "plan stream broke", "node", n.name, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

// report measures, quotes and sends one report. It says whether a
// failed report may be retried with the same nonce (the controller did not
// answer).
func (n *node) report(ctx context.Context, cfg *Config, st *stats) (retry bool, err error) {
	for range cfg.EventsPerReport {
		path, digest := Reference(n.rng.IntN(NumReferences))
		if _, err := n.tpm.Measure(attest.EventExec, n.ee, path, digest); err != nil {
			return false, err
		}
	}
	ev, err := n.tpm.Evidence(n.nonce, n.keyHash, n.cursor)
	if err != nil {
		return false, err
	}
	events, err := attest.EncodeEvents(ev.Events)
	if err != nil {
		return false, err
	}
	req := &tvdv1.ReportRequest{Node: n.name, Nonce: n.nonce, Quote: &tvdv1.Quote{Attest: ev.Attest, Signature: ev.Signature},
		FirstEventSeq: ev.FirstSeq, Events: events}
	for _, p := range ev.PCRs {
		req.Pcrs = append(req.Pcrs, &tvdv1.PCRValue{HashAlg: 0x000B, Index: uint32(p.Index), Digest: p.Value[:]})
	}
	sent := cfg.Now()
	// A report that takes longer than an interval is of no use: give up
	// and retry (as the agent does), rather than hang past the deadline.
	rctx, cancel := context.WithTimeout(ctx, cfg.Interval)
	defer cancel()
	resp, err := n.cl.Agent.Report(rctx, connect.NewRequest(req))
	if err != nil {
		code := connect.CodeOf(err)
		return code == connect.CodeUnavailable || code == connect.CodeDeadlineExceeded || code == connect.CodeUnknown, err
	}
	st.record(sent, cfg.Now().Sub(sent))
	for _, v := range resp.Msg.GetVerdicts() {
		if v.GetStatus() != tvdv1.Status_STATUS_VERIFIED {
			st.notVerified.Add(1)
		}
	}
	n.nonce = resp.Msg.GetNextNonce()
	if c := resp.Msg.GetCursor(); c != nil {
		n.cursor = attest.Cursor{ResetCount: c.GetResetCount(), Seq: c.GetNextSeq(), Valid: c.GetValid()}
		if n.cursor.Valid {
			n.tpm.Discard(n.cursor.Seq)
		}
	}
	return false, nil
}
