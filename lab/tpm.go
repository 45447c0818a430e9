package lab

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// labCA is the lab's TPM manufacturer: swtpm_localca with its state in
// LABDIR/ca. The first swtpm_setup creates its root and issuing
// certificates; every node's EK certificate is issued by it.
type labCA struct {
	dir       string
	setupConf string
}

func newLabCA(dir string) (*labCA, error) {
	caDir := filepath.Join(dir, "ca")
	if err := os.MkdirAll(caDir, 0o700); err != nil {
		return nil, err
	}
	write := func(name, content string) (string, error) {
		p := filepath.Join(caDir, name)
		return p, os.WriteFile(p, []byte(content), 0o600)
	}
	conf, err := write("localca.conf", fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", caDir))
	if err != nil {
		return nil, err
	}
	opts, err := write("localca.options", "--platform-manufacturer tvd-lab\n--platform-version 1\n--platform-model swtpm\n")
	if err != nil {
		return nil, err
	}
	setup, err := write("swtpm_setup.conf", fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", conf, opts))
	if err != nil {
		return nil, err
	}
	return &labCA{dir: caDir, setupConf: setup}, nil
}

// manufacture creates a TPM's state in stateDir with EK certificates from
// the lab CA.
func (c *labCA) manufacture(ctx context.Context, stateDir, logPath string) error {
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if _, err := run(ctx, "swtpm_setup", "--tpm2", "--tpm-state", stateDir, "--create-ek-cert",
		"--config", c.setupConf, "--overwrite", "--logfile", logPath); err != nil {
		return fmt.Errorf("%w (log: %s)\n%s", err, logPath, tail(logPath, 10))
	}
	return nil
}

// bundle writes the CA certificates that certify the nodes' EKs (the
// localca root and its issuing certificate) into one PEM file for the
// controller's --ek-ca, and returns its path.
func (c *labCA) bundle() (string, error) {
	var out bytes.Buffer
	for _, name := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(c.dir, name))
		if err != nil {
			return "", fmt.Errorf("lab CA: %w", err)
		}
		blk, _ := pem.Decode(b)
		if blk == nil || blk.Type != "CERTIFICATE" {
			return "", fmt.Errorf("lab CA %s: no PEM certificate", name)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return "", fmt.Errorf("lab CA %s: %w", name, err)
		}
		out.Write(pem.EncodeToMemory(blk))
	}
	p := filepath.Join(c.dir, "ek-ca.pem")
	return p, os.WriteFile(p, out.Bytes(), 0o644)
}

// swtpmArgs returns the command line of a node's swtpm: TPM 2.0 on a unix
// socket, started by swtpm itself, logging to logPath.
func swtpmArgs(stateDir, sock, ctrl, logPath string) []string {
	return []string{"swtpm", "socket", "--tpm2", "--tpmstate", "dir=" + stateDir,
		"--server", "type=unixio,path=" + sock, "--ctrl", "type=unixio,path=" + ctrl,
		"--flags", "not-need-init,startup-clear", "--log", "file=" + logPath + ",level=1"}
}

// waitSocket waits until a unix or TCP address accepts connections, the
// process behind it exits, or timeout passes.
func waitSocket(ctx context.Context, network, addr string, exited <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case werr := <-exited:
			return fmt.Errorf("exited before listening on %s: %v", addr, werr)
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s after %v: %w", addr, timeout, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}
