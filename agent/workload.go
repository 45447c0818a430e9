package agent

// The Workload API (issue 9): one unix socket per EE, served by the agent.
// The socket an application connects to names the EE; every answer is about
// that EE alone. Secrets and storage keys are fetched from the controller
// on first use, kept in this process's memory only (never in DataDir), and
// dropped as soon as a plan says the member lost its good standing, leaves
// it, or the policy version changes.

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/tvd-dev/tvd"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/api/gen/tvd/v1/tvdv1connect"
	"github.com/tvd-dev/tvd/ca"
)

// WorkloadSocketName is the socket's file name in its directory; inside an
// EE the directory is mounted at /run/tvd.
const WorkloadSocketName = "workload.sock"

// maxSocketPath is the longest unix socket path Linux accepts (sun_path
// holds 108 bytes with the terminating NUL).
const maxSocketPath = 107

// released is what the controller released for one member.
type released struct {
	policyVersion uint64
	secrets       map[string]*tvdv1.ReleasedSecret
	storageKey    []byte
	storageKeyID  string
	storageScope  string
}

// wipe overwrites the released values in memory.
func (r *released) wipe() {
	for _, s := range r.secrets {
		clear(s.Value)
	}
	clear(r.storageKey)
}

// WorkloadDir returns the directory holding ee's Workload API socket.
func (a *Agent) WorkloadDir(ee string) string {
	return filepath.Join(a.cfg.DataDir, "workload", ee)
}

// WorkloadSocket returns the path of ee's Workload API socket.
func (a *Agent) WorkloadSocket(ee string) string {
	return filepath.Join(a.WorkloadDir(ee), WorkloadSocketName)
}

// serveWorkload listens on every EE's socket and serves until ctx ends;
// EEs created later (tvd ee create, a migration in) get theirs from
// addWorkload. closeWorkload stops them all.
func (a *Agent) serveWorkload(ctx context.Context) error {
	// On the host only the agent may reach the sockets: the parent is
	// 0700; each EE's directory is opened up inside the EE by its mount.
	top := filepath.Join(a.cfg.DataDir, "workload")
	if err := os.MkdirAll(top, 0o700); err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	if err := os.Chmod(top, 0o700); err != nil {
		return fmt.Errorf("workload API: %w", err)
	}
	a.mu.Lock()
	a.wlCtx = ctx
	a.mu.Unlock()
	for _, e := range a.cfg.Node.EEs {
		if err := a.addWorkload(e.Name); err != nil {
			return err
		}
	}
	return nil
}

// addWorkload starts ee's Workload API server (once).
func (a *Agent) addWorkload(ee string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.wl[ee]; ok {
		return nil
	}
	ctx := a.wlCtx
	if ctx == nil {
		return fmt.Errorf("workload API for EE %s: the agent is not running", ee)
	}
	dir := a.WorkloadDir(ee)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("workload API for EE %s: %w", ee, err)
	}
	// The directory is mounted into the EE, whose users may be mapped
	// to other host ids; the socket serves nothing but that EE.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("workload API for EE %s: %w", ee, err)
	}
	path := filepath.Join(dir, WorkloadSocketName)
	if len(path) > maxSocketPath {
		return fmt.Errorf("workload API for EE %s: socket path %s is %d bytes; unix sockets allow at most %d (use a shorter --data directory)", ee, path, len(path), maxSocketPath)
	}
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("workload API for EE %s: %w", ee, err)
	}
	if err := os.Chmod(path, 0o666); err != nil {
		l.Close()
		return fmt.Errorf("workload API for EE %s: %w", ee, err)
	}
	mux := http.NewServeMux()
	mux.Handle(tvdv1connect.NewWorkloadServiceHandler(&workloadService{a: a, ee: ee}, connect.WithReadMaxBytes(1<<20)))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	if a.wl == nil {
		a.wl = map[string]*http.Server{}
	}
	a.wl[ee] = srv
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("workload API", "ee", ee, "err", err)
		}
	}()
	a.log.Info("workload API listening", "ee", ee, "socket", path)
	return nil
}

// dropWorkload stops ee's Workload API server (an EE that left the node).
func (a *Agent) dropWorkload(ee string) {
	a.mu.Lock()
	srv := a.wl[ee]
	delete(a.wl, ee)
	a.mu.Unlock()
	if srv != nil {
		srv.Close()
		os.Remove(a.WorkloadSocket(ee))
	}
}

