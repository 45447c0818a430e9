//go:build linux

package monitor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary act as a tiny program instead of running
// tests: copies of it are the executables inside the test roots.
const helperEnv = "TVD_MONITOR_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "exit0":
		os.Exit(0)
	case "nsexec":
		os.Exit(nsExecHelper(os.Args[1:]))
	case "execserver":
		os.Exit(execServer())
	case "privatens":
		// Re-executed by inPrivateMountNamespace below.
		os.Unsetenv(helperEnv)
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
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

// inPrivateMountNamespace runs the tests again in a child process with its
// own mount namespace, so the overlay mounts of a test binary that is killed
// (a timeout, a crash) vanish with it instead of staying on the host.
func inPrivateMountNamespace() int {
	exe, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "find test binary:", err)
		return 1
	}
	runtime.LockOSThread() // Pdeathsig follows the thread that forked
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Env = append(os.Environ(), helperEnv+"=privatens")
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

// nsExecHelper runs in a fresh mount namespace: it bind-mounts args[0] (an
// EE root) on args[1], execs args[1]/args[2] through the bind mount and
// prints "ok", "EPERM" or the error, followed by its mount namespace.
func nsExecHelper(args []string) int {
	if len(args) != 3 {
		fmt.Println("usage: root bind-dir binary")
		return 2
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Println("make mounts private:", err)
		return 1
	}
	if err := unix.Mount(args[0], args[1], "", unix.MS_BIND, ""); err != nil {
		fmt.Println("bind mount:", err)
		return 1
	}
	ns, _ := os.Readlink("/proc/self/ns/mnt")
	err := runTool(filepath.Join(args[1], args[2]))
	switch {
	case err == nil:
		fmt.Println("ok", ns)
	case errors.Is(err, syscall.EPERM):
		fmt.Println("EPERM", ns)
	default:
		fmt.Println("error:", err, ns)
	}
	return 0
}

// runTool execs a copy of the test binary as a program that exits 0.
func runTool(path string) error {
	cmd := exec.Command(path)
	cmd.Env = append(os.Environ(), helperEnv+"=exit0")
	return cmd.Run()
}

// execServer runs each path read from stdin with runTool and prints "ok",
// "EPERM" or the error. The tests exec through it because the monitoring
// process must not exec watched files itself (see the package doc).
func execServer() int {
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		err := runTool(sc.Text())
		switch {
		case err == nil:
			fmt.Println("ok")
		case errors.Is(err, syscall.EPERM):
			fmt.Println("EPERM")
		default:
			fmt.Println("error:", strings.ReplaceAll(err.Error(), "\n", " "))
		}
	}
	return 0
}

// execer is a child process that execs programs for the test.
type execer struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func newExecer(tb testing.TB) *execer {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"=execserver")
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		in.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("exec server: %v", err)
		}
	})
	return &execer{in: in, out: bufio.NewScanner(out)}
}

// run execs path in the exec server; EPERM comes back as syscall.EPERM.
func (x *execer) run(path string) error {
	if _, err := fmt.Fprintln(x.in, path); err != nil {
		return fmt.Errorf("exec server: %w", err)
	}
	if !x.out.Scan() {
		return fmt.Errorf("exec server stopped: %v", x.out.Err())
	}
	switch line := x.out.Text(); line {
	case "ok":
		return nil
	case "EPERM":
		return syscall.EPERM
	default:
		return errors.New(line)
	}
}

func requireMonitor(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Skip("monitor tests need root (fanotify permission events, overlayfs mounts)")
	}
	if err := Probe(); err != nil {
		tb.Skipf("fanotify exec permission events unavailable: %v", err)
	}
}

// testRoot is an overlayfs EE root in a temporary directory, unmounted when
// the test ends.
type testRoot struct {
	dir, lower, merged string
}

