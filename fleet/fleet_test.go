package fleet

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// TestFleetAgainstLocalController enrols 50 simulated TPM nodes with a real
// controller (bbolt store, mutual TLS) and has them report for two
// seconds: every member must end verified at assurance tpm, and none may
// have missed its deadline.
func TestFleetAgainstLocalController(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	ekca, err := NewEKCA(cryptoRand, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	lc, err := StartLocal(ctx, LocalConfig{Dir: t.TempDir(), EKRoots: ekca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := lc.Close(); err != nil {
			t.Errorf("close controller: %v", err)
		}
	}()
	res, err := Run(ctx, Config{Controller: lc.URL, Admin: lc.Admin, EKCA: ekca, Agents: 50, Interval: time.Second, Duration: 2 * time.Second, Warmup: 500 * time.Millisecond, NodePrefix: "fleettest-"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", *res)
	if res.Enrolled != 50 || res.Members != 50 {
		t.Fatalf("enrolled %d nodes, controller lists %d members; want 50 and 50", res.Enrolled, res.Members)
	}
	if res.Verified != 50 || res.Stale != 0 || res.Violated != 0 || res.NotVerified != 0 {
		t.Fatalf("verified %d, stale %d, violated %d, not-verified verdicts %d; want 50 verified and no misses", res.Verified, res.Stale, res.Violated, res.NotVerified)
	}
	if res.Errors != 0 || res.LostNodes != 0 {
		t.Fatalf("%d failed reports, %d lost nodes", res.Errors, res.LostNodes)
	}
	// 50 nodes at 1s for 2s: about 100 appraisals.
	if res.Reports < 50 {
		t.Fatalf("%d reports appraised in the window; want at least 50", res.Reports)
	}
	nodes, err := lc.Admin.Admin.ListNodes(ctx, connect.NewRequest(&tvdv1.ListNodesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Msg.GetNodes()) != 50 {
		t.Fatalf("controller lists %d nodes, want 50", len(nodes.Msg.GetNodes()))
	}
	for _, n := range nodes.Msg.GetNodes() {
		if n.GetAssurance() != tvdv1.Assurance_ASSURANCE_TPM {
			t.Errorf("node %s at assurance %s, want tpm", n.GetName(), n.GetAssurance())
		}
	}
}
