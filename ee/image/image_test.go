package image

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd/ee"
	"golang.org/x/sys/unix"
)

// sourceTree makes a small tree with every kind of entry Build accepts.
func sourceTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "bin"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "a-b"), 0o700))
	must(os.MkdirAll(filepath.Join(dir, "a", "b"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "bin", "tool"), []byte("#!/bin/sh\necho hi\n"), 0o755))
	must(os.WriteFile(filepath.Join(dir, "a", "b", "data"), bytes.Repeat([]byte("x"), 10000), 0o640))
	must(os.WriteFile(filepath.Join(dir, "a-b", "empty"), nil, 0o600))
	must(os.Symlink("tool", filepath.Join(dir, "bin", "link")))
	must(os.Symlink("/etc/does-not-matter", filepath.Join(dir, "abs")))
	must(os.Chmod(filepath.Join(dir, "bin", "tool"), 0o755|fs.ModeSetuid))
	return dir
}

func TestBuildOpenVerify(t *testing.T) {
	src := sourceTree(t)
	out := filepath.Join(t.TempDir(), "img")
	m, err := Build(src, out)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Dirs) != 4 || len(m.Files) != 3 || len(m.Symlinks) != 2 {
		t.Fatalf("manifest has %d dirs %d files %d symlinks, want 4 3 2: %+v", len(m.Dirs), len(m.Files), len(m.Symlinks), m)
	}
	im, err := Open(out)
	if err != nil {
		t.Fatal(err)
	}
	if im.Digest != m.Digest() || !strings.HasPrefix(im.Digest, "sha256:") {
		t.Fatalf("digest %s, want %s", im.Digest, m.Digest())
	}
	for _, f := range m.Files {
		if f.Path == "bin/tool" && f.Mode != 0o4755 {
			t.Errorf("bin/tool mode %o, want 4755", f.Mode)
		}
	}
	// Same tree, same digest: the digest does not depend on where or when.
	m2, err := Build(src, filepath.Join(t.TempDir(), "img2"))
	if err != nil {
		t.Fatal(err)
	}
	if m2.Digest() != m.Digest() {
		t.Fatalf("rebuild digest %s, want %s", m2.Digest(), m.Digest())
	}
	// The written manifest is canonical and parses back to the same digest.
	b, err := os.ReadFile(filepath.Join(out, ManifestFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, m.Canonical()) {
		t.Fatal("written manifest is not the canonical encoding")
	}
	if _, err := Build(src, out); err == nil {
		t.Fatal("Build into a non-empty directory succeeded")
	}
}

func TestVerifyReportsTampering(t *testing.T) {
	src := sourceTree(t)
	out := filepath.Join(t.TempDir(), "img")
	if _, err := Build(src, out); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(out, RootFSDir)
	// Same size, different content; a mode change; a retargeted link; a
	// removed file; an added file; a file replaced by a directory.
	if err := os.WriteFile(filepath.Join(root, "bin", "tool"), []byte("#!/bin/sh\necho HI\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(root, "a", "b", "data"), 0o666); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(root, "bin", "link"))
	if err := os.Symlink("/bin/evil", filepath.Join(root, "bin", "link")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(root, "a-b", "empty"))
	if err := os.Mkdir(filepath.Join(root, "a-b", "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "implant"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Open(out)
	var ve *VerifyError
	if !errors.As(err, &ve) {
		t.Fatalf("Open of a tampered image: %v, want *VerifyError", err)
	}
	got := map[string]string{}
	for _, m := range ve.Mismatches {
		got[m.Path] += m.What + ","
	}
	want := map[string]string{
		"a-b/empty": "type,",
		"a/b/data":  "mode,",
		"bin/link":  "target,",
		"bin/tool":  "sha256,",
		"implant":   "unexpected,",
	}
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s: mismatches %q, want %q (all: %v)", p, got[p], w, ve)
		}
	}
	if len(got) != len(want) {
		t.Errorf("mismatches %v, want exactly %v", got, want)
	}
	// A missing file.
	os.Remove(filepath.Join(root, "implant"))
	os.Remove(filepath.Join(root, "a", "b", "data"))
	_, err = Open(out)
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), "a/b/data: missing") {
		t.Fatalf("Open with a missing file: %v", err)
	}
	// A tampered manifest changes the digest.
	b, _ := os.ReadFile(filepath.Join(out, ManifestFile))
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	m.Files[0].Mode ^= 0o1
	if m.Digest() == MustDigest(t, b) {
		t.Fatal("changed manifest kept its digest")
	}
}