// closeWorkload stops every Workload API server.
func (a *Agent) closeWorkload() {
	a.mu.Lock()
	srvs := a.wl
	a.wl, a.wlCtx = nil, nil
	a.mu.Unlock()
	for _, s := range srvs {
		s.Close()
	}
}

// identityChanged wakes the identity streams; a.mu must be held.
func (a *Agent) identityChanged() {
	if a.idWake != nil {
		close(a.idWake)
	}
	a.idWake = make(chan struct{})
}

// dropReleased forgets what was released for the members the new plan
// withdraws or removes, and everything when the policy version changes;
// a.mu must be held.
func (a *Agent) dropReleased(p *tvdv1.Plan) {
	keep := map[string]bool{}
	for _, m := range p.GetMembers() {
		if !m.GetSecretsWithdrawn() {
			keep[m.GetMember().GetEe()] = true
		}
	}
	for ee, r := range a.released {
		if !keep[ee] || r.policyVersion != p.GetPolicyVersion() {
			r.wipe()
			delete(a.released, ee)
			if !keep[ee] {
				a.log.Info("secrets withdrawn", "ee", ee)
			}
		}
	}
}

// planMember returns ee's entry in the plan in force; a.mu must be held.
func (a *Agent) planMember(ee string) *tvdv1.PlanMember {
	for _, m := range a.plan.GetMembers() {
		if m.GetMember().GetEe() == ee {
			return m
		}
	}
	return nil
}

// goodMember returns ee's plan entry if the EE may use its secrets.
func (a *Agent) goodMember(ee string) (*tvdv1.PlanMember, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m := a.planMember(ee)
	switch {
	case m == nil:
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("EE %s is not a member of any domain (not admitted yet, or removed)", ee))
	case m.GetSecretsWithdrawn():
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("EE %s is not in good standing in domain %s; its secrets are withdrawn", ee, m.GetMember().GetDomain()))
	}
	return proto.Clone(m).(*tvdv1.PlanMember), nil
}

// release returns what the controller released for ee, asking it if
// nothing is held.
func (a *Agent) release(ctx context.Context, ee string) (*released, error) {
	m, err := a.goodMember(ee)
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	r := a.released[ee]
	a.mu.Unlock()
	if r != nil {
		return r, nil
	}
	resp, err := a.cl.Secrets.Release(ctx, connect.NewRequest(&tvdv1.ReleaseRequest{Node: a.name, Member: m.GetMember()}))
	if err != nil {
		return nil, err
	}
	r = &released{policyVersion: resp.Msg.GetPolicyVersion(), secrets: map[string]*tvdv1.ReleasedSecret{},
		storageKey: resp.Msg.GetStorageKey(), storageKeyID: resp.Msg.GetStorageKeyId(), storageScope: resp.Msg.GetStorageScope()}
	for _, s := range resp.Msg.GetSecrets() {
		r.secrets[s.GetName()] = s
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// A plan may have withdrawn the member while the call was out.
	if cur := a.planMember(ee); cur == nil || cur.GetSecretsWithdrawn() {
		r.wipe()
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("EE %s lost its good standing; its secrets are withdrawn", ee))
	}
	if a.plan.GetPolicyVersion() == r.policyVersion {
		a.released[ee] = r
	}
	return r, nil
}

// workloadService serves one EE's socket.
type workloadService struct {
	a  *Agent
	ee string
}

func (w *workloadService) identity() (*tvdv1.WorkloadIdentity, <-chan struct{}, error) {
	a := w.a
	a.mu.Lock()
	m := a.planMember(w.ee)
	if m != nil {
		// renew updates the plan's entry in place.
		m = proto.Clone(m).(*tvdv1.PlanMember)
	}
	wake := a.idWake
	a.mu.Unlock()
	if m == nil || len(m.GetCertChain()) == 0 {
		return nil, wake, nil
	}
	key, err := loadOrCreateKey(filepath.Join(a.cfg.DataDir, "members", w.ee+".key"))
	if err != nil {
		return nil, wake, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, wake, err
	}
	mem := m.GetMember()
	return &tvdv1.WorkloadIdentity{
		SpiffeId:    tvd.Member{Domain: mem.GetDomain(), Role: mem.GetRole(), EE: mem.GetEe()}.SPIFFEID(a.creds.Bundle.TrustDomain()),
		Member:      mem,
		CertChain:   m.GetCertChain(),
		PrivateKey:  der,
		TrustBundle: a.creds.Bundle.PEM(),
		Expires:     m.GetExpires(),
	}, wake, nil
}

