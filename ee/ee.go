// Package ee defines execution environments (EEs): the isolated places on a
// node where a domain member's workload runs (the paper's "EE", §2.5). It
// holds the vocabulary every isolation driver shares — Spec, Limits, State,
// Status — and the Driver interface through which the node agent creates,
// starts, meters, freezes and destroys EEs.
//
// Drivers live in subpackages: ee/linux (namespaces, overlayfs, cgroups; the
// "strong" isolation of the paper's Table 2) and ee/process (plain child
// processes; "weak", for development without root). Images, the read-only
// trees an EE's root file system is made from, live in ee/image.
package ee

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// State is where an EE is in its life cycle.
type State string

// The life-cycle states. Create leads to StateCreated; Start to
// StateRunning; Freeze to StateFrozen and Thaw back to StateRunning; Stop,
// or the workload exiting by itself, to StateStopped. A stopped EE can be
// started again (with the same writable state) or destroyed.
const (
	StateCreated State = "created"
	StateRunning State = "running"
	StateFrozen  State = "frozen"
	StateStopped State = "stopped"
)

// Isolation is how strongly a driver separates an EE from the host and from
// other EEs.
type Isolation string

const (
	// IsolationStrong: separate mount, pid, network, UTS and IPC
	// namespaces, its own root file system, no capabilities, cgroup limits.
	IsolationStrong Isolation = "strong"
	// IsolationWeak: a plain process of the agent's user; nothing but the
	// process boundary separates it from the host.
	IsolationWeak Isolation = "weak"
)

// Limits bounds an EE's resources. A zero field means "no limit".
type Limits struct {
	// CPUMillis is the CPU bandwidth in thousandths of a CPU: 500 is half
	// a CPU, 2000 two CPUs.
	CPUMillis int64 `json:"cpuMillis,omitempty"`
	// MemoryBytes caps the EE's memory (and swap, where the host can).
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// Pids caps the number of processes and threads in the EE. A driver's
	// own helper in the EE counts too (ee/linux's supervisor: about 8
	// threads).
	Pids int64 `json:"pids,omitempty"`
}

// Validate reports a negative or absurdly small limit.
func (l Limits) Validate() error {
	if l.CPUMillis < 0 {
		return fmt.Errorf("cpu limit %d: want millicores >= 0", l.CPUMillis)
	}
	if l.CPUMillis > 0 && l.CPUMillis < 10 {
		return fmt.Errorf("cpu limit %d: want at least 10 millicores", l.CPUMillis)
	}
	if l.MemoryBytes < 0 {
		return fmt.Errorf("memory limit %d: want bytes >= 0", l.MemoryBytes)
	}
	if l.MemoryBytes > 0 && l.MemoryBytes < 1<<20 {
		return fmt.Errorf("memory limit %d: want at least 1 MiB", l.MemoryBytes)
	}
	if l.Pids < 0 {
		return fmt.Errorf("pids limit %d: want >= 0", l.Pids)
	}
	return nil
}

// Spec describes an EE to create.
type Spec struct {
	// Name identifies the EE on its node; see ValidName.
	Name string `json:"name"`
	// Image is the directory of an image built by ee/image.Build.
	Image string `json:"image"`
	// Command is the workload: argv, the first element an absolute path
	// inside the image or a name looked up in PATH from Env.
	Command []string `json:"command"`
	// Env is the workload's environment, "KEY=value" strings. A PATH is
	// added when missing.
	Env []string `json:"env,omitempty"`
	// Limits bounds the EE's resources.
	Limits Limits `json:"limits,omitzero"`
	// Hostname is the EE's host name (strong drivers); default Name.
	Hostname string `json:"hostname,omitempty"`
	// Binds are host directories mounted into the EE (strong drivers;
	// the process driver has no mount namespace and ignores them), such as
	// the agent's Workload API socket directory at /run/tvd.
	Binds []Bind `json:"binds,omitempty"`
}

// Bind mounts the host directory Source at Target inside the EE, with
// nosuid, nodev and noexec.
type Bind struct {
	Source string `json:"source"`
	Target string `json:"target"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,62}$`)

// ValidName reports whether s can name an EE: 1 to 63 characters of
// lowercase letters, digits, '.', '_' and '-', starting with a letter or
// digit. Names become file and cgroup names, so nothing else is allowed.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Validate checks a Spec before any driver acts on it.
func (s Spec) Validate() error {
	if !ValidName(s.Name) {
		return fmt.Errorf("ee name %q: want 1-63 of [a-z0-9_.-], starting with a letter or digit", s.Name)
	}
	if s.Image == "" {
		return fmt.Errorf("ee %s: image: want an image directory", s.Name)
	}
	if len(s.Command) == 0 || s.Command[0] == "" {
		return fmt.Errorf("ee %s: command: want at least a program", s.Name)
	}
	for _, e := range s.Env {
		if i := strings.IndexByte(e, '='); i <= 0 {
			return fmt.Errorf("ee %s: env entry %q: want KEY=value", s.Name, e)
		}
	}
	if s.Hostname != "" && !ValidName(s.Hostname) {
		return fmt.Errorf("ee %s: hostname %q: want 1-63 of [a-z0-9_.-]", s.Name, s.Hostname)
	}
	if err := s.Limits.Validate(); err != nil {
		return fmt.Errorf("ee %s: %w", s.Name, err)
	}
	for _, b := range s.Binds {
		for _, p := range []string{b.Source, b.Target} {
			if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
				return fmt.Errorf("ee %s: bind %q -> %q: want clean absolute paths other than /", s.Name, b.Source, b.Target)
			}
		}
	}
	return nil
}

