// Package process is the weak isolation driver for execution environments:
// each EE is a plain process group of the agent's user, working in its own
// copy of the image's tree. It exists for development without root; its
// Status says Isolation "weak", and a policy that requires strong
// isolation must not admit its EEs.
//
// What it does NOT provide: any isolation beyond the process boundary.
// The workload sees the host's file system, processes and network, runs
// with the agent's user and capabilities, and the image tree is only its
// working directory (absolute commands inside the tree are run from the
// copy). Resource limits are not enforced (Create refuses them unless
// Config.IgnoreLimits), and Freeze is SIGSTOP to the process group, which a
// process that left the group escapes.
package process

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
)

// Config configures a Driver.
type Config struct {
	// StateDir holds one directory per EE (its tree copy and log).
	StateDir string
	// StopTimeout is the grace between SIGTERM and SIGKILL. Default 2s.
	StopTimeout time.Duration
	// IgnoreLimits lets Create accept specs with limits this driver cannot
	// enforce (they are logged and ignored). Default: refuse them.
	IgnoreLimits bool
	// Logger receives life-cycle events. Default slog.Default().
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("process ee driver: state dir %q: want an absolute path", c.StateDir)
	}
	if c.StopTimeout < 0 {
		return fmt.Errorf("process ee driver: stop timeout %v: want >= 0", c.StopTimeout)
	}
	return nil
}

// Driver runs EEs as plain process groups. It implements ee.Driver and
// ee.Snapshotter.
type Driver struct {
	cfg Config
	log *slog.Logger

	mu  sync.Mutex
	ees map[string]*instance

	// Workloads are forked from one locked OS thread that lives as long
	// as the driver (Pdeathsig fires when the forking thread exits).
	spawn     chan spawnCmd
	spawnDone chan struct{}
	closeOnce sync.Once
}

type spawnCmd struct {
	cmd  *exec.Cmd
	errc chan error
}

func (d *Driver) spawner() {
	runtime.LockOSThread() // never unlocked; see Driver.spawn
	defer close(d.spawnDone)
	for req := range d.spawn {
		req.errc <- req.cmd.Start()
	}
}

func (d *Driver) startOnSpawner(cmd *exec.Cmd) (err error) {
	defer func() {
		if recover() != nil { // spawn channel closed
			err = errors.New("driver closed")
		}
	}()
	errc := make(chan error, 1)
	d.spawn <- spawnCmd{cmd: cmd, errc: errc}
	return <-errc
}

var (
	_ ee.Driver      = (*Driver)(nil)
	_ ee.Snapshotter = (*Driver)(nil)
)

// New returns a driver.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("process ee driver: %w", err)
	}
	d := &Driver{cfg: cfg, log: cfg.Logger, ees: map[string]*instance{}}
	// EEs an earlier driver left in StateDir come back stopped.
	ents, err := os.ReadDir(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("process ee driver: %w", err)
	}
	for _, e := range ents {
		dir := filepath.Join(cfg.StateDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "spec.json"))
		if err != nil || !e.IsDir() {
			continue
		}
		var spec ee.Spec
		if err := json.Unmarshal(b, &spec); err != nil || spec.Validate() != nil || spec.Name != e.Name() {
			d.log.Warn("ee state skipped: bad spec", "dir", dir, "err", err)
			continue
		}
		d.ees[spec.Name] = &instance{spec: spec, dir: dir, state: ee.StateStopped, exitCode: -1}
	}
	d.spawn, d.spawnDone = make(chan spawnCmd), make(chan struct{})
	go d.spawner()
	return d, nil
}

type instance struct {
	spec ee.Spec
	dir  string

	op sync.Mutex // serialises life-cycle operations

	mu        sync.Mutex
	state     ee.State
	exitCode  int
	startedAt time.Time
	cmd       *exec.Cmd
	done      chan struct{}
}

func (in *instance) root() string    { return filepath.Join(in.dir, "root") }
func (in *instance) logPath() string { return filepath.Join(in.dir, "ee.log") }

func (d *Driver) get(name string) (*instance, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	in, ok := d.ees[name]
	if !ok {
		return nil, fmt.Errorf("ee %s: %w", name, ee.ErrNotFound)
	}
	return in, nil
}

