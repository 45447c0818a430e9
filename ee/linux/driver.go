// Package linux is the strong isolation driver for execution environments:
// each EE runs in its own mount, pid, network, UTS and IPC namespaces, on
// an overlayfs root whose lower layer is a verified image and whose upper
// layer is the EE's writable state, with no capabilities and
// no_new_privs, limited and metered by cgroups (v2, v1, or the mix a
// hybrid host mounts), and frozen through the cgroup freezer.
//
// The network namespace is left with only loopback up; the channel
// component wires it (Status.NetNS names it). Binaries using this driver
// must call Init first in main; see Init for how the EE's first process
// sets itself up.
//
// Spec.Binds are bind-mounted into the EE before it pivots (nosuid, nodev,
// noexec; a target that passes through a symbolic link in the image is
// refused): the node agent mounts each EE's Workload API socket directory
// at /run/tvd that way.
//
// Where the host allows it, each EE also gets a user namespace (see
// Config.NoUserNS); its mapping is the identity, so uid 0 inside is uid 0
// for file ownership, and only the scoping of capabilities changes.
//
// What the driver does NOT provide: a user namespace mapped to an
// unprivileged uid range (that needs id-mapped image layers), a
// seccomp filter, a device cgroup (the EE's /dev holds only null, zero,
// full, random, urandom and tty, and its root is mounted nodev), or any
// network policy (that is the flow component's job, outside the EE).
package linux

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
	"golang.org/x/sys/unix"
)

// Config configures a Driver.
type Config struct {
	// StateDir holds one directory per EE: its writable layer (upper),
	// overlay work directory, mount point and log. Required; it must not
	// be on overlayfs.
	StateDir string
	// CgroupParent is the cgroup path, relative to the agent's own cgroup
	// in each hierarchy, under which EE cgroups are made. Default "tvd".
	CgroupParent string
	// NetNSDir, when set, gets a bind mount of each running EE's network
	// namespace at NetNSDir/<name> (use /run/netns for ip-netns names).
	NetNSDir string
	// NoUserNS turns off the user namespace. By default, where the host
	// allows user namespaces, each EE gets one with an identity mapping of
	// all uids and gids: files keep their owners, but every capability
	// held inside (the supervisor's) is scoped to the EE's own
	// namespaces and means nothing to the host.
	NoUserNS bool
	// StopTimeout is the grace period between asking the workload to
	// terminate and killing the EE. Default 2s.
	StopTimeout time.Duration
	// Logger receives life-cycle events. Default slog.Default().
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.StateDir == "" || !filepath.IsAbs(c.StateDir) {
		return fmt.Errorf("linux ee driver: state dir %q: want an absolute path", c.StateDir)
	}
	if strings.ContainsAny(c.StateDir, ",:\\") {
		return fmt.Errorf("linux ee driver: state dir %q: overlayfs options cannot hold ',', ':' or '\\'", c.StateDir)
	}
	if c.CgroupParent != "" {
		for _, p := range strings.Split(c.CgroupParent, "/") {
			if !ee.ValidName(p) {
				return fmt.Errorf("linux ee driver: cgroup parent %q: want /-separated names of [a-z0-9_.-]", c.CgroupParent)
			}
		}
	}
	if c.NetNSDir != "" && !filepath.IsAbs(c.NetNSDir) {
		return fmt.Errorf("linux ee driver: netns dir %q: want an absolute path", c.NetNSDir)
	}
	if c.StopTimeout < 0 {
		return fmt.Errorf("linux ee driver: stop timeout %v: want >= 0", c.StopTimeout)
	}
	return nil
}

