package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/tvdtest"
)

var tvdBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tvd-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tvdBin = filepath.Join(dir, "tvd")
	out, err := exec.Command("go", "build", "-o", tvdBin, ".").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build tvd: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is a tvd process started by a test.
type proc struct {
	cmd *exec.Cmd
	log *bytes.Buffer
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	return startProcBin(t, name, tvdBin, args...)
}

// startProcBin starts bin as a process the test stops at its end.
func startProcBin(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, log: &log}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
		if t.Failed() {
			t.Logf("--- %s log:\n%s", name, log.String())
		}
	})
	return p
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// portOpen reports whether something listens on addr.
func portOpen(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// run runs the tvd CLI and returns its standard output.
func run(t *testing.T, env []string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tvdBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("tvd %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

type memberJSON struct {
	Members []struct {
		Member         struct{ Domain, Role, Ee string }
		Node           string
		OverlayAddress string
		Verdict        struct{ Status string }
	}
}

func members(t *testing.T, env []string, domain string) memberJSON {
	t.Helper()
	args := []string{"members", "-o", "json"}
	if domain != "" {
		args = append(args, domain)
	}
	var m memberJSON
	if err := json.Unmarshal([]byte(run(t, env, args...)), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func summary(m memberJSON) []string {
	var out []string
	for _, x := range m.Members {
		out = append(out, fmt.Sprintf("%s/%s/%s@%s=%s", x.Member.Domain, x.Member.Role, x.Member.Ee, x.Node, x.OverlayAddress))
	}
	sort.Strings(out)
	return out
}

// controllerProc is a controller started by startController.
type controllerProc struct {
	*proc
	data, addr, url string
	env             []string // names its admin credential (TVD_CREDS)
}

// startController runs a controller process with its data in DIR/controller
// on a free loopback port, and waits until it listens and has written the
// admin credential.
func startController(t *testing.T, dir string) *controllerProc {
	t.Helper()
	c := &controllerProc{data: filepath.Join(dir, "controller"), addr: freePort(t)}
	c.url = "https://" + c.addr
	c.proc = startProc(t, "controller", "controller", "--data", c.data, "--listen", c.addr)
	creds := filepath.Join(c.data, "admin")
	tvdtest.Eventually(t, 20*time.Second, "the admin credential", func() bool {
		_, err := os.Stat(filepath.Join(creds, "controller"))
		return err == nil && strings.Contains(c.log.String(), "controller listening")
	})
	c.env = []string{"TVD_CREDS=" + creds}
	return c
}

// applyOutsourcing writes case study 1 with implicit trust to DIR/policy
// and applies it (it must be the controller's first policy).
func applyOutsourcing(t *testing.T, dir string, env []string) {
	t.Helper()
	pol := filepath.Join(dir, "policy")
	os.MkdirAll(pol, 0o755)
	for _, f := range tvdtest.ImplicitOutsourcing(t) {
		if err := os.WriteFile(filepath.Join(pol, filepath.Base(f.Name)), f.Content, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out := run(t, env, "policy", "apply", pol, "-m", "case study 1"); !strings.Contains(out, "stored policy version 1") {
		t.Fatalf("policy apply: %s", out)
	}
}

// startOutsourcing applies case study 1 with implicit trust (the policy
// must be the first one) and starts its three agents as processes against
// the controller URL(s), reporting every 300 ms.
func startOutsourcing(t *testing.T, dir string, env []string, url string) {
	t.Helper()
	applyOutsourcing(t, dir, env)
	nodes := map[string]string{
		"mgmt": "node: mgmt\nees:\n  - {name: yellow-dc, domain: yellow, role: domain-controller, owner: ibm-global-services}\n  - {name: yellow-gw, domain: yellow, role: gateway, owner: ibm-global-services}\n  - {name: red-gw, domain: red, role: gateway, owner: outsourcing-customer}\n  - {name: red-dc, domain: red, role: domain-controller, owner: outsourcing-customer}\n",
		"pc1":  "node: pc1\nees:\n  - {name: yellow-mc1, domain: yellow, role: management-console}\n  - {name: red-client1, domain: red, role: client-os}\n",
		"pc2":  "node: pc2\nees:\n  - {name: yellow-mc2, domain: yellow, role: management-console}\n  - {name: red-client2, domain: red, role: client-os}\n",
	}
	for node, cfg := range nodes {
		path := filepath.Join(dir, node+".yaml")
		os.WriteFile(path, []byte(cfg), 0o644)
		token := strings.TrimSpace(run(t, env, "admin", "token", "--node", node))
		startProc(t, "agent "+node, "agent", "--controller", url, "--data", filepath.Join(dir, "agent-"+node),
			"--join-token", token, "--config", path, "--report-every", "300ms")
	}
}

// TestControllerAndAgentsAsProcesses runs the built binary as a controller
// and three agents on loopback. They join case study 1 (with implicit
// trust); then the controller is killed with SIGKILL and restarted, and
// membership, the CA and the policy versions must be intact.
func TestControllerAndAgentsAsProcesses(t *testing.T) {
	dir := t.TempDir()
	ctl := startController(t, dir)
	data, addr, url, env := ctl.data, ctl.addr, ctl.url, ctl.env
	creds := filepath.Join(data, "admin")
	caBefore, err := os.ReadFile(filepath.Join(creds, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}

	startOutsourcing(t, dir, env, url)
	verified := func(want int) func() bool {
		return func() bool {
			m := members(t, env, "")
			n := 0
			for _, x := range m.Members {
				if x.Verdict.Status == "STATUS_VERIFIED" {
					n++
				}
			}
			return n == want
		}
	}
	tvdtest.Eventually(t, 20*time.Second, "8 verified members", verified(8))

	table := run(t, env, "members", "yellow")
	for _, want := range []string{"domain-controller", "yellow-dc", "gateway", "yellow-gw", "management-console", "yellow-mc1", "yellow-mc2"} {
		if !strings.Contains(table, want) {
			t.Errorf("tvd members yellow lacks %q:\n%s", want, table)
		}
	}
	if strings.Contains(table, "red-") {
		t.Errorf("tvd members yellow lists red members:\n%s", table)
	}
	before := summary(members(t, env, ""))
	history := run(t, env, "policy", "history")

	// SIGKILL: no chance to flush or close anything.
	if err := ctl.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ctl.cmd.Wait()
	ctl2 := startProc(t, "controller (restarted)", "controller", "--data", data, "--listen", addr)
	tvdtest.Eventually(t, 20*time.Second, "the restarted controller", func() bool { return strings.Contains(ctl2.log.String(), "controller listening") })
	if strings.Contains(ctl2.log.String(), "created the deployment CA") {
		t.Fatal("the restarted controller created a new CA")
	}
	caAfter, _ := os.ReadFile(filepath.Join(creds, "ca.pem"))
	if !bytes.Equal(caBefore, caAfter) {
		t.Error("the admin credential's CA changed")
	}
	if after := summary(members(t, env, "")); strings.Join(after, "\n") != strings.Join(before, "\n") {
		t.Errorf("membership changed across SIGKILL:\n before %v\n after  %v", before, after)
	}
	if h := run(t, env, "policy", "history"); h != history {
		t.Errorf("policy history changed:\n%s\n%s", history, h)
	}
	// The agents reconnect with certificates from the same CA, get fresh
	// nonces from the plan stream and keep their members verified.
	start := time.Now()
	tvdtest.Eventually(t, 20*time.Second, "the agents back on the restarted controller", func() bool {
		var n struct {
			Nodes []struct {
				Name         string
				LastReportAt string
			}
		}
		json.Unmarshal([]byte(run(t, env, "nodes", "-o", "json")), &n)
		fresh := 0
		for _, x := range n.Nodes {
			if ts, err := time.Parse(time.RFC3339Nano, x.LastReportAt); err == nil && ts.After(start) {
				fresh++
			}
		}
		return fresh == 3
	})
	tvdtest.Eventually(t, 10*time.Second, "8 verified members after the restart", verified(8))
	status := run(t, env, "status")
	if !strings.Contains(status, "policy version 1") {
		t.Errorf("status after restart:\n%s", status)
	}
}

// TestAuditVerifyOffline keeps a checkpoint, lets the log grow, and checks
// with the CLI and the verifier key alone that the log only grew and that
// an entry is in it; a forged checkpoint is refused.
func TestAuditVerifyOffline(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "controller")
	addr := freePort(t)
	ctl := startProc(t, "controller", "controller", "--data", data, "--listen", addr)
	tvdtest.Eventually(t, 20*time.Second, "the controller", func() bool { return strings.Contains(ctl.log.String(), "controller listening") })
	env := []string{"TVD_CREDS=" + filepath.Join(data, "admin")}
	key := filepath.Join(dir, "verifier.key")
	b, err := os.ReadFile(filepath.Join(data, "audit", "verifier.key"))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(key, b, 0o644) // the auditor's own copy
	cp1 := filepath.Join(dir, "cp1")
	if out := run(t, env, "audit", "verify", "--key", key, "--save", cp1); !strings.Contains(out, "checkpoint verified") {
		t.Fatalf("audit verify: %s", out)
	}
	run(t, env, "admin", "token")
	run(t, env, "admin", "token")
	tvdtest.Eventually(t, 5*time.Second, "the log to grow", func() bool {
		out := run(t, env, "audit", "verify", "--key", key, "--from", cp1)
		return strings.Contains(out, "consistent") && !strings.Contains(out, "size 1 extends your checkpoint at size 1")
	})
	if out := run(t, env, "audit", "prove", "2", "--key", key); !strings.Contains(out, "entry 2 (admin join-token/") {
		t.Errorf("audit prove: %s", out)
	}
	// A checkpoint signed by another key, or edited, is refused.
	forged, _ := os.ReadFile(cp1)
	forged = []byte(strings.Replace(string(forged), "\n1\n", "\n2\n", 1))
	os.WriteFile(cp1, forged, 0o644)
	cmd := exec.Command(tvdBin, "audit", "verify", "--key", key, "--from", cp1)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Errorf("a forged checkpoint was accepted:\n%s", out)
	}
}

// TestImageBuild builds an image from a directory with the CLI, verifies
// it, and detects a file changed afterwards.
func TestImageBuild(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	os.MkdirAll(filepath.Join(src, "bin"), 0o755)
	os.WriteFile(filepath.Join(src, "bin", "app"), []byte("#!/bin/sh\necho hello\n"), 0o755)
	img := filepath.Join(dir, "img")
	out := run(t, nil, "image", "build", src, "-o", img)
	if !strings.Contains(out, "image sha256:") {
		t.Fatalf("image build: %s", out)
	}
	if out := run(t, nil, "image", "verify", img); !strings.Contains(out, "verified") {
		t.Fatalf("image verify: %s", out)
	}
	os.WriteFile(filepath.Join(img, "rootfs", "bin", "app"), []byte("#!/bin/sh\necho pwned\n"), 0o755)
	cmd := exec.Command(tvdBin, "image", "verify", img)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "bin/app") {
		t.Errorf("a changed file was not detected: %v\n%s", err, out)
	}
}
