//go:build linux

package eehost

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/linux"
	"github.com/tvd-dev/tvd/ee/monitor"
)

const counterLoop = "i=0; while :; do i=$((i+1)); echo $i > /counter; usleep 20000; done"

func instruction(id string, r tvdv1.Reaction, eeName string) *tvdv1.Instruction {
	return &tvdv1.Instruction{Id: id, Reaction: r, Member: &tvdv1.Member{Domain: "red", Role: "web", Ee: eeName}, Reason: "test"}
}

func statusOf(t *testing.T, h *Host, name string) *tvdv1.EEStatus {
	t.Helper()
	for _, s := range h.Status() {
		if s.GetName() == name {
			return s
		}
	}
	t.Fatalf("no status for ee %s", name)
	return nil
}

func waitEEState(t *testing.T, h *Host, name string, want tvdv1.EEState) *tvdv1.EEStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := statusOf(t, h, name)
		if s.GetState() == want {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("ee %s is %v (%s), want %v", name, s.GetState(), s.GetError(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readCounter(t *testing.T, root string) int {
	t.Helper()
	for range 200 {
		b, err := os.ReadFile(filepath.Join(root, "counter"))
		if err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
				return n
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("counter never readable")
	return 0
}

// mountsUnder lists the mount points of this mount namespace under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			out = append(out, fields[4])
		}
	}
	return out
}

func TestLinuxHost(t *testing.T) {
	if _, err := linux.Probe(); err != nil {
		t.Skipf("linux ee driver unavailable here (needs root, overlayfs, a cgroup freezer): %v", err)
	}
	busybox := needBusybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()
	dir := t.TempDir()
	parent := fmt.Sprintf("tvd-eehost-%d", os.Getpid())
	drv, err := linux.New(linux.Config{StateDir: filepath.Join(dir, "state"), CgroupParent: parent,
		NetNSDir: filepath.Join(dir, "netns"), StopTimeout: 300 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	bbDigest := digestOf(busybox)
	rec := &recorder{}
	h, err := New(Config{
		Driver:  drv,
		DataDir: filepath.Join(dir, "data"),
		Mode: func(e agent.EEConfig) monitor.Mode {
			if e.Name == "eh-b" {
				return monitor.ModeEnforce
			}
			return monitor.ModeMeasure
		},
		Lookup: func(_ string, d [32]byte) (string, bool) {
			return "busybox", d == bbDigest
		},
		Measure: rec.measure,
		Events:  rec.event,
		Command: func(e agent.EEConfig) []string {
			if e.Name == "eh-a" {
				return []string{"sh", "-c", counterLoop}
			}
			return nil
		},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			if err := h.Close(); err != nil {
				t.Errorf("close: %v", err)
			}
		}
	})
	began := time.Now()
	if err := h.Start(ctx, []agent.EEConfig{{Name: "eh-a", Domain: "red", Role: "web"}, {Name: "eh-b", Domain: "blue", Role: "db"}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("two EEs started (base image built, copied, watched, snapshotted, measured) in %v", time.Since(began))
	_, baseDigest, err := h.ResolveImage("")
	if err != nil {
		t.Fatal(err)
	}
	imgDigest, _ := parseDigest(baseDigest)
	roots := map[string]string{}
	var pids []int
	for _, name := range []string{"eh-a", "eh-b"} {
		s := waitEEState(t, h, name, tvdv1.EEState_EE_STATE_RUNNING)
		if s.GetImageDigest() != baseDigest {
			t.Fatalf("ee %s image digest %s, want %s", name, s.GetImageDigest(), baseDigest)
		}
		rec.waitMeasured(t, name+" image", func(m measurement) bool {
			return m.EE == name && m.Path == "image:base" && m.Digest == imgDigest
		})
		// The workload's first program (sh, i.e. busybox) ran after the
		// mark was placed, so it is measured too.
		rec.waitMeasured(t, name+" workload shell", func(m measurement) bool { return m.EE == name && m.Digest == bbDigest })
		st, err := drv.Status(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		roots[name] = st.Root
		pids = append(pids, st.Pid)
	}
	if p, ok := h.NetNS("eh-a"); !ok {
		t.Fatal("no netns for a running ee")
	} else if _, err := os.Stat(p); err != nil {
		t.Fatalf("netns %s: %v", p, err)
	}

	t.Run("ExecIsMeasured", func(t *testing.T) {
		prog := append(append([]byte(nil), busybox...), "eehost marker a"...)
		// busybox picks its applet by file name: this copy is "true".
		if err := os.WriteFile(filepath.Join(roots["eh-a"], "root/true"), prog, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := drv.Exec(ctx, "eh-a", []string{"/root/true"}, ee.IO{}); err != nil {
			t.Fatalf("exec of an unlisted program in measure mode: %v", err)
		}
		m := rec.waitMeasured(t, "/root/true", func(m measurement) bool { return m.Digest == digestOf(prog) })
		if m.EE != "eh-a" || !strings.HasSuffix(m.Path, "/root/true") {
			t.Fatalf("measured %+v, want ee eh-a and path .../root/true", m)
		}
		t.Logf("measured path as reported: %q", m.Path)
		// Measured once: running it again adds no measurement.
		if err := drv.Exec(ctx, "eh-a", []string{"/root/true"}, ee.IO{}); err != nil {
			t.Fatal(err)
		}
		if n := rec.count(func(m measurement) bool { return m.Digest == digestOf(prog) }); n != 1 {
			t.Fatalf("/root/true measured %d times, want once", n)
		}
	})

	t.Run("EnforceDeniesUnlisted", func(t *testing.T) {
		evil := append(append([]byte(nil), busybox...), "eehost evil b"...)
		if err := os.WriteFile(filepath.Join(roots["eh-b"], "tmp/evil"), evil, 0o755); err != nil {
			t.Fatal(err)
		}
		err := drv.Exec(ctx, "eh-b", []string{"/tmp/evil", "true"}, ee.IO{})
		if err == nil || !strings.Contains(err.Error(), "operation not permitted") {
			t.Fatalf("exec of an unlisted program in enforce mode: %v, want EPERM", err)
		}
		rec.waitMeasured(t, "denied /tmp/evil", func(m measurement) bool { return m.EE == "eh-b" && m.Digest == digestOf(evil) })
		rec.mu.Lock()
		var denied bool
		for _, e := range rec.events {
			if e.EE == "eh-b" && e.Digest == digestOf(evil) {
				denied = !e.Allowed && e.Mode == monitor.ModeEnforce
			}
		}
		rec.mu.Unlock()
		if !denied {
			t.Fatal("no denied enforce-mode event for /tmp/evil")
		}
		// Listed programs still run.
		var out bytes.Buffer
		if err := drv.Exec(ctx, "eh-b", []string{"echo", "listed"}, ee.IO{Stdout: &out}); err != nil || out.String() != "listed\n" {
			t.Fatalf("listed program in enforce mode: %v %q", err, out.String())
		}
	})

	t.Run("FreezeThenRollback", func(t *testing.T) {
		readCounter(t, roots["eh-a"])
		if err := h.Do(ctx, instruction("i-freeze", tvdv1.Reaction_REACTION_FREEZE, "eh-a")); err != nil {
			t.Fatal(err)
		}
		waitEEState(t, h, "eh-a", tvdv1.EEState_EE_STATE_FROZEN)
		a := readCounter(t, roots["eh-a"])
		time.Sleep(250 * time.Millisecond)
		if b := readCounter(t, roots["eh-a"]); a != b {
			t.Fatalf("counter moved from %d to %d while frozen", a, b)
		}
		if err := h.MarkTrusted(ctx, "eh-a"); err == nil {
			t.Fatal("a frozen ee was marked trusted")
		}
		images := rec.count(func(m measurement) bool { return m.EE == "eh-a" && m.Path == "image:base" })
		if err := h.Do(ctx, instruction("i-rollback-a", tvdv1.Reaction_REACTION_ROLLBACK, "eh-a")); err != nil {
			t.Fatal(err)
		}
		waitEEState(t, h, "eh-a", tvdv1.EEState_EE_STATE_RUNNING)
		if n := rec.count(func(m measurement) bool { return m.EE == "eh-a" && m.Path == "image:base" }); n != images+1 {
			t.Fatalf("image measured %d times after rollback, want %d", n, images+1)
		}
		st, _ := drv.Status(ctx, "eh-a")
		// Rolled back to the image itself: the marker program is gone,
		// and the counter runs again from a fresh start.
		if _, err := os.Stat(filepath.Join(st.Root, "root/true")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("/root/true after rollback to the image: %v, want gone", err)
		}
		first := readCounter(t, st.Root)
		deadline := time.Now().Add(5 * time.Second)
		for readCounter(t, st.Root) == first {
			if time.Now().After(deadline) {
				t.Fatal("counter does not advance after rollback")
			}
			time.Sleep(10 * time.Millisecond)
		}
		pids = append(pids, st.Pid)
	})

	t.Run("RollbackToMarkedSnapshot", func(t *testing.T) {
		if err := drv.Exec(ctx, "eh-b", []string{"sh", "-c", "echo kept > /keep"}, ee.IO{}); err != nil {
			t.Fatal(err)
		}
		if err := h.MarkTrusted(ctx, "eh-b"); err != nil {
			t.Fatal(err)
		}
		if err := drv.Exec(ctx, "eh-b", []string{"sh", "-c", "echo implant > /after; rm /etc/hosts"}, ee.IO{}); err != nil {
			t.Fatal(err)
		}
		began := time.Now()
		if err := h.Do(ctx, instruction("i-rollback-b", tvdv1.Reaction_REACTION_ROLLBACK, "eh-b")); err != nil {
			t.Fatal(err)
		}
		t.Logf("rollback (stop, restore, measure, start) took %v", time.Since(began))
		waitEEState(t, h, "eh-b", tvdv1.EEState_EE_STATE_RUNNING)
		var out bytes.Buffer
		err := drv.Exec(ctx, "eh-b", []string{"sh", "-c", "cat /keep; test -e /after && echo after; test -e /etc/hosts && echo hosts"}, ee.IO{Stdout: &out})
		if err != nil || out.String() != "kept\nhosts\n" {
			t.Fatalf("after rollback: %v %q, want kept and hosts, no implant", err, out.String())
		}
		st, _ := drv.Status(ctx, "eh-b")
		pids = append(pids, st.Pid)
	})

	t.Run("Instructions", func(t *testing.T) {
		if err := h.Do(ctx, instruction("i-q", tvdv1.Reaction_REACTION_QUARANTINE, "eh-a")); err != nil {
			t.Fatalf("quarantine: %v, want nil (the data plane's)", err)
		}
		if err := h.Do(ctx, instruction("i-x", tvdv1.Reaction_REACTION_FREEZE, "nope")); !errors.Is(err, ee.ErrNotFound) {
			t.Fatalf("freeze of an unknown ee: %v, want ErrNotFound", err)
		}
		if err := h.Do(ctx, instruction("i-u", tvdv1.Reaction_REACTION_UNSPECIFIED, "eh-a")); err == nil {
			t.Fatal("an unspecified reaction was accepted")
		}
	})

	t.Run("SetModeEnforces", func(t *testing.T) {
		if err := h.SetMode(ctx, "eh-a", monitor.ModeEnforce); err != nil {
			t.Fatal(err)
		}
		waitEEState(t, h, "eh-a", tvdv1.EEState_EE_STATE_RUNNING)
		prog := append(append([]byte(nil), busybox...), "eehost marker after mode change"...)
		st, _ := drv.Status(ctx, "eh-a")
		if err := os.WriteFile(filepath.Join(st.Root, "tmp/true"), prog, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := drv.Exec(ctx, "eh-a", []string{"/tmp/true"}, ee.IO{}); err == nil || !strings.Contains(err.Error(), "operation not permitted") {
			t.Fatalf("unlisted program after switching to enforce: %v, want EPERM", err)
		}
		rec.waitMeasured(t, "/tmp/true", func(m measurement) bool { return m.EE == "eh-a" && m.Digest == digestOf(prog) })
	})

	lostExecDone := make(chan struct{})
	t.Run("LostMeasurementFreezes", func(t *testing.T) {
		prog := append(append([]byte(nil), busybox...), "eehost unrecorded"...)
		rec.mu.Lock()
		rec.failFor = digestOf(prog)
		rec.mu.Unlock()
		st, _ := drv.Status(ctx, "eh-b")
		if err := os.WriteFile(filepath.Join(st.Root, "root/true"), prog, 0o755); err != nil {
			t.Fatal(err)
		}
		// Denied (unlisted in enforce mode). The EE's supervisor may be
		// frozen before it reports the exit, and then the Exec waits
		// until Close stops the EE.
		go func() {
			defer close(lostExecDone)
			drv.Exec(ctx, "eh-b", []string{"/root/true"}, ee.IO{})
		}()
		s := waitEEState(t, h, "eh-b", tvdv1.EEState_EE_STATE_FAILED)
		if !strings.Contains(s.GetError(), "device gone") {
			t.Fatalf("failed ee error %q, want the measurement error", s.GetError())
		}
		for deadline := time.Now().Add(10 * time.Second); ; {
			if st, _ := drv.Status(ctx, "eh-b"); st.State == ee.StateFrozen {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("ee not frozen after a lost measurement")
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := h.MarkTrusted(ctx, "eh-b"); err == nil {
			t.Fatal("a failed ee was marked trusted")
		}
	})

	// Close leaves no mounts, cgroups or processes.
	layout := drv.Layout()
	closed = true
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-lostExecDone:
	case <-time.After(10 * time.Second):
		t.Error("an exec in a frozen EE did not end with Close")
	}
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Fatalf("mounts left behind: %v", m)
	}
	for c, p := range layout.Controllers {
		if _, err := os.Stat(filepath.Join(p.Dir, parent)); err == nil {
			t.Errorf("cgroup %s left behind for %s", filepath.Join(p.Dir, parent), c)
		}
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("ee process %d still there after Close: %v", pid, err)
		}
	}
	if ents, err := os.ReadDir(filepath.Join(dir, "data", "ees")); err != nil || len(ents) != 0 {
		t.Errorf("ee filesystems left behind: %v %v", ents, err)
	}
	if len(h.Status()) != 2 {
		t.Error("status after close lost the EEs")
	}
}

func TestNewDriverRemovesLeftovers(t *testing.T) {
	if _, err := linux.Probe(); err != nil {
		t.Skipf("linux ee driver unavailable here (needs root, overlayfs, a cgroup freezer): %v", err)
	}
	dir := t.TempDir()
	// What an agent killed mid-run leaves: an EE filesystem with the
	// driver's state bound from it.
	fsDir := filepath.Join(dir, "ees", "eh-dead")
	state := filepath.Join(dir, "ee-state", "eh-dead")
	for _, d := range []string{fsDir, state, filepath.Join(dir, "images", "base")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Mount("tvd-eehost-test", fsDir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(fsDir, syscall.MNT_DETACH) })
	os.Mkdir(filepath.Join(fsDir, "state"), 0o755)
	if err := syscall.Mount(filepath.Join(fsDir, "state"), state, "", syscall.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(state, syscall.MNT_DETACH) })
	d, err := NewDriver(DriverLinux, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.(*linux.Driver).Close(context.Background())
	if m := mountsUnder(t, dir); len(m) > 0 {
		t.Fatalf("mounts left: %v", m)
	}
	if _, err := os.Stat(filepath.Join(dir, "ees")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("ees dir: %v, want removed", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "images", "base")); err != nil {
		t.Fatalf("images removed: %v", err)
	}
	if _, err := NewDriver("kvm", dir, nil); err == nil {
		t.Fatal("unknown driver accepted")
	}
}
