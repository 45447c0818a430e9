package process

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/eetest"
	"github.com/tvd-dev/tvd/ee/image"
)

var (
	baseOnce sync.Once
	baseDir  string
	baseErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if baseDir != "" {
		os.RemoveAll(baseDir)
	}
	os.Exit(code)
}

func baseImage(t testing.TB) string {
	t.Helper()
	baseOnce.Do(func() {
		baseDir, baseErr = os.MkdirTemp("", "tvd-eeprocess-base-")
		if baseErr == nil {
			_, baseErr = image.BuildBase("", filepath.Join(baseDir, "img"))
		}
	})
	if errors.Is(baseErr, image.ErrNoBusybox) {
		t.Skip("static busybox missing: apt-get install busybox-static")
	}
	if baseErr != nil {
		t.Fatal(baseErr)
	}
	return filepath.Join(baseDir, "img")
}

func newDriver(t *testing.T) *Driver {
	t.Helper()
	d, err := New(Config{StateDir: t.TempDir(), StopTimeout: 500 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			t.Errorf("close driver: %v", err)
		}
	})
	return d
}

func TestConformance(t *testing.T) {
	img := baseImage(t)
	eetest.Run(t, func(t *testing.T) eetest.Driver { return newDriver(t) }, img)
}

func TestWeakAndLimits(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	err := d.Create(ctx, ee.Spec{Name: "lim", Image: baseImage(t), Command: []string{"true"}, Limits: ee.Limits{Pids: 10}})
	if err == nil || !strings.Contains(err.Error(), "cannot enforce") {
		t.Fatalf("create with limits: %v, want a refusal", err)
	}
	if err := d.Create(ctx, ee.Spec{Name: "weak", Image: baseImage(t), Command: []string{"sleep", "100"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "weak"); err != nil {
		t.Fatal(err)
	}
	st, err := d.Status(ctx, "weak")
	if err != nil {
		t.Fatal(err)
	}
	if st.Isolation != ee.IsolationWeak || st.NetNS != "" {
		t.Fatalf("status %+v: want weak isolation and no netns", st)
	}
}

func TestRecover(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	if err := d.Create(ctx, ee.Spec{Name: "rec", Image: baseImage(t), Command: []string{"sh", "-c", "echo run >> runs"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "rec"); err != nil {
		t.Fatal(err)
	}
	d2, err := New(Config{StateDir: d.cfg.StateDir, Logger: d.log})
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close(ctx)
	st, err := d2.Status(ctx, "rec")
	if err != nil || st.State != ee.StateStopped {
		t.Fatalf("recovered ee: %+v %v, want stopped", st, err)
	}
}
