//go:build linux

package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/agent"
	"github.com/tvd-dev/tvd/agent/eehost"
	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/ee/linux"
	"github.com/tvd-dev/tvd/tvdtest"
	"github.com/tvd-dev/tvd/workload"
)

// TestInsideAContainerEE runs the shop binary (CGO_ENABLED=0) in a real
// container EE (ee/linux: namespaces, overlayfs) of a real agent: with no
// configuration it finds the Workload API at /run/tvd/workload.sock, gets
// its identity and secret, seals and opens a blob, and sees only its own
// socket.
func TestInsideAContainerEE(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("SKIPPING: container EEs need root")
	}
	if _, err := linux.Probe(); err != nil {
		t.Skipf("SKIPPING: linux ee driver unavailable here: %v", err)
	}
	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	build := exec.Command("go", "build", "-o", filepath.Join(tree, "shop"), ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the shop: %v\n%s", err, out)
	}
	images := filepath.Join(dir, "images")
	if err := os.MkdirAll(images, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := image.Build(tree, filepath.Join(images, "shop")); err != nil {
		t.Fatal(err)
	}

	env := tvdtest.New(t, tvdtest.Options{})
	env.ApplyPolicy("shop.yaml", "reference-values.yaml")
	eeDir := filepath.Join(dir, "ee")
	drv, err := eehost.NewDriver(eehost.DriverLinux, eeDir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ag atomic.Pointer[agent.Agent]
	host, err := eehost.New(eehost.Config{Driver: drv, Images: images, DataDir: eeDir,
		Command: func(e agent.EEConfig) []string { return e.Command },
		Measure: func(ee, p string, d [32]byte) error {
			for ag.Load() == nil {
				time.Sleep(10 * time.Millisecond)
			}
			return ag.Load().Measure(ee, p, d)
		}})
	if err != nil {
		t.Fatal(err)
	}
	nc := agent.NodeConfig{Node: "tvdwl-ee", EEs: []agent.EEConfig{
		{Name: "tvdwl-web", Image: "shop", Command: []string{"/shop", "whoami"}, Domain: "shop", Role: "web", Owner: "example-shop"},
		{Name: "tvdwl-alice", Image: "shop", Command: []string{"/shop", "whoami"}, Domain: "shop", Role: "customer", Owner: "alice"},
	}}
	ra := env.StartAgentWith(nc, agent.Config{EEs: host})
	ag.Store(ra.Agent)
	t.Cleanup(func() {
		ra.Stop()
		host.Close()
	})
	status := func(name string) string {
		var p string
		tvdtest.Eventually(t, 60*time.Second, "EE "+name+" to exist", func() bool {
			st, err := drv.Status(context.Background(), name)
			p = st.LogPath
			return err == nil && p != ""
		})
		return p
	}
	webLog := status("tvdwl-web")
	var out string
	tvdtest.Eventually(t, 60*time.Second, "the shop in the EE to report what the TVD told it", func() bool {
		b, _ := os.ReadFile(webLog)
		out = string(b)
		return strings.Contains(out, "whoami ") || strings.Contains(out, "level=ERROR")
	})
	want := "whoami spiffe://tvd.local/domain/shop/role/web/ee/tvdwl-web secret=32 store=sealed run-tvd=[workload.sock]"
	if !strings.Contains(out, want) {
		t.Fatalf("EE output:\n%s\nwant a line %q", out, want)
	}
	// The node's disk, EE filesystems included (their tmpfs is mounted in
	// this namespace while the EEs exist), holds neither the web EE's
	// secret nor its storage key in plaintext.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wc, err := workload.OpenSocket(ctx, ra.WorkloadSocket("tvdwl-web"))
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	sk, err := wc.Secret(ctx, "order-signing-key")
	if err != nil {
		t.Fatal(err)
	}
	files := scanDisk(t, dir, needlesOf(sk, storageKey(t, ra.WorkloadSocket("tvdwl-web"))))
	files += scanDisk(t, ra.DataDir, needlesOf(sk))
	t.Logf("scanned %d files of the node and its EEs", files)

	// The customer's EE has no order-signing key: its whoami fails on it.
	aliceLog := status("tvdwl-alice")
	tvdtest.Eventually(t, 60*time.Second, "the customer's EE to finish", func() bool {
		b, _ := os.ReadFile(aliceLog)
		out = string(b)
		return strings.Contains(out, "level=ERROR") || strings.Contains(out, "whoami ")
	})
	if !strings.Contains(out, `secret \"order-signing-key\"`) || !strings.Contains(out, "not_found") {
		t.Errorf("customer EE output:\n%s\nwant a not_found refusal of the web role's secret", out)
	}
}