// Create verifies the image and copies its tree into the EE's state
// directory.
func (d *Driver) Create(ctx context.Context, spec ee.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if spec.Limits != (ee.Limits{}) {
		if !d.cfg.IgnoreLimits {
			return fmt.Errorf("ee %s: the process driver cannot enforce limits %+v (use the linux driver, or Config.IgnoreLimits)", spec.Name, spec.Limits)
		}
		d.log.WarnContext(ctx, "ee limits ignored by the process driver", "ee", spec.Name)
	}
	im, err := image.Open(spec.Image)
	if err != nil {
		return fmt.Errorf("ee %s: %w", spec.Name, err)
	}
	spec.Env = ee.WithDefaultPath(spec.Env)
	in := &instance{spec: spec, dir: filepath.Join(d.cfg.StateDir, spec.Name), state: ee.StateCreated, exitCode: -1}
	d.mu.Lock()
	if _, ok := d.ees[spec.Name]; ok {
		d.mu.Unlock()
		return fmt.Errorf("ee %s: %w", spec.Name, ee.ErrExists)
	}
	d.ees[spec.Name] = in
	d.mu.Unlock()
	err = func() error {
		if err := os.Mkdir(in.dir, 0o700); err != nil {
			return err
		}
		if err := copyTree(im.RootFS(), in.root()); err != nil {
			return err
		}
		b, _ := json.MarshalIndent(spec, "", "  ")
		return os.WriteFile(filepath.Join(in.dir, "spec.json"), b, 0o600)
	}()
	if err != nil {
		os.RemoveAll(in.dir)
		d.mu.Lock()
		delete(d.ees, spec.Name)
		d.mu.Unlock()
		return fmt.Errorf("ee %s: create: %w", spec.Name, err)
	}
	d.log.InfoContext(ctx, "ee created", "ee", spec.Name, "image", im.Digest, "isolation", ee.IsolationWeak)
	return nil
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := de.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			// Writable for the owner whatever the image says, so the
			// copy can be filled and removed.
			return os.Chmod(target, info.Mode().Perm()|0o700|info.Mode()&(fs.ModeSticky|fs.ModeSetgid))
		case info.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			defer in.Close()
			out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, info.Mode().Perm())
			if err != nil {
				return err
			}
			if _, err := io.Copy(out, in); err != nil {
				out.Close()
				return err
			}
			return out.Close()
		case info.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(t, target)
		}
		return fmt.Errorf("%s: unsupported file type %s", p, info.Mode().Type())
	})
}

// resolve finds argv[0]: an absolute path is taken from the EE's tree copy
// when it exists there; a bare name is looked up in PATH, first as
// directories of the tree copy, then on the host.
func (in *instance) resolve(name string) (string, error) {
	if filepath.IsAbs(name) {
		if _, err := os.Stat(filepath.Join(in.root(), name)); err == nil {
			return filepath.Join(in.root(), name), nil
		}
		return name, nil
	}
	if strings.Contains(name, "/") {
		return filepath.Join(in.root(), name), nil
	}
	for _, e := range in.spec.Env {
		if v, ok := strings.CutPrefix(e, "PATH="); ok {
			for _, dir := range filepath.SplitList(v) {
				p := filepath.Join(in.root(), dir, name)
				if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
					return p, nil
				}
			}
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s: not found in the ee's tree or the host PATH", name)
	}
	return p, nil
}

func (in *instance) env() []string {
	return append(append([]string(nil), in.spec.Env...), "TVD_EE_ROOT="+in.root(), "HOME="+in.root())
}

// Start runs the workload as a new process group in the EE's tree copy.
func (d *Driver) Start(ctx context.Context, name string) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.state
	in.mu.Unlock()
	if st != ee.StateCreated && st != ee.StateStopped {
		return &ee.StateError{Name: name, Op: "start", Have: st}
	}
	path, err := in.resolve(in.spec.Command[0])
	if err != nil {
		return fmt.Errorf("ee %s: start: %w", name, err)
	}
	logf, err := os.OpenFile(in.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("ee %s: start: %w", name, err)
	}
	defer logf.Close()
	cmd := &exec.Cmd{
		Path: path, Args: in.spec.Command, Env: in.env(), Dir: in.root(),
		Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL},
	}
	if err := d.startOnSpawner(cmd); err != nil {
		return fmt.Errorf("ee %s: start: %w", name, err)
	}
	done := make(chan struct{})
	in.mu.Lock()
	in.cmd, in.done, in.state, in.startedAt = cmd, done, ee.StateRunning, time.Now()
	in.mu.Unlock()
	go d.wait(in, cmd, done)
	d.log.InfoContext(ctx, "ee started", "ee", name, "pid", cmd.Process.Pid)
	return nil
}

