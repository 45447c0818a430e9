package controller

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzArchivePath feeds archive digests as an agent reports them (a
// migrate-out result) to the controller's archive lookup: anything but
// "sha256:" and 64 lower-case hex digits is refused, and no digest names a
// file outside the archive directory.
func FuzzArchivePath(f *testing.F) {
	for _, s := range []string{"", "sha256:", "sha256:" + strings.Repeat("a", 64), "sha256:" + strings.Repeat("A", 64),
		"sha256:../../etc/passwd", "sha512:" + strings.Repeat("0", 128), "sha256:" + strings.Repeat("0", 63) + "/"} {
		f.Add(s)
	}
	dir := f.TempDir()
	good := strings.Repeat("ab", 32)
	if err := os.MkdirAll(filepath.Join(dir, "archives"), 0o700); err != nil {
		f.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "archives", good), []byte("x"), 0o600); err != nil {
		f.Fatal(err)
	}
	c := &Controller{cfg: Config{DataDir: dir}}
	f.Fuzz(func(t *testing.T, digest string) {
		p, err := c.archivePath(digest)
		var ae *apiError
		if err != nil && !errors.As(err, &ae) {
			t.Fatalf("archivePath(%q): %v is not an API error", digest, err)
		}
		if err == nil && digest != "sha256:"+good {
			t.Fatalf("archivePath(%q) = %s; only the stored archive exists", digest, p)
		}
		if p != "" && filepath.Dir(p) != filepath.Join(dir, "archives") {
			t.Fatalf("archivePath(%q) = %s, outside the archive directory", digest, p)
		}
	})
}
