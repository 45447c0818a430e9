//go:build linux

package eehost

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/linux"
	"github.com/tvd-dev/tvd/ee/process"
)

// Driver names for NewDriver (the agent's --ee-driver).
const (
	DriverLinux   = "linux"
	DriverProcess = "process"
)

// NewDriver returns the isolation driver named kind, keeping its state in
// dataDir/ee-state (and, for linux, the EEs' network namespaces in
// dataDir/netns and cgroups under "tvd"). It first removes what an agent
// that died left in dataDir (see RemoveLeftovers): no other agent may be
// using dataDir.
func NewDriver(kind, dataDir string, log *slog.Logger) (ee.Driver, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !filepath.IsAbs(dataDir) {
		return nil, fmt.Errorf("ee driver: data dir %q: want an absolute path", dataDir)
	}
	if kind != DriverLinux && kind != DriverProcess {
		return nil, fmt.Errorf("ee driver %q: want %s or %s", kind, DriverLinux, DriverProcess)
	}
	if err := RemoveLeftovers(dataDir); err != nil {
		return nil, err
	}
	state := filepath.Join(dataDir, "ee-state")
	if kind == DriverProcess {
		return process.New(process.Config{StateDir: state, Logger: log})
	}
	return linux.New(linux.Config{StateDir: state, NetNSDir: filepath.Join(dataDir, "netns"), Logger: log})
}

// RemoveLeftovers unmounts and removes the EE state a host that died left
// in dataDir: the driver state and network namespace files NewDriver
// places there, the EEs' filesystems (ees/) and their snapshots. Images
// are kept.
func RemoveLeftovers(dataDir string) error {
	dirs := []string{"ee-state", "netns", "ees", "snapshots"}
	for i, d := range dirs {
		dirs[i] = filepath.Join(dataDir, d)
	}
	mounts, err := mountPoints()
	if err != nil {
		return fmt.Errorf("ee leftovers: %w", err)
	}
	var under []string
	for _, m := range mounts {
		for _, d := range dirs {
			if m == d || strings.HasPrefix(m, d+"/") {
				under = append(under, m)
			}
		}
	}
	// Deepest first: a bind mount inside an EE filesystem goes before it.
	sort.Slice(under, func(i, j int) bool { return len(under[i]) > len(under[j]) })
	var errs []error
	for _, m := range under {
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("ee leftovers: %w", errors.Join(errs...))
	}
	for _, d := range dirs {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("ee leftovers: %w", errors.Join(errs...))
	}
	return nil
}

// mountPoints lists the mount points of the calling process's mount
// namespace, unescaped.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			return nil, fmt.Errorf("mountinfo line %q: want at least 5 fields", sc.Text())
		}
		out = append(out, unescapeOctal(fields[4]))
	}
	return out, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escapes in mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
