package tpm_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

// swtpmEnv is a manufactured swtpm state with an EK certificate issued by
// a local CA (swtpm_setup --create-ek-cert with swtpm_localca).
type swtpmEnv struct {
	dir   string
	state string
	roots *x509.CertPool
	inter *x509.CertPool
}

func needSwtpm(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (apt-get install swtpm swtpm-tools): %v", bin, err)
		}
	}
}

func certPool(t *testing.T, path string) *x509.CertPool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

func manufactureSwtpm(t *testing.T) *swtpmEnv {
	t.Helper()
	needSwtpm(t)
	dir := t.TempDir()
	e := &swtpmEnv{dir: dir, state: filepath.Join(dir, "state")}
	ca := filepath.Join(dir, "ca")
	for _, d := range []string{e.state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	localca := write("localca.conf", fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	opts := write("localca.options", "--platform-manufacturer tvd\n--platform-version 1\n--platform-model attest-test\n")
	setup := write("setup.conf", fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, opts))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpm-state", e.state, "--create-ek-cert",
		"--config", setup, "--overwrite").CombinedOutput()
	if err != nil {
		t.Fatalf("swtpm_setup: %v\n%s", err, out)
	}
	e.roots = certPool(t, filepath.Join(ca, "swtpm-localca-rootca-cert.pem"))
	e.inter = certPool(t, filepath.Join(ca, "issuercert.pem"))
	return e
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs swtpm on the manufactured state with its data channel on
// network ("unix" or "tcp") and returns the address and a stop function;
// the process is also killed at cleanup.
func (e *swtpmEnv) start(t *testing.T, network string) (string, func()) {
	t.Helper()
	// Over unix the TPM is started by swtpm, over TCP by the test
	// (TPM.Startup), so both paths are exercised.
	flags := "not-need-init,startup-clear"
	if network == "tcp" {
		flags = "not-need-init"
	}
	args := []string{"socket", "--tpm2", "--tpmstate", "dir=" + e.state, "--flags", flags}
	var addr string
	switch network {
	case "unix":
		addr = filepath.Join(e.dir, "tpm.sock")
		args = append(args, "--server", "type=unixio,path="+addr, "--ctrl", "type=unixio,path="+filepath.Join(e.dir, "ctrl.sock"))
	case "tcp":
		port, ctrl := freePort(t), freePort(t)
		addr = fmt.Sprintf("127.0.0.1:%d", port)
		args = append(args, "--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", port),
			"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrl))
	}
	cmd := exec.Command("swtpm", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop := func() {
		cmd.Process.Kill()
		<-done
	}
	t.Cleanup(stop)
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial(network, addr)
		if err == nil {
			c.Close()
			return addr, stop
		}
		select {
		case <-done:
			t.Fatalf("swtpm exited: %v\n%s", cmd.ProcessState, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("swtpm not listening on %s: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestSwtpm(t *testing.T) {
	env := manufactureSwtpm(t)
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			addr, _ := env.start(t, network)
			dev, err := tpm.OpenSocket(network, addr, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if err := dev.Startup(); err != nil {
				t.Fatal(err)
			}

			ek, err := dev.EK(tpm.EKRSA2048)
			if err != nil {
				t.Fatalf("ek: %v", err)
			}
			if ek.Cert == nil {
				t.Fatalf("swtpm has no rsa ek certificate")
			}
			v, err := attest.NewVerifier(attest.Config{Refs: testRefs(), EK: attest.EKPolicy{Roots: env.roots, Intermediates: env.inter}})
			if err != nil {
				t.Fatal(err)
			}
			ak, err := dev.CreateAK(tpm.EKRSA2048)
			if err != nil {
				t.Fatalf("create ak: %v", err)
			}
			defer ak.Close()
			e, ch, err := v.BeginEnrollment(ek.Public, ek.Cert, ak.Public)
			if err != nil {
				t.Fatalf("begin enrollment (swtpm ek cert with critical tcg san): %v", err)
			}
			id := e.EKIdentity()
			if id.Manufacturer == "" || id.Allowlisted {
				t.Fatalf("ek identity %+v", id)
			}
			t.Logf("swtpm ek: manufacturer %s model %s version %s", id.Manufacturer, id.Model, id.Version)
			secret, err := ak.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret)
			if err != nil {
				t.Fatalf("activate: %v", err)
			}
			st, err := v.FinishEnrollment(e, secret)
			if err != nil {
				t.Fatal(err)
			}

			// swtpm keeps PCR 13 across our two connections to one
			// process only; each subtest starts a fresh process.
			m, err := tpm.NewMeasurer(dev, attest.EEPCR, nil)
			if err != nil {
				t.Fatal(err)
			}
			for _, x := range []struct {
				path string
				d    [32]byte
			}{{"/bin/sh", shDigest}, {"/srv/web", appDigest}} {
				if _, _, err := m.Measure(attest.EventExec, "web", x.path, x.d); err != nil {
					t.Fatal(err)
				}
			}
			ev, err := m.Evidence(ak, st.Nonce(), tlsHash, st.Cursor(), 0, 7)
			if err != nil {
				t.Fatal(err)
			}
			res, err := v.Appraise(st, ev, tlsHash)
			if err != nil || res.Status != tvd.StatusVerified {
				t.Fatalf("appraise: %v", err)
			}
			if len(res.PCRs) != 3 {
				t.Fatalf("quoted pcrs %+v, want 0, 7, 13", res.PCRs)
			}
			// Replay of the same evidence is refused.
			_, err = v.Appraise(st, ev, tlsHash)
			var nerr *attest.NonceError
			if !errors.As(err, &nerr) {
				t.Fatalf("replay: %v, want NonceError", err)
			}
			// A wrong CA is refused.
			vr, err := attest.NewVerifier(attest.Config{Refs: testRefs(), EK: attest.EKPolicy{Roots: newTestCA(t, "other").pool}})
			if err != nil {
				t.Fatal(err)
			}
			var ekErr *attest.EKError
			if _, _, err := vr.BeginEnrollment(ek.Public, ek.Cert, ak.Public); !errors.As(err, &ekErr) {
				t.Fatalf("untrusted ca: %v, want EKError", err)
			}
		})
	}
}

// TestSwtpmStateRollback restores a vTPM's state from an older snapshot
// (as restoring a VM snapshot does): the AK still signs, but the reset
// counter is behind the last accepted quote and the verifier refuses it.
func TestSwtpmStateRollback(t *testing.T) {
	env := manufactureSwtpm(t)
	v, err := attest.NewVerifier(attest.Config{Refs: testRefs(), EK: attest.EKPolicy{Roots: env.roots, Intermediates: env.inter}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		st               *attest.NodeState
		akPub, akPriv    []byte
		snapshot         map[string][]byte
		lastAcceptedBoot uint32
	)
	// boot starts swtpm, runs one attestation round and shuts it down
	// orderly; it returns the appraisal error.
	boot := func() error {
		addr, stop := env.start(t, "unix")
		defer stop()
		dev, err := tpm.OpenSocket("unix", addr, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		var ak *tpm.AK
		if st == nil {
			ek, err := dev.EK(tpm.EKRSA2048)
			if err != nil {
				t.Fatal(err)
			}
			if ak, err = dev.CreateAK(tpm.EKRSA2048); err != nil {
				t.Fatal(err)
			}
			st = enroll(t, v, ek, ak)
			akPub, akPriv = ak.Public, ak.Private
		} else if ak, err = dev.LoadAK(tpm.EKRSA2048, akPub, akPriv); err != nil {
			t.Fatalf("load ak: %v", err)
		}
		m, err := tpm.NewMeasurer(dev, attest.EEPCR, nil)
		if err != nil {
			t.Fatal(err)
		}
		measure(t, m, attest.EventExec, "web", "/bin/sh", shDigest)
		_, err = v.Appraise(st, evidence(t, m, ak, st), tlsHash)
		if err == nil {
			c, _ := st.LastClock()
			lastAcceptedBoot = c.ResetCount
		}
		ak.Close()
		if err := dev.Shutdown(); err != nil {
			t.Fatal(err)
		}
		return err
	}
	if err := boot(); err != nil {
		t.Fatalf("first boot: %v", err)
	}
	snapshot = readDir(t, env.state)
	for i := range 2 {
		if err := boot(); err != nil {
			t.Fatalf("boot %d: %v", i+2, err)
		}
	}
	writeDir(t, env.state, snapshot)
	err = boot()
	var cerr *attest.CounterError
	if !errors.As(err, &cerr) || cerr.Field != "resetCount" {
		t.Fatalf("rolled-back vTPM: %v, want CounterError on resetCount", err)
	}
	if cerr.Prev != uint64(lastAcceptedBoot) || cerr.Got >= cerr.Prev {
		t.Fatalf("counter error %+v, last accepted boot %d", cerr, lastAcceptedBoot)
	}
	t.Logf("refused: %v", err)
}

func readDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

func writeDir(t *testing.T, dir string, files map[string][]byte) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if _, keep := files[e.Name()]; !keep && e.Type().IsRegular() {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestHostLogs(t *testing.T) {
	missing, err := tpm.ReadHostLog(filepath.Join(t.TempDir(), "binary_runtime_measurements"))
	if err != nil || missing.Present {
		t.Fatalf("missing log: %+v %v", missing, err)
	}
	present := filepath.Join(t.TempDir(), "binary_bios_measurements")
	if err := os.WriteFile(present, []byte("log bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := tpm.ReadHostLog(present); err != nil || !l.Present || string(l.Data) != "log bytes" {
		t.Fatalf("present log: %+v %v", l, err)
	}
	for _, ascii := range []bool{false, true} {
		l, err := tpm.ReadIMALog(ascii)
		if err != nil {
			t.Fatalf("ima log: %v", err)
		}
		t.Logf("%s present=%v bytes=%d", l.Path, l.Present, len(l.Data))
	}
	l, err := tpm.ReadHostLog(tpm.BootLogPath)
	if err != nil {
		t.Fatalf("boot log: %v", err)
	}
	t.Logf("%s present=%v bytes=%d", l.Path, l.Present, len(l.Data))
	if l.Present {
		if _, err := tpm.ParseBootLog(l.Data); err != nil {
			t.Fatalf("host boot log: %v", err)
		}
	}
	// A real crypto-agile boot log (captured by go-attestation).
	data, err := os.ReadFile(filepath.Join("testdata", "crypto_agile_eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	events, err := tpm.ParseBootLog(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(events) == 0 {
		t.Fatalf("no events parsed")
	}
	seen := map[int]bool{}
	for _, e := range events {
		seen[e.Index] = true
	}
	if !seen[0] || !seen[7] {
		t.Fatalf("boot log lacks PCR 0 or 7 events: %v", seen)
	}
	if _, err := tpm.ParseBootLog(data[:100]); err == nil {
		t.Fatalf("truncated boot log parsed")
	}
}

func FuzzParseBootLog(f *testing.F) {
	data, err := os.ReadFile(filepath.Join("testdata", "crypto_agile_eventlog"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Fuzz(func(t *testing.T, b []byte) {
		tpm.ParseBootLog(b)
	})
}
