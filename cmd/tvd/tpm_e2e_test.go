package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/tvdtest"
)

// manufacture makes a software TPM state in dir/state with an EK
// certificate from a local CA (swtpm_setup with swtpm_localca), as a TPM
// vendor would, and returns the state directory and a PEM file of the CA
// certificates that certify the EK.
func manufacture(t *testing.T, dir string) (state, caPEM string) {
	t.Helper()
	state, ca := filepath.Join(dir, "state"), filepath.Join(dir, "ca")
	os.MkdirAll(state, 0o700)
	os.MkdirAll(ca, 0o700)
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	localca := write("localca.conf", fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	opts := write("localca.options", "--platform-manufacturer tvd\n--platform-version 1\n--platform-model e2e\n")
	setup := write("setup.conf", fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, opts))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpm-state", state, "--create-ek-cert", "--config", setup, "--overwrite").CombinedOutput(); err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	var pemData []byte
	for _, f := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(ca, f))
		if err != nil {
			t.Fatal(err)
		}
		pemData = append(pemData, b...)
	}
	caPEM = write("ek-ca.pem", string(pemData))
	return state, caPEM
}

// TestTPMAgentProcess runs the controller and an agent backed by swtpm as
// separate processes: the node enrols with an EK certificate from a test
// CA, proves its AK by credential activation, and its members are
// verified by TPM quotes at assurance tpm.
func TestTPMAgentProcess(t *testing.T) {
	dir := t.TempDir()
	sock, ekCA := swtpmSocket(t, dir)
	data := filepath.Join(dir, "controller")
	addr := freePort(t)
	ctl := startProc(t, "controller", "controller", "--data", data, "--listen", addr, "--ek-ca", ekCA)
	creds := filepath.Join(data, "admin")
	tvdtest.Eventually(t, 20*time.Second, "the controller", func() bool { return strings.Contains(ctl.log.String(), "controller listening") })
	env := []string{"TVD_CREDS=" + creds}
	pol := filepath.Join(dir, "policy")
	os.MkdirAll(pol, 0o755)
	src, _ := filepath.Glob("../../examples/outsourcing/*.yaml")
	for _, f := range src {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		// No EE driver runs in this test: the EEs declare weak isolation.
		os.WriteFile(filepath.Join(pol, filepath.Base(f)), []byte(strings.ReplaceAll(string(b), "isolation: strong", "isolation: weak")), 0o644)
	}
	run(t, env, "policy", "apply", pol)
	cfg := filepath.Join(dir, "pc1.yaml")
	os.WriteFile(cfg, []byte("node: pc1\nees:\n  - {name: yellow-mc1, domain: yellow, role: management-console}\n  - {name: red-client1, domain: red, role: client-os}\n"), 0o644)
	token := strings.TrimSpace(run(t, env, "admin", "token", "--node", "pc1"))
	startProc(t, "agent", "agent", "--controller", "https://"+addr, "--data", filepath.Join(dir, "agent"), "--join-token", token,
		"--config", cfg, "--tpm", "unix:"+sock, "--report-every", "300ms")
	tvdtest.Eventually(t, 30*time.Second, "2 members verified by TPM quotes", func() bool {
		var n struct {
			Nodes []struct {
				Name      string
				Assurance string
				Status    string
			}
		}
		json.Unmarshal([]byte(run(t, env, "nodes", "-o", "json")), &n)
		if len(n.Nodes) != 1 || n.Nodes[0].Assurance != "ASSURANCE_TPM" {
			return false
		}
		m := members(t, env, "")
		ok := 0
		for _, x := range m.Members {
			if x.Verdict.Status == "STATUS_VERIFIED" {
				ok++
			}
		}
		return ok == 2
	})
	table := run(t, env, "members")
	if !strings.Contains(table, "TPM quote over a fresh nonce verified") {
		t.Errorf("members do not say they were verified by TPM quotes:\n%s", table)
	}
	audit := run(t, env, "audit", "tail")
	if !strings.Contains(audit, `"assurance":"tpm"`) {
		t.Errorf("the enrolment at assurance tpm is not in the audit log:\n%s", audit)
	}
}

