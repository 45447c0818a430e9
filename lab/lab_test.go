package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// tvdBin is the tvd binary built by TestMain: the lab runs the binary it is
// part of, so the tests drive the real one.
var (
	tvdBin   string
	buildErr error
)

// needBinary fails the test if TestMain could not build tvd.
func needBinary(t *testing.T) {
	t.Helper()
	if buildErr != nil && os.Geteuid() != 0 {
		t.Skipf("cannot build tvd as uid %d (the lab's CI runs as root): %v", os.Geteuid(), buildErr)
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tvdlab-test-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tvdBin = filepath.Join(dir, "tvd")
	// A failed build fails the tests that run the binary, not the
	// package's unit tests. A fuzz worker runs only a fuzz target: it
	// needs no binary, and building one in every worker stalls the fuzzer
	// for seconds.
	buildErr = errors.New("tvd is not built in a fuzz worker")
	if !slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
		buildErr = buildTVD(dir)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildTVD builds ../cmd/tvd. While `tvd lab` is not yet registered in
// cli.NewRoot, it builds it with an overlay of cli/cli.go that registers
// it, so that the test runs the real main either way.
func buildTVD(dir string) error {
	if out, err := exec.Command("go", "build", "-o", tvdBin, "../cmd/tvd").CombinedOutput(); err != nil {
		return fmt.Errorf("build tvd: %v\n%s", err, out)
	}
	if exec.Command(tvdBin, "lab", "--help").Run() == nil {
		return nil
	}
	src, err := os.ReadFile("../cli/cli.go")
	if err != nil {
		return err
	}
	const anchor = "\treturn root\n}"
	if bytes.Count(src, []byte(anchor)) != 1 {
		return fmt.Errorf("tvd lab is not registered in cli.NewRoot, and cli/cli.go has not exactly one %q to register it before", anchor)
	}
	patched := filepath.Join(dir, "cli.go")
	if err := os.WriteFile(patched, bytes.Replace(src, []byte(anchor), []byte("\troot.AddCommand(NewLabCmd())\n"+anchor), 1), 0o600); err != nil {
		return err
	}
	abs, _ := filepath.Abs("../cli/cli.go")
	ov, _ := json.Marshal(map[string]map[string]string{"Replace": {abs: patched}})
	overlay := filepath.Join(dir, "overlay.json")
	if err := os.WriteFile(overlay, ov, 0o600); err != nil {
		return err
	}
	if out, err := exec.Command("go", "build", "-overlay", overlay, "-o", tvdBin, "../cmd/tvd").CombinedOutput(); err != nil {
		return fmt.Errorf("build tvd with tvd lab registered: %v\n%s", err, out)
	}
	fmt.Fprintln(os.Stderr, "lab test: tvd lab is not registered in cli.NewRoot yet; built with an overlay that registers it")
	return nil
}

// needLab skips unless the host can run a lab and none is running.
func needLab(t *testing.T) {
	t.Helper()
	if m := Preflight(); len(m) > 0 {
		t.Skipf("the lab cannot run here: %v", (&PreflightError{Missing: m}).Error())
	}
	ns, err := LabNamespaces(context.Background())
	if err != nil {
		t.Skipf("ip netns list: %v", err)
	}
	if len(ns) > 0 {
		t.Skipf("another lab is running on this host (%v); the lab's names are host-wide", ns)
	}
	needBinary(t)
}

func runTVD(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(tvdBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("tvd %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

func mustTVD(t *testing.T, env []string, args ...string) string {
	t.Helper()
	out, err := runTVD(t, env, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// labDir returns a fresh lab directory, and makes sure the lab in it is
// down when the test ends.
func labDir(t *testing.T) string {
	dir := filepath.Join(t.TempDir(), "lab")
	t.Cleanup(func() {
		if t.Failed() {
			for _, log := range []string{"controller.log", "nodes/*/agent.log"} {
				files, _ := filepath.Glob(filepath.Join(dir, log))
				for _, f := range files {
					t.Logf("--- %s:\n%s", f, tail(f, 30))
				}
			}
		}
		if out, err := runTVD(t, nil, "lab", "down", "--dir", dir); err != nil {
			t.Errorf("cleanup: %v\n%s", err, out)
		}
	})
	return dir
}

// checkGone checks that nothing of the lab in dir is left on the host.
func checkGone(t *testing.T, dir string) {
	t.Helper()
	ctx := context.Background()
	if ns, err := LabNamespaces(ctx); err != nil || len(ns) > 0 {
		t.Errorf("namespaces left: %v %v", ns, err)
	}
	if links, err := LabLinks(ctx); err != nil || len(links) > 0 {
		t.Errorf("links left: %v %v", links, err)
	}
	if pids, err := LabProcesses(dir); err != nil || len(pids) > 0 {
		var cls []string
		for _, p := range pids {
			cls = append(cls, strings.Join(procCmdline(p), " "))
		}
		t.Errorf("processes left: %v %v", cls, err)
	}
	// swtpm and tvd processes by name, whatever their arguments.
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cl := procCmdline(pid)
		if len(cl) > 0 && (filepath.Base(cl[0]) == "swtpm" || cl[0] == tvdBin) && mentions(cl, dir) {
			t.Errorf("process %d left: %v", pid, cl)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left: %v", dir, err)
	}
}

// upAndCheck brings a scenario's lab up and checks that every EE is a
// verified member at assurance tpm, as tvd lab status (through the API
// client) shows it.
func upAndCheck(t *testing.T, scenario, dir string, wantEEs int) *Snapshot {
	t.Helper()
	start := time.Now()
	out := mustTVD(t, nil, "lab", "up", scenario, "--dir", dir, "--timeout", "45s")
	t.Logf("tvd lab up %s: %v", filepath.Base(scenario), time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(out, "all verified members at assurance tpm") {
		t.Errorf("up output:\n%s", out)
	}
	var snap Snapshot
	if err := json.Unmarshal([]byte(mustTVD(t, nil, "lab", "status", "--dir", dir, "-o", "json")), &snap); err != nil {
		t.Fatal(err)
	}
	if len(snap.EEs) != wantEEs || snap.Verified != wantEEs || snap.Phase != "up" {
		t.Errorf("status: %d EEs, %d verified, phase %s; want %d", len(snap.EEs), snap.Verified, snap.Phase, wantEEs)
	}
	for _, e := range snap.EEs {
		if !e.Member || e.Status != "verified" || e.Assurance != "tpm" || e.Address == "" || e.VerifiedAt == nil {
			t.Errorf("EE %+v is not a verified member at assurance tpm", e)
		}
	}
	for _, n := range snap.Nodes {
		if !n.AgentRunning || !n.TPMRunning || n.Assurance != "tpm" || n.Status != "verified" {
			t.Errorf("node %+v", n)
		}
		if n.LastVerified == nil || time.Since(*n.LastVerified) > 10*time.Second {
			t.Errorf("node %s: last verdict %v", n.Name, n.LastVerified)
		}
	}
	return &snap
}

// TestOutsourcingLab brings case study 1 up on this machine, checks every
// member, runs commands in a node and an EE, takes it down and checks that
// nothing is left; a second down is a no-op.
func TestOutsourcingLab(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	snap := upAndCheck(t, "../examples/outsourcing", dir, 8)
	table := mustTVD(t, nil, "lab", "status", "--dir", dir)
	for _, want := range []string{"yellow-dc", "red-client2", "yellow/management-console", "8 of 8 EEs verified"} {
		if !strings.Contains(table, want) {
			t.Errorf("status table lacks %q:\n%s", want, table)
		}
	}

	// Real packets between every ordered pair of EEs, over the WireGuard
	// overlay and through the nftables flow matrix, as the paper's Table 3
	// says. The peers' keys reach every node within a few reports.
	var check string
	deadline := time.Now().Add(20 * time.Second)
	for {
		out, err := runTVD(t, nil, "lab", "check", "--dir", dir)
		check = out
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(check, "112 passed, 0 failed") {
		t.Errorf("lab check:\n%s", check)
	}
	// Rule G end to end: the consoles reach the customer zone only
	// through both gateways (sent straight, the same flow is dropped).
	if !strings.Contains(check, "pass via yellow/gateway, red/gateway") {
		t.Errorf("lab check shows no flow through the gateways:\n%s", check)
	}

	// The same members through the admin CLI with the lab's credential.
	st, err := LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	var members struct {
		Members []struct {
			Member  struct{ Ee string }
			Node    string
			Verdict struct{ Status string }
		}
	}
	if err := json.Unmarshal([]byte(mustTVD(t, []string{"TVD_CREDS=" + st.Creds}, "members", "-o", "json")), &members); err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != len(snap.EEs) {
		t.Errorf("tvd members lists %d, the lab %d", len(members.Members), len(snap.EEs))
	}
	// Every node runs the current plan, with its channel up and the
	// current matrix in force, in both domains.
	var nodes struct {
		Nodes []struct {
			Name    string
			Domains []struct {
				Domain, Channel, FlowMatrixId string
				MatchesPlan                   bool
			}
		}
	}
	if err := json.Unmarshal([]byte(mustTVD(t, []string{"TVD_CREDS=" + st.Creds}, "nodes", "-o", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	rows := 0
	for _, n := range nodes.Nodes {
		for _, d := range n.Domains {
			rows++
			if !d.MatchesPlan || d.Channel != "up" || !strings.HasPrefix(d.FlowMatrixId, "sha256:") {
				t.Errorf("node %s, domain %s: %+v", n.Name, d.Domain, d)
			}
		}
	}
	if rows != 6 {
		t.Errorf("tvd nodes: %d node×domain rows, want 6 (3 nodes × yellow, red): %+v", rows, nodes)
	}
	if out := mustTVD(t, []string{"TVD_CREDS=" + st.Creds}, "nodes"); !strings.Contains(out, "MATCHES PLAN") || !strings.Contains(out, "current (v") {
		t.Errorf("tvd nodes:\n%s", out)
	}

	// exec in a node runs in its namespace, on the underlay.
	addrs := mustTVD(t, nil, "lab", "exec", "--dir", dir, "pc1", "--", "ip", "-br", "addr", "show", "eth0")
	if !strings.Contains(addrs, "10.250.0.11/24") {
		t.Errorf("pc1's eth0: %s", addrs)
	}
	// Without "--", flags after NODE belong to the command.
	if addrs := mustTVD(t, nil, "lab", "exec", "--dir", dir, "pc2", "ip", "-br", "addr", "show", "eth0"); !strings.Contains(addrs, "10.250.0.12/24") {
		t.Errorf("pc2's eth0: %s", addrs)
	}
	// exec in an EE runs inside the container: its files, not the host's.
	if out, err := runTVD(t, nil, "lab", "exec", "--dir", dir, "red-client1", "--", "/bin/sh", "-c", "test -e /bin/busybox && ! test -e /work && echo inside"); err != nil || strings.TrimSpace(out) != "inside" {
		t.Errorf("red-client1: %q (%v); want the command inside the EE", out, err)
	}
	if _, err := runTVD(t, nil, "lab", "exec", "--dir", dir, "pc2", "--", "sh", "-c", "exit 7"); err == nil || !strings.Contains(err.Error(), "exit status 7") {
		t.Errorf("exit status not passed on: %v", err)
	}
	if _, err := runTVD(t, nil, "lab", "exec", "--dir", dir, "nope", "--", "true"); err == nil || !strings.Contains(err.Error(), `no node or EE "nope"`) {
		t.Errorf("unknown target: %v", err)
	}
	// A second up refuses to start over a running lab.
	if _, err := runTVD(t, nil, "lab", "up", "../examples/outsourcing", "--dir", dir); err == nil || !strings.Contains(err.Error(), "already") {
		t.Errorf("second up: %v", err)
	}

	// With the controller gone, status still shows what the lab knows.
	for _, p := range st.Processes {
		if p.Name == "controller" {
			if err := stop(p.PID, 5*time.Second); err != nil {
				t.Fatal(err)
			}
		}
	}
	table = mustTVD(t, nil, "lab", "status", "--dir", dir)
	if !strings.Contains(table, "the controller does not answer") || !strings.Contains(table, "tvdlab-pc2") {
		t.Errorf("status without a controller:\n%s", table)
	}

	start := time.Now()
	out := mustTVD(t, nil, "lab", "down", "--dir", dir)
	t.Logf("tvd lab down: %v", time.Since(start).Round(10*time.Millisecond))
	for _, want := range []string{"stopped agent/pc1", "stopped swtpm/mgmt", "removed netns tvdlab-ul", "removed netns tvdlab-pc2"} {
		if !strings.Contains(out, want) {
			t.Errorf("down output lacks %q:\n%s", want, out)
		}
	}
	checkGone(t, dir)
	if out := mustTVD(t, nil, "lab", "down", "--dir", dir); strings.TrimSpace(out) != "" {
		t.Errorf("second down did something:\n%s", out)
	}
}

// TestDownAfterCrashedUp kills `tvd lab up` with SIGKILL once the
// controller runs, removes lab.json too, and checks that down still finds
// and removes everything by name and command line.
func TestDownAfterCrashedUp(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	cmd := exec.Command(tvdBin, "lab", "up", "../examples/outsourcing", "--dir", dir)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := LoadState(dir)
		if err == nil && slices.ContainsFunc(st.Processes, func(p Process) bool { return p.Name == "controller" }) {
			break
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("the controller did not start:\n%s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if pids, _ := LabProcesses(dir); len(pids) == 0 {
		t.Fatalf("no lab process survived the crash of up:\n%s", out.String())
	}
	if err := os.Remove(filepath.Join(dir, StateFile)); err != nil {
		t.Fatal(err)
	}
	mustTVD(t, nil, "lab", "down", "--dir", dir)
	checkGone(t, dir)
}

// TestPayrollLab brings case study 2 up and reads it as tMart's CIO, whose
// auditor credential the scenario asks for.
func TestPayrollLab(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	upAndCheck(t, "../examples/payroll", dir, 12)
	cio := filepath.Join(dir, "creds", "tmart-cio")
	var members struct {
		Members []struct {
			Member  struct{ Domain, Ee string }
			Verdict struct{ Status string }
		}
	}
	if err := json.Unmarshal([]byte(mustTVD(t, []string{"TVD_CREDS=" + cio}, "members", "paychecks4tmart", "-o", "json")), &members); err != nil {
		t.Fatal(err)
	}
	if len(members.Members) != 7 {
		t.Errorf("the CIO sees %d paychecks4tmart members, want 7", len(members.Members))
	}
	for _, m := range members.Members {
		if m.Member.Domain != "paychecks4tmart" || m.Verdict.Status != "STATUS_VERIFIED" {
			t.Errorf("the CIO sees %+v", m)
		}
	}
	// An auditor changes nothing.
	if _, err := runTVD(t, []string{"TVD_CREDS=" + cio}, "admin", "token", "--node", "x"); err == nil {
		t.Error("the auditor created a join token")
	}
	// Real packets, including the gateways' flows between different nodes
	// (paychecks ↔ tmart-backend and bank), which ride on the controller's
	// cross-domain peering.
	var check string
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := runTVD(t, nil, "lab", "check", "--dir", dir)
		check = out
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(check, "264 passed, 0 failed") {
		t.Errorf("lab check:\n%s", check)
	}
	// Gateways on different nodes: payroll-engine reaches tMart's HR
	// through paychecks-gw and tmart-gw, across two nodes.
	if !strings.Contains(check, "pass via paychecks4tmart/gateway, tmart-backend/gateway") {
		t.Errorf("lab check shows no flow through the gateways:\n%s", check)
	}
	mustTVD(t, nil, "lab", "down", "--dir", dir)
	checkGone(t, dir)

}

// TestShopLab runs the TVD-aware shop (examples/shop): the lab builds its
// image and allowlist, the shop serves in a container EE, and orders from
// the customer's EE (a shop member) are unlimited while the walk-in
// guest's (another domain's member) are capped at $100, over the overlay
// and through the flow matrix.
func TestShopLab(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	snap := upAndCheck(t, "../examples/shop", dir, 3)
	defer func() {
		mustTVD(t, nil, "lab", "down", "--dir", dir)
		checkGone(t, dir)
	}()
	var shop string
	for _, e := range snap.EEs {
		if e.Name == "shop-web" {
			shop = "https://" + e.Address + ":8443"
		}
	}
	if shop == "" {
		t.Fatalf("no shop-web in %+v", snap.EEs)
	}
	order := func(ee, dollars string) (string, error) {
		var out string
		var err error
		// The shop and the peers' keys come up within a few reports.
		deadline := time.Now().Add(30 * time.Second)
		for {
			out, err = runTVD(t, nil, "lab", "exec", "--dir", dir, ee, "--", "/bin/shop", "order", "-amount", dollars, shop)
			if strings.Contains(out, `"accepted"`) || time.Now().After(deadline) {
				return out, err
			}
			time.Sleep(time.Second)
		}
	}
	for _, tc := range []struct {
		ee, dollars string
		want        string
	}{
		{"alice", "150", `200 {"accepted":true,"member":true,"peer":"spiffe://tvd.local/domain/shop/role/customer/ee/alice"`},
		{"walkin", "50", `200 {"accepted":true,"member":false,"peer":"spiffe://tvd.local/domain/guest/role/client/ee/walkin"`},
		{"walkin", "150", `403 {"accepted":false,"member":false`},
	} {
		out, err := order(tc.ee, tc.dollars)
		t.Logf("%s orders $%s: %s", tc.ee, tc.dollars, strings.TrimSpace(out))
		if !strings.Contains(out, tc.want) {
			t.Errorf("%s orders $%s: %v\n%s\nwant %s", tc.ee, tc.dollars, err, out, tc.want)
		}
	}
	// Everything the shop did is on the allowlist the lab measured: no
	// member violates.
	var after Snapshot
	if err := json.Unmarshal([]byte(mustTVD(t, nil, "lab", "status", "--dir", dir, "-o", "json")), &after); err != nil {
		t.Fatal(err)
	}
	if after.Verified != 3 {
		t.Errorf("%d of 3 EEs verified after the orders: %+v", after.Verified, after.EEs)
	}
}

// TestPreflight runs up on a host without the tools (an empty PATH): it
// fails before creating anything and says what to install.
func TestPreflight(t *testing.T) {
	needBinary(t)
	dir := filepath.Join(t.TempDir(), "lab")
	out, err := runTVD(t, []string{"PATH=/nonexistent"}, "lab", "up", "../examples/outsourcing", "--dir", dir)
	if err == nil {
		t.Fatalf("up without swtpm and ip succeeded:\n%s", out)
	}
	for _, want := range []string{"swtpm (not in PATH): apt-get install swtpm", "swtpm_setup (not in PATH): apt-get install swtpm-tools", "ip (not in PATH): apt-get install iproute2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("up created %s before failing its preflight", dir)
	}
}

// TestRefusedEE brings up a scenario whose EE lacks the claim its domain
// requires: up fails after its timeout naming the EE and the controller's
// reason, and down removes the half-up lab.
func TestRefusedEE(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	pol, err := filepath.Abs("../examples/payroll")
	if err != nil {
		t.Fatal(err)
	}
	scen := filepath.Join(t.TempDir(), "refused.yaml")
	src := "kind: Scenario\nname: refused\npolicy: " + pol + "\nnodes:\n  - name: desk\n    ees:\n      - {name: desk1, image: busybox, domain: paychecks4tmart, role: employee-desktop, owner: paychecks.com}\n"
	if err := os.WriteFile(scen, []byte(src), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = runTVD(t, nil, "lab", "up", scen, "--dir", dir, "--timeout", "4s")
	if err == nil {
		t.Fatal("up admitted an EE without the domain's required claim")
	}
	for _, want := range []string{"desk1 on desk: not a member, refused: ", "requires claim node.tmart_regulations", "tvd lab down --dir " + dir} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("up error lacks %q:\n%v", want, err)
		}
	}
	mustTVD(t, nil, "lab", "down", "--dir", dir)
	checkGone(t, dir)
}

// TestDemo runs `tvd lab demo` on case study 1: packets before and after,
// an intruder's unlisted program in a red client EE detected, the member
// quarantined and frozen and cut off from its peers, nothing else changed.
func TestDemo(t *testing.T) {
	needLab(t)
	dir := labDir(t)
	out, err := runTVD(t, nil, "lab", "demo", "../examples/outsourcing", "--dir", dir)
	if err != nil {
		t.Fatalf("lab demo: %v\n%s", err, out)
	}
	for _, want := range []string{"112 passed, 0 failed", "violating", "unlisted executable /tmp/sysupdate", "quarantined", "frozen", "removed netns tvdlab-pc1"} {
		if !strings.Contains(out, want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "112 passed, 0 failed") != 2 {
		t.Errorf("want two clean checks (before and after):\n%s", out)
	}
	// The compliance report after the violation, against its golden copy
	// (times, digests and log positions masked).
	const head = "== tvd report red   (after the violation)\n"
	i := strings.Index(out, head)
	if i < 0 {
		t.Fatalf("demo output has no report after the violation:\n%s", out)
	}
	rep := out[i+len(head):]
	if j := strings.Index(rep, "\n== "); j >= 0 {
		rep = rep[:j+1]
	}
	golden(t, "testdata/demo-report-red-after-violation.golden", maskReport(rep))
}

var update = flag.Bool("update", false, "rewrite the golden files of the tests")

// golden compares got with the golden file (or rewrites it with -update).
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run the test with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update to accept); got:\n%s\nwant:\n%s", path, got, want)
	}
}

var (
	reTime     = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	reDigest   = regexp.MustCompile(`sha256:[0-9a-f]{12,64}`)
	reLogEntry = regexp.MustCompile(`log entry \d+`)
)

// maskReport replaces what differs from run to run in a compliance report:
// times, digests (the intruder's program is built afresh) and positions in
// the measurement log. Column widths stay as the report printed them.
func maskReport(s string) string {
	s = reTime.ReplaceAllStringFunc(s, func(m string) string { return strings.Repeat("T", len(m)) })
	s = reDigest.ReplaceAllString(s, "sha256:DIGEST")
	return reLogEntry.ReplaceAllString(s, "log entry N")
}
