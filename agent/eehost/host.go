//go:build linux

package eehost

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/ee/monitor"
)

// DefaultCommand is the workload of an EE whose configuration names none:
// a shell that sleeps until it is told to stop.
var DefaultCommand = []string{"sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"}

// DefaultFSBytes caps each EE's filesystem (image copy plus writable
// state) when Config.FSBytes is 0.
const DefaultFSBytes = 1 << 30

// maxMeasured bounds the per-EE set of programs already measured; past it
// every exec is measured again (more events, never fewer).
const maxMeasured = 1 << 16

// Config configures a Host.
type Config struct {
	// Driver runs the EEs: *linux.Driver (monitored) or *process.Driver
	// (weak, unmonitored). It must also implement ee.Snapshotter for
	// rollback. Close closes it when it has a Close(context.Context) error
	// method. Required.
	Driver ee.Driver
	// Images is the directory of images by name (--images DIR); an EE's
	// image may also be an absolute path, a digest, or empty (the base
	// image).
	Images string
	// DataDir holds the base image (images/base), the EEs' filesystems
	// (ees/<ee>) and trusted snapshots (snapshots/<ee>). Required, absolute.
	DataDir string
	// Mode returns the monitor mode of an EE when it starts (the integrity
	// mode of its domain). Nil: measure. SetMode changes it later.
	Mode func(e agent.EEConfig) monitor.Mode
	// Lookup is the allowlist (the reference values of the EE's domain).
	// Nil lists nothing: measure mode reports every program, enforce mode
	// denies every program.
	Lookup monitor.LookupFunc
	// Measure records one measurement (the agent's Measure). Required.
	Measure func(ee, path string, digest [32]byte) error
	// Events, if set, sees every monitor decision (allowed or denied)
	// before the kernel is answered. It must return quickly.
	Events func(monitor.Event)
	// Command returns an EE's workload. Nil: DefaultCommand.
	Command func(e agent.EEConfig) []string
	// FSBytes caps each monitored EE's filesystem. 0: DefaultFSBytes.
	FSBytes int64
	// Busybox is the static busybox the base image is built from; "":
	// image.BusyboxPath.
	Busybox string
	// Logger; nil discards.
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Driver == nil {
		return errors.New("ee host: Driver is required (the linux or process ee driver)")
	}
	if c.Measure == nil {
		return errors.New("ee host: Measure is required")
	}
	if c.DataDir == "" || !filepath.IsAbs(c.DataDir) {
		return fmt.Errorf("ee host: data dir %q: want an absolute path", c.DataDir)
	}
	if strings.ContainsAny(c.DataDir, ",:\\") {
		return fmt.Errorf("ee host: data dir %q: overlayfs options cannot hold ',', ':' or '\\'", c.DataDir)
	}
	if c.Images != "" && !filepath.IsAbs(c.Images) {
		return fmt.Errorf("ee host: images dir %q: want an absolute path", c.Images)
	}
	if c.FSBytes < 0 || (c.FSBytes > 0 && c.FSBytes < 16<<20) {
		return fmt.Errorf("ee host: fs size %d: want 0 (default) or at least 16 MiB", c.FSBytes)
	}
	return nil
}

// rootedDriver is a driver whose EE state directory the host can place on
// a filesystem of its own (ee/linux).
type rootedDriver interface {
	UpperDir(name string) (string, error)
}

// Host runs a node's EEs. It implements agent.EEHost.
type Host struct {
	cfg    Config
	log    *slog.Logger
	snap   ee.Snapshotter // nil if the driver has none
	rooted rootedDriver   // nil: EEs are not monitored
	baseMu sync.Mutex

	mon       *monitor.Monitor // nil for unmonitored drivers
	monCancel context.CancelFunc
	monDone   chan struct{}
	wg        sync.WaitGroup // background freezes

	mu     sync.Mutex
	ees    map[string]*eeRec
	order  []string
	closed bool
}

var _ agent.EEHost = (*Host)(nil)

type measureKey struct {
	path   string
	digest [32]byte
}

// eeRec is one EE the host runs.
type eeRec struct {
	name  string
	cfg   agent.EEConfig
	img   imageRef
	fsDir string // the EE's own filesystem (a tmpfs), "" if unmonitored
	bind  string // the driver's state directory, bind-mounted from fsDir
	snaps string // directory of its snapshots

	op sync.Mutex // serialises Do, MarkTrusted, SetMode

	// guarded by Host.mu
	mode     monitor.Mode
	watched  bool
	created  bool
	trusted  *ee.Snapshot
	failed   error
	measured map[measureKey]bool
}