func newRoot(tb testing.TB) *testRoot {
	tb.Helper()
	dir := tb.TempDir()
	r := &testRoot{dir: dir, lower: filepath.Join(dir, "lower"), merged: filepath.Join(dir, "merged")}
	for _, d := range []string{"lower", "lower/bin", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			tb.Fatal(err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s", r.lower, filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	if err := unix.Mount("overlay", r.merged, "overlay", 0, opts); err != nil {
		tb.Skipf("overlayfs unavailable: %v", err)
	}
	tb.Cleanup(func() {
		if err := unix.Unmount(r.merged, unix.MNT_DETACH); err != nil {
			tb.Errorf("unmount %s: %v", r.merged, err)
		}
	})
	return r
}

// selfImage returns the test binary's content.
func selfImage(tb testing.TB) []byte {
	tb.Helper()
	exe, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// install writes an executable at path and returns its digest.
func install(tb testing.TB, path string, content []byte) [32]byte {
	tb.Helper()
	if err := os.WriteFile(path, content, 0o755); err != nil {
		tb.Fatal(err)
	}
	return sha256.Sum256(content)
}

// variant is content with a suffix: still a runnable ELF file, another digest.
func variant(content []byte, suffix string) []byte {
	return append(bytes.Clone(content), suffix...)
}

// recorder is a Sink that keeps events.
type recorder struct {
	mu  sync.Mutex
	evs []Event
}

func (r *recorder) sink(e Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, e)
}

func (r *recorder) events() []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Event(nil), r.evs...)
}

// last returns the latest event, failing the test if there is none.
func (r *recorder) last(tb testing.TB) Event {
	tb.Helper()
	evs := r.events()
	if len(evs) == 0 {
		tb.Fatal("no event recorded")
	}
	return evs[len(evs)-1]
}

// allowlist is a LookupFunc over a fixed map.
type allowlist map[[32]byte]string

func (a allowlist) lookup(_ string, d [32]byte) (string, bool) {
	n, ok := a[d]
	return n, ok
}

// startMonitor runs a monitor until the test ends.
func startMonitor(tb testing.TB, list allowlist, rec *recorder, configure func(*Monitor)) *Monitor {
	tb.Helper()
	m, err := New(Config{Lookup: list.lookup, Sink: rec.sink})
	if err != nil {
		tb.Fatal(err)
	}
	if configure != nil {
		configure(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run: %v", err)
		}
	})
	return m
}

func watch(tb testing.TB, m *Monitor, ee string, r *testRoot, mode Mode) {
	tb.Helper()
	if err := m.Watch(ee, r.merged, mode); err != nil {
		tb.Fatal(err)
	}
}

func TestMeasureMode(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	img := selfImage(t)
	listed := install(t, filepath.Join(r.lower, "bin/listed"), img)
	unlisted := install(t, filepath.Join(r.lower, "bin/unlisted"), variant(img, "unlisted"))
	rec := &recorder{}
	m := startMonitor(t, allowlist{listed: "tool"}, rec, nil)
	watch(t, m, "ee-measure", r, ModeMeasure)

	for _, tc := range []struct {
		name   string
		digest [32]byte
		listed string
	}{{"listed", listed, "tool"}, {"unlisted", unlisted, ""}} {
		path := filepath.Join(r.merged, "bin", tc.name)
		if err := x.run(path); err != nil {
			t.Fatalf("exec %s in measure mode: %v", tc.name, err)
		}
		e := rec.last(t)
		if e.Err != nil || e.Digest != tc.digest || !e.Allowed || e.ListedAs != tc.listed ||
			e.EE != "ee-measure" || e.Mode != ModeMeasure || e.Path != path || e.PID <= 0 || e.Time.IsZero() {
			t.Errorf("exec %s: event %+v; want digest %x, allowed, listed as %q, path %s", tc.name, e, tc.digest, tc.listed, path)
		}
	}
	if s := m.Stats(); s.Events != 2 || s.Allowed != 2 || s.Denied != 0 {
		t.Errorf("stats %+v: want 2 events, both allowed", s)
	}
}

func TestEnforceMode(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	img := selfImage(t)
	listed := install(t, filepath.Join(r.lower, "bin/tool"), img)
	rec := &recorder{}
	m := startMonitor(t, allowlist{listed: "tool"}, rec, nil)
	watch(t, m, "ee-enforce", r, ModeEnforce)

	if err := x.run(filepath.Join(r.merged, "bin/tool")); err != nil {
		t.Fatalf("exec listed binary: %v", err)
	}
	if e := rec.last(t); !e.Allowed || e.Digest != listed || e.ListedAs != "tool" {
		t.Errorf("listed exec: event %+v", e)
	}

	// An unlisted binary copied into the running EE's root (the upper layer).
	dropped := install(t, filepath.Join(r.merged, "dropped"), variant(img, "dropped"))
	err := x.run(filepath.Join(r.merged, "dropped"))
	if !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec unlisted binary: err %v, want EPERM", err)
	}
	if e := rec.last(t); e.Allowed || e.Digest != dropped || e.ListedAs != "" || e.Err != nil {
		t.Errorf("unlisted exec: event %+v; want denied with digest %x", e, dropped)
	}
	if s := m.Stats(); s.Allowed != 1 || s.Denied != 1 {
		t.Errorf("stats %+v: want 1 allowed, 1 denied", s)
	}
}

