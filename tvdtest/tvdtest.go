// Package tvdtest runs a whole TVD deployment in one test process: a real
// domain controller on a loopback port with a real bbolt store and audit
// log in a temporary directory, and any number of real node agents talking
// to it over mutual TLS. Nothing is faked; tests use it to drive the system
// through its public API.
package tvdtest

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/controller"
	"github.com/tvd-dev/tvd/policy"
	"github.com/tvd-dev/tvd/store/bolt"
)

// Env is a running deployment.
type Env struct {
	t          testing.TB
	Dir        string
	URL        string
	Controller *controller.Controller
	// Admin is a client with the first admin credential.
	Admin    *client.Client
	AdminDir string
	Logger   *slog.Logger
	cancel   context.CancelFunc
	done     chan error
	mu       sync.Mutex
	agents   map[string]*RunningAgent
	agentsWG sync.WaitGroup
	stopped  bool // the controller was stopped by StopController
}

// Options tune New.
type Options struct {
	// MemberTTL overrides the member certificate lifetime.
	MemberTTL time.Duration
	// Verbose sends the deployment's logs to the test log.
	Verbose bool
	// EKRoots are the CAs the controller trusts for TPM endorsement keys.
	EKRoots *x509.CertPool
}

// New starts a controller and returns the environment. Everything stops
// when the test ends.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)
	if opts.Verbose || os.Getenv("TVDTEST_VERBOSE") != "" {
		logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	st, err := bolt.Open(filepath.Join(dir, "controller", "state.db"))
	if err != nil {
		if mkErr := os.MkdirAll(filepath.Join(dir, "controller"), 0o700); mkErr != nil {
			t.Fatal(mkErr)
		}
		if st, err = bolt.Open(filepath.Join(dir, "controller", "state.db")); err != nil {
			t.Fatal(err)
		}
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := controller.New(ctx, controller.Config{DataDir: filepath.Join(dir, "controller"), Store: st, Listen: l.Addr().String(), MemberTTL: opts.MemberTTL, Logger: logger.With("c", "controller"), EKRoots: opts.EKRoots})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	e := &Env{t: t, Dir: dir, URL: "https://" + l.Addr().String(), Controller: c, Logger: logger, cancel: cancel, done: make(chan error, 1), agents: map[string]*RunningAgent{}}
	go func() { e.done <- c.RunListener(ctx, l) }()
	e.AdminDir = filepath.Join(dir, "controller", "admin")
	creds, err := client.LoadDir(e.AdminDir)
	if err != nil {
		t.Fatal(err)
	}
	if e.Admin, err = client.Dial(creds, e.URL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		e.agentsWG.Wait()
		if e.stopped {
			c.Close()
			st.Close()
			return
		}
		select {
		case err := <-e.done:
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("controller: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("controller did not stop within 10s")
		}
		c.Close()
		st.Close()
	})
	return e
}

// StopController stops the controller's listener, as a crash or a
// partition would look to the agents; they keep running.
func (e *Env) StopController() {
	e.t.Helper()
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil && !errors.Is(err, context.Canceled) {
			e.t.Errorf("controller: %v", err)
		}
	case <-time.After(10 * time.Second):
		e.t.Error("controller did not stop within 10s")
	}
	e.stopped = true
}

// ApplyPolicy loads the policy at paths and applies it as the admin.
func (e *Env) ApplyPolicy(paths ...string) *tvdv1.ApplyPolicyResponse {
	e.t.Helper()
	p, err := policy.Load(paths...)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.ApplyFiles(p.Files)
}

// ApplyFiles applies in-memory policy sources as the admin.
func (e *Env) ApplyFiles(files []policy.File) *tvdv1.ApplyPolicyResponse {
	e.t.Helper()
	req := &tvdv1.ApplyPolicyRequest{}
	for _, f := range files {
		req.Files = append(req.Files, &tvdv1.PolicyFile{Name: f.Name, Content: f.Content})
	}
	resp, err := e.Admin.Admin.ApplyPolicy(context.Background(), connect.NewRequest(req))
	if err != nil {
		e.t.Fatalf("apply policy: %v", err)
	}
	return resp.Msg
}

// Token creates a one-time join token for node (any node if "").
func (e *Env) Token(node string) string {
	e.t.Helper()
	resp, err := e.Admin.Admin.CreateJoinToken(context.Background(), connect.NewRequest(&tvdv1.CreateJoinTokenRequest{NodeName: node, Ttl: durationpb.New(time.Hour)}))
	if err != nil {
		e.t.Fatalf("join token: %v", err)
	}
	return resp.Msg.GetToken()
}

