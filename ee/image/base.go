package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// BusyboxPath is where Debian's busybox-static package installs a
// statically linked busybox.
const BusyboxPath = "/bin/busybox"

// ErrNoBusybox means the static busybox binary BuildBase needs is missing.
var ErrNoBusybox = errors.New("static busybox not found (install the Debian package busybox-static)")

// BuildBase builds the small base image EEs use in tests and in the lab:
// a statically linked busybox at /bin/busybox, every applet it lists as a
// symbolic link to it in /bin, and the directories /dev, /proc, /sys,
// /tmp (sticky), /root, /etc (with passwd, group and hosts) and /var/tmp.
// busybox is the static binary to copy; "" means BusyboxPath.
func BuildBase(busybox, out string) (Manifest, error) {
	if busybox == "" {
		busybox = BusyboxPath
	}
	if _, err := os.Stat(busybox); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Manifest{}, fmt.Errorf("build base image: %s: %w", busybox, ErrNoBusybox)
		}
		return Manifest{}, fmt.Errorf("build base image: %w", err)
	}
	list, err := exec.Command(busybox, "--list").Output()
	if err != nil {
		return Manifest{}, fmt.Errorf("build base image: %s --list: %w", busybox, err)
	}
	tree, err := os.MkdirTemp("", "tvd-base-tree-")
	if err != nil {
		return Manifest{}, fmt.Errorf("build base image: %w", err)
	}
	defer os.RemoveAll(tree)
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{
		{"bin", 0o755}, {"dev", 0o755}, {"etc", 0o755}, {"proc", 0o555}, {"sys", 0o555},
		{"root", 0o700}, {"tmp", 0o777 | fs.ModeSticky}, {"var", 0o755}, {"var/tmp", 0o777 | fs.ModeSticky},
	} {
		p := filepath.Join(tree, d.path)
		if err := os.Mkdir(p, 0o755); err != nil {
			return Manifest{}, fmt.Errorf("build base image: %w", err)
		}
		if err := os.Chmod(p, d.mode); err != nil {
			return Manifest{}, fmt.Errorf("build base image: %w", err)
		}
	}
	if _, _, err := copyFile(busybox, filepath.Join(tree, "bin", "busybox"), 0o755); err != nil {
		return Manifest{}, fmt.Errorf("build base image: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		if applet == "busybox" || strings.ContainsAny(applet, "/\x00") {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(tree, "bin", applet)); err != nil && !errors.Is(err, fs.ErrExist) {
			return Manifest{}, fmt.Errorf("build base image: %w", err)
		}
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":  "root:x:0:\nnogroup:x:65534:\n",
		"etc/hosts":  "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(tree, name), []byte(content), 0o644); err != nil {
			return Manifest{}, fmt.Errorf("build base image: %w", err)
		}
	}
	m, err := Build(tree, out)
	if err != nil {
		return Manifest{}, fmt.Errorf("build base image: %w", err)
	}
	return m, nil
}
