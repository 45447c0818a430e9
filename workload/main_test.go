package workload_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
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

// The package's tests and its Example run against a real deployment: a
// controller and one agent hosting two EEs of the shop domain (shop-web and
// alice), started here because an Example cannot use tvdtest. The test
// process plays shop-web's application: TVD_WORKLOAD_SOCKET points at its
// socket, as the mount at /run/tvd would inside the EE.
var aliceSocket string

func TestMain(m *testing.M) {
	code, err := withDeployment(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, "workload tests: deployment:", err)
		os.Exit(1)
	}
	os.Exit(code)
}

func withDeployment(m *testing.M) (int, error) {
	dir, err := os.MkdirTemp("", "tvdwl-workload-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := os.MkdirAll(filepath.Join(dir, "controller"), 0o700); err != nil {
		return 0, err
	}
	st, err := bolt.Open(filepath.Join(dir, "controller", "state.db"))
	if err != nil {
		return 0, err
	}
	defer st.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	c, err := controller.New(ctx, controller.Config{DataDir: filepath.Join(dir, "controller"), Store: st, Listen: l.Addr().String(), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return 0, err
	}
	defer c.Close()
	cdone := make(chan error, 1)
	go func() { cdone <- c.RunListener(ctx, l) }()
	url := "https://" + l.Addr().String()
	creds, err := client.LoadDir(filepath.Join(dir, "controller", "admin"))
	if err != nil {
		return 0, err
	}
	admin, err := client.Dial(creds, url)
	if err != nil {
		return 0, err
	}
	pol, err := policy.Load(filepath.Join("..", "examples", "shop", "shop.yaml"), filepath.Join("..", "examples", "shop", "reference-values.yaml"))
	if err != nil {
		return 0, err
	}
	req := &tvdv1.ApplyPolicyRequest{}
	for _, f := range pol.Files {
		req.Files = append(req.Files, &tvdv1.PolicyFile{Name: f.Name, Content: f.Content})
	}
	if _, err := admin.Admin.ApplyPolicy(ctx, connect.NewRequest(req)); err != nil {
		return 0, err
	}
	tok, err := admin.Admin.CreateJoinToken(ctx, connect.NewRequest(&tvdv1.CreateJoinTokenRequest{NodeName: "tvdwl-node", Ttl: durationpb.New(time.Hour)}))
	if err != nil {
		return 0, err
	}
	a, err := agent.New(ctx, agent.Config{Controller: url, DataDir: filepath.Join(dir, "agent"), JoinToken: tok.Msg.GetToken(), ReportEvery: 200 * time.Millisecond,
		Node: &agent.NodeConfig{Node: "tvdwl-node", EEs: []agent.EEConfig{
			{Name: "shop-web", Domain: "shop", Role: "web", Owner: "example-shop"},
			{Name: "alice", Domain: "shop", Role: "customer", Owner: "alice"},
		}}})
	if err != nil {
		return 0, err
	}
	adone := make(chan error, 1)
	go func() { adone <- a.Run(ctx) }()
	os.Setenv("TVD_WORKLOAD_SOCKET", a.WorkloadSocket("shop-web"))
	aliceSocket = a.WorkloadSocket("alice")
	code := m.Run()
	cancel()
	if err := <-adone; err != nil {
		return code, fmt.Errorf("agent: %w", err)
	}
	if err := <-cdone; err != nil {
		return code, fmt.Errorf("controller: %w", err)
	}
	return code, nil
}
