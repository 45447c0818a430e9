package lab

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"go.yaml.in/yaml/v3"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ca"
	"github.com/tvd-dev/tvd/policy"
)

// DefaultDir is the lab directory when none is given: the lab needs root
// anyway, and its state is host state.
const DefaultDir = "/var/lib/tvd-lab"

// DirFromEnv returns $TVD_LAB_DIR, else DefaultDir.
func DirFromEnv() string {
	if d := os.Getenv("TVD_LAB_DIR"); d != "" {
		return d
	}
	return DefaultDir
}

// Config configures Up.
type Config struct {
	// Dir is LABDIR: all state and logs. Default DefaultDir.
	Dir string
	// Binary is the tvd binary run as controller and agents. Default:
	// os.Executable(), the binary the lab is part of.
	Binary string
	// Out receives the step-by-step progress. Default io.Discard.
	Out io.Writer
	// Logger receives operational logs. Default: discard.
	Logger *slog.Logger
	// Timeout bounds the wait for every EE to become a verified member.
	// Default 60s.
	Timeout time.Duration
	// ReportEvery is the agents' --report-every. Default 1s.
	ReportEvery time.Duration
	// MeasureJoin measures the join latency (see State.JoinLatency) before
	// waiting for the members; it can add seconds to the start.
	MeasureJoin bool
}