func (d *Driver) wait(in *instance, cmd *exec.Cmd, done chan struct{}) {
	err := cmd.Wait()
	code := 0
	var xe *exec.ExitError
	if errors.As(err, &xe) {
		if ws, ok := xe.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		} else {
			code = xe.ExitCode()
		}
	} else if err != nil {
		code = -1
	}
	// Whatever the workload left in its group goes with it.
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	in.mu.Lock()
	in.state, in.exitCode, in.cmd = ee.StateStopped, code, nil
	in.mu.Unlock()
	close(done)
	d.log.Info("ee stopped", "ee", in.spec.Name, "exit", code)
}

// Stop sends SIGTERM to the EE's process group, SIGKILL after the grace
// period, and waits for the workload to exit.
func (d *Driver) Stop(ctx context.Context, name string) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	return d.stop(ctx, in)
}

func (d *Driver) stop(ctx context.Context, in *instance) error {
	in.mu.Lock()
	cmd, done, st := in.cmd, in.done, in.state
	in.mu.Unlock()
	if cmd == nil {
		return nil
	}
	pgid := -cmd.Process.Pid
	if st == ee.StateRunning {
		syscall.Kill(pgid, syscall.SIGTERM)
		t := time.NewTimer(d.cfg.StopTimeout)
		defer t.Stop()
		select {
		case <-done:
			return nil
		case <-t.C:
		case <-ctx.Done():
		}
	}
	syscall.Kill(pgid, syscall.SIGKILL)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("ee %s: stop: %w", in.spec.Name, ctx.Err())
	}
}

// Destroy stops the EE and removes its state directory.
func (d *Driver) Destroy(ctx context.Context, name string) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	if err := d.stop(ctx, in); err != nil {
		return err
	}
	if err := os.RemoveAll(in.dir); err != nil {
		return fmt.Errorf("ee %s: destroy: %w", name, err)
	}
	d.mu.Lock()
	delete(d.ees, name)
	d.mu.Unlock()
	return nil
}

// Close stops every EE (their state stays on disk); Start fails after it.
func (d *Driver) Close(ctx context.Context) error {
	d.mu.Lock()
	all := make([]*instance, 0, len(d.ees))
	for _, in := range d.ees {
		all = append(all, in)
	}
	d.mu.Unlock()
	var errs []error
	for _, in := range all {
		in.op.Lock()
		errs = append(errs, d.stop(ctx, in))
		in.op.Unlock()
	}
	d.closeOnce.Do(func() {
		close(d.spawn)
		<-d.spawnDone
	})
	return errors.Join(errs...)
}

// Freeze stops the EE's process group with SIGSTOP.
func (d *Driver) Freeze(ctx context.Context, name string) error {
	return d.signalState(ctx, name, "freeze", syscall.SIGSTOP, ee.StateRunning, ee.StateFrozen)
}

// Thaw continues the EE's process group with SIGCONT.
func (d *Driver) Thaw(ctx context.Context, name string) error {
	return d.signalState(ctx, name, "thaw", syscall.SIGCONT, ee.StateFrozen, ee.StateRunning)
}

func (d *Driver) signalState(ctx context.Context, name, op string, sig syscall.Signal, from, to ee.State) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.state == to {
		return nil
	}
	if in.state != from || in.cmd == nil {
		return &ee.StateError{Name: name, Op: op, Have: in.state}
	}
	if err := syscall.Kill(-in.cmd.Process.Pid, sig); err != nil {
		return fmt.Errorf("ee %s: %s: %w", name, op, err)
	}
	if sig == syscall.SIGSTOP {
		// SIGSTOP is asynchronous: wait until the leader is stopped.
		pid := in.cmd.Process.Pid
		for i := 0; i < 1000 && procState(pid) != 'T'; i++ {
			time.Sleep(time.Millisecond)
		}
	}
	in.state = to
	d.log.InfoContext(ctx, "ee "+op, "ee", name)
	return nil
}