// Probe reports whether this host can run the driver: root, overlayfs,
// namespaces and a cgroup freezer. The returned HostInfo says what was
// found even when err is not nil.
func Probe() (HostInfo, error) {
	var h HostInfo
	var errs []error
	if os.Geteuid() != 0 {
		errs = append(errs, errors.New("not root"))
	}
	if b, err := os.ReadFile("/proc/filesystems"); err != nil || !strings.Contains(string(b), "\toverlay\n") {
		errs = append(errs, errors.New("overlayfs not available (modprobe overlay)"))
	} else {
		h.Overlay = true
	}
	l, err := DetectCgroups()
	if err != nil {
		errs = append(errs, err)
	}
	h.Cgroups = l
	if _, ok := l.Controllers["freezer"]; !ok {
		errs = append(errs, errors.New("no cgroup freezer (neither cgroup v2 nor the v1 freezer is mounted)"))
	}
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil && strings.TrimSpace(string(b)) != "0" {
		h.UserNS = true
	}
	return h, errors.Join(errs...)
}

// HostInfo is what Probe found.
type HostInfo struct {
	Overlay bool
	// UserNS reports that the host allows user namespaces.
	UserNS  bool
	Cgroups CgroupLayout
}

// Driver runs EEs with namespaces, overlayfs and cgroups. It implements
// ee.Driver and ee.Snapshotter.
type Driver struct {
	cfg    Config
	layout CgroupLayout
	log    *slog.Logger

	userns bool // EEs get a user namespace

	// Supervisors are forked from one locked OS thread that lives as long
	// as the driver: Pdeathsig fires when the forking thread exits, and a
	// Go thread can exit under a caller that locked it.
	spawn     chan spawnCmd
	spawnDone chan struct{}
	closeOnce sync.Once

	mu   sync.Mutex
	ees  map[string]*instance
	cgMu sync.Mutex // cgroup parent creation and removal
}

var (
	_ ee.Driver      = (*Driver)(nil)
	_ ee.Snapshotter = (*Driver)(nil)
)