func TestAlteredBinaryIsRemeasured(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	img := selfImage(t)
	path := filepath.Join(r.merged, "bin/tool")
	listed := install(t, filepath.Join(r.lower, "bin/tool"), img)
	time.Sleep(2 * racyWindow) // old enough to be cached
	rec := &recorder{}
	m := startMonitor(t, allowlist{listed: "tool"}, rec, nil)
	watch(t, m, "ee-altered", r, ModeEnforce)

	for i := range 2 {
		if err := x.run(path); err != nil {
			t.Fatalf("exec %d of listed binary: %v", i, err)
		}
	}
	if s := m.Stats(); s.CacheMisses != 1 || s.CacheHits != 1 {
		t.Fatalf("stats %+v: want the second exec from the cache", s)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	// Alter the binary in place: same size, mtime put back. Only ctime
	// (and the content) tells the versions apart.
	altered := bytes.Clone(img)
	altered[len(altered)-1] ^= 0xff
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(altered[len(altered)-1:], int64(len(altered)-1)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, before.ModTime(), before.ModTime()); err != nil {
		t.Fatal(err)
	}
	if after, err := os.Stat(path); err != nil || after.Size() != before.Size() || !after.ModTime().Equal(before.ModTime()) {
		t.Fatalf("alteration changed size or mtime: %v %v", after, err)
	}

	err = x.run(path)
	if !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec altered binary: err %v, want EPERM", err)
	}
	want := sha256.Sum256(altered)
	if e := rec.last(t); e.Allowed || e.Cached || e.Digest != want {
		t.Errorf("altered exec: event %+v; want a fresh measurement %x, denied", e, want)
	}
	if s := m.Stats(); s.CacheMisses != 2 {
		t.Errorf("stats %+v: want the altered binary hashed again", s)
	}
}

func TestCacheHit(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	digest := install(t, filepath.Join(r.lower, "bin/tool"), selfImage(t))
	time.Sleep(2 * racyWindow)
	rec := &recorder{}
	m := startMonitor(t, allowlist{}, rec, nil)
	watch(t, m, "ee-cache", r, ModeMeasure)
	for i := range 3 {
		if err := x.run(filepath.Join(r.merged, "bin/tool")); err != nil {
			t.Fatalf("exec %d: %v", i, err)
		}
	}
	evs := rec.events()
	if len(evs) != 3 {
		t.Fatalf("%d events, want 3", len(evs))
	}
	for i, e := range evs {
		if e.Digest != digest || e.Cached != (i > 0) {
			t.Errorf("event %d: digest %x cached %v; want %x cached %v", i, e.Digest, e.Cached, digest, i > 0)
		}
	}
	if s := m.Stats(); s.CacheMisses != 1 || s.CacheHits != 2 {
		t.Errorf("stats %+v: want 1 miss, 2 hits", s)
	}
}

func TestRecentlyChangedFileIsNotCached(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tool")
	digest := install(t, path, []byte("#!/bin/sh\nexit 0\n"))
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	ctime := time.Unix(st.Ctim.Unix())
	for _, tc := range []struct {
		age    time.Duration
		cached bool
	}{
		{0, false},
		{racyWindow / 2, false},
		{racyWindow + time.Millisecond, true},
	} {
		ms := &measurer{maxSize: 1 << 20, buf: make([]byte, 4096), now: func() time.Time { return ctime.Add(tc.age) }}
		cache := newDigestCache(8)
		for i := range 2 {
			got, hit, err := ms.measure(int(f.Fd()), cache)
			if err != nil || got != digest {
				t.Fatalf("measure: %x, %v; want %x", got, err, digest)
			}
			if want := i == 1 && tc.cached; hit != want {
				t.Errorf("file changed %v before measurement, measurement %d: cache hit %v, want %v", tc.age, i, hit, want)
			}
		}
	}
}

