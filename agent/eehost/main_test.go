//go:build linux

package eehost

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/ee/linux"
	"github.com/tvd-dev/tvd/ee/monitor"
)

const privateNSEnv = "TVD_EEHOST_PRIVATENS"

func TestMain(m *testing.M) {
	linux.Init() // the linux driver re-executes this binary as an EE's init
	if os.Getenv(privateNSEnv) == "1" {
		os.Unsetenv(privateNSEnv)
		if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
			fmt.Fprintln(os.Stderr, "make mounts private:", err)
			os.Exit(1)
		}
		os.Exit(m.Run())
	}
	if os.Geteuid() == 0 && !slices.ContainsFunc(os.Args, func(a string) bool { return strings.HasPrefix(a, "-test.fuzzworker") }) {
		os.Exit(inPrivateMountNamespace())
	}
	os.Exit(m.Run())
}

// inPrivateMountNamespace runs the tests again in a child with its own
// mount namespace, so that the EE filesystems of a test binary that dies
// (a timeout, a crash) vanish with it instead of staying on the host.
func inPrivateMountNamespace() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "find test binary:", err)
		return 1
	}
	runtime.LockOSThread() // Pdeathsig follows the thread that forked
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), privateNSEnv+"=1")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
	err = cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		return exit.ExitCode()
	default:
		fmt.Fprintln(os.Stderr, "run tests in a private mount namespace:", err)
		return 1
	}
}

func needBusybox(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(image.BusyboxPath)
	if err != nil {
		t.Skipf("static busybox missing (%v): apt-get install busybox-static", err)
	}
	return b
}

// measurement is one call of Config.Measure.
type measurement struct {
	EE, Path string
	Digest   [32]byte
}

// recorder records what the host measures and what the monitor decides.
// A measurement of digest failFor fails, as a TPM that stopped answering.
type recorder struct {
	mu      sync.Mutex
	ms      []measurement
	events  []monitor.Event
	failFor [32]byte
}

func (r *recorder) measure(ee, path string, d [32]byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d == r.failFor {
		return errors.New("tpm: extend: device gone")
	}
	r.ms = append(r.ms, measurement{ee, path, d})
	return nil
}

func (r *recorder) event(e monitor.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, e)
}

func (r *recorder) count(match func(measurement) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.ms {
		if match(m) {
			n++
		}
	}
	return n
}

// waitMeasured waits until a measurement matching match was recorded.
func (r *recorder) waitMeasured(t *testing.T, what string, match func(measurement) bool) measurement {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r.mu.Lock()
		for _, m := range r.ms {
			if match(m) {
				r.mu.Unlock()
				return m
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("never measured: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func digestOf(b []byte) [32]byte { return sha256.Sum256(b) }

func hexString(d [32]byte) string { return fmt.Sprintf("%x", d[:]) }
