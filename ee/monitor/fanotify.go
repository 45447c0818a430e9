//go:build linux

package monitor

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// metadataLen is sizeof(struct fanotify_event_metadata).
const metadataLen = 24

// rawEvent is one fanotify event as the kernel reports it.
type rawEvent struct {
	Mask uint64
	Fd   int32
	Pid  int32
}

// parseEvents splits a buffer read from a fanotify group into events. It
// checks the metadata version and every length, and never reads outside
// buf. Events with information records after the metadata (none are
// requested here) are accepted and the records skipped.
func parseEvents(buf []byte) ([]rawEvent, error) {
	var evs []rawEvent
	for off := 0; off < len(buf); {
		rest := buf[off:]
		if len(rest) < metadataLen {
			return evs, fmt.Errorf("fanotify event at offset %d: %d bytes left, want at least %d", off, len(rest), metadataLen)
		}
		eventLen := binary.NativeEndian.Uint32(rest[0:4])
		vers := rest[4]
		metaLen := binary.NativeEndian.Uint16(rest[6:8])
		if vers != unix.FANOTIFY_METADATA_VERSION {
			return evs, fmt.Errorf("fanotify event at offset %d: metadata version %d, want %d", off, vers, unix.FANOTIFY_METADATA_VERSION)
		}
		if metaLen < metadataLen || uint64(eventLen) < uint64(metaLen) || uint64(eventLen) > uint64(len(rest)) {
			return evs, fmt.Errorf("fanotify event at offset %d: event length %d, metadata length %d, %d bytes left: inconsistent", off, eventLen, metaLen, len(rest))
		}
		evs = append(evs, rawEvent{
			Mask: binary.NativeEndian.Uint64(rest[8:16]),
			Fd:   int32(binary.NativeEndian.Uint32(rest[16:20])),
			Pid:  int32(binary.NativeEndian.Uint32(rest[20:24])),
		})
		off += int(eventLen)
	}
	return evs, nil
}

// response encodes a struct fanotify_response.
func response(fd int32, allow bool) [8]byte {
	var b [8]byte
	binary.NativeEndian.PutUint32(b[0:4], uint32(fd))
	r := uint32(unix.FAN_DENY)
	if allow {
		r = unix.FAN_ALLOW
	}
	binary.NativeEndian.PutUint32(b[4:8], r)
	return b
}

// initFlags are the fanotify_init flags of every group. FAN_UNLIMITED_QUEUE
// matters for safety: when a bounded queue overflows, the kernel allows the
// permission event it could not queue.
const (
	initFlags  = unix.FAN_CLASS_CONTENT | unix.FAN_CLOEXEC | unix.FAN_NONBLOCK | unix.FAN_UNLIMITED_QUEUE
	eventFlags = unix.O_RDONLY | unix.O_LARGEFILE | unix.O_CLOEXEC
)

// newGroupFile creates a fanotify group that stops every exec on the
// filesystem holding root, and returns it as a pollable *os.File.
func newGroupFile(root string) (*os.File, error) {
	fd, err := unix.FanotifyInit(initFlags, eventFlags)
	if err != nil {
		return nil, fmt.Errorf("fanotify_init: %w", err)
	}
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, root); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("fanotify_mark filesystem of %s: %w", root, err)
	}
	return os.NewFile(uintptr(fd), "fanotify:"+root), nil
}

// Probe reports whether this kernel and process can run the monitor:
// fanotify with permission events (CONFIG_FANOTIFY_ACCESS_PERMISSIONS) and
// CAP_SYS_ADMIN. It marks only a fresh temporary directory, so it never
// stops an exec.
func Probe() error {
	fd, err := unix.FanotifyInit(initFlags, eventFlags)
	if err != nil {
		return fmt.Errorf("fanotify_init: %w", err)
	}
	defer unix.Close(fd)
	dir, err := os.MkdirTemp("", "tvd-monitor-probe-")
	if err != nil {
		return fmt.Errorf("probe directory: %w", err)
	}
	defer os.Remove(dir)
	if err := unix.FanotifyMark(fd, unix.FAN_MARK_ADD|unix.FAN_MARK_INODE, unix.FAN_OPEN_EXEC_PERM, unix.AT_FDCWD, dir); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("fanotify exec permission events not supported by this kernel: %w", err)
		}
		return fmt.Errorf("fanotify_mark: %w", err)
	}
	return nil
}