// New returns a host; Start creates and starts the EEs.
func New(cfg Config) (*Host, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.FSBytes == 0 {
		cfg.FSBytes = DefaultFSBytes
	}
	if cfg.Lookup == nil {
		cfg.Lookup = func(string, [32]byte) (string, bool) { return "", false }
	}
	h := &Host{cfg: cfg, log: cfg.Logger, ees: map[string]*eeRec{}}
	h.snap, _ = cfg.Driver.(ee.Snapshotter)
	h.rooted, _ = cfg.Driver.(rootedDriver)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("ee host: %w", err)
	}
	if h.rooted != nil {
		m, err := monitor.New(monitor.Config{Lookup: cfg.Lookup, Sink: h.sink, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("ee host: %w", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		h.mon, h.monCancel, h.monDone = m, cancel, make(chan struct{})
		go h.runMonitor(ctx)
	} else {
		h.log.Warn("the ee driver offers no root the monitor can mark: execs inside EEs are not measured")
	}
	return h, nil
}

// runMonitor runs the monitor until Close. A monitor that stops on its own
// has released its marks, so the kernel lets every exec run unmeasured:
// every EE is then frozen and reported FAILED.
func (h *Host) runMonitor(ctx context.Context) {
	defer close(h.monDone)
	err := h.mon.Run(ctx)
	if ctx.Err() != nil {
		return
	}
	if err == nil {
		err = errors.New("monitor stopped")
	}
	h.log.Error("ee monitor stopped: freezing every EE", "err", err)
	h.mu.Lock()
	names := append([]string(nil), h.order...)
	for _, n := range names {
		h.ees[n].failed = fmt.Errorf("ee monitor: %w", err)
	}
	h.mu.Unlock()
	for _, n := range names {
		fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := h.cfg.Driver.Freeze(fctx, n); err != nil && !errors.Is(err, ee.ErrState) {
			h.log.Error("freeze after monitor loss", "ee", n, "err", err)
		}
		cancel()
	}
}

// sink receives every monitor event and measures it.
func (h *Host) sink(ev monitor.Event) {
	if h.cfg.Events != nil {
		h.cfg.Events(ev)
	}
	key := measureKey{ev.Path, ev.Digest}
	h.mu.Lock()
	rec := h.ees[ev.EE]
	if rec != nil && ev.Err == nil && rec.measured[key] {
		h.mu.Unlock()
		return
	}
	h.mu.Unlock()
	if err := h.cfg.Measure(ev.EE, ev.Path, ev.Digest); err != nil {
		h.log.Error("measurement not recorded: freezing the EE", "ee", ev.EE, "path", ev.Path, "err", err)
		h.mu.Lock()
		if rec != nil {
			rec.failed = fmt.Errorf("measure %s: %w", ev.Path, err)
		}
		if !h.closed {
			// Not here: the exec that raised this event waits for the
			// monitor, and the freezer waits for the exec. (Added under
			// h.mu, so Close, which sets closed first, waits for it.)
			h.wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := h.cfg.Driver.Freeze(ctx, ev.EE); err != nil {
					h.log.Error("freeze after a lost measurement", "ee", ev.EE, "err", err)
				}
			})
		}
		h.mu.Unlock()
		return
	}
	if ev.Err != nil {
		return // unmeasurable files are reported (zero digest) every time
	}
	h.mu.Lock()
	if rec != nil && len(rec.measured) < maxMeasured {
		rec.measured[key] = true
	}
	h.mu.Unlock()
}

// Start creates and starts every EE of the node configuration. EEs that
// cannot be started are reported FAILED by Status; Start returns their
// errors joined, after starting all the others.
func (h *Host) Start(ctx context.Context, ees []agent.EEConfig) error {
	var errs []error
	for _, e := range ees {
		if err := h.startOne(ctx, e, nil); err != nil {
			h.log.ErrorContext(ctx, "ee not started", "ee", e.Name, "err", err)
			errs = append(errs, fmt.Errorf("ee %s: %w", e.Name, err))
		}
	}
	return errors.Join(errs...)
}