// Status is a driver's view of one EE.
type Status struct {
	Name      string    `json:"name"`
	State     State     `json:"state"`
	Isolation Isolation `json:"isolation"`
	// Pid is the host pid of the EE's first process while it runs, else 0.
	Pid int `json:"pid,omitempty"`
	// ExitCode is the workload's exit status once stopped: the code, or
	// 128+signal when a signal ended it; -1 before the first exit.
	ExitCode int `json:"exitCode"`
	// StartedAt is when the current (or last) run started.
	StartedAt time.Time `json:"startedAt,omitzero"`
	// LogPath is the file the workload's stdout and stderr go to.
	LogPath string `json:"logPath,omitempty"`
	// Root is the EE's root file system as the host can reach it while it
	// runs (for strong drivers /proc/PID/root), else "".
	Root string `json:"root,omitempty"`
	// NetNS is a path to the EE's network namespace while it runs ("" for
	// drivers without one): a named netns file when the driver has a
	// netns directory, else /proc/PID/ns/net.
	NetNS string `json:"netns,omitempty"`
	// UserNS reports whether the EE runs in its own user namespace.
	UserNS bool `json:"userns"`
	// Cgroups maps each resource controller (cpu, memory, pids, freezer)
	// to the cgroup directory that enforces it for this EE.
	Cgroups map[string]string `json:"cgroups,omitempty"`
	// Usage is the EE's metered resource use while it runs.
	Usage Usage `json:"usage,omitzero"`
}

// Usage is metered resource use.
type Usage struct {
	MemoryBytes int64 `json:"memoryBytes,omitempty"` // current memory charge
	Pids        int64 `json:"pids,omitempty"`        // current number of tasks
	CPUNanos    int64 `json:"cpuNanos,omitempty"`    // CPU time consumed
}

// IO connects a command run by Exec. Nil readers and writers mean
// /dev/null.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
}

// Driver runs EEs. Every method names the EE by Spec.Name. Implementations
// are safe for concurrent use.
type Driver interface {
	// Create prepares an EE (state directory, writable layer) without
	// running anything. It fails with ErrExists for a taken name.
	Create(ctx context.Context, spec Spec) error
	// Start runs the workload of a created or stopped EE.
	Start(ctx context.Context, name string) error
	// Stop ends every process of the EE (a grace period, then SIGKILL)
	// and waits until they are gone. Stopping a stopped EE is not an
	// error.
	Stop(ctx context.Context, name string) error
	// Destroy stops the EE and removes everything Create made.
	Destroy(ctx context.Context, name string) error
	// Freeze suspends every process of a running EE, keeping its memory,
	// for later inspection or resumption.
	Freeze(ctx context.Context, name string) error
	// Thaw resumes a frozen EE.
	Thaw(ctx context.Context, name string) error
	// Status reports the EE's current state.
	Status(ctx context.Context, name string) (Status, error)
	// Exec runs cmd inside a running EE with the same isolation as the
	// workload and waits for it. A non-zero exit is an *ExitError.
	Exec(ctx context.Context, name string, cmd []string, stdio IO) error
}

// Snapshot names a content-addressed archive of an EE's writable state.
type Snapshot struct {
	// Digest is "sha256:" and the hex SHA-256 of the archive file.
	Digest string `json:"digest"`
	// Path is the archive file; its base name is derived from Digest.
	Path string `json:"path"`
	// Size is the archive's length in bytes.
	Size int64 `json:"size"`
}

// Snapshotter saves and restores an EE's writable state. A rollback is
// Stop, Restore, Start.
type Snapshotter interface {
	// Snapshot archives the EE's writable state into dir and returns the
	// archive. A running EE is frozen while the archive is written.
	Snapshot(ctx context.Context, name, dir string) (Snapshot, error)
	// Restore replaces the writable state of a created or stopped EE with
	// the archive at path, after checking that the archive's content
	// matches digest.
	Restore(ctx context.Context, name string, snap Snapshot) error
}

// Errors drivers return; test with errors.Is.
var (
	ErrNotFound = errors.New("no such ee")
	ErrExists   = errors.New("ee exists")
	// ErrState means the EE is not in a state the operation allows.
	ErrState = errors.New("wrong ee state")
)

// StateError reports an operation refused in the EE's current state. It
// matches ErrState.
type StateError struct {
	Name string
	Op   string
	Have State
}

func (e *StateError) Error() string {
	return fmt.Sprintf("ee %s: cannot %s while %s", e.Name, e.Op, e.Have)
}

// Is makes StateError match ErrState.
func (e *StateError) Is(target error) bool { return target == ErrState }

// ExitError reports a command run by Exec that exited non-zero.
type ExitError struct {
	Code int // exit code, or 128+signal
}

func (e *ExitError) Error() string { return fmt.Sprintf("command exited with status %d", e.Code) }

// DefaultPath is the PATH given to workloads whose Env has none.
const DefaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// WithDefaultPath returns env with DefaultPath appended when it has no PATH.
func WithDefaultPath(env []string) []string {
	for _, e := range env {
		if strings.HasPrefix(e, "PATH=") {
			return env
		}
	}
	return append(append([]string(nil), env...), DefaultPath)
}