// New checks the host (see Probe) and returns a driver.
func New(cfg Config) (*Driver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CgroupParent == "" {
		cfg.CgroupParent = "tvd"
	}
	if cfg.StopTimeout == 0 {
		cfg.StopTimeout = 2 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	host, err := Probe()
	if err != nil {
		return nil, fmt.Errorf("linux ee driver: %w", err)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("linux ee driver: %w", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(cfg.StateDir, &st); err == nil && st.Type == unix.OVERLAYFS_SUPER_MAGIC {
		return nil, fmt.Errorf("linux ee driver: state dir %s is on overlayfs: want a plain file system for upper layers", cfg.StateDir)
	}
	d := &Driver{cfg: cfg, layout: host.Cgroups, log: cfg.Logger, ees: map[string]*instance{},
		userns: host.UserNS && !cfg.NoUserNS}
	if err := d.load(); err != nil {
		return nil, err
	}
	d.spawn, d.spawnDone = make(chan spawnCmd), make(chan struct{})
	go d.spawner()
	return d, nil
}

type spawnCmd struct {
	cmd  *exec.Cmd
	errc chan error
}

func (d *Driver) spawner() {
	runtime.LockOSThread()
	// Never unlocked: when Close ends this goroutine, its thread exits,
	// and any EE still running dies with it (Pdeathsig).
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

// load registers, as stopped, the EEs whose state an earlier driver left
// in StateDir (their processes died with that driver's agent). An EE whose
// spec or image no longer checks out is skipped with a warning.
func (d *Driver) load() error {
	ents, err := os.ReadDir(d.cfg.StateDir)
	if err != nil {
		return fmt.Errorf("linux ee driver: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() || !ee.ValidName(e.Name()) {
			continue
		}
		dir := filepath.Join(d.cfg.StateDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, "spec.json"))
		if err != nil {
			continue
		}
		var spec ee.Spec
		if err := json.Unmarshal(b, &spec); err != nil || spec.Validate() != nil || spec.Name != e.Name() {
			d.log.Warn("ee state skipped: bad spec", "dir", dir, "err", err)
			continue
		}
		im, err := image.Open(spec.Image)
		if err != nil {
			d.log.Warn("ee state skipped: image", "ee", spec.Name, "err", err)
			continue
		}
		lower, err := filepath.Abs(im.RootFS())
		if err != nil {
			continue
		}
		d.ees[spec.Name] = &instance{spec: spec, dir: dir, lower: lower, digest: im.Digest, state: ee.StateStopped, exitCode: -1}
		d.log.Info("ee state recovered", "ee", spec.Name, "image", im.Digest)
	}
	return nil
}

// Layout reports where the driver puts each cgroup controller.
func (d *Driver) Layout() CgroupLayout { return d.layout }

type instance struct {
	spec   ee.Spec
	dir    string // state directory
	lower  string // the image's rootfs
	digest string // the image's digest

	op sync.Mutex // serialises life-cycle operations

	mu        sync.Mutex // guards the fields below
	state     ee.State
	exitCode  int
	startedAt time.Time
	run       *run
}

// run is one execution of an EE, from Start until its processes are gone.
type run struct {
	cmd    *exec.Cmd
	pid    int
	ctl    *net.UnixConn
	wmu    sync.Mutex
	cg     *cgroupSet
	netns  string // bind-mounted netns file, if any
	done   chan struct{}
	code   int // valid after done
	execMu sync.Mutex
	nextID int
	execs  map[int]chan ctlMsg
}

func (in *instance) upper() string   { return filepath.Join(in.dir, "upper") }
func (in *instance) work() string    { return filepath.Join(in.dir, "work") }
func (in *instance) root() string    { return filepath.Join(in.dir, "rootfs") }
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

// Create verifies the spec's image and prepares the EE's state directory.
func (d *Driver) Create(ctx context.Context, spec ee.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	im, err := image.Open(spec.Image)
	if err != nil {
		return fmt.Errorf("ee %s: %w", spec.Name, err)
	}
	lower, err := filepath.Abs(im.RootFS())
	if err != nil {
		return fmt.Errorf("ee %s: %w", spec.Name, err)
	}
	if strings.ContainsAny(lower, ",:\\") {
		return fmt.Errorf("ee %s: image path %q: overlayfs options cannot hold ',', ':' or '\\'", spec.Name, lower)
	}
	if spec.Hostname == "" {
		spec.Hostname = spec.Name
	}
	spec.Env = ee.WithDefaultPath(spec.Env)
	in := &instance{spec: spec, dir: filepath.Join(d.cfg.StateDir, spec.Name), lower: lower, digest: im.Digest,
		state: ee.StateCreated, exitCode: -1}
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
		for _, p := range []string{in.upper(), in.work(), in.root()} {
			if err := os.Mkdir(p, 0o755); err != nil {
				return err
			}
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
	d.log.InfoContext(ctx, "ee created", "ee", spec.Name, "image", im.Digest)
	return nil
}

// ImageDigest returns the digest of the image the EE was created from, as
// verified by Create.
func (d *Driver) ImageDigest(name string) (string, error) {
	in, err := d.get(name)
	if err != nil {
		return "", err
	}
	return in.digest, nil
}

// Start runs the EE's workload: cgroups first, then the supervisor in new
// namespaces, which sets up the root and reports back once the workload
// has been started.
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
	r, err := d.start(ctx, in)
	if err != nil {
		return fmt.Errorf("ee %s: start: %w", name, err)
	}
	in.mu.Lock()
	in.run = r
	in.state = ee.StateRunning
	in.startedAt = time.Now()
	in.mu.Unlock()
	go d.wait(in, r)
	d.log.InfoContext(ctx, "ee started", "ee", name, "pid", r.pid)
	return nil
}

func (d *Driver) start(ctx context.Context, in *instance) (_ *run, err error) {
	d.cgMu.Lock()
	cg, err := newCgroupSet(d.layout, d.cfg.CgroupParent+"/"+in.spec.Name, in.spec.Limits)
	d.cgMu.Unlock()
	if err != nil {
		return nil, err
	}
	r := &run{cg: cg, done: make(chan struct{}), execs: map[int]chan ctlMsg{}}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
			d.cgMu.Lock()
			cg.remove()
			d.cgMu.Unlock()
		}
	}()
	logf, err := os.OpenFile(in.logPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own copy
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	hostEnd, childEnd := os.NewFile(uintptr(fds[0]), "ctl"), os.NewFile(uintptr(fds[1]), "ctl-child")
	defer childEnd.Close()
	fc, err := net.FileConn(hostEnd)
	hostEnd.Close()
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	r.ctl = fc.(*net.UnixConn)
	cleanups = append(cleanups, func() { r.ctl.Close() })

	cmd := &exec.Cmd{
		Path:       "/proc/self/exe",
		Args:       []string{initArg},
		Env:        []string{},
		Stdout:     logf,
		Stderr:     logf,
		ExtraFiles: []*os.File{childEnd},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: unix.CLONE_NEWNS | unix.CLONE_NEWPID | unix.CLONE_NEWNET | unix.CLONE_NEWUTS | unix.CLONE_NEWIPC,
			// The EE dies with the agent rather than run unsupervised.
			Pdeathsig: unix.SIGKILL,
		},
	}
	if d.userns {
		cmd.SysProcAttr.Cloneflags |= unix.CLONE_NEWUSER
		all := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1<<32 - 1}}
		cmd.SysProcAttr.UidMappings = all
		cmd.SysProcAttr.GidMappings = all
	}
	if err := d.startOnSpawner(cmd); err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	r.cmd, r.pid = cmd, cmd.Process.Pid
	cleanups = append(cleanups, func() { cmd.Process.Kill(); cmd.Wait() })
	childEnd.Close()
	if err := cg.attach(r.pid); err != nil {
		return nil, err
	}
	// The namespace exists from clone on; name it before the workload can
	// exit and take it away.
	if d.cfg.NetNSDir != "" {
		p, err := bindNetNS(d.cfg.NetNSDir, in.spec.Name, r.pid)
		if err != nil {
			return nil, err
		}
		r.netns = p
		cleanups = append(cleanups, func() { unbindNetNS(p) })
	}
	cfg := &initConfig{Lower: in.lower, Upper: in.upper(), Work: in.work(), Root: in.root(),
		Hostname: in.spec.Hostname, Command: in.spec.Command, Env: in.spec.Env, UserNS: d.userns, Binds: in.spec.Binds}
	if err := writeMsg(r.ctl, ctlMsg{Op: "config", Config: cfg}); err != nil {
		return nil, fmt.Errorf("configure supervisor: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		r.ctl.SetReadDeadline(dl)
	} else {
		r.ctl.SetReadDeadline(time.Now().Add(30 * time.Second))
	}
	m, _, err := readMsg(r.ctl)
	if err != nil {
		return nil, fmt.Errorf("wait for supervisor: %w", err)
	}
	r.ctl.SetReadDeadline(time.Time{})
	switch m.Op {
	case "ready":
		if !m.AllThreads {
			d.log.DebugContext(ctx, "ee supervisor threads other than the spawner keep capabilities (cgo binary)", "ee", in.spec.Name)
		}
	case "error":
		return nil, fmt.Errorf("set up ee: %s", m.Error)
	default:
		return nil, fmt.Errorf("supervisor sent %q, want ready", m.Op)
	}
	go r.readLoop()
	return r, nil
}

