package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Names and addresses the lab owns on the host. Everything the lab creates
// carries Prefix, so that down can find it by name.
const (
	// Prefix starts every namespace and host link of the lab.
	Prefix = "tvdlab-"
	// UnderlayNetns holds the underlay bridge BridgeName.
	UnderlayNetns = Prefix + "ul"
	// BridgeName is the underlay bridge inside UnderlayNetns.
	BridgeName = Prefix + "br"
	// HostLink is the host's veth into the underlay; it carries
	// ControllerIP.
	HostLink = Prefix + "host"
	// Subnet is the underlay network.
	Subnet = "10.250.0.0/24"
	// ControllerIP is the host's (and so the controller's) underlay
	// address.
	ControllerIP = "10.250.0.1"
	// ControllerPort is the port the lab's controller listens on.
	ControllerPort = 7443
	// firstNodeHost is the host part of the first node's address.
	firstNodeHost = 10
)

// NodeNetns returns the network namespace of a lab node.
func NodeNetns(node string) string { return Prefix + node }

// NodeAddress returns the underlay address (CIDR) of the i-th node.
func NodeAddress(i int) string { return fmt.Sprintf("10.250.0.%d/24", firstNodeHost+i) }

// Missing is one prerequisite the host lacks and how to get it.
type Missing struct {
	What    string
	Install string
}

// Preflight lists what the host lacks to run a lab: root, swtpm and its
// tools, iproute2, the TUN device.
func Preflight() []Missing {
	var out []Missing
	if os.Geteuid() != 0 {
		out = append(out, Missing{"root (the lab creates network namespaces and links)", "run as root, e.g. sudo tvd lab up ..."})
	}
	for _, b := range []struct{ bin, pkg string }{
		{"swtpm", "apt-get install swtpm"},
		{"swtpm_setup", "apt-get install swtpm-tools"},
		{"swtpm_localca", "apt-get install swtpm-tools"},
		{"ip", "apt-get install iproute2"},
		{"nsenter", "apt-get install util-linux"},
	} {
		if _, err := exec.LookPath(b.bin); err != nil {
			out = append(out, Missing{b.bin + " (not in PATH)", b.pkg})
		}
	}
	if st, err := os.Stat("/dev/net/tun"); err != nil || st.Mode()&os.ModeCharDevice == 0 {
		out = append(out, Missing{"/dev/net/tun (the overlay's TUN device)", "modprobe tun; in a container, pass --device /dev/net/tun"})
	}
	return out
}

// PreflightError reports missing prerequisites.
type PreflightError struct{ Missing []Missing }

func (e *PreflightError) Error() string {
	var b strings.Builder
	b.WriteString("the host lacks what the lab needs:")
	for _, m := range e.Missing {
		fmt.Fprintf(&b, "\n  - %s: %s", m.What, m.Install)
	}
	return b.String()
}

// run runs a command and returns its standard output; the error holds
// the command line and its standard error.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// ip runs the ip command.
func ip(ctx context.Context, args ...string) error {
	_, err := run(ctx, "ip", args...)
	return err
}

// LabNamespaces lists the network namespaces whose names start with
// Prefix.
func LabNamespaces(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "ip", "netns", "list")
	if err != nil {
		return nil, err
	}
	var ns []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], Prefix) {
			ns = append(ns, f[0])
		}
	}
	return ns, nil
}

// LabLinks lists the host's links whose names start with Prefix.
func LabLinks(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "ip", "-o", "link", "show")
	if err != nil {
		return nil, err
	}
	var links []string
	for _, line := range strings.Split(out, "\n") {
		// "3: tvdlab-host@if2: <BROADCAST,...> ..."
		f := strings.SplitN(line, ": ", 3)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(f[1], "@")
		if strings.HasPrefix(name, Prefix) {
			links = append(links, name)
		}
	}
	return links, nil
}

// procCmdline returns a process's command line, or nil if it has none
// (exited, a zombie, or a kernel thread).
func procCmdline(pid int) []string {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil || len(b) == 0 {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
}

// mentions reports whether a command line names a path under dir.
func mentions(cmdline []string, dir string) bool {
	for _, a := range cmdline {
		if i := strings.Index(a, dir); i >= 0 {
			rest := a[i+len(dir):]
			if rest == "" || rest[0] == '/' || rest[0] == ',' {
				return true
			}
		}
	}
	return false
}

// LabProcesses lists the live processes whose command line names a path
// under dir (the lab's swtpm, controller and agents all do).
func LabProcesses(dir string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if cl := procCmdline(pid); cl != nil && mentions(cl, dir) && !isLabCommand(cl) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// isLabCommand reports whether a command line is a `tvd lab ...` command
// itself (down or status naming the directory), which is not part of the
// lab.
func isLabCommand(cl []string) bool {
	for i, a := range cl {
		if a == "lab" && i+1 < len(cl) {
			switch cl[i+1] {
			case "up", "down", "status", "exec", "check", "demo":
				return true
			}
		}
	}
	return false
}

// netnsPIDs lists the processes inside a network namespace.
func netnsPIDs(ctx context.Context, ns string) []int {
	out, err := run(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return nil
	}
	var pids []int
	for _, f := range strings.Fields(out) {
		if pid, err := strconv.Atoi(f); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// alive reports whether pid is a running (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return false
	}
	return b[i+2] != 'Z' && b[i+2] != 'X'
}

// stop ends a process: SIGTERM, then SIGKILL after grace. It returns
// once the process is gone (or a zombie awaiting its parent).
func stop(pid int, grace time.Duration) error {
	if !alive(pid) {
		return nil
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal %d: %w", pid, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill %d: %w", pid, err)
	}
	for range 250 {
		if !alive(pid) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("process %d survives SIGKILL", pid)
}

// daemon starts a long-lived process of the lab: its own session (so a
// terminal's ^C to `tvd lab up` does not reach it), standard input from
// /dev/null, output appended to logPath. exited is closed when it exits
// while this process still runs.
func daemon(argv []string, logPath string) (pid int, exited <-chan error, err error) {
	if err := os.MkdirAll(filepath.Dir(logPath), 0o700); err != nil {
		return 0, nil, err
	}
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return 0, nil, err
	}
	defer log.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return 0, nil, fmt.Errorf("start %s: %w", argv[0], err)
	}
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait(); close(ch) }()
	return cmd.Process.Pid, ch, nil
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
