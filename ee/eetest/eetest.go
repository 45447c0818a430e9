// Package eetest is the behavioural suite every ee.Driver must pass: the
// life cycle, exit codes, Exec, freeze and thaw, and snapshot rollback.
// Driver packages run it against their real driver; it does not check
// isolation, which differs by driver and is tested in each driver's own
// package.
package eetest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ee"
)

// Driver is what the suite needs: the life cycle and snapshots.
type Driver interface {
	ee.Driver
	ee.Snapshotter
}

// Run runs the suite. newDriver returns a fresh driver whose EEs are
// cleaned up when the test ends; image is a base image directory (built by
// image.BuildBase). Commands use paths relative to the EE's working
// directory, which is its root for every driver.
func Run(t *testing.T, newDriver func(t *testing.T) Driver, image string) {
	t.Run("Lifecycle", func(t *testing.T) { testLifecycle(t, newDriver(t), image) })
	t.Run("Exec", func(t *testing.T) { testExec(t, newDriver(t), image) })
	t.Run("Freeze", func(t *testing.T) { testFreeze(t, newDriver(t), image) })
	t.Run("Rollback", func(t *testing.T) { testRollback(t, newDriver(t), image) })
}

func waitState(t *testing.T, d ee.Driver, name string, want ee.State) ee.Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := d.Status(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("ee %s is %s, want %s", name, st.State, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func waitFile(t *testing.T, d ee.Driver, name, rel string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := d.Status(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if b, err := os.ReadFile(filepath.Join(st.Root, rel)); err == nil && len(b) > 0 {
			return string(b)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never appeared in ee %s", rel, name)
	return ""
}

func testLifecycle(t *testing.T, d Driver, image string) {
	ctx := context.Background()
	if _, err := d.Status(ctx, "nope"); !errors.Is(err, ee.ErrNotFound) {
		t.Fatalf("status of unknown ee: %v, want ErrNotFound", err)
	}
	spec := ee.Spec{Name: "life", Image: image, Command: []string{"sh", "-c", "echo started; exec sleep 1000"}}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, spec); !errors.Is(err, ee.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	if st := waitState(t, d, "life", ee.StateCreated); st.Pid != 0 || st.ExitCode != -1 {
		t.Fatalf("created ee: pid %d exit %d, want 0 and -1", st.Pid, st.ExitCode)
	}
	if err := d.Freeze(ctx, "life"); !errors.Is(err, ee.ErrState) {
		t.Fatalf("freeze of a created ee: %v, want ErrState", err)
	}
	if err := d.Start(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, d, "life", ee.StateRunning)
	if st.Pid == 0 || st.Isolation == "" || st.StartedAt.IsZero() {
		t.Fatalf("running ee status %+v: want pid, isolation and start time", st)
	}
	if err := d.Start(ctx, "life"); !errors.Is(err, ee.ErrState) {
		t.Fatalf("start of a running ee: %v, want ErrState", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if b, _ := os.ReadFile(st.LogPath); strings.Contains(string(b), "started") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("workload output never reached the log %s", st.LogPath)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := d.Stop(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, d, "life", ee.StateStopped)
	if st.Pid != 0 {
		t.Fatalf("stopped ee has pid %d", st.Pid)
	}
	if err := d.Stop(ctx, "life"); err != nil {
		t.Fatalf("stop of a stopped ee: %v", err)
	}
	// Restartable, and the exit status of a workload that ends is kept.
	code := ee.Spec{Name: "code", Image: image, Command: []string{"sh", "-c", "exit 7"}}
	if err := d.Create(ctx, code); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := d.Start(ctx, "code"); err != nil {
			t.Fatal(err)
		}
		if st := waitState(t, d, "code", ee.StateStopped); st.ExitCode != 7 {
			t.Fatalf("exit code %d, want 7", st.ExitCode)
		}
	}
	for _, name := range []string{"life", "code"} {
		if err := d.Destroy(ctx, name); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Status(ctx, name); !errors.Is(err, ee.ErrNotFound) {
			t.Fatalf("status after destroy: %v, want ErrNotFound", err)
		}
	}
	if err := d.Create(ctx, ee.Spec{Name: "Bad Name", Image: image, Command: []string{"true"}}); err == nil {
		t.Fatal("create with an invalid name succeeded")
	}
}

func testExec(t *testing.T, d Driver, image string) {
	ctx := context.Background()
	if err := d.Create(ctx, ee.Spec{Name: "exec", Image: image, Env: []string{"GREETING=hello"},
		Command: []string{"sh", "-c", "echo state > state.txt; exec sleep 1000"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Exec(ctx, "exec", []string{"true"}, ee.IO{}); !errors.Is(err, ee.ErrState) {
		t.Fatalf("exec in a created ee: %v, want ErrState", err)
	}
	if err := d.Start(ctx, "exec"); err != nil {
		t.Fatal(err)
	}
	waitFile(t, d, "exec", "state.txt")
	var out, errOut bytes.Buffer
	err := d.Exec(ctx, "exec", []string{"sh", "-c", "cat state.txt; echo $GREETING; read x; echo got $x; echo oops >&2; exit 3"},
		ee.IO{Stdin: strings.NewReader("input\n"), Stdout: &out, Stderr: &errOut})
	var xe *ee.ExitError
	if !errors.As(err, &xe) || xe.Code != 3 {
		t.Fatalf("exec: %v, want exit status 3", err)
	}
	if out.String() != "state\nhello\ngot input\n" || errOut.String() != "oops\n" {
		t.Fatalf("exec stdout %q stderr %q", out.String(), errOut.String())
	}
	// A command that outlives its context is killed.
	cctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := d.Exec(cctx, "exec", []string{"sleep", "30"}, ee.IO{}); err == nil {
		t.Fatal("exec past its deadline succeeded")
	}
	if time.Since(start) > 10*time.Second {
		t.Fatal("exec did not end with its context")
	}
	if err := d.Exec(ctx, "exec", []string{"no-such-program-here"}, ee.IO{}); err == nil {
		t.Fatal("exec of a missing program succeeded")
	}
}

func readCounter(t *testing.T, root string) int {
	t.Helper()
	for range 100 {
		b, err := os.ReadFile(filepath.Join(root, "counter"))
		if err != nil {
			t.Fatal(err)
		}
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
			return n
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatal("counter file never whole")
	return 0
}

func testFreeze(t *testing.T, d Driver, image string) {
	ctx := context.Background()
	if err := d.Create(ctx, ee.Spec{Name: "frz", Image: image, Command: []string{"sh", "-c",
		"i=0; while :; do i=$((i+1)); echo $i > counter.tmp; mv counter.tmp counter; usleep 2000; done"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "frz"); err != nil {
		t.Fatal(err)
	}
	waitFile(t, d, "frz", "counter")
	st, _ := d.Status(ctx, "frz")
	if err := d.Freeze(ctx, "frz"); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "frz", ee.StateFrozen)
	a := readCounter(t, st.Root)
	time.Sleep(300 * time.Millisecond)
	if b := readCounter(t, st.Root); a != b {
		t.Fatalf("counter moved from %d to %d while frozen", a, b)
	}
	if err := d.Thaw(ctx, "frz"); err != nil {
		t.Fatal(err)
	}
	waitState(t, d, "frz", ee.StateRunning)
	deadline := time.Now().Add(5 * time.Second)
	for readCounter(t, st.Root) == a {
		if time.Now().After(deadline) {
			t.Fatal("counter did not advance after thaw")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := d.Freeze(ctx, "frz"); err != nil {
		t.Fatal(err)
	}
	if err := d.Stop(ctx, "frz"); err != nil {
		t.Fatalf("stop of a frozen ee: %v", err)
	}
	waitState(t, d, "frz", ee.StateStopped)
}

func testRollback(t *testing.T, d Driver, image string) {
	ctx := context.Background()
	if err := d.Create(ctx, ee.Spec{Name: "rb", Image: image,
		Command: []string{"sh", "-c", "[ -e data ] || echo one > data; exec sleep 1000"}}); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "rb"); err != nil {
		t.Fatal(err)
	}
	waitFile(t, d, "rb", "data")
	good, err := d.Snapshot(ctx, "rb", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(good.Digest, "sha256:") || good.Size == 0 {
		t.Fatalf("snapshot %+v", good)
	}
	waitState(t, d, "rb", ee.StateRunning)
	if err := d.Exec(ctx, "rb", []string{"sh", "-c", "echo two > data; echo x > implant; rm etc/passwd"}, ee.IO{}); err != nil {
		t.Fatal(err)
	}
	if err := d.Restore(ctx, "rb", good); !errors.Is(err, ee.ErrState) {
		t.Fatalf("restore while running: %v, want ErrState", err)
	}
	if err := d.Stop(ctx, "rb"); err != nil {
		t.Fatal(err)
	}
	if err := d.Restore(ctx, "rb", ee.Snapshot{Digest: "sha256:" + strings.Repeat("0", 64), Path: good.Path}); err == nil {
		t.Fatal("restore with the wrong digest succeeded")
	}
	if err := d.Restore(ctx, "rb", good); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "rb"); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := d.Exec(ctx, "rb", []string{"sh", "-c", "cat data; test -e implant && echo implant; test -e etc/passwd && echo passwd"}, ee.IO{Stdout: &out}); err != nil {
		t.Fatal(err)
	}
	if out.String() != "one\npasswd\n" {
		t.Fatalf("after rollback: %q, want data restored, no implant, passwd back", out.String())
	}
	again, err := d.Snapshot(ctx, "rb", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != good.Digest {
		t.Fatalf("snapshot after rollback %s, want %s", again.Digest, good.Digest)
	}
}
