package linux

import (
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
	"sync"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/eetest"
	"github.com/tvd-dev/tvd/ee/image"
)

func TestMain(m *testing.M) {
	Init()
	code := m.Run()
	if baseDir != "" {
		os.RemoveAll(baseDir)
	}
	os.Exit(code)
}

var (
	baseOnce sync.Once
	baseDir  string
	baseErr  error
)

// baseImage builds the busybox base image once per test binary.
func baseImage(t testing.TB) string {
	t.Helper()
	baseOnce.Do(func() {
		baseDir, baseErr = os.MkdirTemp("", "tvd-eelinux-base-")
		if baseErr != nil {
			return
		}
		_, baseErr = image.BuildBase("", filepath.Join(baseDir, "img"))
	})
	if errors.Is(baseErr, image.ErrNoBusybox) {
		t.Skip("static busybox missing: apt-get install busybox-static")
	}
	if baseErr != nil {
		t.Fatal(baseErr)
	}
	return filepath.Join(baseDir, "img")
}

var parentSeq int

// newDriver returns a driver with a unique cgroup parent, stopped and
// cleaned up (cgroups, netns mounts, processes) when the test ends.
func newDriver(t testing.TB) *Driver { return newDriverWith(t, func(*Config) {}) }

func newDriverWith(t testing.TB, edit func(*Config)) *Driver {
	t.Helper()
	if _, err := Probe(); err != nil {
		t.Skipf("linux ee driver unavailable here: %v", err)
	}
	parentSeq++
	cfg := Config{
		StateDir:     t.TempDir(),
		CgroupParent: fmt.Sprintf("tvd-eetest-%d-%d", os.Getpid(), parentSeq),
		NetNSDir:     t.TempDir(),
		StopTimeout:  500 * time.Millisecond,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	edit(&cfg)
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := d.Close(ctx); err != nil {
			t.Errorf("close driver: %v", err)
		}
		for c, p := range d.layout.Controllers {
			dir := filepath.Join(p.Dir, d.cfg.CgroupParent)
			if _, err := os.Stat(dir); err == nil {
				t.Errorf("cgroup %s left behind for %s", dir, c)
			}
		}
	})
	return d
}

func startEE(t testing.TB, d *Driver, spec ee.Spec) {
	t.Helper()
	ctx := context.Background()
	if spec.Image == "" {
		spec.Image = baseImage(t)
	}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, spec.Name); err != nil {
		t.Fatal(err)
	}
}

func execOut(t testing.TB, d *Driver, name string, cmd ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := d.Exec(ctx, name, cmd, ee.IO{Stdout: &out, Stderr: &out})
	return out.String(), err
}

func mustExec(t testing.TB, d *Driver, name string, cmd ...string) string {
	t.Helper()
	out, err := execOut(t, d, name, cmd...)
	if err != nil {
		t.Fatalf("exec %v in %s: %v\n%s", cmd, name, err, out)
	}
	return out
}