func bindNetNS(dir, name string, pid int) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("netns dir: %w", err)
	}
	p := filepath.Join(dir, name)
	if err := unbindNetNS(p); err != nil { // left by an agent that died
		return "", err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return "", fmt.Errorf("netns file: %w", err)
	}
	f.Close()
	if err := unix.Mount(fmt.Sprintf("/proc/%d/ns/net", pid), p, "", unix.MS_BIND, ""); err != nil {
		os.Remove(p)
		return "", fmt.Errorf("bind netns: %w", err)
	}
	return p, nil
}

func unbindNetNS(p string) error {
	if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("unmount netns %s: %w", p, err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// readLoop dispatches exec exit reports until the supervisor is gone.
func (r *run) readLoop() {
	for {
		m, files, err := readMsg(r.ctl)
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			r.execMu.Lock()
			for id, ch := range r.execs {
				ch <- ctlMsg{Op: "exit", ID: id, Code: -1, Error: "ee stopped"}
				delete(r.execs, id)
			}
			r.execs = nil
			r.execMu.Unlock()
			return
		}
		if m.Op != "exit" {
			continue
		}
		r.execMu.Lock()
		if ch, ok := r.execs[m.ID]; ok {
			ch <- m
			delete(r.execs, m.ID)
		}
		r.execMu.Unlock()
	}
}

// wait owns a run from Start until its supervisor has exited and its
// cgroups and netns mount are gone.
func (d *Driver) wait(in *instance, r *run) {
	err := r.cmd.Wait()
	code := 0
	if err != nil {
		var xe *exec.ExitError
		if errors.As(err, &xe) {
			if ws, ok := xe.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
				code = 128 + int(ws.Signal())
			} else {
				code = xe.ExitCode()
			}
		} else {
			code = -1
		}
	}
	r.ctl.Close()
	if r.netns != "" {
		if err := unbindNetNS(r.netns); err != nil {
			d.log.Warn("ee cleanup", "ee", in.spec.Name, "err", err)
		}
	}
	// In a v1 freezer, killed tasks stay until thawed.
	if r.cg != nil {
		r.cg.freeze(context.Background(), false)
		for _, pid := range r.cg.procs() {
			unix.Kill(pid, unix.SIGKILL)
		}
		d.cgMu.Lock()
		if err := r.cg.remove(); err != nil {
			d.log.Warn("ee cleanup", "ee", in.spec.Name, "err", err)
		}
		d.cgMu.Unlock()
	}
	r.code = code
	in.mu.Lock()
	in.state = ee.StateStopped
	in.exitCode = code
	in.run = nil
	in.mu.Unlock()
	close(r.done)
	d.log.Info("ee stopped", "ee", in.spec.Name, "exit", code)
}