func (c *Config) defaults() error {
	if c.Dir == "" {
		c.Dir = DefaultDir
	}
	d, err := filepath.Abs(c.Dir)
	if err != nil {
		return err
	}
	c.Dir = filepath.Clean(d)
	if c.Dir == "/" {
		return errors.New("lab dir /: want a directory of its own")
	}
	if c.Binary == "" {
		if c.Binary, err = os.Executable(); err != nil {
			return fmt.Errorf("the tvd binary: %w", err)
		}
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.ReportEvery <= 0 {
		c.ReportEvery = time.Second
	}
	return nil
}

// upRun is one run of Up.
type upRun struct {
	cfg   Config
	st    *State
	scen  *Scenario
	start time.Time
	// exited holds the exit channels of the processes started by this run.
	exited map[string]<-chan error
	step   int
	// agentsAt is when the first agent was started.
	agentsAt time.Time
}

func (u *upRun) say(format string, args ...any) {
	u.step++
	fmt.Fprintf(u.cfg.Out, "[%2d] %-64s", u.step, fmt.Sprintf(format, args...))
}

func (u *upRun) done(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if msg != "" {
		msg = "  " + msg
	}
	fmt.Fprintf(u.cfg.Out, " ok %5.1fs%s\n", time.Since(u.start).Seconds(), msg)
}

// Up creates the lab of the scenario at scenarioPath (a file, or a
// directory holding scenario.yaml) and waits until every EE is a verified
// member. It leaves the lab running: the processes outlive it. On error
// what was created stays, recorded in LABDIR/lab.json, for Down.
func Up(ctx context.Context, scenarioPath string, cfg Config) (*State, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	if m := Preflight(); len(m) > 0 {
		return nil, &PreflightError{Missing: m}
	}
	u := &upRun{cfg: cfg, start: time.Now(), exited: map[string]<-chan error{}}
	fail := func(err error) (*State, error) {
		fmt.Fprintln(cfg.Out, " FAILED")
		return nil, err
	}
	u.say("scenario %s", scenarioPath)
	scen, err := LoadScenario(scenarioPath)
	if err != nil {
		return fail(err)
	}
	u.scen = scen
	u.done("%s: %d nodes, %d EEs", scen.Name, len(scen.Nodes), scen.EECount())

	if err := u.checkFree(ctx); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("lab dir: %w", err)
	}
	files, err := scen.PolicyFiles()
	if err != nil {
		return fail(err)
	}
	if len(scen.Images) > 0 {
		u.say("images: build %d (go build, CGO_ENABLED=0)", len(scen.Images))
		if files, err = scen.BuildImages(ctx, filepath.Join(cfg.Dir, "images"), files); err != nil {
			return fail(err)
		}
		u.done("in %s", filepath.Join(cfg.Dir, "images"))
	}
	u.say("policy")
	files, relax, err := RelaxIsolation(files, scen.EEIsolation)
	if err != nil {
		return fail(err)
	}
	comp, err := policy.ParseAndCompile(files)
	if err != nil {
		return fail(fmt.Errorf("policy of %s:\n%w", scen.Path, err))
	}
	if err := scen.CheckPolicy(comp); err != nil {
		return fail(err)
	}
	var names []string
	for _, d := range comp.Domains {
		names = append(names, d.Name)
	}
	u.done("%d files, domains %s", len(files), strings.Join(names, ", "))
	for _, r := range relax {
		fmt.Fprintf(cfg.Out, "     note: %s (the lab's EEs are not containers yet: weak isolation)\n", r)
	}

	u.st = &State{Version: stateVersion, Dir: cfg.Dir, Scenario: scen.Path, Name: scen.Name, Binary: cfg.Binary,
		Created: time.Now().UTC(), Phase: "starting", Subnet: Subnet,
		ControllerAddr: net.JoinHostPort(ControllerIP, strconv.Itoa(ControllerPort)), Relaxations: relax,
		Scen: &ScenarioSummary{Nodes: len(scen.Nodes), EEs: scen.EECount()},
		path: filepath.Join(cfg.Dir, StateFile)}
	if err := u.st.update(nil); err != nil {
		return nil, err
	}
	steps := []func(context.Context) error{
		func(ctx context.Context) error { return u.writePolicy(files) },
		u.network, u.tpms, u.controller,
		func(ctx context.Context) error { return u.applyPolicy(ctx, files) },
		u.admins, u.agents, u.firstPacket, u.waitMembers,
	}
	for _, f := range steps {
		if err := f(ctx); err != nil {
			fmt.Fprintln(cfg.Out, " FAILED")
			return u.st, fmt.Errorf("%w\nthe lab is half up; its logs are in %s; remove it with: tvd lab down --dir %s", err, cfg.Dir, cfg.Dir)
		}
	}
	if err := u.st.update(func(s *State) { s.Phase = "up" }); err != nil {
		return u.st, err
	}
	fmt.Fprintf(cfg.Out, `
lab %q is up in %.1fs: %d nodes, %d EEs, all verified members at assurance tpm.
  export TVD_CREDS=%s
  tvd lab status --dir %s
  tvd lab exec --dir %s %s -- ip -br addr
  tvd lab down --dir %s
`, scen.Name, time.Since(u.start).Seconds(), len(scen.Nodes), scen.EECount(), u.st.Creds, cfg.Dir, cfg.Dir, scen.Nodes[0].Name, cfg.Dir)
	for _, a := range u.st.Admins {
		fmt.Fprintf(cfg.Out, "  TVD_CREDS=%s tvd members   # as %s (%s)\n", a.Dir, a.Name, a.Role)
	}
	return u.st, nil
}

// checkFree refuses to start over an existing lab.
func (u *upRun) checkFree(ctx context.Context) error {
	if _, err := os.Stat(filepath.Join(u.cfg.Dir, StateFile)); err == nil {
		return fmt.Errorf("a lab is already in %s; remove it first: tvd lab down --dir %s", u.cfg.Dir, u.cfg.Dir)
	}
	ns, err := LabNamespaces(ctx)
	if err != nil {
		return err
	}
	links, err := LabLinks(ctx)
	if err != nil {
		return err
	}
	if len(ns)+len(links) > 0 {
		return fmt.Errorf("another lab is on this host (namespaces %v, links %v); remove it first: tvd lab down --dir DIR", ns, links)
	}
	return nil
}

func (u *upRun) writePolicy(files []policy.File) error {
	dir := filepath.Join(u.cfg.Dir, "policy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, f := range files {
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f.Name)), f.Content, 0o600); err != nil {
			return err
		}
	}
	return u.st.update(func(s *State) { s.PolicyDir = dir })
}

