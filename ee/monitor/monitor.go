//go:build linux

package monitor

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Mode says what the monitor does with a program that is not on the
// allowlist.
type Mode int

// The zero Mode is invalid, so a forgotten mode is an error, not a silent
// choice.
const (
	// ModeEnforce denies unlisted programs: their execve fails with EPERM.
	ModeEnforce Mode = iota + 1
	// ModeMeasure lets every program run and reports it.
	ModeMeasure
)

// ParseMode parses the policy spelling of a mode.
func ParseMode(s string) (Mode, error) {
	switch s {
	case "enforce":
		return ModeEnforce, nil
	case "measure":
		return ModeMeasure, nil
	}
	return 0, fmt.Errorf("unknown monitor mode %q (want enforce or measure)", s)
}

func (m Mode) String() string {
	switch m {
	case ModeEnforce:
		return "enforce"
	case ModeMeasure:
		return "measure"
	}
	return "Mode(" + strconv.Itoa(int(m)) + ")"
}

// LookupFunc is the allowlist: it reports whether digest (SHA-256 of a whole
// file) may run in EE ee, and under which name it is listed. It is called
// for every measured exec, cache hit or not, from one goroutine per EE at
// once: it must be safe for concurrent use, fast, and must not block (an
// in-memory map behind a lock).
type LookupFunc func(ee string, digest [32]byte) (name string, ok bool)

// Event records one decision.
type Event struct {
	EE   string
	Path string // path of the file as the monitor sees it; informational only
	PID  int    // process that called execve, in the monitor's pid namespace
	// Digest is the SHA-256 of the file's content; zero when Err is set.
	Digest   [32]byte
	Allowed  bool
	ListedAs string // the allowlist's name for Digest, "" if unlisted
	Mode     Mode
	Cached   bool  // the digest came from the cache
	Err      error // the file could not be measured; Allowed follows Mode
	Time     time.Time
}

// Stats are counters since New.
type Stats struct {
	Events       uint64 // exec permission events answered
	Allowed      uint64
	Denied       uint64
	CacheHits    uint64
	CacheMisses  uint64 // files hashed
	Errors       uint64 // events answered without a measurement
	SinkTimeouts uint64 // events whose sink call did not finish in time
}

// Config configures a Monitor.
type Config struct {
	// Lookup is the allowlist. Required.
	Lookup LookupFunc
	// Sink receives every Event, one at a time from a single goroutine,
	// in decision order per EE, before the kernel is answered. Required. It should return quickly: after SinkTimeout the
	// monitor answers anyway (deny in enforce mode, allow in measure mode)
	// and the event is still delivered later if it was queued.
	Sink func(Event)
	// Logger; nil discards.
	Logger *slog.Logger
	// Clock stamps events; nil means time.Now.
	Clock func() time.Time
	// SinkTimeout bounds how long one exec waits for Sink; 0 means 5s.
	SinkTimeout time.Duration
	// MaxFileSize is the largest file that is hashed; a larger one is an
	// error (denied in enforce mode). 0 means 1 GiB.
	MaxFileSize int64
	// CacheEntries is the number of digests cached per EE; 0 means 4096,
	// negative disables the cache.
	CacheEntries int
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.Lookup == nil {
		return errors.New("monitor config: Lookup is required")
	}
	if c.Sink == nil {
		return errors.New("monitor config: Sink is required")
	}
	if c.SinkTimeout < 0 {
		return fmt.Errorf("monitor config: SinkTimeout %v: want a positive duration or 0 for the default", c.SinkTimeout)
	}
	if c.MaxFileSize < 0 {
		return fmt.Errorf("monitor config: MaxFileSize %d: want a positive size or 0 for the default", c.MaxFileSize)
	}
	return nil
}

// ErrClosed is returned by Watch and Run once the monitor is closed.
var ErrClosed = errors.New("monitor closed")

// Monitor measures executions in a set of EE roots. Create it with New,
// add roots with Watch, and call Run. Execs in a watched root wait for the
// monitor's answer, so until Run is running they wait.
type Monitor struct {
	cfg Config
	log *slog.Logger

	mu      sync.Mutex
	groups  map[string]*group
	running bool
	closed  bool
	closing chan struct{} // closed by Close
	wg      sync.WaitGroup
	sinkq   chan sinkReq
	fatal   chan error

	hookBeforeMeasure func(fd int) // test hook: runs before a file is measured

	events, allowed, denied, hits, misses, errs, sinkTimeouts atomic.Uint64
}

type group struct {
	ee, root string
	mode     Mode
	dev      uint64
	f        *os.File
	done     chan struct{} // closed when the reader exits; nil until started
}

type sinkReq struct {
	ev   Event
	done chan struct{}
}