func MustDigest(t *testing.T, b []byte) string {
	t.Helper()
	m, err := ParseManifest(b)
	if err != nil {
		t.Fatal(err)
	}
	return m.Digest()
}

func TestParseManifestRejects(t *testing.T) {
	h := strings.Repeat("a", 64)
	for _, tc := range []struct{ name, in, want string }{
		{"version", `{"version":2,"dirs":[],"files":[],"symlinks":[]}`, "version 2"},
		{"unknown field", `{"version":1,"dirs":[],"files":[],"symlinks":[],"x":1}`, "unknown field"},
		{"trailing", `{"version":1,"dirs":[],"files":[],"symlinks":[]} {}`, "trailing"},
		{"absolute", `{"version":1,"dirs":[{"path":"/etc","mode":493}],"files":[],"symlinks":[]}`, "relative"},
		{"dotdot", `{"version":1,"dirs":[{"path":"../etc","mode":493}],"files":[],"symlinks":[]}`, "inside the root"},
		{"unclean", `{"version":1,"dirs":[{"path":"a//b","mode":493}],"files":[],"symlinks":[]}`, "clean"},
		{"unsorted", `{"version":1,"dirs":[{"path":"b","mode":493},{"path":"a","mode":493}],"files":[],"symlinks":[]}`, "sorted"},
		{"duplicate", `{"version":1,"dirs":[{"path":"a","mode":493}],"files":[{"path":"a","mode":420,"size":0,"sha256":"` + h + `"}],"symlinks":[]}`, "already listed"},
		{"orphan", `{"version":1,"dirs":[],"files":[{"path":"a/b","mode":420,"size":0,"sha256":"` + h + `"}],"symlinks":[]}`, "parent"},
		{"mode", `{"version":1,"dirs":[],"files":[{"path":"a","mode":65535,"size":0,"sha256":"` + h + `"}],"symlinks":[]}`, "permission bits"},
		{"size", `{"version":1,"dirs":[],"files":[{"path":"a","mode":420,"size":-1,"sha256":"` + h + `"}],"symlinks":[]}`, "size"},
		{"hash", `{"version":1,"dirs":[],"files":[{"path":"a","mode":420,"size":0,"sha256":"ABC"}],"symlinks":[]}`, "hex"},
		{"target", `{"version":1,"dirs":[],"files":[],"symlinks":[{"path":"a","target":""}]}`, "target"},
		{"not json", `version: 1`, "manifest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseManifest([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseManifest(f *testing.F) {
	h := strings.Repeat("0", 64)
	f.Add([]byte(`{"version":1,"dirs":[],"files":[],"symlinks":[]}`))
	f.Add([]byte(`{"version":1,"dirs":[{"path":"bin","mode":493}],"files":[{"path":"bin/busybox","mode":493,"size":3,"sha256":"` + h + `"}],"symlinks":[{"path":"bin/sh","target":"busybox"}]}`))
	f.Add([]byte(`{"version":1,"dirs":[{"path":"a","mode":493},{"path":"a/b","mode":4095}],"files":[],"symlinks":[]}`))
	f.Add([]byte(`{"version":1,"dirs":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			return
		}
		// Whatever parses must round-trip through its canonical form to
		// the same manifest and digest.
		m2, err := ParseManifest(m.Canonical())
		if err != nil {
			t.Fatalf("canonical form of an accepted manifest is rejected: %v", err)
		}
		if m2.Digest() != m.Digest() {
			t.Fatalf("digest changed through canonical form")
		}
	})
}

func TestBuildBase(t *testing.T) {
	out := filepath.Join(t.TempDir(), "base")
	m, err := BuildBase("", out)
	if errors.Is(err, ErrNoBusybox) {
		t.Skip("static busybox missing: apt-get install busybox-static")
	}
	if err != nil {
		t.Fatal(err)
	}
	have := map[string]bool{}
	for _, s := range m.Symlinks {
		have[s.Path] = s.Target == "busybox"
	}
	for _, want := range []string{"bin/sh", "bin/ls", "bin/ps", "bin/cat"} {
		if !have[want] {
			t.Errorf("base image has no %s -> busybox", want)
		}
	}
	if _, err := Open(out); err != nil {
		t.Fatal(err)
	}
}

func TestArchiveRoundTrip(t *testing.T) {
	src := sourceTree(t)
	// A whiteout, an opaque-dir xattr and a hard link, as overlayfs
	// leaves them in an upper directory.
	if err := unix.Mknod(filepath.Join(src, "gone"), unix.S_IFCHR|0o000, 0); err != nil {
		t.Skipf("mknod a whiteout needs CAP_MKNOD: %v", err)
	}
	if err := unix.Setxattr(filepath.Join(src, "a"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Skipf("trusted xattrs need CAP_SYS_ADMIN and a filesystem that has them: %v", err)
	}
	if err := os.Link(filepath.Join(src, "a", "b", "data"), filepath.Join(src, "hard")); err != nil {
		t.Fatal(err)
	}
	d1, err := TreeDigest(src)
	if err != nil {
		t.Fatal(err)
	}
	snaps := t.TempDir()
	snap, err := Archive(src, snaps)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(snap.Path) != ArchiveName(snap.Digest) {
		t.Fatalf("archive at %s, want name %s", snap.Path, ArchiveName(snap.Digest))
	}
	if snap.Digest != d1 {
		// Archive and TreeDigest stream the same bytes.
		t.Fatalf("archive digest %s, tree digest %s", snap.Digest, d1)
	}
	again, err := Archive(src, snaps)
	if err != nil || again.Digest != snap.Digest {
		t.Fatalf("archive not deterministic: %v %s vs %s", err, again.Digest, snap.Digest)
	}
	dst := filepath.Join(t.TempDir(), "restored")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "stale"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Extract(snap, dst); err != nil {
		t.Fatal(err)
	}
	d2, err := TreeDigest(dst)
	if err != nil {
		t.Fatal(err)
	}
	if d2 != d1 {
		t.Fatalf("restored tree digest %s, want %s", d2, d1)
	}
	if _, err := os.Stat(filepath.Join(dst, "stale")); !os.IsNotExist(err) {
		t.Fatalf("restore kept a file the snapshot does not have: %v", err)
	}
}

func TestExtractRefusesWrongDigest(t *testing.T) {
	src := sourceTree(t)
	snap, err := Archive(src, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// Flip one byte of a file's content inside the archive.
	b, err := os.ReadFile(snap.Path)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(b, []byte("echo hi"))
	b[i] = 'E'
	if err := os.WriteFile(snap.Path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "dst")
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "keep"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	var de *DigestError
	if err := Extract(snap, dst); !errors.As(err, &de) {
		t.Fatalf("Extract of a modified archive: %v, want *DigestError", err)
	}
	if _, err := os.Stat(filepath.Join(dst, "keep")); err != nil {
		t.Fatalf("refused restore changed the tree: %v", err)
	}
}

func TestExtractRefusesEscapes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []tarEntry
		want    string
	}{
		{"dotdot", []tarEntry{{name: "./", dir: true}, {name: "../x", body: "x"}}, "inside the root"},
		{"through symlink", []tarEntry{{name: "./", dir: true}, {name: "l", link: "/"}, {name: "l/x", body: "x"}}, "parent"},
		{"device", []tarEntry{{name: "./", dir: true}, {name: "d", dev: 1}}, "whiteouts"},
		{"no root", []tarEntry{{name: "x", body: "x"}}, "root directory first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "a.tar")
			writeTar(t, p, tc.entries)
			d, err := HashFile(p)
			if err != nil {
				t.Fatal(err)
			}
			err = Extract(ee.Snapshot{Digest: d, Path: p}, filepath.Join(t.TempDir(), "dst"))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// FuzzExtract feeds arbitrary archives (with a matching digest, as a
// forged but correctly named snapshot would have) to Extract: it must
// never panic and never write outside its target directory.
func FuzzExtract(f *testing.F) {
	dir := f.TempDir()
	seed := filepath.Join(dir, "seed.tar")
	writeTar(&testing.T{}, seed, []tarEntry{{name: "./", dir: true}, {name: "a/", dir: true}, {name: "a/b", body: "x"}, {name: "l", link: "a/b"}})
	if b, err := os.ReadFile(seed); err == nil {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		base := t.TempDir()
		p := filepath.Join(base, "in.tar")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		d, err := HashFile(p)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(base, "out", "dst")
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		Extract(ee.Snapshot{Digest: d, Path: p}, dst)
		ents, _ := os.ReadDir(filepath.Join(base, "out"))
		for _, e := range ents {
			if e.Name() != "dst" {
				t.Fatalf("extract left %q beside its target", e.Name())
			}
		}
		ents, _ = os.ReadDir(base)
		if len(ents) != 2 {
			t.Fatalf("extract wrote outside its target: %v", ents)
		}
	})
}