func (w *workloadService) WatchIdentity(ctx context.Context, _ *connect.Request[tvdv1.WatchIdentityRequest], stream *connect.ServerStream[tvdv1.WatchIdentityResponse]) error {
	var sent []byte
	had := false
	for {
		id, wake, err := w.identity()
		if err != nil {
			return connect.NewError(connect.CodeInternal, err)
		}
		switch {
		case id == nil && had:
			return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("EE %s is no longer a member", w.ee))
		case id != nil && string(id.GetCertChain()[0]) != string(sent):
			if err := stream.Send(&tvdv1.WatchIdentityResponse{Identity: id}); err != nil {
				return err
			}
			sent, had = id.GetCertChain()[0], true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		}
	}
}

func (w *workloadService) CheckPeer(ctx context.Context, req *connect.Request[tvdv1.CheckPeerRequest]) (*connect.Response[tvdv1.CheckPeerResponse], error) {
	w.a.mu.Lock()
	m := w.a.planMember(w.ee)
	if m != nil {
		m = proto.Clone(m).(*tvdv1.PlanMember)
	}
	w.a.mu.Unlock()
	if m == nil {
		return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("EE %s is not a member of any domain", w.ee))
	}
	resp, err := w.a.cl.Secrets.CheckPeer(ctx, connect.NewRequest(&tvdv1.SecretServiceCheckPeerRequest{Node: w.a.name, Member: m.GetMember(), CertChain: req.Msg.GetCertChain()}))
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeDeadlineExceeded:
		// The controller is out of reach: judge from the chain alone,
		// as the controller-loss rule keeps intra-domain traffic.
		return connect.NewResponse(&tvdv1.CheckPeerResponse{Peer: w.a.localPeerCheck(m.GetMember(), req.Msg.GetCertChain(), err)}), nil
	}
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&tvdv1.CheckPeerResponse{Peer: resp.Msg.GetPeer()}), nil
}

// localPeerCheck answers a peer check without the controller: a chain
// valid now under the trust bundle names a member whose certificate was
// issued (or renewed) while its verdict was verified, at most one member
// certificate lifetime ago. Only a member of the asking EE's own domain is
// authorised, and its verdict is never called fresh.
func (a *Agent) localPeerCheck(self *tvdv1.Member, chain [][]byte, cause error) *tvdv1.PeerInfo {
	info := &tvdv1.PeerInfo{Reason: "controller unreachable (" + connect.CodeOf(cause).String() + "); judged from the certificate alone"}
	id, err := a.creds.Bundle.VerifyDER(chain, a.now())
	if err != nil {
		info.Reason += ": not a valid identity of this deployment: " + err.Error()
		return info
	}
	if id.Kind != ca.KindMember {
		info.SpiffeId = id.ID
		info.Reason += ": not a member identity"
		return info
	}
	info.SpiffeId, info.Member = id.ID, &tvdv1.Member{Domain: id.Member.Domain, Role: id.Member.Role, Ee: id.Member.EE}
	info.SameDomain = id.Member.Domain == self.GetDomain()
	info.Authorized = info.SameDomain
	return info
}

func (w *workloadService) GetSecret(ctx context.Context, req *connect.Request[tvdv1.GetSecretRequest]) (*connect.Response[tvdv1.GetSecretResponse], error) {
	r, err := w.a.release(ctx, w.ee)
	if err != nil {
		return nil, err
	}
	s := r.secrets[req.Msg.GetName()]
	if s == nil {
		return nil, connect.NewError(connect.CodeNotFound, fmt.Errorf("the domain's policy releases no secret %q to EE %s", req.Msg.GetName(), w.ee))
	}
	return connect.NewResponse(&tvdv1.GetSecretResponse{Value: s.GetValue(), Generation: s.GetGeneration()}), nil
}

func (w *workloadService) GetStorageKey(ctx context.Context, _ *connect.Request[tvdv1.GetStorageKeyRequest]) (*connect.Response[tvdv1.GetStorageKeyResponse], error) {
	r, err := w.a.release(ctx, w.ee)
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&tvdv1.GetStorageKeyResponse{Key: r.storageKey, KeyId: r.storageKeyID, Scope: r.storageScope}), nil
}