// Stop asks the workload to terminate, kills the EE after the grace
// period, and waits until every process is gone.
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
	r, st := in.run, in.state
	in.mu.Unlock()
	if r == nil {
		return nil
	}
	if st == ee.StateRunning {
		r.wmu.Lock()
		writeMsg(r.ctl, ctlMsg{Op: "term"})
		r.wmu.Unlock()
		t := time.NewTimer(d.cfg.StopTimeout)
		defer t.Stop()
		select {
		case <-r.done:
			return nil
		case <-t.C:
		case <-ctx.Done():
		}
	}
	// Killing pid 1 of the EE's pid namespace kills every process in it.
	r.cmd.Process.Signal(unix.SIGKILL)
	if st == ee.StateFrozen {
		r.cg.freeze(context.Background(), false)
	}
	select {
	case <-r.done:
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
	d.log.InfoContext(ctx, "ee destroyed", "ee", name)
	return nil
}

// Close stops every EE the driver runs (their state stays on disk),
// removes the driver's cgroup parent where nothing else uses it, and
// makes Start fail from then on.
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
	d.cgMu.Lock()
	defer d.cgMu.Unlock()
	parts := strings.Split(d.cfg.CgroupParent, "/")
	for _, p := range d.layout.Controllers {
		for i := len(parts); i > 0; i-- {
			err := os.Remove(filepath.Join(p.Dir, filepath.Join(parts[:i]...)))
			if err != nil {
				break // not empty (another driver's EEs) or already gone
			}
		}
	}
	return errors.Join(errs...)
}

// Freeze suspends every process of the EE with the cgroup freezer and
// waits until all are frozen.
func (d *Driver) Freeze(ctx context.Context, name string) error {
	return d.setFrozen(ctx, name, true)
}

// Thaw resumes a frozen EE.
func (d *Driver) Thaw(ctx context.Context, name string) error {
	return d.setFrozen(ctx, name, false)
}

func (d *Driver) setFrozen(ctx context.Context, name string, frozen bool) error {
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	r, st := in.run, in.state
	in.mu.Unlock()
	op, want, next := "freeze", ee.StateRunning, ee.StateFrozen
	if !frozen {
		op, want, next = "thaw", ee.StateFrozen, ee.StateRunning
	}
	if st == next {
		return nil
	}
	if st != want || r == nil {
		return &ee.StateError{Name: name, Op: op, Have: st}
	}
	if err := r.cg.freeze(ctx, frozen); err != nil {
		return fmt.Errorf("ee %s: %s: %w", name, op, err)
	}
	in.mu.Lock()
	if in.run == r {
		in.state = next
	}
	in.mu.Unlock()
	d.log.InfoContext(ctx, "ee "+op, "ee", name)
	return nil
}