// New returns a monitor with no roots.
func New(cfg Config) (*Monitor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = time.Now
	}
	if cfg.SinkTimeout == 0 {
		cfg.SinkTimeout = 5 * time.Second
	}
	if cfg.MaxFileSize == 0 {
		cfg.MaxFileSize = 1 << 30
	}
	if cfg.CacheEntries == 0 {
		cfg.CacheEntries = 4096
	}
	return &Monitor{
		cfg:     cfg,
		log:     cfg.Logger,
		groups:  make(map[string]*group),
		closing: make(chan struct{}),
		sinkq:   make(chan sinkReq, 1024),
		fatal:   make(chan error, 1),
	}, nil
}

// Watch starts measuring every exec of a file on the filesystem mounted at
// root (an absolute path), attributing it to EE ee. root must be the root of
// the EE's own filesystem (e.g. its overlayfs mount), not a directory or a
// bind mount of part of a larger filesystem, and not the host's root
// filesystem. Each EE and each filesystem can be watched once.
func (m *Monitor) Watch(ee, root string, mode Mode) error {
	if ee == "" {
		return errors.New("watch: want a non-empty EE name")
	}
	if mode != ModeEnforce && mode != ModeMeasure {
		return fmt.Errorf("watch EE %s: mode %v: want enforce or measure", ee, mode)
	}
	dev, err := checkRoot(root)
	if err != nil {
		return fmt.Errorf("watch EE %s: %w", ee, err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	if _, ok := m.groups[ee]; ok {
		return fmt.Errorf("watch EE %s: already watched", ee)
	}
	for _, g := range m.groups {
		if g.dev == dev {
			return fmt.Errorf("watch EE %s: filesystem of %s is already watched for EE %s", ee, root, g.ee)
		}
	}
	f, err := newGroupFile(root)
	if err != nil {
		return fmt.Errorf("watch EE %s: %w", ee, err)
	}
	g := &group{ee: ee, root: root, mode: mode, dev: dev, f: f}
	m.groups[ee] = g
	if m.running {
		m.start(g)
	}
	m.log.Info("monitor watching EE", "ee", ee, "root", root, "mode", mode.String())
	return nil
}

// Unwatch stops measuring EE ee and waits until its events are answered.
// The kernel allows every later exec on that filesystem.
func (m *Monitor) Unwatch(ee string) error {
	m.mu.Lock()
	g, ok := m.groups[ee]
	if ok {
		delete(m.groups, ee)
	}
	m.mu.Unlock()
	if !ok {
		return fmt.Errorf("unwatch EE %s: not watched", ee)
	}
	err := g.f.Close()
	if g.done != nil {
		<-g.done
	}
	m.log.Info("monitor stopped watching EE", "ee", ee)
	if err != nil {
		return fmt.Errorf("unwatch EE %s: %w", ee, err)
	}
	return nil
}

// start runs g's reader. m.mu must be held.
func (m *Monitor) start(g *group) {
	g.done = make(chan struct{})
	m.wg.Go(func() {
		defer close(g.done)
		if err := m.read(g); err != nil {
			m.log.Error("monitor reader stopped", "ee", g.ee, "err", err)
			select {
			case m.fatal <- fmt.Errorf("monitor EE %s: %w", g.ee, err):
			default:
			}
		}
	})
}

// Run answers exec events until ctx is done or Close is called, then
// releases every group. A monitor runs once. Run returns nil when stopped,
// or the error that stopped a reader (its group is then closed, so the
// kernel allows execs on that filesystem: the caller must treat the error
// as fatal).
func (m *Monitor) Run(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	if m.running {
		m.mu.Unlock()
		return errors.New("monitor already running")
	}
	m.running = true
	for _, g := range m.groups {
		m.start(g)
	}
	m.mu.Unlock()

	sinkDone := make(chan struct{})
	go func() {
		defer close(sinkDone)
		for req := range m.sinkq {
			m.cfg.Sink(req.ev)
			close(req.done)
		}
	}()

	var err error
	select {
	case <-ctx.Done():
	case <-m.closing:
	case err = <-m.fatal:
	}
	m.Close()
	m.wg.Wait()
	close(m.sinkq)
	<-sinkDone
	return err
}

// Close releases every group; the kernel then allows execs on the
// formerly watched filesystems. It makes a running Run return.
func (m *Monitor) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	close(m.closing)
	groups := m.groups
	m.groups = make(map[string]*group)
	m.mu.Unlock()
	var errs []error
	for _, g := range groups {
		if err := g.f.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close EE %s: %w", g.ee, err))
		}
	}
	return errors.Join(errs...)
}

