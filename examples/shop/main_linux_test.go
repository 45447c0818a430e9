//go:build linux

package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/tvd-dev/tvd/ee/linux"
)

const privateNSEnv = "TVD_SHOP_PRIVATENS"

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
		// Run again in a mount namespace of its own, so that the EE
		// filesystems of a test binary that dies vanish with it.
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintln(os.Stderr, "find test binary:", err)
			os.Exit(1)
		}
		runtime.LockOSThread()
		cmd := exec.Command(exe, os.Args[1:]...)
		cmd.Env = append(os.Environ(), privateNSEnv+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Run(); err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				os.Exit(ee.ExitCode())
			}
			fmt.Fprintln(os.Stderr, "run tests:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