// procState returns the state letter of /proc/PID/stat.
func procState(pid int) byte {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 || i+2 >= len(b) {
		return 0
	}
	return b[i+2]
}

// Status reports the EE's state. Usage is the workload leader's only
// (resident memory and CPU time), not its children's.
func (d *Driver) Status(ctx context.Context, name string) (ee.Status, error) {
	in, err := d.get(name)
	if err != nil {
		return ee.Status{}, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	s := ee.Status{Name: name, State: in.state, Isolation: ee.IsolationWeak, ExitCode: in.exitCode,
		StartedAt: in.startedAt, LogPath: in.logPath(), Root: in.root()}
	if in.cmd != nil {
		s.Pid = in.cmd.Process.Pid
		s.Usage = leaderUsage(s.Pid)
	}
	return s, nil
}

func leaderUsage(pid int) ee.Usage {
	var u ee.Usage
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return u
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return u
	}
	f := strings.Fields(string(b[i+1:]))
	// Fields after the command: state(0) ... utime(11) stime(12) ... rss(21).
	if len(f) > 21 {
		ut, _ := strconv.ParseInt(f[11], 10, 64)
		st, _ := strconv.ParseInt(f[12], 10, 64)
		rss, _ := strconv.ParseInt(f[21], 10, 64)
		const clkTck = 100 // USER_HZ on Linux
		u.CPUNanos = (ut + st) * int64(time.Second) / clkTck
		u.MemoryBytes = rss * int64(os.Getpagesize())
		u.Pids = 1
	}
	return u
}

// Exec runs cmd as a child of the agent in the EE's tree copy with the
// EE's environment.
func (d *Driver) Exec(ctx context.Context, name string, cmd []string, stdio ee.IO) error {
	if len(cmd) == 0 || cmd[0] == "" {
		return fmt.Errorf("ee %s: exec: want a command", name)
	}
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.mu.Lock()
	st := in.state
	in.mu.Unlock()
	if st != ee.StateRunning {
		return &ee.StateError{Name: name, Op: "exec", Have: st}
	}
	path, err := in.resolve(cmd[0])
	if err != nil {
		return fmt.Errorf("ee %s: exec: %w", name, err)
	}
	c := exec.CommandContext(ctx, path, cmd[1:]...)
	c.Args[0] = cmd[0]
	c.Env, c.Dir = in.env(), in.root()
	c.Stdin, c.Stdout, c.Stderr = stdio.Stdin, stdio.Stdout, stdio.Stderr
	c.WaitDelay = 500 * time.Millisecond
	err = c.Run()
	var xe *exec.ExitError
	if errors.As(err, &xe) && ctx.Err() == nil {
		code := xe.ExitCode()
		if ws, ok := xe.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			code = 128 + int(ws.Signal())
		}
		return &ee.ExitError{Code: code}
	}
	if err != nil {
		return fmt.Errorf("ee %s: exec: %w", name, err)
	}
	return nil
}

// Snapshot archives the EE's tree copy into dir, the process group
// stopped meanwhile if it runs.
func (d *Driver) Snapshot(ctx context.Context, name, dir string) (ee.Snapshot, error) {
	in, err := d.get(name)
	if err != nil {
		return ee.Snapshot{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	cmd, st := in.cmd, in.state
	in.mu.Unlock()
	if st == ee.StateRunning && cmd != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGSTOP)
		defer syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
	}
	snap, err := image.Archive(in.root(), dir)
	if err != nil {
		return ee.Snapshot{}, fmt.Errorf("ee %s: snapshot: %w", name, err)
	}
	return snap, nil
}

// Restore replaces the tree copy of a created or stopped EE with a
// snapshot after checking its digest.
func (d *Driver) Restore(ctx context.Context, name string, snap ee.Snapshot) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	st := in.state
	in.mu.Unlock()
	if st != ee.StateCreated && st != ee.StateStopped {
		return &ee.StateError{Name: name, Op: "restore", Have: st}
	}
	if err := image.Extract(snap, in.root()); err != nil {
		return fmt.Errorf("ee %s: restore: %w", name, err)
	}
	return nil
}