// Status reports the EE's state, its pid, paths, cgroups and usage.
func (d *Driver) Status(ctx context.Context, name string) (ee.Status, error) {
	in, err := d.get(name)
	if err != nil {
		return ee.Status{}, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	s := ee.Status{Name: name, State: in.state, Isolation: ee.IsolationStrong, ExitCode: in.exitCode,
		StartedAt: in.startedAt, LogPath: in.logPath()}
	if r := in.run; r != nil {
		s.UserNS = d.userns
		s.Pid = r.pid
		s.Root = fmt.Sprintf("/proc/%d/root", r.pid)
		s.NetNS = fmt.Sprintf("/proc/%d/ns/net", r.pid)
		if r.netns != "" {
			s.NetNS = r.netns
		}
		s.Cgroups = r.cg.paths()
		s.Usage = r.cg.usage()
	}
	return s, nil
}

// Exec runs cmd in the running EE: the supervisor forks it from its
// capability-free thread, in the EE's namespaces and cgroups, with the
// EE's environment. If ctx ends first, the command is killed.
func (d *Driver) Exec(ctx context.Context, name string, cmd []string, stdio ee.IO) error {
	if len(cmd) == 0 || cmd[0] == "" {
		return fmt.Errorf("ee %s: exec: want a command", name)
	}
	in, err := d.get(name)
	if err != nil {
		return err
	}
	in.mu.Lock()
	r, st := in.run, in.state
	in.mu.Unlock()
	if st != ee.StateRunning || r == nil {
		return &ee.StateError{Name: name, Op: "exec", Have: st}
	}
	files, wait, err := execFiles(stdio)
	if err != nil {
		return fmt.Errorf("ee %s: exec: %w", name, err)
	}
	r.execMu.Lock()
	if r.execs == nil {
		r.execMu.Unlock()
		closeAll(files)
		wait()
		return &ee.StateError{Name: name, Op: "exec", Have: ee.StateStopped}
	}
	r.nextID++
	id := r.nextID
	ch := make(chan ctlMsg, 1)
	r.execs[id] = ch
	r.execMu.Unlock()
	r.wmu.Lock()
	err = writeMsg(r.ctl, ctlMsg{Op: "exec", ID: id, Argv: cmd, Env: in.spec.Env}, files[:]...)
	r.wmu.Unlock()
	closeAll(files) // the supervisor has its own copies now
	if err != nil {
		r.execMu.Lock()
		delete(r.execs, id)
		r.execMu.Unlock()
		wait()
		return fmt.Errorf("ee %s: exec: %w", name, err)
	}
	var m ctlMsg
	select {
	case m = <-ch:
	case <-ctx.Done():
		r.wmu.Lock()
		writeMsg(r.ctl, ctlMsg{Op: "kill", ID: id})
		r.wmu.Unlock()
		m = <-ch
		wait()
		return fmt.Errorf("ee %s: exec: %w", name, ctx.Err())
	}
	wait()
	if m.Error != "" {
		return fmt.Errorf("ee %s: exec %s: %s", name, cmd[0], m.Error)
	}
	if m.Code != 0 {
		return &ee.ExitError{Code: m.Code}
	}
	return nil
}

func closeAll(files [3]*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// execFiles turns stdio into three files to pass to the supervisor and a
// function that waits for the copying to finish once the command is done.
func execFiles(stdio ee.IO) (files [3]*os.File, wait func(), err error) {
	var wg sync.WaitGroup
	var hostEnds []*os.File
	fail := func(err error) ([3]*os.File, func(), error) {
		closeAll(files)
		for _, f := range hostEnds {
			f.Close()
		}
		return [3]*os.File{}, nil, err
	}
	if f, ok := stdio.Stdin.(*os.File); ok {
		files[0], err = dupFile(f)
	} else if stdio.Stdin == nil {
		files[0], err = os.Open(os.DevNull)
	} else {
		var pr, pw *os.File
		pr, pw, err = os.Pipe()
		if err == nil {
			files[0] = pr
			hostEnds = append(hostEnds, pw)
			go func() { io.Copy(pw, stdio.Stdin); pw.Close() }()
		}
	}
	if err != nil {
		return fail(err)
	}
	for i, w := range []io.Writer{stdio.Stdout, stdio.Stderr} {
		if i == 1 && w != nil && sameWriter(w, stdio.Stdout) {
			// One pipe for both, so one goroutine writes (as os/exec).
			files[2], err = dupFile(files[1])
			if err != nil {
				return fail(err)
			}
			break
		}
		if f, ok := w.(*os.File); ok {
			files[i+1], err = dupFile(f)
		} else if w == nil {
			files[i+1], err = os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		} else {
			var pr, pw *os.File
			pr, pw, err = os.Pipe()
			if err == nil {
				files[i+1] = pw
				hostEnds = append(hostEnds, pr)
				wg.Add(1)
				go func() { defer wg.Done(); io.Copy(w, pr); pr.Close() }()
			}
		}
		if err != nil {
			return fail(err)
		}
	}
	// Background children of the command may hold its output open; once
	// the command has exited, wait at most execWaitDelay for the rest.
	wait = func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(execWaitDelay):
			for _, f := range hostEnds {
				f.Close()
			}
			<-done
		}
	}
	return files, wait, nil
}