// addNetns creates a namespace and records it before anything else can
// fail.
func (u *upRun) addNetns(ctx context.Context, name string) error {
	if err := ip(ctx, "netns", "add", name); err != nil {
		return err
	}
	if err := u.st.update(func(s *State) { s.Namespaces = append(s.Namespaces, name) }); err != nil {
		return err
	}
	return ip(ctx, "-n", name, "link", "set", "lo", "up")
}

// network builds the underlay: the bridge in its own namespace, the
// host's link into it, and one namespace per node with a veth to the
// bridge.
func (u *upRun) network(ctx context.Context) error {
	u.say("underlay %s: bridge %s in netns %s", Subnet, BridgeName, UnderlayNetns)
	if err := u.addNetns(ctx, UnderlayNetns); err != nil {
		return err
	}
	ul := []string{"-n", UnderlayNetns}
	for _, args := range [][]string{
		append(ul, "link", "add", BridgeName, "type", "bridge"),
		append(ul, "link", "set", BridgeName, "up"),
		{"link", "add", HostLink, "type", "veth", "peer", "name", "host", "netns", UnderlayNetns},
	} {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	if err := u.st.update(func(s *State) { s.Links = append(s.Links, HostLink) }); err != nil {
		return err
	}
	for _, args := range [][]string{
		append(ul, "link", "set", "host", "master", BridgeName, "up"),
		{"addr", "add", ControllerIP + "/24", "dev", HostLink},
		{"link", "set", HostLink, "up"},
	} {
		if err := ip(ctx, args...); err != nil {
			return err
		}
	}
	u.done("host %s on %s", ControllerIP, HostLink)
	for i, n := range u.scen.Nodes {
		ns, addr := NodeNetns(n.Name), NodeAddress(i)
		u.say("node %s: netns %s, %s", n.Name, ns, addr)
		if err := u.addNetns(ctx, ns); err != nil {
			return err
		}
		port := fmt.Sprintf("n%d", i)
		for _, args := range [][]string{
			append(ul, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns),
			append(ul, "link", "set", port, "master", BridgeName, "up"),
			{"-n", ns, "addr", "add", addr, "dev", "eth0"},
			{"-n", ns, "link", "set", "eth0", "up"},
		} {
			if err := ip(ctx, args...); err != nil {
				return err
			}
		}
		dir := filepath.Join(u.cfg.Dir, "nodes", n.Name)
		var ees []EEState
		for _, e := range n.EEs {
			ees = append(ees, EEState{Name: e.Name, Domain: e.Domain, Role: e.Role, Image: e.Image, Run: e.Run})
		}
		if err := u.st.update(func(s *State) {
			s.Nodes = append(s.Nodes, NodeState{Name: n.Name, Netns: ns, Address: addr,
				TPMSocket: filepath.Join(dir, "tpm", "tpm.sock"), AgentData: filepath.Join(dir, "agent"),
				AgentLog: filepath.Join(dir, "agent.log"), Config: filepath.Join(dir, "node.yaml"), EEs: ees})
		}); err != nil {
			return err
		}
		u.done("")
	}
	return nil
}

// started records a process the lab started.
func (u *upRun) started(name string, pid int, log string, exited <-chan error) error {
	u.exited[name] = exited
	return u.st.update(func(s *State) { s.Processes = append(s.Processes, Process{Name: name, PID: pid, Log: log}) })
}

// tpms manufactures each node's swtpm with an EK certificate from the lab
// CA and starts it. The first TPM is made alone (it creates the CA); the
// others in parallel (swtpm_localca locks its state).
func (u *upRun) tpms(ctx context.Context) error {
	c, err := newLabCA(u.cfg.Dir)
	if err != nil {
		return err
	}
	u.say("manufacture %d TPMs: EK certificates from the lab CA", len(u.st.Nodes))
	manufacture := func(n NodeState) error {
		dir := filepath.Dir(n.TPMSocket)
		if err := c.manufacture(ctx, filepath.Join(dir, "state"), filepath.Join(dir, "swtpm_setup.log")); err != nil {
			return fmt.Errorf("TPM of %s: %w", n.Name, err)
		}
		return nil
	}
	if err := manufacture(u.st.Nodes[0]); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, n := range u.st.Nodes[1:] {
		g.Go(func() error {
			if gctx.Err() != nil {
				return gctx.Err()
			}
			return manufacture(n)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	bundle, err := c.bundle()
	if err != nil {
		return err
	}
	if err := u.st.update(func(s *State) { s.EKCA = bundle }); err != nil {
		return err
	}
	u.done("%s", bundle)
	for _, n := range u.st.Nodes {
		u.say("node %s: swtpm on %s", n.Name, filepath.Base(n.TPMSocket))
		dir := filepath.Dir(n.TPMSocket)
		logPath := filepath.Join(dir, "swtpm.log")
		pid, exited, err := daemon(swtpmArgs(filepath.Join(dir, "state"), n.TPMSocket, filepath.Join(dir, "ctrl.sock"), logPath), logPath)
		if err != nil {
			return err
		}
		if err := u.started("swtpm/"+n.Name, pid, logPath, exited); err != nil {
			return err
		}
		if err := waitSocket(ctx, "unix", n.TPMSocket, exited, 10*time.Second); err != nil {
			return fmt.Errorf("swtpm of %s: %w\n%s", n.Name, err, tail(logPath, 10))
		}
		u.done("pid %d", pid)
	}
	return nil
}

// controller starts the controller on the host, listening on the
// underlay, trusting the lab CA for EKs.
func (u *upRun) controller(ctx context.Context) error {
	u.say("controller on %s", u.st.ControllerAddr)
	data := filepath.Join(u.cfg.Dir, "controller")
	logPath := filepath.Join(u.cfg.Dir, "controller.log")
	argv := []string{u.cfg.Binary, "controller", "--data", data, "--listen", u.st.ControllerAddr, "--ek-ca", u.st.EKCA}
	pid, exited, err := daemon(argv, logPath)
	if err != nil {
		return err
	}
	if err := u.started("controller", pid, logPath, exited); err != nil {
		return err
	}
	if err := waitSocket(ctx, "tcp", u.st.ControllerAddr, exited, 20*time.Second); err != nil {
		return fmt.Errorf("controller: %w\n%s", err, tail(logPath, 15))
	}
	creds := filepath.Join(data, "admin")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(filepath.Join(creds, "controller")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("controller wrote no admin credential in %s\n%s", creds, tail(logPath, 15))
		}
		time.Sleep(25 * time.Millisecond)
	}
	url := "https://" + u.st.ControllerAddr
	if err := u.st.update(func(s *State) { s.Creds, s.ControllerURL = creds, url }); err != nil {
		return err
	}
	u.done("pid %d", pid)
	return nil
}

func (u *upRun) dial() (*client.Client, error) { return Dial(u.st) }

// Dial returns an admin client for the lab's controller.
func Dial(st *State) (*client.Client, error) {
	if st.Creds == "" {
		return nil, fmt.Errorf("the lab in %s has no controller credential yet", st.Dir)
	}
	creds, err := client.LoadDir(st.Creds)
	if err != nil {
		return nil, err
	}
	return client.Dial(creds, st.ControllerURL)
}

func (u *upRun) applyPolicy(ctx context.Context, files []policy.File) error {
	u.say("apply the policy")
	cl, err := u.dial()
	if err != nil {
		return err
	}
	req := &tvdv1.ApplyPolicyRequest{Comment: "tvd lab up " + u.scen.Name}
	for _, f := range files {
		req.Files = append(req.Files, &tvdv1.PolicyFile{Name: filepath.Base(f.Name), Content: f.Content})
	}
	resp, err := cl.Admin.ApplyPolicy(ctx, connect.NewRequest(req))
	if err != nil {
		return fmt.Errorf("apply policy: %w", err)
	}
	if err := u.st.update(func(s *State) {
		s.Policy = &AppliedPolicy{Version: resp.Msg.GetVersion(), Summary: resp.Msg.GetDiffSummary()}
	}); err != nil {
		return err
	}
	u.done("version %d", resp.Msg.GetVersion())
	return nil
}

// admins issues the scenario's admin credentials into LABDIR/creds/NAME.
func (u *upRun) admins(ctx context.Context) error {
	if len(u.scen.Admins) == 0 {
		return nil
	}
	cl, err := u.dial()
	if err != nil {
		return err
	}
	for _, a := range u.scen.Admins {
		u.say("admin credential %s (%s)", a.Name, a.Role)
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		csr, err := ca.NewCSR(key)
		if err != nil {
			return err
		}
		resp, err := cl.Admin.IssueAdminCert(ctx, connect.NewRequest(&tvdv1.IssueAdminCertRequest{Name: a.Name, Role: a.Role, Csr: csr, Ttl: durationpb.New(30 * 24 * time.Hour)}))
		if err != nil {
			return fmt.Errorf("admin cert %s: %w", a.Name, err)
		}
		keyDER, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		dir := filepath.Join(u.cfg.Dir, "creds", a.Name)
		if err := client.WriteCredentials(dir, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.Msg.GetCert()}),
			pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), resp.Msg.GetCaBundle(), cl.URL); err != nil {
			return err
		}
		if err := u.st.update(func(s *State) { s.Admins = append(s.Admins, AdminState{Name: a.Name, Role: a.Role, Dir: dir}) }); err != nil {
			return err
		}
		u.done("%s", dir)
	}
	return nil
}

