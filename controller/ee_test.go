//go:build linux

package controller_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/agent/eehost"
	"github.com/tvd-dev/tvd/api/client"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/tvdtest"
)

// eeNode is an agent running its EEs on an EE host with the process
// driver (weak isolation; no root needed).
type eeNode struct {
	*tvdtest.RunningAgent
	drv  ee.Driver
	host *eehost.Host
}

// restart stops the node's agent and its EEs (as a shutdown does) and
// starts both again on the same data directory.
func (n *eeNode) restart(t *testing.T, env *tvdtest.Env, nc agent.NodeConfig) *eeNode {
	t.Helper()
	n.Stop()
	n.host.Close()
	return startEENode(t, env, nc)
}

func startEENode(t *testing.T, env *tvdtest.Env, nc agent.NodeConfig) *eeNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ee")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	drv, err := eehost.NewDriver(eehost.DriverProcess, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	var ag atomic.Pointer[agent.Agent]
	host, err := eehost.New(eehost.Config{Driver: drv, DataDir: dir, Logger: log,
		Command: func(e agent.EEConfig) []string { return e.Command },
		Measure: func(ee, p string, d [32]byte) error {
			if a := ag.Load(); a != nil {
				return a.Measure(ee, p, d)
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	ra := env.StartAgentWith(nc, agent.Config{EEs: host})
	ag.Store(ra.Agent)
	t.Cleanup(func() {
		ra.Stop()
		host.Close()
	})
	return &eeNode{RunningAgent: ra, drv: drv, host: host}
}

// waitOp polls an EE operation until it is no longer pending, and fails
// the test unless it is done.
func waitOp(t *testing.T, cl *client.Client, op *tvdv1.EEOperation) *tvdv1.EEOperation {
	t.Helper()
	op = waitOpEnd(t, cl, op)
	if op.GetState() != tvdv1.EEOperationState_EE_OPERATION_STATE_DONE {
		t.Fatalf("operation %s (%v %s): %v: %s", op.GetId(), op.GetAction(), op.GetEe(), op.GetState(), op.GetError())
	}
	return op
}

// waitOpEnd polls an EE operation until it is no longer pending.
func waitOpEnd(t *testing.T, cl *client.Client, op *tvdv1.EEOperation) *tvdv1.EEOperation {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for op.GetState() == tvdv1.EEOperationState_EE_OPERATION_STATE_PENDING {
		if time.Now().After(deadline) {
			t.Fatalf("operation %s (%v %s) still pending in phase %q", op.GetId(), op.GetAction(), op.GetEe(), op.GetPhase())
		}
		time.Sleep(50 * time.Millisecond)
		resp, err := cl.EE.GetEEOperation(context.Background(), connect.NewRequest(&tvdv1.GetEEOperationRequest{Id: op.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		op = resp.Msg.GetOperation()
	}
	return op
}

func control(t *testing.T, cl *client.Client, name string, a tvdv1.EEAction) *tvdv1.EEOperation {
	t.Helper()
	resp, err := cl.EE.ControlEE(context.Background(), connect.NewRequest(&tvdv1.ControlEERequest{Ee: name, Action: a, Reason: "test"}))
	if err != nil {
		t.Fatalf("%v %s: %v", a, name, err)
	}
	return waitOp(t, cl, resp.Msg.GetOperation())
}

func listEEs(t *testing.T, cl *client.Client) map[string]*tvdv1.EEInfo {
	t.Helper()
	resp, err := cl.EE.ListEEs(context.Background(), connect.NewRequest(&tvdv1.ListEEsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*tvdv1.EEInfo{}
	for _, e := range resp.Msg.GetEes() {
		out[e.GetName()+"@"+e.GetNode()] = e
	}
	return out
}

func waitEE(t *testing.T, env *tvdtest.Env, key string, state tvdv1.EEState) *tvdv1.EEInfo {
	t.Helper()
	var got *tvdv1.EEInfo
	tvdtest.Eventually(t, 10*time.Second, key+" "+state.String(), func() bool {
		got = listEEs(t, env.Admin)[key]
		return got != nil && got.GetState() == state
	})
	return got
}

func member(t *testing.T, env *tvdtest.Env, name string) *tvdv1.MemberInfo {
	t.Helper()
	for _, m := range env.Members("") {
		if m.GetMember().GetEe() == name {
			return m
		}
	}
	return nil
}

func treeSum(t *testing.T, drv ee.Driver, name string) string {
	t.Helper()
	st, err := drv.Status(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(st.Root, "data", "state"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(b)
	return string(sum[:])
}

// TestEEOperations drives EEs through the controller's EEService on two
// agents: role checks (an auditor and a domain-admin are refused what
// they may not do, and the refusals are audited), ls with the agents'
// real states, freeze and thaw, logs, snapshot, create and rm, and a cold
// migration that keeps the EE's files, domain, role and overlay address.
func TestEEOperations(t *testing.T) {
	if _, err := os.Stat(image.BusyboxPath); err != nil {
		t.Skipf("static busybox missing (%v): apt-get install busybox-static", err)
	}
	env := tvdtest.New(t, tvdtest.Options{})
	env.ApplyFiles(tvdtest.ImplicitOutsourcing(t))
	const loop = "echo hello-from-ee; trap 'exit 0' TERM; while :; do sleep 1; done"
	n1 := startEENode(t, env, agent.NodeConfig{Node: "n1", EEs: []agent.EEConfig{
		{Name: "red-client1", Domain: "red", Role: "client-os", Owner: "outsourcing-customer", Command: []string{"sh", "-c", loop}},
	}})
	n2cfg := agent.NodeConfig{Node: "n2", EEs: []agent.EEConfig{
		{Name: "yellow-mc2", Domain: "yellow", Role: "management-console", Owner: "ibm-global-services"},
	}}
	n2 := startEENode(t, env, n2cfg)
	tvdtest.Eventually(t, 15*time.Second, "two verified members", func() bool {
		m1, m2 := member(t, env, "red-client1"), member(t, env, "yellow-mc2")
		return m1 != nil && m2 != nil && m1.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED && m2.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED
	})
	ctx := context.Background()

	// ls shows what the agents report.
	e := waitEE(t, env, "red-client1@n1", tvdv1.EEState_EE_STATE_RUNNING)
	if e.GetDomain() != "red" || e.GetRole() != "client-os" || e.GetIsolation() != "weak" || !strings.HasPrefix(e.GetImageDigest(), "sha256:") || e.GetMembership() != "admitted" {
		t.Errorf("ls: %v", e)
	}
	before := member(t, env, "red-client1")

	// Roles: an auditor lists its domain only and may change nothing; a
	// domain-admin may operate its domain's EEs but not migrate them.
	aud := dialAs(t, env, "red-auditor", "auditor:red")
	resp, err := aud.EE.ListEEs(ctx, connect.NewRequest(&tvdv1.ListEEsRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Msg.GetEes()) != 1 || resp.Msg.GetEes()[0].GetName() != "red-client1" {
		t.Errorf("auditor:red lists %v; want red-client1 only", resp.Msg.GetEes())
	}
	n := auditSize(t, env)
	for what, call := range map[string]func() error{
		"stop": func() error {
			_, err := aud.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "red-client1", Action: tvdv1.EEAction_EE_ACTION_STOP}))
			return err
		},
		"logs": func() error {
			_, err := aud.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "red-client1", Action: tvdv1.EEAction_EE_ACTION_LOGS}))
			return err
		},
		"migrate": func() error {
			_, err := aud.EE.MigrateEE(ctx, connect.NewRequest(&tvdv1.MigrateEERequest{Ee: "red-client1", To: "n2"}))
			return err
		},
		"create": func() error {
			_, err := aud.EE.CreateEE(ctx, connect.NewRequest(&tvdv1.CreateEERequest{Node: "n1", Definition: &tvdv1.EEDefinition{Name: "x", Domain: "red", Role: "client-os"}}))
			return err
		},
	} {
		if connect.CodeOf(call()) != connect.CodePermissionDenied {
			t.Errorf("auditor:red %s: want permission denied", what)
		}
	}
	waitAudit(t, env, n+3, "the auditor's refusals")
	dadm := dialAs(t, env, "red-admin", "domain-admin:red")
	if _, err := dadm.EE.MigrateEE(ctx, connect.NewRequest(&tvdv1.MigrateEERequest{Ee: "red-client1", To: "n2"})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("domain-admin:red migrate: %v; want permission denied", err)
	}
	if _, err := dadm.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "yellow-mc2", Action: tvdv1.EEAction_EE_ACTION_STOP})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("domain-admin:red stopping a yellow EE: %v; want permission denied", err)
	}
	if _, err := env.Admin.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "nope", Action: tvdv1.EEAction_EE_ACTION_STOP})); connect.CodeOf(err) != connect.CodeNotFound {
		t.Errorf("stop of an unknown EE: %v; want not found", err)
	}
	if _, err := env.Admin.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "red-client1", Action: tvdv1.EEAction_EE_ACTION_MIGRATE_IN})); connect.CodeOf(err) != connect.CodeInvalidArgument {
		t.Errorf("control with a migrate-in action: %v; want invalid argument", err)
	}

	// Freeze and thaw (a domain-admin of the EE's domain may), logs.
	control(t, dadm, "red-client1", tvdv1.EEAction_EE_ACTION_FREEZE)
	waitEE(t, env, "red-client1@n1", tvdv1.EEState_EE_STATE_FROZEN)
	control(t, env.Admin, "red-client1", tvdv1.EEAction_EE_ACTION_THAW)
	waitEE(t, env, "red-client1@n1", tvdv1.EEState_EE_STATE_RUNNING)
	logs := control(t, env.Admin, "red-client1", tvdv1.EEAction_EE_ACTION_LOGS)
	if !bytes.Contains(logs.GetResult().GetLogs(), []byte("hello-from-ee")) {
		t.Errorf("logs: %q", logs.GetResult().GetLogs())
	}

	// State the migration must carry: a file the workload wrote.
	st, err := n1.drv.Status(ctx, "red-client1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(st.Root, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Root, "data", "state"), []byte("customer data "+time.Now().String()), 0o644); err != nil {
		t.Fatal(err)
	}
	want := treeSum(t, n1.drv, "red-client1")
	snap := control(t, env.Admin, "red-client1", tvdv1.EEAction_EE_ACTION_SNAPSHOT)
	if !strings.HasPrefix(snap.GetResult().GetSnapshotDigest(), "sha256:") {
		t.Errorf("snapshot: %v", snap.GetResult())
	}

	// Migrate to n2.
	mresp, err := env.Admin.EE.MigrateEE(ctx, connect.NewRequest(&tvdv1.MigrateEERequest{Ee: "red-client1", To: "n2", Reason: "test"}))
	if err != nil {
		t.Fatal(err)
	}
	mig := waitOp(t, env.Admin, mresp.Msg.GetOperation())
	if mig.GetFromNode() != "n1" || mig.GetToNode() != "n2" || mig.GetPhase() != "done" || !strings.HasPrefix(mig.GetResult().GetSnapshotDigest(), "sha256:") {
		t.Errorf("migration: %v", mig)
	}
	var after *tvdv1.MemberInfo
	tvdtest.Eventually(t, 10*time.Second, "red-client1 a verified member on n2", func() bool {
		after = member(t, env, "red-client1")
		return after != nil && after.GetNode() == "n2" && after.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED
	})
	if after.GetOverlayAddress() != before.GetOverlayAddress() || after.GetMember().GetDomain() != "red" || after.GetMember().GetRole() != "client-os" {
		t.Errorf("membership changed: before %v, after %v", before, after)
	}
	waitEE(t, env, "red-client1@n2", tvdv1.EEState_EE_STATE_RUNNING)
	if e := listEEs(t, env.Admin)["red-client1@n1"]; e != nil {
		t.Errorf("n1 still reports red-client1: %v", e)
	}
	if got := treeSum(t, n2.drv, "red-client1"); got != want {
		t.Error("the EE's file differs after the migration")
	}
	tvdtest.Eventually(t, 5*time.Second, "n2's plan holds red-client1, n1's does not", func() bool {
		has := func(p *tvdv1.Plan) bool {
			for _, m := range p.GetMembers() {
				if m.GetMember().GetEe() == "red-client1" {
					return true
				}
			}
			return false
		}
		return has(n2.Plan()) && !has(n1.Plan())
	})
	// The migration is in the audit log with the acting identity.
	tail, err := env.Admin.Admin.AuditTail(ctx, connect.NewRequest(&tvdv1.AuditTailRequest{Limit: 1000}))
	if err != nil {
		t.Fatal(err)
	}
	var started, ended bool
	for _, e := range tail.Msg.GetEntries() {
		d := string(e.GetData())
		if strings.Contains(d, "ee-migrate") && strings.Contains(e.GetActor(), "/admin/admin/") {
			started = started || strings.Contains(d, `"ee-migrate"`)
			ended = ended || strings.Contains(d, "ee-migrate-result")
		}
	}
	if !started || !ended {
		t.Errorf("audit: migration start %v, end %v", started, ended)
	}

	// Create an EE on n2; it joins like any other; rm withdraws it.
	cresp, err := env.Admin.EE.CreateEE(ctx, connect.NewRequest(&tvdv1.CreateEERequest{Node: "n2", Definition: &tvdv1.EEDefinition{
		Name: "red-client9", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"}}))
	if err != nil {
		t.Fatal(err)
	}
	waitOp(t, env.Admin, cresp.Msg.GetOperation())
	tvdtest.Eventually(t, 10*time.Second, "red-client9 admitted", func() bool {
		m := member(t, env, "red-client9")
		return m != nil && m.GetNode() == "n2" && m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED
	})
	// A created EE has its Workload API socket (and comes back when its
	// node's agent restarts, below).
	if _, err := os.Stat(filepath.Join(n2.DataDir, "workload", "red-client9", "workload.sock")); err != nil {
		t.Errorf("created EE's Workload API socket: %v", err)
	}
	if _, err := env.Admin.EE.CreateEE(ctx, connect.NewRequest(&tvdv1.CreateEERequest{Node: "n1", Definition: &tvdv1.EEDefinition{
		Name: "red-client9", Domain: "red", Role: "client-os"}})); connect.CodeOf(err) != connect.CodeAlreadyExists {
		t.Errorf("second create of red-client9: %v; want already exists", err)
	}
	control(t, env.Admin, "red-client9", tvdv1.EEAction_EE_ACTION_REMOVE)
	tvdtest.Eventually(t, 10*time.Second, "red-client9 gone", func() bool {
		return member(t, env, "red-client9") == nil && listEEs(t, env.Admin)["red-client9@n2"] == nil
	})

	// Archives move only for the node a migration names: another node's
	// certificate is refused, an admin's is not a node's.
	nodeCreds, err := client.LoadDir(filepath.Join(n2.DataDir, "node"))
	if err != nil {
		t.Fatal(err)
	}
	nodeCl, err := client.Dial(nodeCreds, env.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nodeCl.EEAgent.PutArchive(ctx, connect.NewRequest(&tvdv1.PutArchiveRequest{Node: "n2", OperationId: mig.GetId(), Digest: "sha256:00", Data: []byte("x")})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("put archive for a finished operation: %v; want permission denied", err)
	}
	if _, err := nodeCl.EEAgent.GetArchive(ctx, connect.NewRequest(&tvdv1.GetArchiveRequest{Node: "n1", OperationId: mig.GetId()})); connect.CodeOf(err) != connect.CodePermissionDenied {
		t.Errorf("n2 asking for an archive as n1: %v; want permission denied", err)
	}
	if _, err := env.Admin.EEAgent.GetArchive(ctx, connect.NewRequest(&tvdv1.GetArchiveRequest{Node: "n2", OperationId: mig.GetId()})); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("an admin asking for an archive: %v; want unauthenticated", err)
	}

	// A migration whose target cannot take the EE fails there; the EE is
	// then between nodes (its address kept), and a second migration
	// brings it in elsewhere from the archive the controller holds.
	env.StartAgent(agent.NodeConfig{Node: "n3"}) // runs no EEs
	mresp, err = env.Admin.EE.MigrateEE(ctx, connect.NewRequest(&tvdv1.MigrateEERequest{Ee: "red-client1", To: "n3"}))
	if err != nil {
		t.Fatal(err)
	}
	failed := waitOpEnd(t, env.Admin, mresp.Msg.GetOperation())
	if failed.GetState() != tvdv1.EEOperationState_EE_OPERATION_STATE_FAILED || !strings.Contains(failed.GetError(), "runs no EE host") {
		t.Fatalf("migration to a node without EEs: %v", failed)
	}
	if e := listEEs(t, env.Admin)["red-client1@"]; e == nil || e.GetMembership() != "migrating" || e.GetOverlayAddress() != before.GetOverlayAddress() {
		t.Errorf("ls of an EE between nodes: %v", e)
	}
	if _, err := env.Admin.EE.ControlEE(ctx, connect.NewRequest(&tvdv1.ControlEERequest{Ee: "red-client1", Action: tvdv1.EEAction_EE_ACTION_START})); connect.CodeOf(err) != connect.CodeFailedPrecondition {
		t.Errorf("start of an EE between nodes: %v; want failed precondition", err)
	}
	mresp, err = env.Admin.EE.MigrateEE(ctx, connect.NewRequest(&tvdv1.MigrateEERequest{Ee: "red-client1", To: "n1"}))
	if err != nil {
		t.Fatal(err)
	}
	waitOp(t, env.Admin, mresp.Msg.GetOperation())
	tvdtest.Eventually(t, 10*time.Second, "red-client1 a verified member on n1 again", func() bool {
		after = member(t, env, "red-client1")
		return after != nil && after.GetNode() == "n1" && after.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED
	})
	if after.GetOverlayAddress() != before.GetOverlayAddress() {
		t.Errorf("address %s after the retried migration, want %s", after.GetOverlayAddress(), before.GetOverlayAddress())
	}
	waitEE(t, env, "red-client1@n1", tvdv1.EEState_EE_STATE_RUNNING)
	if got := treeSum(t, n1.drv, "red-client1"); got != want {
		t.Error("the EE's file differs after the retried migration")
	}
	// Once the EE runs from it, the controller drops the archive.
	if left, _ := filepath.Glob(filepath.Join(env.Dir, "controller", "archives", "*")); len(left) > 0 {
		t.Errorf("archives left at the controller: %v", left)
	}

	// An EE created through the controller comes back when its node's
	// agent restarts (from its image, as every EE does), still a member,
	// with its Workload API.
	cresp, err = env.Admin.EE.CreateEE(ctx, connect.NewRequest(&tvdv1.CreateEERequest{Node: "n2", Definition: &tvdv1.EEDefinition{
		Name: "red-client8", Domain: "red", Role: "client-os", Owner: "outsourcing-customer"}}))
	if err != nil {
		t.Fatal(err)
	}
	waitOp(t, env.Admin, cresp.Msg.GetOperation())
	waitEE(t, env, "red-client8@n2", tvdv1.EEState_EE_STATE_RUNNING)
	restarted := time.Now()
	n2 = n2.restart(t, env, n2cfg)
	tvdtest.Eventually(t, 20*time.Second, "red-client8 running and verified on the restarted n2, with its Workload API", func() bool {
		e := listEEs(t, env.Admin)["red-client8@n2"]
		m := member(t, env, "red-client8")
		_, err := os.Stat(filepath.Join(n2.DataDir, "workload", "red-client8", "workload.sock"))
		return e != nil && e.GetState() == tvdv1.EEState_EE_STATE_RUNNING && e.GetReportedAt().AsTime().After(restarted) &&
			m != nil && m.GetNode() == "n2" && m.GetVerdict().GetStatus() == tvdv1.Status_STATUS_VERIFIED && err == nil
	})
}