// waitFile waits until the file at p exists in the EE and returns it.
func waitFile(t testing.TB, d *Driver, name, p string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		st, err := d.Status(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		if st.Root != "" {
			if b, err := os.ReadFile(filepath.Join(st.Root, p)); err == nil && len(b) > 0 {
				return string(b)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never appeared in ee %s", p, name)
	return ""
}

func TestIsolation(t *testing.T) {
	d := newDriver(t)
	if !d.userns {
		t.Log("host does not allow user namespaces: testing without")
	}
	testIsolation(t, d)
}

func TestIsolationWithoutUserNS(t *testing.T) {
	testIsolation(t, newDriverWith(t, func(c *Config) { c.NoUserNS = true }))
}

func testIsolation(t *testing.T, d *Driver) {
	startEE(t, d, ee.Spec{Name: "iso-a", Command: []string{"sh", "-c", "echo a > /secret-a; cat /proc/self/status > /status; exec sleep 1000"}})
	startEE(t, d, ee.Spec{Name: "iso-b", Command: []string{"sh", "-c", "echo b > /secret-b; exec sleep 1000"}})
	waitFile(t, d, "iso-a", "secret-a")
	waitFile(t, d, "iso-b", "secret-b")
	stB, _ := d.Status(context.Background(), "iso-b")

	t.Run("processes", func(t *testing.T) {
		out := mustExec(t, d, "iso-a", "ps", "-o", "pid,comm")
		var pids []string
		for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
			pids = append(pids, strings.Fields(line)[0])
		}
		// pid 1 (the supervisor), the workload's sleep, and ps itself.
		if len(pids) != 3 || pids[0] != "1" {
			t.Fatalf("ps inside the ee shows %v, want exactly the supervisor, the workload and ps:\n%s", pids, out)
		}
		if strings.Contains(out, "go") || strings.Contains(out, ".test") {
			t.Fatalf("host processes visible:\n%s", out)
		}
		if out, err := execOut(t, d, "iso-a", "cat", fmt.Sprintf("/proc/%d/status", os.Getpid())); err == nil && strings.Contains(out, "linux.test") {
			t.Fatalf("host test process visible through /proc:\n%s", out)
		}
	})
	t.Run("files", func(t *testing.T) {
		hostFile := filepath.Join(t.TempDir(), "host-secret")
		if err := os.WriteFile(hostFile, []byte("host"), 0o644); err != nil {
			t.Fatal(err)
		}
		exe, _ := os.Executable()
		for _, p := range []string{hostFile, exe, "/secret-b", filepath.Join(d.cfg.StateDir, "iso-b", "upper", "secret-b"), "/etc/shadow", "/usr/bin/nsenter"} {
			if out, err := execOut(t, d, "iso-a", "cat", p); err == nil {
				t.Errorf("ee iso-a can read %s:\n%.100s", p, out)
			}
		}
		if out := mustExec(t, d, "iso-a", "find", "/", "-xdev", "-name", "secret-*"); strings.TrimSpace(out) != "/secret-a" {
			t.Errorf("files named secret-* inside iso-a: %q, want only /secret-a", out)
		}
		ls := strings.Fields(mustExec(t, d, "iso-a", "ls", "/"))
		for _, name := range ls {
			switch name {
			case "bin", "dev", "etc", "proc", "root", "sys", "tmp", "var", "secret-a", "status":
			default:
				t.Errorf("unexpected %q at the ee's root: %v", name, ls)
			}
		}
		// Another EE's processes are not there either.
		if _, err := execOut(t, d, "iso-a", "cat", fmt.Sprintf("/proc/%d/root/secret-b", stB.Pid)); err == nil {
			t.Error("iso-a reached iso-b through /proc")
		}
	})
	t.Run("capabilities", func(t *testing.T) {
		check := func(what, status string) {
			t.Helper()
			fields := map[string]string{}
			for _, line := range strings.Split(status, "\n") {
				if k, v, ok := strings.Cut(line, ":"); ok {
					fields[k] = strings.TrimSpace(v)
				}
			}
			for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
				if fields[k] != "0000000000000000" {
					t.Errorf("%s: %s = %q, want all zero", what, k, fields[k])
				}
			}
			if fields["NoNewPrivs"] != "1" {
				t.Errorf("%s: NoNewPrivs = %q, want 1", what, fields["NoNewPrivs"])
			}
		}
		check("workload", waitFile(t, d, "iso-a", "status"))
		if !cgoBinary {
			// Without cgo the supervisor drops capabilities on every thread.
			st, _ := d.Status(context.Background(), "iso-a")
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", st.Pid))
			if err != nil {
				t.Fatal(err)
			}
			check("supervisor", string(b))
		}
		check("exec", mustExec(t, d, "iso-a", "cat", "/proc/self/status"))
		// A setuid-root binary gains nothing.
		check("setuid binary", mustExec(t, d, "iso-a", "sh", "-c", "mkdir /tmp/s && cp /bin/busybox /tmp/s/busybox && chmod 4755 /tmp/s/busybox && /tmp/s/busybox cat /proc/self/status"))
		for _, cmd := range [][]string{
			{"mount", "-t", "tmpfs", "x", "/tmp"},
			{"hostname", "evil"},
			{"mknod", "/tmp/mem", "c", "1", "1"},
			{"ip", "link", "add", "evil0", "type", "dummy"},
			{"chroot", "/", "true"},
			{"sh", "-c", "echo 1 > /proc/sys/kernel/sysrq"},
			{"sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward"},
		} {
			if out, err := execOut(t, d, "iso-a", cmd...); err == nil {
				t.Errorf("privileged %v succeeded inside the ee:\n%s", cmd, out)
			}
		}
	})
	t.Run("namespaces", func(t *testing.T) {
		if h := strings.TrimSpace(mustExec(t, d, "iso-a", "hostname")); h != "iso-a" {
			t.Errorf("hostname %q, want iso-a", h)
		}
		out := mustExec(t, d, "iso-a", "ip", "-o", "link")
		if strings.Count(out, "\n") != 1 || !strings.Contains(out, "lo:") || !strings.Contains(out, "UP") {
			t.Errorf("network links inside the ee:\n%s\nwant only loopback, up", out)
		}
		st, _ := d.Status(context.Background(), "iso-a")
		if _, err := os.Stat(st.NetNS); err != nil || filepath.Dir(st.NetNS) != d.cfg.NetNSDir {
			t.Errorf("netns %q: %v", st.NetNS, err)
		}
		for _, ns := range []string{"net", "mnt", "pid", "uts", "ipc", "user"} {
			host, _ := os.Readlink("/proc/self/ns/" + ns)
			inside, _ := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", st.Pid, ns))
			if shared := host == inside; shared != (ns == "user" && !d.userns) {
				t.Errorf("%s namespace shared with the host: %v, user namespaces on: %v", ns, shared, d.userns)
			}
		}
		if st.UserNS != d.userns {
			t.Errorf("status says userns %v, driver %v", st.UserNS, d.userns)
		}
	})
}

func TestPidsLimitStopsForkBomb(t *testing.T) {
	d := newDriver(t)
	// The limit counts every task of the EE, the supervisor's threads too.
	const limit = 48
	startEE(t, d, ee.Spec{Name: "bomb", Limits: ee.Limits{Pids: limit}, Command: []string{"tail", "-f", "/dev/null"}})
	out, err := execOut(t, d, "bomb", "sh", "-c", `i=0; while [ $i -lt 500 ]; do sleep 1000 & i=$((i+1)); done`)
	if err == nil || !strings.Contains(out, "can't fork") {
		t.Fatalf("fork bomb: %v, want the shell to hit the limit; output:\n%s", err, out)
	}
	st, err := d.Status(context.Background(), "bomb")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != ee.StateRunning {
		t.Fatalf("ee %s after the fork bomb, want running", st.State)
	}
	// "can't fork" above shows the bomb reached the limit; by now the
	// Exec'd shell has ended and its children may be reaped with it, so
	// only the upper bound is a fact to check.
	if st.Usage.Pids > limit {
		t.Fatalf("%d tasks in the ee, want the bomb held at <= %d", st.Usage.Pids, limit)
	}
	t.Logf("fork bomb held at %d tasks (limit %d, pids cgroup %s)", st.Usage.Pids, limit, st.Cgroups["pids"])
	// The agent keeps control: Stop ends every task of the bomb.
	if err := d.Stop(context.Background(), "bomb"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(st.Cgroups["pids"]); !os.IsNotExist(err) {
		t.Fatalf("pids cgroup %s still there after stop: %v", st.Cgroups["pids"], err)
	}
}

func TestMemoryLimit(t *testing.T) {
	d := newDriver(t)
	startEE(t, d, ee.Spec{Name: "mem", Limits: ee.Limits{MemoryBytes: 32 << 20}, Command: []string{"sleep", "1000"}})
	// 8 MiB fits; 64 MiB does not and is killed by the cgroup's OOM killer.
	mustExec(t, d, "mem", "dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=1")
	_, err := execOut(t, d, "mem", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
	var xe *ee.ExitError
	if !errors.As(err, &xe) || xe.Code != 128+9 {
		t.Fatalf("64 MiB allocation under a 32 MiB limit: %v, want killed by SIGKILL (exit 137)", err)
	}
	// The EE itself survives its command being killed.
	if st, _ := d.Status(context.Background(), "mem"); st.State != ee.StateRunning {
		t.Fatalf("ee state %s after the OOM kill, want running", st.State)
	}
}

func TestCPULimit(t *testing.T) {
	d := newDriver(t)
	startEE(t, d, ee.Spec{Name: "cpu", Limits: ee.Limits{CPUMillis: 100}, Command: []string{"sh", "-c", "while :; do :; done"}})
	ctx := context.Background()
	s1, _ := d.Status(ctx, "cpu")
	t0 := time.Now()
	time.Sleep(time.Second)
	s2, _ := d.Status(ctx, "cpu")
	wall := time.Since(t0)
	used := time.Duration(s2.Usage.CPUNanos - s1.Usage.CPUNanos)
	// 100 millicores is a tenth of a CPU; allow scheduling slack.
	if used > wall*3/10 {
		t.Fatalf("busy loop used %v of CPU in %v under a 0.1 CPU limit", used, wall)
	}
	if used <= 0 {
		t.Fatalf("no CPU use metered (%v)", used)
	}
	t.Logf("busy loop under 100 millicores: %v CPU in %v", used, wall)
}

func readCounter(t *testing.T, root string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, "counter"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		// Caught mid-write; the next read is whole.
		time.Sleep(5 * time.Millisecond)
		return readCounter(t, root)
	}
	return n
}

func TestFreeze(t *testing.T) {
	l, err := DetectCgroups()
	if err != nil {
		t.Fatal(err)
	}
	variants := map[string]Placement{}
	if p, ok := l.Controllers["freezer"]; ok {
		variants[fmt.Sprintf("v%d", p.Version)] = p
	}
	// On hybrid hosts also exercise the v1 freezer.
	mounts, _ := readCgroupMounts("/proc/self/mountinfo")
	paths, _ := readSelfCgroups("/proc/self/cgroup")
	for _, m := range mounts {
		if !m.v2 && len(m.controllers) == 1 && m.controllers[0] == "freezer" {
			variants["v1"] = Placement{Version: 1, Dir: joinCgroup(m.point, m.root, paths["freezer"])}
		}
	}
	for name, p := range variants {
		t.Run(name, func(t *testing.T) {
			d := newDriver(t)
			d.layout.Controllers["freezer"] = p
			ctx := context.Background()
			startEE(t, d, ee.Spec{Name: "frz", Command: []string{"sh", "-c",
				"i=0; while :; do i=$((i+1)); echo $i > /counter.tmp; mv /counter.tmp /counter; usleep 2000; done"}})
			st, _ := d.Status(ctx, "frz")
			waitFile(t, d, "frz", "counter")
			if err := d.Freeze(ctx, "frz"); err != nil {
				t.Fatal(err)
			}
			if st, _ := d.Status(ctx, "frz"); st.State != ee.StateFrozen {
				t.Fatalf("state %s, want frozen", st.State)
			}
			a := readCounter(t, st.Root)
			time.Sleep(300 * time.Millisecond)
			b := readCounter(t, st.Root)
			if a != b {
				t.Fatalf("counter moved from %d to %d while frozen", a, b)
			}
			if err := d.Exec(ctx, "frz", []string{"true"}, ee.IO{}); !errors.Is(err, ee.ErrState) {
				t.Fatalf("exec in a frozen ee: %v, want ErrState", err)
			}
			if err := d.Thaw(ctx, "frz"); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for readCounter(t, st.Root) == b {
				if time.Now().After(deadline) {
					t.Fatal("counter did not advance after thaw")
				}
				time.Sleep(10 * time.Millisecond)
			}
			// A frozen EE can be stopped.
			if err := d.Freeze(ctx, "frz"); err != nil {
				t.Fatal(err)
			}
			if err := d.Stop(ctx, "frz"); err != nil {
				t.Fatal(err)
			}
			if st, _ := d.Status(ctx, "frz"); st.State != ee.StateStopped {
				t.Fatalf("state %s after stop, want stopped", st.State)
			}
		})
	}
}

func TestSnapshotRollback(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	startEE(t, d, ee.Spec{Name: "snap", Command: []string{"sh", "-c", "[ -e /data ] || echo one > /data; exec sleep 1000"}})
	waitFile(t, d, "snap", "data")
	mustExec(t, d, "snap", "sh", "-c", "mkdir -p /etc/app && echo cfg > /etc/app/conf && rm /etc/hosts && ln -s /data /etc/app/link")
	snaps := t.TempDir()
	good, err := d.Snapshot(ctx, "snap", snaps)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := d.Status(ctx, "snap"); st.State != ee.StateRunning {
		t.Fatalf("state %s after snapshot, want running (thawed)", st.State)
	}
	// The compromise: changed data, an implant, a removed directory.
	mustExec(t, d, "snap", "sh", "-c", "echo two > /data && rm -r /etc/app && echo evil > /bin/implant && chmod 755 /bin/implant")
	if err := d.Restore(ctx, "snap", good); !errors.Is(err, ee.ErrState) {
		t.Fatalf("restore while running: %v, want ErrState", err)
	}
	// Rollback: stop, restore, start.
	if err := d.Stop(ctx, "snap"); err != nil {
		t.Fatal(err)
	}
	// A tampered archive is refused and changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.tar")
	b, _ := os.ReadFile(good.Path)
	b[bytes.Index(b, []byte("cfg\n"))] = 'X'
	os.WriteFile(bad, b, 0o600)
	var de *image.DigestError
	if err := d.Restore(ctx, "snap", ee.Snapshot{Digest: good.Digest, Path: bad}); !errors.As(err, &de) {
		t.Fatalf("restore of a tampered archive: %v, want *image.DigestError", err)
	}
	upper, _ := d.UpperDir("snap")
	if got, _ := os.ReadFile(filepath.Join(upper, "data")); string(got) != "two\n" {
		t.Fatalf("refused restore changed the state: /data = %q", got)
	}
	if err := d.Restore(ctx, "snap", good); err != nil {
		t.Fatal(err)
	}
	if got, err := image.TreeDigest(upper); err != nil || got != good.Digest {
		t.Fatalf("restored layer digest %s (%v), want %s", got, err, good.Digest)
	}
	if err := d.Start(ctx, "snap"); err != nil {
		t.Fatal(err)
	}
	if out := mustExec(t, d, "snap", "cat", "/data", "/etc/app/conf", "/etc/app/link"); out != "one\ncfg\none\n" {
		t.Fatalf("after rollback: %q", out)
	}
	for _, p := range []string{"/bin/implant", "/etc/hosts"} {
		if _, err := execOut(t, d, "snap", "test", "-e", p); err == nil {
			t.Errorf("%s exists after rollback", p)
		}
	}
	again, err := d.Snapshot(ctx, "snap", snaps)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != good.Digest {
		t.Fatalf("snapshot after rollback %s, want %s", again.Digest, good.Digest)
	}
}

func TestLifecycleErrors(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	if err := d.Start(ctx, "nope"); !errors.Is(err, ee.ErrNotFound) {
		t.Fatalf("start of unknown ee: %v", err)
	}
	spec := ee.Spec{Name: "life", Image: baseImage(t), Command: []string{"sh", "-c", "exit 3"}}
	if err := d.Create(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := d.Create(ctx, spec); !errors.Is(err, ee.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if err := d.Freeze(ctx, "life"); !errors.Is(err, ee.ErrState) {
		t.Fatalf("freeze of a created ee: %v", err)
	}
	if err := d.Start(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, _ := d.Status(ctx, "life")
		if st.State == ee.StateStopped {
			if st.ExitCode != 3 {
				t.Fatalf("exit code %d, want 3", st.ExitCode)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("workload exit not noticed")
		}
		time.Sleep(10 * time.Millisecond)
	}
	bad := ee.Spec{Name: "missing", Image: baseImage(t), Command: []string{"/no/such/program"}}
	if err := d.Create(ctx, bad); err != nil {
		t.Fatal(err)
	}
	if err := d.Start(ctx, "missing"); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Fatalf("start of a missing program: %v", err)
	}
	if err := d.Destroy(ctx, "life"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(d.cfg.StateDir, "life")); !os.IsNotExist(err) {
		t.Fatalf("state dir left after destroy: %v", err)
	}
}

func TestConformance(t *testing.T) {
	img := baseImage(t)
	eetest.Run(t, func(t *testing.T) eetest.Driver { return newDriver(t) }, img)
}

func TestConformanceWithoutUserNS(t *testing.T) {
	img := baseImage(t)
	eetest.Run(t, func(t *testing.T) eetest.Driver {
		return newDriverWith(t, func(c *Config) { c.NoUserNS = true })
	}, img)
}

// TestRecover checks that a new driver on the state directory of an
// earlier one (an agent restart) finds the EE stopped and can run it again
// with its writable state.
func TestRecover(t *testing.T) {
	d := newDriver(t)
	ctx := context.Background()
	startEE(t, d, ee.Spec{Name: "rec", Command: []string{"sh", "-c", "echo $$ >> runs; exec sleep 1000"}})
	waitFile(t, d, "rec", "runs")
	d2 := newDriverWith(t, func(c *Config) {
		c.StateDir = d.cfg.StateDir
		c.NetNSDir = d.cfg.NetNSDir
		c.CgroupParent = d.cfg.CgroupParent
	})
	// End the first driver's EE as the death of its agent would
	// (Pdeathsig kills the supervisor).
	in, _ := d.get("rec")
	in.mu.Lock()
	r := in.run
	in.mu.Unlock()
	r.cmd.Process.Kill()
	<-r.done
	st2, err := d2.Status(ctx, "rec")
	if err != nil {
		t.Fatal(err)
	}
	if st2.State != ee.StateStopped {
		t.Fatalf("recovered ee is %s, want stopped", st2.State)
	}
	if err := d2.Start(ctx, "rec"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, _ := execOut(t, d2, "rec", "cat", "runs")
		if strings.Count(out, "\n") == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("runs file after restart: %q, want two runs", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