// swtpmSocket manufactures a TPM and starts swtpm on a unix socket.
func swtpmSocket(t *testing.T, dir string) (string, string) {
	t.Helper()
	for _, bin := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install swtpm swtpm-tools): %v", bin, err)
		}
	}
	_, ekCA := manufacture(t, dir)
	sock := filepath.Join(dir, "tpm.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2", "--tpmstate", "dir="+filepath.Join(dir, "state"),
		"--flags", "not-need-init,startup-clear",
		"--server", "type=unixio,path="+sock, "--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"))
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	tvdtest.Eventually(t, 5*time.Second, "swtpm's socket", func() bool {
		_, err := os.Stat(sock)
		return err == nil
	})
	return sock, ekCA
}

// TestTPMAgentWithContainers runs the agent with the linux EE driver: each
// EE is a container (namespaces, overlayfs, cgroups, no capabilities) from
// the busybox base image, its image and every exec are measured into the
// TPM by the EE monitor, and the members are verified at assurance tpm
// with strong isolation, as examples/outsourcing requires unchanged.
func TestTPMAgentWithContainers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root: the linux EE driver creates namespaces, mounts and cgroups")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("needs Debian's busybox-static for the EE base image (apt-get install busybox-static)")
	}
	dir := t.TempDir()
	sock, ekCA := swtpmSocket(t, dir)
	data := filepath.Join(dir, "controller")
	addr := freePort(t)
	ctl := startProc(t, "controller", "controller", "--data", data, "--listen", addr, "--ek-ca", ekCA)
	tvdtest.Eventually(t, 20*time.Second, "the controller", func() bool { return strings.Contains(ctl.log.String(), "controller listening") })
	env := []string{"TVD_CREDS=" + filepath.Join(data, "admin")}
	run(t, env, "policy", "apply", "../../examples/outsourcing")
	cfg := filepath.Join(dir, "pc1.yaml")
	os.WriteFile(cfg, []byte("node: pc1\nees:\n  - {name: yellow-mc1, domain: yellow, role: management-console}\n  - {name: red-client1, domain: red, role: client-os}\n"), 0o644)
	token := strings.TrimSpace(run(t, env, "admin", "token", "--node", "pc1"))
	agent := startProc(t, "agent", "agent", "--controller", "https://"+addr, "--data", filepath.Join(dir, "agent"), "--join-token", token,
		"--config", cfg, "--tpm", "unix:"+sock, "--ee-driver", "linux", "--report-every", "300ms")
	tvdtest.Eventually(t, 40*time.Second, "2 members in containers verified by TPM quotes", func() bool {
		m := members(t, env, "")
		ok := 0
		for _, x := range m.Members {
			if x.Verdict.Status == "STATUS_VERIFIED" {
				ok++
			}
		}
		return ok == 2
	})
	// The measurement log behind PCR 13 holds each EE's image and the
	// programs that ran in it, named as the EE sees them.
	tvdtest.Eventually(t, 20*time.Second, "the EEs' images and first programs in the measurement log", func() bool {
		events, _ := os.ReadFile(filepath.Join(dir, "agent", "events.log"))
		for _, want := range []string{"yellow-mc1", "red-client1", "image:base", "/bin/busybox"} {
			if !strings.Contains(string(events), want) {
				return false
			}
		}
		return true
	})
	// A report after those measurements: still verified, on TPM evidence
	// that now includes them.
	time.Sleep(time.Second)
	m := members(t, env, "")
	for _, x := range m.Members {
		if x.Verdict.Status != "STATUS_VERIFIED" {
			t.Errorf("%s/%s is %s after its measurements; agent log:\n%s", x.Member.Domain, x.Member.Ee, x.Verdict.Status, agent.log.String())
		}
	}
}