// agents writes each node's configuration, takes a join token bound to the
// node and starts its agent inside the node's namespace, on its swtpm.
func (u *upRun) agents(ctx context.Context) error {
	cl, err := u.dial()
	if err != nil {
		return err
	}
	u.agentsAt = time.Now()
	for i, n := range u.st.Nodes {
		u.say("node %s: agent in %s", n.Name, n.Netns)
		nc := u.scen.Nodes[i].NodeConfig()
		b, err := yaml.Marshal(nc)
		if err != nil {
			return err
		}
		if _, err := agent.ParseNodeConfig(n.Config, b); err != nil {
			return fmt.Errorf("node %s: generated configuration: %w", n.Name, err)
		}
		if err := os.WriteFile(n.Config, b, 0o600); err != nil {
			return err
		}
		tok, err := cl.Admin.CreateJoinToken(ctx, connect.NewRequest(&tvdv1.CreateJoinTokenRequest{NodeName: n.Name, Ttl: durationpb.New(10 * time.Minute)}))
		if err != nil {
			return fmt.Errorf("join token for %s: %w", n.Name, err)
		}
		// nsenter, not "ip netns exec": the latter mounts a fresh /sys for
		// the namespace, hiding the cgroup hierarchies the EE driver needs.
		argv := []string{"nsenter", "--net=/run/netns/" + n.Netns, "--", u.cfg.Binary, "agent",
			"--controller", u.st.ControllerURL, "--data", n.AgentData, "--join-token", tok.Msg.GetToken(),
			"--config", n.Config, "--tpm", "unix:" + n.TPMSocket, "--report-every", u.cfg.ReportEvery.String()}
		if u.scen.EEIsolation == "strong" {
			// The EEs run as containers of the linux driver, every exec
			// measured by the EE monitor into the node's TPM, attached to
			// the node's data plane: a WireGuard interface per domain over
			// the underlay, and the flow matrix in nftables.
			addr, _, _ := strings.Cut(n.Address, "/")
			argv = append(argv, "--ee-driver", "linux", "--underlay", addr)
			if len(u.scen.Images) > 0 {
				argv = append(argv, "--images", filepath.Join(u.cfg.Dir, "images"))
			}
		}
		pid, exited, err := daemon(argv, n.AgentLog)
		if err != nil {
			return err
		}
		if err := u.started("agent/"+n.Name, pid, n.AgentLog, exited); err != nil {
			return err
		}
		u.done("pid %d", pid)
	}
	return nil
}