func (h *Host) startOne(ctx context.Context, e agent.EEConfig, restore *ee.Snapshot) error {
	if !ee.ValidName(e.Name) {
		return fmt.Errorf("ee name %q: want 1-63 of [a-z0-9_.-]", e.Name)
	}
	rec := &eeRec{name: e.Name, cfg: e, mode: monitor.ModeMeasure, measured: map[measureKey]bool{},
		snaps: filepath.Join(h.cfg.DataDir, "snapshots", e.Name)}
	if h.cfg.Mode != nil {
		rec.mode = h.cfg.Mode(e)
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return errors.New("ee host closed")
	}
	if _, ok := h.ees[e.Name]; ok {
		h.mu.Unlock()
		return errors.New("listed twice")
	}
	h.ees[e.Name] = rec
	h.order = append(h.order, e.Name)
	h.mu.Unlock()
	rec.op.Lock()
	err := h.create(ctx, rec, restore)
	rec.op.Unlock()
	if err != nil {
		h.mu.Lock()
		rec.failed = err
		h.mu.Unlock()
	}
	return err
}

// WorkloadMount is where an EE finds its Workload API socket directory.
const WorkloadMount = "/run/tvd"

// create builds the EE's filesystem, creates the EE, watches it, restores
// the snapshot restore if there is one (a migrated EE), takes the first
// trusted snapshot, measures the image and starts the workload.
func (h *Host) create(ctx context.Context, rec *eeRec, restore *ee.Snapshot) error {
	img, err := h.resolve(rec.cfg.Image)
	if err != nil {
		return err
	}
	digest, err := parseDigest(img.Digest)
	if err != nil {
		return err
	}
	h.mu.Lock() // Status reads it while EEs are created at run time (tvd ee)
	rec.img = img
	h.mu.Unlock()
	cmd := DefaultCommand
	if h.cfg.Command != nil {
		if c := h.cfg.Command(rec.cfg); len(c) > 0 {
			cmd = c
		}
	}
	spec := ee.Spec{Name: rec.name, Image: img.Dir, Command: cmd}
	if d := rec.cfg.WorkloadDir; d != "" {
		// The agent's Workload API socket for this EE (package workload
		// finds it at /run/tvd/workload.sock).
		if h.rooted != nil {
			spec.Binds = append(spec.Binds, ee.Bind{Source: d, Target: WorkloadMount})
		} else {
			spec.Env = append(spec.Env, "TVD_WORKLOAD_SOCKET="+filepath.Join(d, "workload.sock"),
				"TVD_OVERLAY_SOCKET="+filepath.Join(d, "overlay.sock"))
		}
	}
	if h.rooted != nil {
		if spec.Image, err = h.makeFS(rec, img); err != nil {
			return err
		}
	}
	if err := h.cfg.Driver.Create(ctx, spec); err != nil {
		return err
	}
	h.mu.Lock()
	rec.created = true
	h.mu.Unlock()
	if h.rooted != nil {
		if err := h.bindState(rec); err != nil {
			return err
		}
		if err := h.mon.Watch(rec.name, rec.fsDir, rec.mode); err != nil {
			return err
		}
		h.mu.Lock()
		rec.watched = true
		h.mu.Unlock()
	}
	if restore != nil {
		if h.snap == nil {
			return errors.New("the ee driver cannot restore snapshots")
		}
		if err := h.snap.Restore(ctx, rec.name, *restore); err != nil {
			return err
		}
	}
	if h.snap != nil {
		if err := h.snapshot(ctx, rec); err != nil {
			return err
		}
	}
	if err := h.cfg.Measure(rec.name, "image:"+img.Name, digest); err != nil {
		return fmt.Errorf("measure image: %w", err)
	}
	if err := h.cfg.Driver.Start(ctx, rec.name); err != nil {
		return err
	}
	h.log.InfoContext(ctx, "ee started", "ee", rec.name, "image", img.Name, "digest", img.Digest,
		"monitored", h.rooted != nil, "mode", rec.mode.String())
	return nil
}