func TestSwapAfterOpenDoesNotChangeDigest(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	img := selfImage(t)
	path := filepath.Join(r.merged, "bin/tool")
	listed := install(t, filepath.Join(r.lower, "bin/tool"), img)
	swapped := install(t, filepath.Join(r.lower, "bin/other"), variant(img, "swapped"))
	rec := &recorder{}
	var once sync.Once
	var swapErr error
	m := startMonitor(t, allowlist{listed: "tool"}, rec, func(m *Monitor) {
		// The kernel has opened the file; replace it by path before the
		// monitor reads it.
		m.hookBeforeMeasure = func(int) {
			once.Do(func() { swapErr = os.Rename(filepath.Join(r.merged, "bin/other"), path) })
		}
	})
	watch(t, m, "ee-swap", r, ModeEnforce)

	if err := x.run(path); err != nil {
		t.Fatalf("exec: %v", err)
	}
	if swapErr != nil {
		t.Fatalf("swap: %v", swapErr)
	}
	now, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if sha256.Sum256(now) != swapped {
		t.Fatal("the file at the path was not swapped")
	}
	if e := rec.last(t); e.Digest != listed || !e.Allowed {
		t.Errorf("event %+v: want the digest of the file that was executed, %x", e, listed)
	}
	// The swapped-in file itself is still refused.
	if err := x.run(path); !errors.Is(err, syscall.EPERM) {
		t.Errorf("exec swapped-in file: err %v, want EPERM", err)
	}
}

func TestExecThroughBindMountInOtherNamespace(t *testing.T) {
	requireMonitor(t)
	r := newRoot(t)
	img := selfImage(t)
	listed := install(t, filepath.Join(r.lower, "bin/tool"), img)
	unlisted := install(t, filepath.Join(r.lower, "bin/intruder"), variant(img, "intruder"))
	bind := filepath.Join(r.dir, "bind")
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	m := startMonitor(t, allowlist{listed: "tool"}, rec, nil)
	watch(t, m, "ee-ns", r, ModeEnforce)
	ourNS, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		bin, want string
		digest    [32]byte
	}{{"bin/tool", "ok", listed}, {"bin/intruder", "EPERM", unlisted}} {
		cmd := exec.Command(exe, r.merged, bind, tc.bin)
		cmd.Env = append(os.Environ(), helperEnv+"=nsexec")
		cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("namespace helper: %v: %s", err, out)
		}
		fields := strings.Fields(string(out))
		if len(fields) != 2 || fields[0] != tc.want {
			t.Fatalf("exec %s through bind mount: %q, want %s", tc.bin, out, tc.want)
		}
		if fields[1] == ourNS {
			t.Fatalf("helper ran in our mount namespace %s", ourNS)
		}
		if e := rec.last(t); e.Digest != tc.digest || e.Allowed != (tc.want == "ok") || e.EE != "ee-ns" {
			t.Errorf("exec %s through bind mount: event %+v", tc.bin, e)
		}
	}
	// The bind mount lived only in the helper's namespace.
	if ents, err := os.ReadDir(bind); err != nil || len(ents) != 0 {
		t.Errorf("bind mount leaked into our namespace: %v %v", ents, err)
	}
}

func TestWatchAndUnwatchWhileRunning(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	img := selfImage(t)
	ra, rb := newRoot(t), newRoot(t)
	install(t, filepath.Join(ra.lower, "bin/tool"), img)
	install(t, filepath.Join(rb.lower, "bin/tool"), img)
	rec := &recorder{}
	m := startMonitor(t, allowlist{}, rec, nil)
	time.Sleep(10 * time.Millisecond) // Run is up before the first Watch
	watch(t, m, "ee-a", ra, ModeMeasure)
	watch(t, m, "ee-b", rb, ModeEnforce)

	if err := x.run(filepath.Join(ra.merged, "bin/tool")); err != nil {
		t.Fatalf("exec in measured EE: %v", err)
	}
	if e := rec.last(t); e.EE != "ee-a" || !e.Allowed {
		t.Errorf("event %+v: want EE ee-a, allowed", e)
	}
	if err := x.run(filepath.Join(rb.merged, "bin/tool")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec in enforced EE: err %v, want EPERM", err)
	}
	if e := rec.last(t); e.EE != "ee-b" || e.Allowed {
		t.Errorf("event %+v: want EE ee-b, denied", e)
	}

	if err := m.Unwatch("ee-b"); err != nil {
		t.Fatal(err)
	}
	n := len(rec.events())
	if err := x.run(filepath.Join(rb.merged, "bin/tool")); err != nil {
		t.Fatalf("exec after unwatch: %v", err)
	}
	if len(rec.events()) != n {
		t.Error("event recorded after unwatch")
	}
	if err := m.Unwatch("ee-b"); err == nil {
		t.Error("second unwatch: want an error")
	}
	// The filesystem can be watched again, under another name.
	watch(t, m, "ee-b2", rb, ModeMeasure)
	if err := x.run(filepath.Join(rb.merged, "bin/tool")); err != nil {
		t.Fatalf("exec after rewatch: %v", err)
	}
	if e := rec.last(t); e.EE != "ee-b2" {
		t.Errorf("event %+v: want EE ee-b2", e)
	}
}