// firstPacket measures the join latency: from the start of the first agent
// to the first TCP connection carried over the overlay between two EEs on
// different nodes (the first pair of the scenario the matrix lets talk
// straight). It is measured only when the EEs are containers with the data
// plane; it is recorded in the state (JoinLatency).
func (u *upRun) firstPacket(ctx context.Context) error {
	if u.scen.EEIsolation != "strong" || !u.cfg.MeasureJoin {
		return nil
	}
	comp, err := LoadPolicy(u.st)
	if err != nil {
		return err
	}
	pairs, err := Expect(comp, u.st)
	if err != nil {
		return err
	}
	node := map[string]NodeState{}
	for _, n := range u.st.Nodes {
		for _, e := range n.EEs {
			node[e.Name] = n
		}
	}
	var p *Pair
	for i := range pairs {
		if pairs[i].Allow && node[pairs[i].From].Name != node[pairs[i].To].Name {
			p = &pairs[i]
			break
		}
	}
	if p == nil {
		return nil
	}
	u.say("first packet over the overlay: %s -> %s", p.From, p.To)
	cl, err := u.dial()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(u.cfg.Timeout)
	var dst netip.Addr
	var l net.Listener
	defer func() {
		if l != nil {
			l.Close()
		}
	}()
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if !dst.IsValid() {
			if resp, err := cl.Admin.ListMembers(ctx, connect.NewRequest(&tvdv1.ListMembersRequest{})); err == nil {
				for _, m := range resp.Msg.GetMembers() {
					if m.GetMember().GetEe() == p.To {
						dst, _ = netip.ParseAddr(m.GetOverlayAddress())
					}
				}
			}
		}
		from, to := eeNetNS(node[p.From], p.From), eeNetNS(node[p.To], p.To)
		if dst.IsValid() && l == nil {
			if _, err := os.Stat(to); err == nil {
				l, _ = listenIn(to, dst)
			}
		}
		if l != nil {
			if _, err := os.Stat(from); err == nil {
				if err := dialFrom(ctx, from, dst, 100*time.Millisecond, false); err == nil {
					lat := time.Since(u.agentsAt)
					u.done("%d ms after the first agent started", lat.Milliseconds())
					return u.st.update(func(s *State) { s.JoinLatency = lat })
				}
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no packet from %s reached %s over the overlay within %v", p.From, p.To, u.cfg.Timeout)
}

// waitMembers waits until every EE of the scenario is a verified member on
// a node enrolled at assurance tpm, and fails early when a process exits.
func (u *upRun) waitMembers(ctx context.Context) error {
	total := u.scen.EECount()
	u.say("wait for %d verified members at assurance tpm", total)
	cl, err := u.dial()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(u.cfg.Timeout)
	var last *Snapshot
	for {
		for name, ch := range u.exited {
			select {
			case werr := <-ch:
				p := u.process(name)
				return fmt.Errorf("%s exited: %v\n%s", name, werr, tail(p.Log, 15))
			default:
			}
		}
		snap, err := Observe(ctx, cl, u.st)
		if err == nil {
			last = snap
			// A member is verified from its image's measurement, which its
			// EE host takes just before it starts the EE: containers must
			// also be running (their network namespaces exist) for the lab
			// to be up.
			if snap.Ready() && u.eesRunning() {
				u.done("%d/%d", total, total)
				return nil
			}
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("after %v not every EE is a verified member at assurance tpm", u.cfg.Timeout)
			if last != nil && last.Ready() {
				msg = fmt.Sprintf("after %v every EE is a verified member, but not every container runs (a network namespace is missing; see the agents' logs)", u.cfg.Timeout)
			}
			explained := last != nil
			if last != nil {
				for _, e := range last.EEs {
					if !e.Ready() {
						msg += fmt.Sprintf("\n  %s on %s: %s", e.Name, e.Node, e.Problem())
						explained = explained && e.Reason != ""
					}
				}
			}
			if !explained {
				log := filepath.Join(u.cfg.Dir, "controller.log")
				msg += fmt.Sprintf("\ncontroller log (%s):\n%s", log, tail(log, 10))
			}
			return errors.New(msg)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// eesRunning reports whether every container EE of the lab has its
// network namespace (always true for the process driver).
func (u *upRun) eesRunning() bool {
	if u.scen.EEIsolation != "strong" {
		return true
	}
	for _, n := range u.st.Nodes {
		for _, e := range n.EEs {
			if _, err := os.Stat(eeNetNS(n, e.Name)); err != nil {
				return false
			}
		}
	}
	return true
}

func (u *upRun) process(name string) Process {
	for _, p := range u.st.Processes {
		if p.Name == name {
			return p
		}
	}
	return Process{Name: name}
}

// Down removes the lab in dir: its processes (recorded in lab.json, found
// with their command line naming dir, or inside a tvdlab- namespace), every
// namespace and host link whose name starts with Prefix, and the files the
// lab wrote in dir. It is idempotent, and works without lab.json (after a
// crash, or for a lab whose directory is gone). With keepFiles the logs and
// state stay. It reports what it removed on out.
func Down(ctx context.Context, dir string, keepFiles bool, out io.Writer) error {
	if out == nil {
		out = io.Discard
	}
	if os.Geteuid() != 0 {
		return &PreflightError{Missing: []Missing{{"root (the lab's namespaces and links belong to root)", "run as root, e.g. sudo tvd lab down"}}}
	}
	d, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	dir = filepath.Clean(d)
	var errs []error
	pids := map[int]string{}
	if st, err := LoadState(dir); err == nil {
		for _, p := range st.Processes {
			// A recorded pid counts only while its command line still
			// names the lab: pids are reused.
			if cl := procCmdline(p.PID); cl != nil && mentions(cl, dir) {
				pids[p.PID] = p.Name
			}
		}
	}
	found, err := LabProcesses(dir)
	if err != nil {
		errs = append(errs, err)
	}
	for _, pid := range found {
		if _, ok := pids[pid]; !ok {
			pids[pid] = strings.Join(procCmdline(pid), " ")
		}
	}
	namespaces, err := LabNamespaces(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, ns := range namespaces {
		for _, pid := range netnsPIDs(ctx, ns) {
			if _, ok := pids[pid]; !ok {
				pids[pid] = fmt.Sprintf("%s in %s", strings.Join(procCmdline(pid), " "), ns)
			}
		}
	}
	// Agents first, then the controller, then the TPMs: nothing is left
	// talking to a part that is gone.
	order := func(name string) int {
		switch {
		case strings.HasPrefix(name, "agent/"):
			return 0
		case name == "controller":
			return 1
		case strings.HasPrefix(name, "swtpm/"):
			return 2
		}
		return 0
	}
	var list []int
	for pid := range pids {
		list = append(list, pid)
	}
	sort.Slice(list, func(i, j int) bool {
		oi, oj := order(pids[list[i]]), order(pids[list[j]])
		if oi != oj {
			return oi < oj
		}
		return list[i] < list[j]
	})
	for _, pid := range list {
		if err := stop(pid, 5*time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "stopped %s (pid %d)\n", pids[pid], pid)
	}
	for _, ns := range namespaces {
		if err := ip(ctx, "netns", "del", ns); err != nil {
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed netns %s\n", ns)
	}
	links, err := LabLinks(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, l := range links {
		if err := ip(ctx, "link", "del", l); err != nil {
			// Deleting the underlay namespace deletes the host link's
			// peer, and with it the link, asynchronously.
			if now, lerr := LabLinks(ctx); lerr == nil && !slices.Contains(now, l) {
				continue
			}
			errs = append(errs, err)
			continue
		}
		fmt.Fprintf(out, "removed link %s\n", l)
	}
	if _, err := os.Stat(dir); err == nil && !keepFiles && len(errs) == 0 {
		if err := removeFiles(dir); err != nil {
			errs = append(errs, err)
		} else {
			fmt.Fprintf(out, "removed %s\n", dir)
		}
	}
	return errors.Join(errs...)
}

// labFiles are the entries the lab writes in LABDIR; Down removes only
// these, so a mistaken --dir never loses anything else.
var labFiles = []string{"ca", "controller", "controller.log", "creds", "images", "nodes", "policy", StateFile, StateFile + ".tmp"}

func removeFiles(dir string) error {
	for _, f := range labFiles {
		if err := os.RemoveAll(filepath.Join(dir, f)); err != nil {
			return err
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		// Not empty: something that is not the lab's lives there.
		var pe *os.PathError
		if !errors.As(err, &pe) {
			return err
		}
	}
	return nil
}
