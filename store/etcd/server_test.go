package etcd_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// installHint is what a skipped test tells the reader to do.
const installHint = "install Debian's etcd-server (apt-get install -y etcd-server) or set TVD_ETCD_BIN to an etcd 3.4+ binary"

// etcdServer is one real etcd process on loopback ports with its own data
// directory, started and killed by the tests.
type etcdServer struct {
	bin, dir  string
	clientURL string
	peerURL   string
	opts      etcdOptions
	log       *bytes.Buffer

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// findEtcd locates the etcd binary: $TVD_ETCD_BIN, then etcd on $PATH, then
// Debian's /usr/bin/etcd.
func findEtcd() (string, error) {
	if p := os.Getenv("TVD_ETCD_BIN"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("TVD_ETCD_BIN=%s: %w", p, err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/bin/etcd"); err == nil {
		return "/usr/bin/etcd", nil
	}
	return "", errNoEtcd
}

// errNoEtcd means there is no etcd binary: tests skip. A TVD_ETCD_BIN that
// names a missing file is a failure instead.
var errNoEtcd = errors.New("no etcd binary on $PATH or at /usr/bin/etcd")

// freePorts returns n distinct free loopback ports. Another process may
// take one before etcd binds it; startEtcd retries on that.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// etcdOptions changes how startEtcdWith runs etcd.
type etcdOptions struct {
	// extra flags, which override the defaults.
	extra []string
	// With certFile set, etcd serves clients over TLS with certFile and
	// keyFile and requires client certificates signed by caFile;
	// clientTLS is what the readiness probe connects with.
	certFile, keyFile, caFile string
	clientTLS                 *tls.Config
}

// startEtcd starts a single-member cluster with its data under dir.
func startEtcd(bin, dir string) (*etcdServer, error) { return startEtcdWith(bin, dir, etcdOptions{}) }

// startEtcdWith is startEtcd with options.
func startEtcdWith(bin, dir string, o etcdOptions) (*etcdServer, error) {
	scheme := "http"
	if o.certFile != "" {
		scheme = "https"
	}
	var lastErr error
	for range 3 {
		ports, err := freePorts(2)
		if err != nil {
			return nil, err
		}
		e := &etcdServer{
			bin:       bin,
			dir:       dir,
			clientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[0]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[1]),
			opts:      o,
		}
		if lastErr = e.start(); lastErr == nil {
			return e, nil
		}
		if !strings.Contains(lastErr.Error(), "address already in use") {
			return nil, lastErr
		}
	}
	return nil, lastErr
}

// endpoint is the client address, host:port.
func (e *etcdServer) endpoint() string {
	_, hostport, _ := strings.Cut(e.clientURL, "://")
	return hostport
}

// start runs etcd (again, on the same ports and data) and waits until it
// serves reads.
func (e *etcdServer) start() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		return errors.New("etcd already running")
	}
	e.log = new(bytes.Buffer)
	args := []string{
		"--name", "tvd-store-etcd-test",
		"--data-dir", filepath.Join(e.dir, "data"),
		"--listen-client-urls", e.clientURL,
		"--advertise-client-urls", e.clientURL,
		"--listen-peer-urls", e.peerURL,
		"--initial-advertise-peer-urls", e.peerURL,
		"--initial-cluster", "tvd-store-etcd-test=" + e.peerURL,
		"--initial-cluster-state", "new",
		"--max-request-bytes", "10485760",
		"--max-txn-ops", "128",
		"--logger", "zap",
		"--log-level", "warn",
	}
	if e.opts.certFile != "" {
		args = append(args, "--cert-file", e.opts.certFile, "--key-file", e.opts.keyFile,
			"--client-cert-auth", "--trusted-ca-file", e.opts.caFile)
	}
	cmd := exec.Command(e.bin, append(args, e.opts.extra...)...)
	cmd.Stdout = e.log
	cmd.Stderr = e.log
	// Its own process group, and killed if this test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", e.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.cmd, e.exited = cmd, exited

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.endpoint()}, TLS: e.opts.clientTLS, Logger: zap.NewNop()})
	if err != nil {
		e.killLocked()
		return err
	}
	defer cli.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := cli.Get(ctx, "health")
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			e.cmd = nil
			return fmt.Errorf("etcd exited during start: %s", tail(e.log.String()))
		default:
		}
		if time.Now().After(deadline) {
			e.killLocked()
			return fmt.Errorf("etcd not serving after 20s (%v): %s", err, tail(e.log.String()))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill sends SIGKILL to etcd and waits for it to exit.
func (e *etcdServer) kill() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.killLocked()
}

func (e *etcdServer) killLocked() {
	if e.cmd == nil {
		return
	}
	_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGKILL)
	<-e.exited
	e.cmd = nil
}

// stop ends etcd gracefully (SIGTERM, then SIGKILL after 5s).
func (e *etcdServer) stop() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return
	}
	_ = syscall.Kill(-e.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-e.exited:
		e.cmd = nil
	case <-time.After(5 * time.Second):
		e.killLocked()
	}
}

func tail(s string) string {
	const n = 2000
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// The package's shared etcd, started by the first test that needs it.
var (
	sharedOnce sync.Once
	shared     *etcdServer
	sharedDir  string
	sharedSkip string // reason to skip, if there is no etcd binary
	sharedErr  error  // etcd is there but did not start: a failure
)

// requireEtcd returns the package's shared etcd, starting it on first use;
// it skips the test if there is no etcd binary.
func requireEtcd(t testing.TB) *etcdServer {
	t.Helper()
	sharedOnce.Do(func() {
		bin, err := findEtcd()
		if errors.Is(err, errNoEtcd) {
			sharedSkip = fmt.Sprintf("%v: %s", err, installHint)
			return
		}
		if err != nil {
			sharedErr = err
			return
		}
		if sharedDir, sharedErr = os.MkdirTemp("", "tvd-store-etcd-"); sharedErr != nil {
			return
		}
		shared, sharedErr = startEtcd(bin, sharedDir)
	})
	if sharedSkip != "" {
		t.Skip(sharedSkip)
	}
	if sharedErr != nil {
		t.Fatalf("shared etcd: %v", sharedErr)
	}
	return shared
}

// privateEtcd starts an etcd only t uses (for tests that kill it), removed
// when t ends.
func privateEtcd(t *testing.T) *etcdServer {
	t.Helper()
	requireEtcd(t) // same skip rule
	bin, _ := findEtcd()
	e, err := startEtcd(bin, t.TempDir())
	if err != nil {
		t.Fatalf("private etcd: %v", err)
	}
	t.Cleanup(e.kill)
	return e
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
	os.Exit(code)
}