// Stats returns the counters.
func (m *Monitor) Stats() Stats {
	return Stats{
		Events:       m.events.Load(),
		Allowed:      m.allowed.Load(),
		Denied:       m.denied.Load(),
		CacheHits:    m.hits.Load(),
		CacheMisses:  m.misses.Load(),
		Errors:       m.errs.Load(),
		SinkTimeouts: m.sinkTimeouts.Load(),
	}
}

// read is the loop of one group's reader goroutine.
func (m *Monitor) read(g *group) error {
	buf := make([]byte, 64*1024)
	ms := &measurer{maxSize: m.cfg.MaxFileSize, buf: make([]byte, 256*1024), now: time.Now}
	cache := newDigestCache(m.cfg.CacheEntries)
	for {
		n, err := g.f.Read(buf)
		if errors.Is(err, os.ErrClosed) {
			return nil
		}
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("read fanotify events: %w", err)
		}
		evs, perr := parseEvents(buf[:n])
		for i, ev := range evs {
			if err := m.handle(g, ms, cache, ev); err != nil {
				for _, rest := range evs[i+1:] {
					if rest.Fd >= 0 {
						unix.Close(int(rest.Fd)) // the kernel allows them when the group closes
					}
				}
				return err
			}
		}
		if perr != nil {
			return perr
		}
	}
}

// handle answers one event.
func (m *Monitor) handle(g *group, ms *measurer, cache *digestCache, ev rawEvent) error {
	if ev.Fd < 0 {
		// FAN_NOFD: a queue overflow. The group's queue is unlimited, so
		// this should not happen; if it does, execs were allowed unseen.
		err := fmt.Errorf("fanotify event without a file (mask %#x): events may have been lost", ev.Mask)
		m.errs.Add(1)
		m.log.Error("monitor lost events", "ee", g.ee, "err", err)
		m.deliver(Event{EE: g.ee, PID: int(ev.Pid), Mode: g.mode, Allowed: true, Err: err, Time: m.cfg.Clock()})
		return nil
	}
	fd := int(ev.Fd)
	defer unix.Close(fd)
	if ev.Mask&unix.FAN_OPEN_EXEC_PERM == 0 {
		return nil // not a permission event: nothing to answer
	}
	e := Event{EE: g.ee, PID: int(ev.Pid), Mode: g.mode, Path: fdPath(fd)}
	if m.hookBeforeMeasure != nil {
		m.hookBeforeMeasure(fd)
	}
	digest, cached, err := ms.measure(fd, cache)
	e.Time = m.cfg.Clock()
	if err != nil {
		m.errs.Add(1)
		e.Err = fmt.Errorf("measure %s: %w", e.Path, err)
		e.Allowed = g.mode == ModeMeasure
	} else {
		if cached {
			m.hits.Add(1)
		} else {
			m.misses.Add(1)
		}
		e.Digest, e.Cached = digest, cached
		name, ok := m.cfg.Lookup(g.ee, digest)
		if ok {
			e.ListedAs = name
		}
		e.Allowed = ok || g.mode == ModeMeasure
	}
	allow := e.Allowed
	if !m.deliver(e) && g.mode == ModeEnforce {
		allow = false // the measurement may not be recorded before the code runs
	}
	m.events.Add(1)
	if allow {
		m.allowed.Add(1)
	} else {
		m.denied.Add(1)
	}
	if e.Err != nil || !allow {
		m.log.Warn("monitor decision", "ee", g.ee, "path", e.Path, "pid", e.PID,
			"digest", hex.EncodeToString(e.Digest[:]), "allowed", allow, "err", e.Err)
	}
	resp := response(ev.Fd, allow)
	if _, err := g.f.Write(resp[:]); err != nil {
		if errors.Is(err, os.ErrClosed) {
			return nil // the group is gone; the kernel allowed the exec
		}
		return fmt.Errorf("answer fanotify event: %w", err)
	}
	return nil
}

// deliver hands e to the sink and waits for it, at most SinkTimeout. It
// reports whether the sink returned in time.
func (m *Monitor) deliver(e Event) bool {
	t := time.NewTimer(m.cfg.SinkTimeout)
	defer t.Stop()
	req := sinkReq{ev: e, done: make(chan struct{})}
	select {
	case m.sinkq <- req:
	case <-t.C:
		m.sinkTimeouts.Add(1)
		m.log.Error("monitor sink queue full: event dropped", "ee", e.EE, "path", e.Path)
		return false
	}
	select {
	case <-req.done:
		return true
	case <-t.C:
		m.sinkTimeouts.Add(1)
		m.log.Error("monitor sink slow: answered before the event was recorded", "ee", e.EE, "path", e.Path)
		return false
	}
}

// fdPath names the file open at fd, for the event record only.
func fdPath(fd int) string {
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return ""
	}
	return p
}
