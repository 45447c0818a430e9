//go:build linux

package monitor

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountInfo is the part of one /proc/self/mountinfo line the monitor needs.
type mountInfo struct {
	ID         int
	Root       string // the directory of the filesystem this mount shows
	MountPoint string
	FSType     string
}

// parseMountInfoLine parses one line of /proc/<pid>/mountinfo (see
// proc_pid_mountinfo(5)): "id parent major:minor root mountpoint options
// [optional fields...] - fstype source superoptions".
func parseMountInfoLine(line string) (mountInfo, error) {
	fields := strings.Fields(line)
	sep := -1
	for i := 6; i < len(fields); i++ {
		if fields[i] == "-" {
			sep = i
			break
		}
	}
	if len(fields) < 7 || sep < 0 || sep+1 >= len(fields) {
		return mountInfo{}, fmt.Errorf("mountinfo line %q: want \"id parent dev root mountpoint options ... - fstype ...\"", line)
	}
	id, err := strconv.Atoi(fields[0])
	if err != nil || id < 0 {
		return mountInfo{}, fmt.Errorf("mountinfo line %q: mount id %q is not a non-negative integer", line, fields[0])
	}
	return mountInfo{
		ID:         id,
		Root:       unescapeMountInfo(fields[3]),
		MountPoint: unescapeMountInfo(fields[4]),
		FSType:     fields[sep+1],
	}, nil
}

// unescapeMountInfo undoes the kernel's octal escapes (\040 for space, \011,
// \012, \134) in mountinfo paths. A malformed escape is kept verbatim.
func unescapeMountInfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// findMount returns the mountinfo entry with the given mount id.
func findMount(id int) (mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return mountInfo{}, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		mi, err := parseMountInfoLine(sc.Text())
		if err != nil {
			return mountInfo{}, err
		}
		if mi.ID == id {
			return mi, nil
		}
	}
	if err := sc.Err(); err != nil {
		return mountInfo{}, fmt.Errorf("read mount table: %w", err)
	}
	return mountInfo{}, fmt.Errorf("mount id %d not in /proc/self/mountinfo", id)
}

// checkRoot verifies that root is safe to mark as a whole filesystem: it is
// the root of a mount that shows its filesystem from the top (so the
// filesystem holds nothing but what is under root) and it is not the host's
// root filesystem. It returns the filesystem's device number.
func checkRoot(root string) (uint64, error) {
	if !filepath.IsAbs(root) {
		return 0, fmt.Errorf("EE root %q: want an absolute path", root)
	}
	var sx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, root, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_TYPE|unix.STATX_MNT_ID, &sx); err != nil {
		return 0, fmt.Errorf("EE root %s: %w", root, err)
	}
	if sx.Mode&unix.S_IFMT != unix.S_IFDIR {
		return 0, fmt.Errorf("EE root %s: want a directory", root)
	}
	if sx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT == 0 || sx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, fmt.Errorf("EE root %s: kernel does not report mount roots (statx STATX_ATTR_MOUNT_ROOT, STATX_MNT_ID; want Linux 5.8 or later)", root)
	}
	if sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT == 0 {
		return 0, fmt.Errorf("EE root %s is not a mount point: want the EE's own filesystem (e.g. its overlayfs mount)", root)
	}
	mi, err := findMount(int(sx.Mnt_id))
	if err != nil {
		return 0, fmt.Errorf("EE root %s: %w", root, err)
	}
	if mi.Root != "/" {
		return 0, fmt.Errorf("EE root %s is a bind mount of %s inside a %s filesystem: a filesystem mark would cover files outside the EE; want the EE's own filesystem", root, mi.Root, mi.FSType)
	}
	dev := unix.Mkdev(sx.Dev_major, sx.Dev_minor)
	var host unix.Stat_t
	if err := unix.Stat("/", &host); err != nil {
		return 0, fmt.Errorf("stat host root: %w", err)
	}
	if dev == host.Dev {
		return 0, fmt.Errorf("EE root %s is on the host's root filesystem: want the EE's own filesystem", root)
	}
	return dev, nil
}
