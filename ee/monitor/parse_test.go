//go:build linux

package monitor

import (
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// encodeEvent builds a struct fanotify_event_metadata followed by extra
// information bytes.
func encodeEvent(mask uint64, fd, pid int32, extra int) []byte {
	b := make([]byte, metadataLen+extra)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	b[4] = unix.FANOTIFY_METADATA_VERSION
	binary.NativeEndian.PutUint16(b[6:8], metadataLen)
	binary.NativeEndian.PutUint64(b[8:16], mask)
	binary.NativeEndian.PutUint32(b[16:20], uint32(fd))
	binary.NativeEndian.PutUint32(b[20:24], uint32(pid))
	return b
}

func TestParseEvents(t *testing.T) {
	two := append(encodeEvent(unix.FAN_OPEN_EXEC_PERM, 7, 100, 0), encodeEvent(unix.FAN_Q_OVERFLOW, unix.FAN_NOFD, 0, 8)...)
	evs, err := parseEvents(two)
	if err != nil || len(evs) != 2 ||
		evs[0] != (rawEvent{Mask: unix.FAN_OPEN_EXEC_PERM, Fd: 7, Pid: 100}) ||
		evs[1] != (rawEvent{Mask: unix.FAN_Q_OVERFLOW, Fd: unix.FAN_NOFD}) {
		t.Fatalf("parseEvents = %+v, %v", evs, err)
	}

	badVersion := encodeEvent(unix.FAN_OPEN_EXEC_PERM, 7, 100, 0)
	badVersion[4] = 2
	tooLong := encodeEvent(unix.FAN_OPEN_EXEC_PERM, 7, 100, 0)
	binary.NativeEndian.PutUint32(tooLong[0:4], 1000)
	shortMeta := encodeEvent(unix.FAN_OPEN_EXEC_PERM, 7, 100, 0)
	binary.NativeEndian.PutUint16(shortMeta[6:8], 8)
	for _, tc := range []struct {
		name string
		buf  []byte
		want string
		good int
	}{
		{"truncated", two[:30], "bytes left", 1},
		{"bad version", badVersion, "metadata version 2", 0},
		{"event longer than buffer", tooLong, "inconsistent", 0},
		{"short metadata", shortMeta, "inconsistent", 0},
	} {
		evs, err := parseEvents(tc.buf)
		if err == nil || !strings.Contains(err.Error(), tc.want) || len(evs) != tc.good {
			t.Errorf("%s: parseEvents = %d events, %v; want %d events and an error containing %q", tc.name, len(evs), err, tc.good, tc.want)
		}
	}
}

func FuzzParseEvents(f *testing.F) {
	f.Add(encodeEvent(unix.FAN_OPEN_EXEC_PERM, 7, 100, 0))
	f.Add(append(encodeEvent(unix.FAN_OPEN_EXEC_PERM, 3, 1, 0), encodeEvent(unix.FAN_Q_OVERFLOW, -1, 0, 16)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, buf []byte) {
		evs, err := parseEvents(buf)
		if err == nil && len(evs)*metadataLen > len(buf) {
			t.Fatalf("%d events from %d bytes", len(evs), len(buf))
		}
	})
}

func TestResponse(t *testing.T) {
	for _, allow := range []bool{true, false} {
		b := response(42, allow)
		want := uint32(unix.FAN_DENY)
		if allow {
			want = unix.FAN_ALLOW
		}
		if fd, r := int32(binary.NativeEndian.Uint32(b[0:4])), binary.NativeEndian.Uint32(b[4:8]); fd != 42 || r != want {
			t.Errorf("response(42, %v) = fd %d response %#x", allow, fd, r)
		}
	}
}

var mountInfoSeeds = []string{
	"27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
	"36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
	`44 27 0:45 / /tmp/with\040space/merged rw,relatime shared:5 - overlay overlay rw,lowerdir=/a,upperdir=/b,workdir=/c`,
	`45 27 254:0 /sub\134dir /x rw - ext4 /dev/vda rw`,
}

func TestParseMountInfoLine(t *testing.T) {
	want := []mountInfo{
		{ID: 27, Root: "/", MountPoint: "/", FSType: "ext4"},
		{ID: 36, Root: "/mnt1", MountPoint: "/mnt2", FSType: "ext3"},
		{ID: 44, Root: "/", MountPoint: "/tmp/with space/merged", FSType: "overlay"},
		{ID: 45, Root: `/sub\dir`, MountPoint: "/x", FSType: "ext4"},
	}
	for i, line := range mountInfoSeeds {
		got, err := parseMountInfoLine(line)
		if err != nil || got != want[i] {
			t.Errorf("parseMountInfoLine(%q) = %+v, %v; want %+v", line, got, err, want[i])
		}
	}
	for _, bad := range []string{
		"",
		"27 1 254:0 / / rw,relatime ext4 /dev/vda rw",
		"x 1 254:0 / / rw - ext4 /dev/vda rw",
		"27 1 254:0 / / rw -",
	} {
		if _, err := parseMountInfoLine(bad); err == nil {
			t.Errorf("parseMountInfoLine(%q): want an error", bad)
		}
	}
	if got := unescapeMountInfo(`a\04`); got != `a\04` {
		t.Errorf("truncated escape: %q", got)
	}
}

func FuzzParseMountInfoLine(f *testing.F) {
	for _, s := range mountInfoSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		mi, err := parseMountInfoLine(line)
		if err == nil && (mi.ID < 0 || mi.FSType == "") {
			t.Fatalf("parseMountInfoLine(%q) = %+v", line, mi)
		}
	})
}
