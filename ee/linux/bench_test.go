package linux

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/ee"
	"github.com/tvd-dev/tvd/ee/image"
)

// BenchmarkCreateToRunning measures Create+Start of an EE until its
// workload runs (image verified, cgroups made, namespaces, overlay, pivot,
// capabilities dropped, workload forked), against fork/exec of the same
// command on the host, measured in the same run.
func BenchmarkCreateToRunning(b *testing.B) {
	d := newDriver(b)
	img := baseImage(b)
	ctx := context.Background()
	var eeTime, forkTime time.Duration
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("bench-%d", i)
		t0 := time.Now()
		if err := d.Create(ctx, ee.Spec{Name: name, Image: img, Command: []string{"sleep", "1000"}}); err != nil {
			b.Fatal(err)
		}
		if err := d.Start(ctx, name); err != nil {
			b.Fatal(err)
		}
		eeTime += time.Since(t0)

		t0 = time.Now()
		c := exec.Command(image.BusyboxPath, "sleep", "1000")
		if err := c.Start(); err != nil {
			b.Fatal(err)
		}
		forkTime += time.Since(t0)

		c.Process.Kill()
		c.Wait()
		if err := d.Destroy(ctx, name); err != nil {
			b.Fatal(err)
		}
	}
	n := float64(b.N)
	b.ReportMetric(float64(eeTime.Nanoseconds())/n, "ee-ns/start")
	b.ReportMetric(float64(forkTime.Nanoseconds())/n, "forkexec-ns/start")
	b.ReportMetric(float64(eeTime)/float64(forkTime), "x-vs-forkexec")
}

// BenchmarkSnapshotRestore measures Snapshot (deterministic tar, SHA-256,
// fsync) and Restore (hash check, extract with a second hash, swap) of a
// 32 MiB writable layer, against a plain copy of the same tree, measured
// in the same run.
func BenchmarkSnapshotRestore(b *testing.B) {
	d := newDriver(b)
	ctx := context.Background()
	if err := d.Create(ctx, ee.Spec{Name: "bench-snap", Image: baseImage(b), Command: []string{"true"}}); err != nil {
		b.Fatal(err)
	}
	upper, _ := d.UpperDir("bench-snap")
	const files, size = 64, 512 << 10
	buf := make([]byte, size)
	for i := range files {
		rand.Read(buf)
		dir := filepath.Join(upper, fmt.Sprintf("d%d", i%8))
		os.MkdirAll(dir, 0o755)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	total := float64(files * size)
	snaps := b.TempDir()
	copies := b.TempDir()
	var snapTime, restoreTime, copyTime time.Duration
	for i := 0; b.Loop(); i++ {
		t0 := time.Now()
		snap, err := d.Snapshot(ctx, "bench-snap", snaps)
		if err != nil {
			b.Fatal(err)
		}
		snapTime += time.Since(t0)

		t0 = time.Now()
		if err := d.Restore(ctx, "bench-snap", snap); err != nil {
			b.Fatal(err)
		}
		restoreTime += time.Since(t0)

		t0 = time.Now()
		dst := filepath.Join(copies, fmt.Sprint(i))
		if err := copyTree(upper, dst); err != nil {
			b.Fatal(err)
		}
		copyTime += time.Since(t0)
		os.RemoveAll(dst)
	}
	mbps := func(d time.Duration) float64 { return total * float64(b.N) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(snapTime), "snapshot-MB/s")
	b.ReportMetric(mbps(restoreTime), "restore-MB/s")
	b.ReportMetric(mbps(copyTime), "copy-MB/s")
	b.ReportMetric(float64(snapTime)/float64(copyTime), "snapshot-x-vs-copy")
	b.ReportMetric(float64(restoreTime)/float64(copyTime), "restore-x-vs-copy")
}

// copyTree is the baseline: a plain recursive copy of regular files and
// directories.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		if info.IsDir() {
			return os.MkdirAll(target, info.Mode().Perm())
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.Create(target)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
}
