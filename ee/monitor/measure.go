//go:build linux

package monitor

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// atHandleFID asks name_to_handle_at for a file identifier that need not be
// decodable (Linux 6.5); overlayfs gives one even without nfs_export.
const atHandleFID = 0x200

// racyWindow is how old a file's ctime must be, relative to the start of a
// measurement, for the digest to be cached. Timestamps may be as coarse as
// one jiffy (up to 10 ms); a change made after a measurement that started
// more than a jiffy after the cached ctime always gets a later ctime, so a
// cached key can never match altered content. Files changed more recently
// are measured on every exec until they age.
const racyWindow = 50 * time.Millisecond

// fileKey identifies one version of a file's content: it changes whenever
// the content may have changed. ctime cannot be set from user space and
// moves on every write, truncate, rename over, chmod or link change; the
// file identifier (with the inode generation where the filesystem encodes
// one) tells reused inode numbers apart.
type fileKey struct {
	Dev, Ino     uint64
	Size         int64
	Mtime, Ctime unix.Timespec
	Handle       string
}

func statKey(fd int) (fileKey, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fileKey{}, st, fmt.Errorf("fstat: %w", err)
	}
	k := fileKey{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Mtime: st.Mtim, Ctime: st.Ctim}
	if h, _, err := unix.NameToHandleAt(fd, "", unix.AT_EMPTY_PATH|atHandleFID); err == nil {
		k.Handle = fmt.Sprintf("%d:%x", h.Type(), h.Bytes())
	}
	return k, st, nil
}

// digestCache maps file versions to digests. It is owned by one group's
// reader goroutine and needs no lock.
type digestCache struct {
	max     int
	entries map[fileKey][32]byte
}

func newDigestCache(max int) *digestCache {
	return &digestCache{max: max, entries: make(map[fileKey][32]byte)}
}

func (c *digestCache) get(k fileKey) ([32]byte, bool) {
	d, ok := c.entries[k]
	return d, ok
}

func (c *digestCache) put(k fileKey, d [32]byte) {
	if c.max <= 0 {
		return
	}
	for len(c.entries) >= c.max {
		for old := range c.entries { // evict an arbitrary entry
			delete(c.entries, old)
			break
		}
	}
	c.entries[k] = d
}

// errChanged is reported when a file changed while it was being measured.
var errChanged = errors.New("file changed while it was measured")

// measurer hashes files through a descriptor.
type measurer struct {
	maxSize int64
	buf     []byte
	now     func() time.Time // real time, for the racy-ctime rule
}

// measure returns the SHA-256 of the file open at fd, reading it with
// pread (the file offset is not used and the path is never consulted). It
// consults and fills cache; cached reports a hit.
func (m *measurer) measure(fd int, cache *digestCache) (digest [32]byte, cached bool, err error) {
	start := m.now()
	k1, st, err := statKey(fd)
	if err != nil {
		return digest, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return digest, false, fmt.Errorf("not a regular file (mode %#o)", st.Mode)
	}
	if st.Size > m.maxSize {
		return digest, false, fmt.Errorf("file is %d bytes, larger than the %d byte limit", st.Size, m.maxSize)
	}
	if d, ok := cache.get(k1); ok {
		return d, true, nil
	}
	h := sha256.New()
	var off int64
	for {
		n, err := unix.Pread(fd, m.buf, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return digest, false, fmt.Errorf("read at %d: %w", off, err)
		}
		if n == 0 {
			break
		}
		h.Write(m.buf[:n])
		off += int64(n)
		if off > m.maxSize {
			return digest, false, fmt.Errorf("file grew beyond the %d byte limit while it was measured", m.maxSize)
		}
	}
	k2, _, err := statKey(fd)
	if err != nil {
		return digest, false, err
	}
	if k1 != k2 || off != k1.Size {
		return digest, false, errChanged
	}
	h.Sum(digest[:0])
	if ctime := time.Unix(st.Ctim.Unix()); ctime.Before(start.Add(-racyWindow)) {
		cache.put(k1, digest)
	}
	return digest, false, nil
}