func TestWatchBeforeRunAndClose(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	install(t, filepath.Join(r.lower, "bin/tool"), selfImage(t))
	rec := &recorder{}
	m, err := New(Config{Lookup: allowlist{}.lookup, Sink: rec.sink})
	if err != nil {
		t.Fatal(err)
	}
	watch(t, m, "ee-early", r, ModeEnforce)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	if err := x.run(filepath.Join(r.merged, "bin/tool")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec: err %v, want EPERM", err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Run after Close: %v", err)
	}
	if err := m.Watch("ee-late", r.merged, ModeMeasure); !errors.Is(err, ErrClosed) {
		t.Errorf("Watch after Close: %v, want ErrClosed", err)
	}
	if err := m.Run(context.Background()); !errors.Is(err, ErrClosed) {
		t.Errorf("Run after Close: %v, want ErrClosed", err)
	}
	// Closed: the kernel no longer asks.
	if err := x.run(filepath.Join(r.merged, "bin/tool")); err != nil {
		t.Errorf("exec after Close: %v", err)
	}
}

func TestSlowSinkDeniesInEnforceMode(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	digest := install(t, filepath.Join(r.lower, "bin/tool"), selfImage(t))
	release := make(chan struct{})
	var got []Event
	var mu sync.Mutex
	m, err := New(Config{
		Lookup: allowlist{digest: "tool"}.lookup,
		Sink: func(e Event) {
			<-release
			mu.Lock()
			got = append(got, e)
			mu.Unlock()
		},
		SinkTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	watch(t, m, "ee-slow", r, ModeEnforce)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	defer close(release)

	if err := x.run(filepath.Join(r.merged, "bin/tool")); !errors.Is(err, syscall.EPERM) {
		t.Fatalf("exec with a stuck sink: err %v, want EPERM", err)
	}
	if s := m.Stats(); s.SinkTimeouts != 1 || s.Denied != 1 {
		t.Errorf("stats %+v: want one sink timeout, one denial", s)
	}
}

func TestOversizedFileFollowsMode(t *testing.T) {
	requireMonitor(t)
	x := newExecer(t)
	r := newRoot(t)
	digest := install(t, filepath.Join(r.lower, "bin/tool"), selfImage(t))
	for _, mode := range []Mode{ModeEnforce, ModeMeasure} {
		rec := &recorder{}
		m, err := New(Config{Lookup: allowlist{digest: "tool"}.lookup, Sink: rec.sink, MaxFileSize: 1024})
		if err != nil {
			t.Fatal(err)
		}
		watch(t, m, "ee-big", r, mode)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		err = x.run(filepath.Join(r.merged, "bin/tool"))
		cancel()
		if rerr := <-done; rerr != nil {
			t.Fatal(rerr)
		}
		if mode == ModeEnforce && !errors.Is(err, syscall.EPERM) || mode == ModeMeasure && err != nil {
			t.Errorf("%v: exec of oversized file: %v", mode, err)
		}
		e := rec.last(t)
		if e.Err == nil || e.Allowed != (mode == ModeMeasure) || e.Digest != ([32]byte{}) {
			t.Errorf("%v: event %+v: want an error, allowed only in measure mode", mode, e)
		}
	}
}

func TestWatchRejectsUnsafeRoots(t *testing.T) {
	requireMonitor(t)
	r := newRoot(t)
	sub := filepath.Join(r.merged, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	bind := filepath.Join(r.dir, "bindsub")
	if err := os.Mkdir(bind, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(sub, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bind, unix.MNT_DETACH) })
	m, err := New(Config{Lookup: allowlist{}.lookup, Sink: (&recorder{}).sink})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tc := range []struct {
		name, root string
		mode       Mode
		want       string
	}{
		{"relative", "merged", ModeEnforce, "absolute"},
		{"missing", filepath.Join(r.dir, "nope"), ModeEnforce, "no such file"},
		{"plain directory", sub, ModeEnforce, "not a mount point"},
		{"bind mount of a subtree", bind, ModeEnforce, "bind mount of /sub"},
		{"host root", "/", ModeEnforce, "host's root filesystem"},
		{"no mode", r.merged, 0, "want enforce or measure"},
	} {
		err := m.Watch("ee-x", tc.root, tc.mode)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Watch(%q) = %v, want an error containing %q", tc.name, tc.root, err, tc.want)
		}
	}
	watch(t, m, "ee-x", r, ModeMeasure)
	if err := m.Watch("ee-y", r.merged, ModeMeasure); err == nil || !strings.Contains(err.Error(), "already watched for EE ee-x") {
		t.Errorf("same filesystem twice: %v", err)
	}
	other := newRoot(t)
	if err := m.Watch("ee-x", other.merged, ModeMeasure); err == nil || !strings.Contains(err.Error(), "already watched") {
		t.Errorf("same EE twice: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{Lookup: allowlist{}.lookup, Sink: func(Event) {}}
	for _, tc := range []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"no lookup", func(c *Config) { c.Lookup = nil }, "Lookup is required"},
		{"no sink", func(c *Config) { c.Sink = nil }, "Sink is required"},
		{"negative timeout", func(c *Config) { c.SinkTimeout = -1 }, "SinkTimeout"},
		{"negative size", func(c *Config) { c.MaxFileSize = -1 }, "MaxFileSize"},
	} {
		c := ok
		tc.mod(&c)
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
	if _, err := New(ok); err != nil {
		t.Errorf("valid config: %v", err)
	}
}

func TestParseMode(t *testing.T) {
	for _, m := range []Mode{ModeEnforce, ModeMeasure} {
		got, err := ParseMode(m.String())
		if err != nil || got != m {
			t.Errorf("ParseMode(%q) = %v, %v", m.String(), got, err)
		}
	}
	if _, err := ParseMode("audit"); err == nil || !strings.Contains(err.Error(), "want enforce or measure") {
		t.Errorf("ParseMode(audit) = %v", err)
	}
	if s := Mode(7).String(); s != "Mode(7)" {
		t.Errorf("Mode(7).String() = %q", s)
	}
}

// BenchmarkExec measures an exec of a cached, listed binary under an
// enforcing monitor against the same exec in an unwatched root, the two
// interleaved in one loop so load changes hit both alike. ns/op is the sum
// of one monitored and one unmonitored exec; the metrics split it and give
// the ratio.
func BenchmarkExec(b *testing.B) {
	requireMonitor(b)
	x := newExecer(b)
	img := selfImage(b)
	plain, watched := newRoot(b), newRoot(b)
	install(b, filepath.Join(plain.lower, "bin/tool"), img)
	digest := install(b, filepath.Join(watched.lower, "bin/tool"), img)
	time.Sleep(2 * racyWindow)
	rec := &recorder{}
	m := startMonitor(b, allowlist{digest: "tool"}, rec, nil)
	watch(b, m, "ee-bench", watched, ModeEnforce)
	run := func(path string) time.Duration {
		start := time.Now()
		if err := x.run(path); err != nil {
			b.Fatal(err)
		}
		return time.Since(start)
	}
	plainPath, watchedPath := filepath.Join(plain.merged, "bin/tool"), filepath.Join(watched.merged, "bin/tool")
	run(plainPath)
	run(watchedPath) // fills the digest cache
	var base, monitored time.Duration
	b.ResetTimer()
	for range b.N {
		base += run(plainPath)
		monitored += run(watchedPath)
	}
	b.StopTimer()
	b.ReportMetric(float64(monitored.Nanoseconds())/float64(b.N), "ns/exec-monitored")
	b.ReportMetric(float64(base.Nanoseconds())/float64(b.N), "ns/exec-unmonitored")
	b.ReportMetric(float64(monitored)/float64(base), "x-vs-unmonitored")
	if s := m.Stats(); s.CacheHits < uint64(b.N) {
		b.Fatalf("stats %+v: want every timed exec from the cache", s)
	}
}

// BenchmarkMeasure hashes the test binary through a descriptor (cache
// disabled) and reports it against sha256.Sum256 of the same bytes in
// memory.
func BenchmarkMeasure(b *testing.B) {
	img := selfImage(b)
	path := filepath.Join(b.TempDir(), "tool")
	install(b, path, img)
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	ms := &measurer{maxSize: 1 << 30, buf: make([]byte, 256*1024), now: time.Now}
	cache := newDigestCache(-1)
	start := time.Now()
	for range b.N {
		sha256.Sum256(img)
	}
	base := time.Since(start)
	b.SetBytes(int64(len(img)))
	b.ResetTimer()
	for range b.N {
		if _, _, err := ms.measure(int(f.Fd()), cache); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(b.Elapsed())/float64(base), "x-vs-sha256")
}