// RunningAgent is an agent started by StartAgent.
type RunningAgent struct {
	*agent.Agent
	DataDir string
	cancel  context.CancelFunc
	done    chan struct{}
}

// Stop stops the agent and waits for it.
func (r *RunningAgent) Stop() {
	r.cancel()
	<-r.done
}

// StartAgent enrols a node with the EEs of nc and runs its agent.
func (e *Env) StartAgent(nc agent.NodeConfig) *RunningAgent {
	e.t.Helper()
	return e.StartAgentWith(nc, agent.Config{})
}

// StartAgentWith is StartAgent with agent settings (a TPM, a data plane,
// an EE host); the connection fields are filled in.
func (e *Env) StartAgentWith(nc agent.NodeConfig, cfg agent.Config) *RunningAgent {
	e.t.Helper()
	dir := filepath.Join(e.Dir, "agents", nc.Node)
	cfg.Controller, cfg.DataDir, cfg.JoinToken, cfg.Node = e.URL, dir, e.Token(nc.Node), &nc
	cfg.Logger = e.Logger.With("node", nc.Node)
	if cfg.ReportEvery == 0 {
		cfg.ReportEvery = 200 * time.Millisecond
	}
	a, err := agent.New(context.Background(), cfg)
	if err != nil {
		e.t.Fatalf("agent %s: %v", nc.Node, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ra := &RunningAgent{Agent: a, DataDir: dir, cancel: cancel, done: make(chan struct{})}
	e.agentsWG.Add(1)
	go func() {
		defer e.agentsWG.Done()
		defer close(ra.done)
		if err := a.Run(ctx); err != nil {
			e.t.Errorf("agent %s: %v", nc.Node, err)
		}
	}()
	e.t.Cleanup(cancel)
	e.mu.Lock()
	e.agents[nc.Node] = ra
	e.mu.Unlock()
	return ra
}

// Members lists the members of domain ("" for all) as the admin.
func (e *Env) Members(domain string) []*tvdv1.MemberInfo {
	e.t.Helper()
	resp, err := e.Admin.Admin.ListMembers(context.Background(), connect.NewRequest(&tvdv1.ListMembersRequest{Domain: domain}))
	if err != nil {
		e.t.Fatalf("list members: %v", err)
	}
	return resp.Msg.GetMembers()
}

// Eventually polls cond every 20ms until it holds or timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ImplicitOutsourcing returns examples/outsourcing (found from dir upwards)
// relaxed for nodes enrolled by join token: minimum assurance implicit,
// weak isolation allowed, and the statements that need TPM attestation
// removed (the checker refuses them for implicit domains).
func ImplicitOutsourcing(t testing.TB) []policy.File {
	t.Helper()
	root := moduleRoot(t)
	p, err := policy.Load(filepath.Join(root, "examples", "outsourcing"))
	if err != nil {
		t.Fatal(err)
	}
	var out []policy.File
	for _, f := range p.Files {
		s := string(f.Content)
		s = strings.ReplaceAll(s, "minAssurance: tpm", "minAssurance: implicit")
		s = strings.ReplaceAll(s, "isolation: strong", "isolation: weak")
		s = dropAttestationStatements(s)
		if strings.Contains(s, "kind: Tests") {
			continue
		}
		out = append(out, policy.File{Name: filepath.Base(f.Name), Content: []byte(s)})
	}
	if _, err := policy.ParseAndCompile(out); err != nil {
		t.Fatalf("relaxed outsourcing policy: %v", err)
	}
	return out
}

// dropAttestationStatements removes statement list items verified by
// attestation.
func dropAttestationStatements(s string) string {
	lines := strings.Split(s, "\n")
	var out, item []string
	inItem := false
	flush := func() {
		keep := true
		for _, l := range item {
			if strings.Contains(l, "by: attestation") {
				keep = false
			}
		}
		if keep {
			out = append(out, item...)
		}
		item = nil
	}
	for _, l := range lines {
		switch {
		case strings.HasPrefix(l, "  - id: "):
			if inItem {
				flush()
			}
			inItem = true
			item = append(item, l)
		case inItem && strings.HasPrefix(l, "    "):
			item = append(item, l)
		default:
			if inItem {
				flush()
				inItem = false
			}
			out = append(out, l)
		}
	}
	if inItem {
		flush()
	}
	return strings.Join(out, "\n")
}

func moduleRoot(t testing.TB) string {
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("tvdtest: go.mod not found above the working directory")
		}
		dir = parent
	}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