// makeFS mounts the EE's own filesystem and copies the image into it,
// checking that the copy has the image's digest. It returns the copy.
func (h *Host) makeFS(rec *eeRec, img imageRef) (string, error) {
	dir := filepath.Join(h.cfg.DataDir, "ees", rec.name)
	if err := removeFS(dir); err != nil {
		return "", fmt.Errorf("leftover ee filesystem: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	opts := fmt.Sprintf("mode=0700,size=%d", h.cfg.FSBytes)
	if err := unix.Mount("tvd-ee-"+rec.name, dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		os.Remove(dir)
		return "", fmt.Errorf("mount ee filesystem %s: %w", dir, err)
	}
	rec.fsDir = dir
	src, err := image.Open(img.Dir)
	if err != nil {
		return "", err
	}
	cp := filepath.Join(dir, "image")
	m, err := image.Build(src.RootFS(), cp)
	if err != nil {
		return "", fmt.Errorf("copy image: %w", err)
	}
	if m.Digest() != img.Digest {
		return "", fmt.Errorf("copy image: copy has digest %s, want %s", m.Digest(), img.Digest)
	}
	for _, d := range []string{"state", "state/upper", "state/work", "state/rootfs"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			return "", err
		}
	}
	return cp, nil
}

// bindState puts the driver's state directory for the EE on the EE's
// filesystem, so that its writable layer is watched with the image.
func (h *Host) bindState(rec *eeRec) error {
	upper, err := h.rooted.UpperDir(rec.name)
	if err != nil {
		return err
	}
	state := filepath.Dir(upper)
	if err := unix.Mount(filepath.Join(rec.fsDir, "state"), state, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind ee state %s: %w", state, err)
	}
	rec.bind = state
	return nil
}

// removeFS unmounts and removes an EE filesystem directory, if any.
func removeFS(dir string) error {
	if err := unix.Unmount(dir, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// snapshot archives the EE's writable state and records it as the last
// trusted one, removing the previous archive.
func (h *Host) snapshot(ctx context.Context, rec *eeRec) error {
	if h.snap == nil {
		return fmt.Errorf("the ee driver cannot snapshot")
	}
	if err := os.MkdirAll(rec.snaps, 0o700); err != nil {
		return err
	}
	s, err := h.snap.Snapshot(ctx, rec.name, rec.snaps)
	if err != nil {
		return err
	}
	h.mu.Lock()
	old := rec.trusted
	rec.trusted = &s
	h.mu.Unlock()
	if old != nil && old.Path != s.Path {
		os.Remove(old.Path)
	}
	h.log.InfoContext(ctx, "trusted snapshot", "ee", rec.name, "digest", s.Digest, "bytes", s.Size)
	return nil
}

func (h *Host) get(name string) (*eeRec, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("ee host closed")
	}
	rec, ok := h.ees[name]
	if !ok {
		return nil, fmt.Errorf("ee %s: %w", name, ee.ErrNotFound)
	}
	return rec, nil
}

// MarkTrusted snapshots the EE's writable state now and makes it the one
// a rollback restores. The agent calls it when the EE's membership has
// been verified. A frozen or failed EE is refused: it is frozen for a
// reason.
func (h *Host) MarkTrusted(ctx context.Context, name string) error {
	rec, err := h.get(name)
	if err != nil {
		return err
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	h.mu.Lock()
	failed := rec.failed
	h.mu.Unlock()
	if failed != nil {
		return fmt.Errorf("ee %s: failed (%v): not marked trusted", name, failed)
	}
	st, err := h.cfg.Driver.Status(ctx, name)
	if err != nil {
		return err
	}
	if st.State == ee.StateFrozen {
		return fmt.Errorf("ee %s: frozen: not marked trusted", name)
	}
	if err := h.snapshot(ctx, rec); err != nil {
		return fmt.Errorf("ee %s: mark trusted: %w", name, err)
	}
	return nil
}

// SetMode changes the EE's monitor mode. The EE is frozen while its mark
// is replaced, so no exec slips through between the old mark and the new.
func (h *Host) SetMode(ctx context.Context, name string, mode monitor.Mode) error {
	if mode != monitor.ModeEnforce && mode != monitor.ModeMeasure {
		return fmt.Errorf("ee %s: mode %v: want enforce or measure", name, mode)
	}
	rec, err := h.get(name)
	if err != nil {
		return err
	}
	if h.mon == nil {
		return fmt.Errorf("ee %s: not monitored by this driver", name)
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	h.mu.Lock()
	same, watched := rec.mode == mode, rec.watched
	h.mu.Unlock()
	if same || !watched {
		h.mu.Lock()
		rec.mode = mode
		h.mu.Unlock()
		return nil
	}
	st, err := h.cfg.Driver.Status(ctx, name)
	if err != nil {
		return err
	}
	if st.State == ee.StateRunning {
		if err := h.cfg.Driver.Freeze(ctx, name); err != nil {
			return fmt.Errorf("ee %s: set mode: %w", name, err)
		}
		defer h.cfg.Driver.Thaw(context.Background(), name)
	}
	if err := h.mon.Unwatch(name); err != nil {
		return fmt.Errorf("ee %s: set mode: %w", name, err)
	}
	h.mu.Lock()
	rec.watched = false
	h.mu.Unlock()
	if err := h.mon.Watch(name, rec.fsDir, mode); err != nil {
		// Unwatched: stop the EE rather than let it run unmeasured.
		h.mu.Lock()
		rec.failed = fmt.Errorf("set mode: %w", err)
		h.mu.Unlock()
		h.cfg.Driver.Stop(context.Background(), name)
		return fmt.Errorf("ee %s: set mode: %w", name, err)
	}
	h.mu.Lock()
	rec.watched, rec.mode = true, mode
	h.mu.Unlock()
	h.log.InfoContext(ctx, "ee monitor mode", "ee", name, "mode", mode.String())
	return nil
}

// Do carries out one instruction of the plan on the EE it names: FREEZE
// freezes it, ROLLBACK restores its last trusted snapshot, restarts it and
// measures its image again. QUARANTINE (the data plane's), ALERT and
// REVOKE (the controller's and the peers') need nothing from the host.
func (h *Host) Do(ctx context.Context, in *tvdv1.Instruction) error {
	name := in.GetMember().GetEe()
	switch in.GetReaction() {
	case tvdv1.Reaction_REACTION_QUARANTINE, tvdv1.Reaction_REACTION_ALERT, tvdv1.Reaction_REACTION_REVOKE:
		return nil
	case tvdv1.Reaction_REACTION_FREEZE, tvdv1.Reaction_REACTION_ROLLBACK:
	default:
		return fmt.Errorf("instruction %s: reaction %v: want freeze, rollback, quarantine, alert or revoke", in.GetId(), in.GetReaction())
	}
	rec, err := h.get(name)
	if err != nil {
		return fmt.Errorf("instruction %s: %w", in.GetId(), err)
	}
	rec.op.Lock()
	defer rec.op.Unlock()
	if in.GetReaction() == tvdv1.Reaction_REACTION_FREEZE {
		if err := h.cfg.Driver.Freeze(ctx, name); err != nil {
			return fmt.Errorf("instruction %s: %w", in.GetId(), err)
		}
		h.log.InfoContext(ctx, "ee frozen", "ee", name, "instruction", in.GetId(), "reason", in.GetReason())
		return nil
	}
	if err := h.rollback(ctx, rec); err != nil {
		return fmt.Errorf("instruction %s: ee %s: rollback: %w", in.GetId(), name, err)
	}
	h.log.InfoContext(ctx, "ee rolled back", "ee", name, "instruction", in.GetId(), "reason", in.GetReason())
	return nil
}

func (h *Host) rollback(ctx context.Context, rec *eeRec) error {
	h.mu.Lock()
	snap, watched := rec.trusted, rec.watched
	h.mu.Unlock()
	if snap == nil || h.snap == nil {
		return errors.New("no trusted snapshot")
	}
	if h.rooted != nil && !watched {
		return errors.New("the ee is not watched by the monitor: not restarted")
	}
	if err := h.cfg.Driver.Stop(ctx, rec.name); err != nil {
		return err
	}
	if err := h.snap.Restore(ctx, rec.name, *snap); err != nil {
		return err
	}
	digest, err := parseDigest(rec.img.Digest)
	if err != nil {
		return err
	}
	h.mu.Lock()
	rec.measured = map[measureKey]bool{}
	h.mu.Unlock()
	if err := h.cfg.Measure(rec.name, "image:"+rec.img.Name, digest); err != nil {
		return fmt.Errorf("measure image: %w", err)
	}
	if err := h.cfg.Driver.Start(ctx, rec.name); err != nil {
		return err
	}
	h.mu.Lock()
	rec.failed = nil
	h.mu.Unlock()
	return nil
}

// NetNS returns the path of a running EE's network namespace, for the
// data plane to wire.
func (h *Host) NetNS(name string) (string, bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := h.cfg.Driver.Status(ctx, name)
	if err != nil || st.NetNS == "" || (st.State != ee.StateRunning && st.State != ee.StateFrozen) {
		return "", false
	}
	return st.NetNS, true
}

// Status reports every EE in configuration order.
func (h *Host) Status() []*tvdv1.EEStatus {
	h.mu.Lock()
	type item struct {
		name, digest, domain, role string
		failed                     error
		created                    bool
	}
	items := make([]item, 0, len(h.order))
	for _, n := range h.order {
		r := h.ees[n]
		items = append(items, item{n, r.img.Digest, r.cfg.Domain, r.cfg.Role, r.failed, r.created})
	}
	h.mu.Unlock()
	out := make([]*tvdv1.EEStatus, 0, len(items))
	for _, it := range items {
		s := &tvdv1.EEStatus{Name: it.name, ImageDigest: it.digest, Isolation: h.Isolation(), Domain: it.domain, Role: it.role}
		switch {
		case it.failed != nil:
			s.State, s.Error = tvdv1.EEState_EE_STATE_FAILED, it.failed.Error()
		case !it.created:
			s.State = tvdv1.EEState_EE_STATE_STARTING
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := h.cfg.Driver.Status(ctx, it.name)
			cancel()
			if err != nil {
				s.State, s.Error = tvdv1.EEState_EE_STATE_FAILED, err.Error()
				break
			}
			s.State = stateOf(st)
		}
		out = append(out, s)
	}
	return out
}

func stateOf(st ee.Status) tvdv1.EEState {
	switch st.State {
	case ee.StateCreated:
		return tvdv1.EEState_EE_STATE_STARTING
	case ee.StateRunning:
		return tvdv1.EEState_EE_STATE_RUNNING
	case ee.StateFrozen:
		return tvdv1.EEState_EE_STATE_FROZEN
	case ee.StateStopped:
		return tvdv1.EEState_EE_STATE_STOPPED
	}
	return tvdv1.EEState_EE_STATE_UNSPECIFIED
}

// Close stops and destroys every EE, releases the monitor, unmounts the
// EEs' filesystems, removes their snapshots, and closes the driver.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil
	}
	h.closed = true
	names := append([]string(nil), h.order...)
	h.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, n := range names {
		h.mu.Lock()
		rec := h.ees[n]
		h.mu.Unlock()
		rec.op.Lock()
		errs = append(errs, h.teardown(ctx, rec))
		rec.op.Unlock()
	}
	h.wg.Wait()
	if h.mon != nil {
		h.monCancel()
		<-h.monDone
	}
	if c, ok := h.cfg.Driver.(interface{ Close(context.Context) error }); ok {
		errs = append(errs, c.Close(ctx))
	}
	return errors.Join(errs...)
}

// teardown stops the EE before its mark goes (an unwatched running EE
// would exec unmeasured), then removes everything create made.
func (h *Host) teardown(ctx context.Context, rec *eeRec) error {
	var errs []error
	if rec.created {
		if err := h.cfg.Driver.Stop(ctx, rec.name); err != nil {
			return fmt.Errorf("ee %s: %w", rec.name, err)
		}
	}
	if rec.watched {
		if err := h.mon.Unwatch(rec.name); err != nil {
			errs = append(errs, err)
		}
		rec.watched = false
	}
	if rec.bind != "" {
		if err := unix.Unmount(rec.bind, 0); err != nil {
			errs = append(errs, fmt.Errorf("ee %s: unmount %s: %w", rec.name, rec.bind, err))
		} else {
			rec.bind = ""
		}
	}
	if rec.created {
		if err := h.cfg.Driver.Destroy(ctx, rec.name); err != nil {
			errs = append(errs, err)
		}
	}
	if rec.fsDir != "" {
		if err := removeFS(rec.fsDir); err != nil {
			errs = append(errs, fmt.Errorf("ee %s: %w", rec.name, err))
		}
	}
	if err := os.RemoveAll(rec.snaps); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Isolation says how strongly the host's driver isolates EEs: "strong"
// for the linux driver (namespaces, overlayfs, cgroups, no capabilities),
// "weak" for the process driver. The agent declares it as each EE's
// ee.isolation claim, so a policy that requires strong isolation refuses
// the weak driver.
func (h *Host) Isolation() string {
	if h.rooted != nil {
		return string(ee.IsolationStrong)
	}
	return string(ee.IsolationWeak)
}