// execWaitDelay bounds how long Exec keeps copying output after the
// command exited (as os/exec's Cmd.WaitDelay).
const execWaitDelay = 500 * time.Millisecond

func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil {
			same = false // uncomparable dynamic types
		}
	}()
	return a == b
}

func dupFile(f *os.File) (*os.File, error) {
	fd, err := unix.FcntlInt(f.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), f.Name()), nil
}

// Snapshot archives the EE's writable layer into dir (see image.Archive).
// A running EE is frozen while its layer is read, so the archive is one
// consistent state; a frozen EE stays frozen.
func (d *Driver) Snapshot(ctx context.Context, name, dir string) (ee.Snapshot, error) {
	in, err := d.get(name)
	if err != nil {
		return ee.Snapshot{}, err
	}
	in.op.Lock()
	defer in.op.Unlock()
	in.mu.Lock()
	r, st := in.run, in.state
	in.mu.Unlock()
	if st == ee.StateRunning && r != nil {
		if err := r.cg.freeze(ctx, true); err != nil {
			return ee.Snapshot{}, fmt.Errorf("ee %s: snapshot: %w", name, err)
		}
		defer r.cg.freeze(context.Background(), false)
	}
	snap, err := image.Archive(in.upper(), dir)
	if err != nil {
		return ee.Snapshot{}, fmt.Errorf("ee %s: snapshot: %w", name, err)
	}
	d.log.InfoContext(ctx, "ee snapshot", "ee", name, "digest", snap.Digest, "bytes", snap.Size)
	return snap, nil
}

// Restore replaces the writable layer of a created or stopped EE with a
// snapshot after checking its digest (see image.Extract). A rollback is
// Stop, Restore, Start.
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
	if err := image.Extract(snap, in.upper()); err != nil {
		return fmt.Errorf("ee %s: restore: %w", name, err)
	}
	// Overlay's work directory must start empty with a new upper layer.
	if err := os.RemoveAll(in.work()); err != nil {
		return fmt.Errorf("ee %s: restore: %w", name, err)
	}
	if err := os.Mkdir(in.work(), 0o755); err != nil {
		return fmt.Errorf("ee %s: restore: %w", name, err)
	}
	d.log.InfoContext(ctx, "ee restored", "ee", name, "digest", snap.Digest)
	return nil
}

// UpperDir is the EE's writable layer on the host.
func (d *Driver) UpperDir(name string) (string, error) {
	in, err := d.get(name)
	if err != nil {
		return "", err
	}
	return in.upper(), nil
}
