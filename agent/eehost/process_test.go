//go:build linux

package eehost

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/agent"
	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
	"github.com/tvd-dev/tvd/ee/process"
)

// TestProcessHost runs the host on the weak driver, without root: the
// image is measured, execs are not (no monitor), and freeze and rollback
// work as with the linux driver.
func TestProcessHost(t *testing.T) {
	needBusybox(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	drv, err := NewDriver(DriverProcess, filepath.Join(dir, "data"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	h, err := New(Config{Driver: drv, DataDir: filepath.Join(dir, "data"), Measure: rec.measure,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			h.Close()
		}
	})
	if err := h.Start(ctx, []agent.EEConfig{{Name: "eh-p", Domain: "red", Role: "web"}}); err != nil {
		t.Fatal(err)
	}
	s := waitEEState(t, h, "eh-p", tvdv1.EEState_EE_STATE_RUNNING)
	base, err := image.Open(filepath.Join(dir, "data", "images", BaseImage))
	if err != nil {
		t.Fatal(err)
	}
	if s.GetImageDigest() != base.Digest {
		t.Fatalf("image digest %s, want %s", s.GetImageDigest(), base.Digest)
	}
	d, _ := parseDigest(base.Digest)
	rec.waitMeasured(t, "image", func(m measurement) bool { return m.EE == "eh-p" && m.Path == "image:base" && m.Digest == d })
	if _, ok := h.NetNS("eh-p"); ok {
		t.Fatal("the process driver reported a network namespace")
	}
	st, err := drv.Status(ctx, "eh-p")
	if err != nil {
		t.Fatal(err)
	}
	pids := []int{st.Pid}

	if err := os.WriteFile(filepath.Join(st.Root, "kept"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := h.MarkTrusted(ctx, "eh-p"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(st.Root, "implant"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := h.Do(ctx, instruction("p-freeze", tvdv1.Reaction_REACTION_FREEZE, "eh-p")); err != nil {
		t.Fatal(err)
	}
	waitEEState(t, h, "eh-p", tvdv1.EEState_EE_STATE_FROZEN)
	if err := h.Do(ctx, instruction("p-rollback", tvdv1.Reaction_REACTION_ROLLBACK, "eh-p")); err != nil {
		t.Fatal(err)
	}
	waitEEState(t, h, "eh-p", tvdv1.EEState_EE_STATE_RUNNING)
	if _, err := os.Stat(filepath.Join(st.Root, "implant")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("implant after rollback: %v, want gone", err)
	}
	if b, err := os.ReadFile(filepath.Join(st.Root, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("file of the trusted snapshot after rollback: %q %v", b, err)
	}
	if n := rec.count(func(m measurement) bool { return m.Path == "image:base" }); n != 2 {
		t.Fatalf("image measured %d times, want 2 (start and rollback)", n)
	}
	if err := drv.Exec(ctx, "eh-p", []string{"true"}, ee.IO{}); err != nil {
		t.Fatalf("exec after rollback: %v", err)
	}
	if n := rec.count(func(m measurement) bool { return !strings.HasPrefix(m.Path, "image:") }); n != 0 {
		t.Fatalf("%d exec measurements without a monitor", n)
	}
	st, _ = drv.Status(ctx, "eh-p")
	pids = append(pids, st.Pid)

	closed = true
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("ee process %d still there after Close: %v", pid, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "ee-state", "eh-p")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("ee state left behind: %v", err)
	}
	if err := h.Do(ctx, instruction("p-late", tvdv1.Reaction_REACTION_FREEZE, "eh-p")); err == nil {
		t.Error("Do after Close succeeded")
	}
}

func TestResolveImage(t *testing.T) {
	needBusybox(t)
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	m, err := image.BuildBase("", filepath.Join(images, "web"))
	if err != nil {
		t.Fatal(err)
	}
	drv, err := process.New(process.Config{StateDir: filepath.Join(dir, "state")})
	if err != nil {
		t.Fatal(err)
	}
	h, err := New(Config{Driver: drv, DataDir: filepath.Join(dir, "data"), Images: images,
		Measure: func(string, string, [32]byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, ref := range []string{"web", m.Digest(), filepath.Join(images, "web")} {
		d, dg, err := h.ResolveImage(ref)
		if err != nil {
			t.Fatalf("resolve %q: %v", ref, err)
		}
		if d != filepath.Join(images, "web") || dg != m.Digest() {
			t.Fatalf("resolve %q: %s %s, want the web image %s", ref, d, dg, m.Digest())
		}
	}
	if _, dg, err := h.ResolveImage(""); err != nil || dg != m.Digest() {
		// The base image is built from the same busybox: same tree, same digest.
		t.Fatalf("resolve base: %s %v, want %s", dg, err, m.Digest())
	}
	// A tampered image is refused.
	if err := os.WriteFile(filepath.Join(images, "web", image.RootFSDir, "etc", "hosts"), []byte("evil"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := h.ResolveImage("web"); err == nil {
		t.Fatal("a tampered image was resolved")
	}
	for _, bad := range []string{"Web", "../web", "relative/web", "sha256:abc", "sha256:" + strings.Repeat("A", 64), "/a/../b", "missing"} {
		if _, _, err := h.ResolveImage(bad); err == nil {
			t.Errorf("resolve %q succeeded", bad)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	drv, err := process.New(process.Config{StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	measure := func(string, string, [32]byte) error { return nil }
	for name, c := range map[string]Config{
		"no driver":      {DataDir: "/x", Measure: measure},
		"no measure":     {Driver: drv, DataDir: "/x"},
		"relative data":  {Driver: drv, DataDir: "x", Measure: measure},
		"comma in data":  {Driver: drv, DataDir: "/x,y", Measure: measure},
		"relative image": {Driver: drv, DataDir: "/x", Images: "img", Measure: measure},
		"tiny fs":        {Driver: drv, DataDir: "/x", Measure: measure, FSBytes: 1024},
	} {
		if err := c.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParseImageRef(f *testing.F) {
	for _, s := range []string{"", "base", "sha256:" + strings.Repeat("ab", 32), "/srv/images/web", "../x", "sha256:", "a/b", "Web"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kind, err := parseImageRef(s)
		if err != nil {
			return
		}
		switch kind {
		case refDigest:
			d, err := parseDigest(s)
			if err != nil {
				t.Fatalf("%q classified as a digest but does not parse: %v", s, err)
			}
			if got := "sha256:" + hexString(d); got != s {
				t.Fatalf("digest %q round-trips to %q", s, got)
			}
		case refPath:
			if !filepath.IsAbs(s) || filepath.Clean(s) != s {
				t.Fatalf("path %q accepted but not clean and absolute", s)
			}
		case refName:
			if strings.ContainsAny(s, "/:") {
				t.Fatalf("name %q holds a separator", s)
			}
		case refBase:
			if s != "" {
				t.Fatalf("%q taken for the base image", s)
			}
		}
	})
}
