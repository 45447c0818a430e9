package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// The durable file format. A FileStorage directory holds three files, each
// starting with a 16-byte header:
//
//	leaves       frames, one per leaf, in index order
//	index        the start offset of each leaf's frame, 8 bytes big-endian each
//	checkpoints  frames, one per stored checkpoint, oldest first
//
// A frame is
//
//	u32 payload length | u8 flags | payload | u32 CRC-32C
//
// where the CRC covers the frame's sequence number (leaf index, or
// checkpoint number) as 8 bytes big-endian followed by the length, flags and
// payload, so a frame moved to another position fails its check. Flag bit 0
// marks the last leaf of an AppendLeaves batch (the commit point). The index
// is derived data written after the leaves are synced; it can be rebuilt
// from the leaves.
const (
	headerLen     = 16
	frameOverhead = 4 + 1 + 4
	flagCommit    = 1
	// readSpan is the most bytes ReadLeaves reads in one system call.
	readSpan = 8 << 20
)

var (
	leavesHeader = []byte("tvd-audit-leaf1\n")
	indexHeader  = []byte("tvd-audit-indx1\n")
	cpsHeader    = []byte("tvd-audit-chkp1\n")
	castagnoli   = crc32.MakeTable(crc32.Castagnoli)
)

// ErrDamaged is returned by FileStorage writes when OpenFile found damage
// that a crash cannot explain: the files are left as found for Fsck and for
// inspection, and nothing more is appended.
var ErrDamaged = errors.New("audit: log files are damaged, run fsck")

// FileStorage is the durable Storage: an append-only leaf file of framed
// records, an offset index and an append-only checkpoint file. It holds an
// exclusive lock on the directory while open and implements
// CheckpointHistory.
//
// Only the leaf file is synced on every append (one fdatasync per batch):
// the index is derived from it, and a checkpoint lost in a power loss is
// signed again, identically, by Open from the synced leaves. Close syncs the
// index and checkpoint files.
//
// After a crash (kill -9 or power loss) OpenFile removes what the crash left
// half-written: a torn final frame, frames of a batch that was never
// committed, zero-filled tails and index entries that were not synced. It
// repairs nothing else: damage that a crash cannot explain is left as found
// and reported by ReadLeaves (and so by Fsck) as a *CorruptError, and
// appends fail with ErrDamaged.
type FileStorage struct {
	dir    string
	logger *slog.Logger

	mu      sync.RWMutex
	leaves  *os.File
	index   *os.File
	cps     *os.File
	offsets []uint64 // start of each leaf's frame
	dataEnd uint64   // end of the last leaf's frame
	cpEnd   uint64   // end of the last checkpoint frame
	cpCount uint64
	latest  []byte
	damaged error // non-nil: no more writes
	closed  bool
}

// OpenFile opens or creates the log storage in directory dir (created with
// mode 0700 if missing) and recovers from a crash as described on
// FileStorage. logger may be nil.
func OpenFile(dir string, logger *slog.Logger) (*FileStorage, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open audit storage: %w", err)
	}
	s := &FileStorage{dir: dir, logger: logger}
	ok := false
	defer func() {
		if !ok {
			s.closeFiles()
		}
	}()
	var err error
	var created bool
	if s.leaves, created, err = openWithHeader(filepath.Join(dir, "leaves"), leavesHeader); err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(s.leaves.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return nil, fmt.Errorf("open audit storage %s: locked by another process: %w", dir, err)
	}
	c2, c3 := false, false
	if s.index, c2, err = openWithHeader(filepath.Join(dir, "index"), indexHeader); err != nil {
		return nil, err
	}
	if s.cps, c3, err = openWithHeader(filepath.Join(dir, "checkpoints"), cpsHeader); err != nil {
		return nil, err
	}
	if created || c2 || c3 {
		if err := syncDir(dir); err != nil {
			return nil, err
		}
	}
	if err := s.recoverLeaves(); err != nil {
		return nil, err
	}
	if err := s.recoverCheckpoints(); err != nil {
		return nil, err
	}
	ok = true
	return s, nil
}

func openWithHeader(path string, header []byte) (*os.File, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, false, fmt.Errorf("open audit storage: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, false, fmt.Errorf("open audit storage: %w", err)
	}
	if fi.Size() < headerLen {
		// New, or a crash while it was being created.
		buf := make([]byte, fi.Size())
		if _, err := f.ReadAt(buf, 0); err != nil && err != io.EOF {
			f.Close()
			return nil, false, fmt.Errorf("open audit storage: %w", err)
		}
		if !bytes.HasPrefix(header, buf) {
			f.Close()
			return nil, false, fmt.Errorf("open audit storage: %s is not a tvd audit file (bad header)", path)
		}
		if err := f.Truncate(0); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("open audit storage: %w", err)
		}
		if _, err := f.WriteAt(header, 0); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("open audit storage: %w", err)
		}
		if err := f.Sync(); err != nil {
			f.Close()
			return nil, false, fmt.Errorf("open audit storage: %w", err)
		}
		return f, true, nil
	}
	buf := make([]byte, headerLen)
	if _, err := f.ReadAt(buf, 0); err != nil {
		f.Close()
		return nil, false, fmt.Errorf("open audit storage: %w", err)
	}
	if !bytes.Equal(buf, header) {
		f.Close()
		return nil, false, fmt.Errorf("open audit storage: %s is not a tvd audit file (bad header %q)", path, buf)
	}
	return f, false, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync audit directory: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync audit directory: %w", err)
	}
	return nil
}

// appendFrame appends one frame with sequence number seq to buf.
func appendFrame(buf []byte, seq uint64, flags byte, payload []byte) []byte {
	start := len(buf)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(payload)))
	buf = append(buf, flags)
	buf = append(buf, payload...)
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], seq)
	crc := crc32.Update(crc32.Update(0, castagnoli, sb[:]), castagnoli, buf[start:])
	return binary.BigEndian.AppendUint32(buf, crc)
}

var (
	errShortFrame = errors.New("frame extends past the end of the file")
	errBadFrame   = errors.New("frame fails its checksum or has a bad length or flags")
)

// parseFrame parses the frame at the start of b with sequence number seq.
// It returns the payload, flags and the frame's total length.
func parseFrame(b []byte, seq uint64, maxPayload int) ([]byte, byte, int, error) {
	if len(b) < frameOverhead {
		return nil, 0, 0, errShortFrame
	}
	n := binary.BigEndian.Uint32(b)
	if uint64(n) > uint64(maxPayload) {
		return nil, 0, 0, fmt.Errorf("%w: payload length %d above %d", errBadFrame, n, maxPayload)
	}
	total := frameOverhead + int(n)
	if len(b) < total {
		return nil, 0, 0, errShortFrame
	}
	flags := b[4]
	var sb [8]byte
	binary.BigEndian.PutUint64(sb[:], seq)
	crc := crc32.Update(crc32.Update(0, castagnoli, sb[:]), castagnoli, b[:5+n])
	if crc != binary.BigEndian.Uint32(b[5+n:]) {
		return nil, 0, 0, fmt.Errorf("%w: checksum mismatch for position %d", errBadFrame, seq)
	}
	if flags&^flagCommit != 0 {
		return nil, 0, 0, fmt.Errorf("%w: unknown flags %#x", errBadFrame, flags)
	}
	return b[5 : 5+n], flags, total, nil
}

// readFrameAt reads and checks the frame at off in f, which ends at or
// before end.
func readFrameAt(f *os.File, off, end, seq uint64, maxPayload int) ([]byte, byte, int, error) {
	if off+frameOverhead > end {
		return nil, 0, 0, errShortFrame
	}
	var hdr [4]byte
	if _, err := f.ReadAt(hdr[:], int64(off)); err != nil {
		return nil, 0, 0, err
	}
	n := uint64(binary.BigEndian.Uint32(hdr[:]))
	if n > uint64(maxPayload) {
		return nil, 0, 0, fmt.Errorf("%w: payload length %d above %d", errBadFrame, n, maxPayload)
	}
	if off+frameOverhead+n > end {
		return nil, 0, 0, errShortFrame
	}
	buf := make([]byte, frameOverhead+n)
	if _, err := f.ReadAt(buf, int64(off)); err != nil {
		return nil, 0, 0, err
	}
	return parseFrame(buf, seq, maxPayload)
}

// allZero reports whether f holds only zero bytes in [off, end).
func allZero(f *os.File, off, end uint64) (bool, error) {
	buf := make([]byte, 64<<10)
	for off < end {
		n := min(uint64(len(buf)), end-off)
		if _, err := f.ReadAt(buf[:n], int64(off)); err != nil {
			return false, err
		}
		for _, c := range buf[:n] {
			if c != 0 {
				return false, nil
			}
		}
		off += n
	}
	return true, nil
}

// tornTail reports whether the bytes [off, end) of f, where a frame failed
// with err, look like what a crash leaves: a frame cut short, zero fill, or
// one final damaged frame.
func tornTail(f *os.File, off, end uint64, err error) (bool, error) {
	if errors.Is(err, errShortFrame) {
		return true, nil
	}
	z, zerr := allZero(f, off, end)
	if zerr != nil || z {
		return z, zerr
	}
	var hdr [4]byte
	if _, err := f.ReadAt(hdr[:], int64(off)); err != nil {
		return false, err
	}
	return off+frameOverhead+uint64(binary.BigEndian.Uint32(hdr[:])) == end, nil
}

func (s *FileStorage) recoverLeaves() error {
	fi, err := s.leaves.Stat()
	if err != nil {
		return fmt.Errorf("open audit storage: %w", err)
	}
	dataSize := uint64(fi.Size())
	raw, err := io.ReadAll(io.NewSectionReader(s.index, headerLen, 1<<62))
	if err != nil {
		return fmt.Errorf("open audit storage: read index: %w", err)
	}
	loaded := make([]uint64, len(raw)/8)
	for i := range loaded {
		loaded[i] = binary.BigEndian.Uint64(raw[8*i:])
	}
	indexDirty := len(raw)%8 != 0

	// Index entries past the last one that points at a valid frame were
	// written but not synced before a power loss; that leaves zeros.
	m := len(loaded)
	validAt := func(i int) bool {
		o := loaded[i]
		if o < headerLen || o >= dataSize || (i > 0 && o <= loaded[i-1]) {
			return false
		}
		_, _, _, err := readFrameAt(s.leaves, o, dataSize, uint64(i), MaxEntrySize)
		return err == nil
	}
	for m > 0 && !validAt(m-1) {
		m--
	}
	damage := ""
	for _, o := range loaded[m:] {
		if o != 0 {
			damage = fmt.Sprintf("index entry %d does not point at leaf %d", m, m)
			break
		}
	}
	// The kept entries must at least be in order (an append-only file
	// never leaves a hole in the middle); each frame is checked when read.
	if damage == "" && m > 0 && loaded[0] != headerLen {
		damage = "index entry 0 does not point at the first leaf"
	}
	for i := 1; damage == "" && i < m; i++ {
		if loaded[i] <= loaded[i-1] {
			damage = fmt.Sprintf("index entry %d is out of order", i)
		}
	}
	pos := uint64(headerLen)
	if m > 0 {
		_, _, n, _ := readFrameAt(s.leaves, loaded[m-1], dataSize, uint64(m-1), MaxEntrySize)
		pos = loaded[m-1] + uint64(n)
	}
	// Scan the frames after the indexed ones: a committed batch whose index
	// was not written is kept, an uncommitted one is dropped.
	var extra []uint64
	commitCount, commitEnd := 0, pos
	for damage == "" && pos < dataSize {
		_, flags, n, err := readFrameAt(s.leaves, pos, dataSize, uint64(m+len(extra)), MaxEntrySize)
		if err != nil {
			torn, terr := tornTail(s.leaves, pos, dataSize, err)
			if terr != nil {
				return fmt.Errorf("open audit storage: %w", terr)
			}
			if !torn {
				damage = fmt.Sprintf("leaf %d at offset %d: %v, with more data after it", m+len(extra), pos, err)
			}
			break
		}
		extra = append(extra, pos)
		pos += uint64(n)
		if flags&flagCommit != 0 {
			commitCount, commitEnd = len(extra), pos
		}
	}
	if damage != "" {
		s.logger.Error("audit log damaged; leaving files as found", "dir", s.dir, "problem", damage)
		s.damaged = fmt.Errorf("%w: %s", ErrDamaged, damage)
		s.offsets = loaded
		s.dataEnd = dataSize
		return nil
	}
	s.offsets = append(loaded[:m:m], extra[:commitCount]...)
	s.dataEnd = commitEnd
	if commitEnd < dataSize {
		s.logger.Warn("audit log: dropping an uncommitted or torn tail after a crash",
			"dir", s.dir, "bytes", dataSize-commitEnd, "frames", len(extra)-commitCount)
		if err := s.leaves.Truncate(int64(commitEnd)); err != nil {
			return fmt.Errorf("open audit storage: truncate leaves: %w", err)
		}
		if err := s.leaves.Sync(); err != nil {
			return fmt.Errorf("open audit storage: %w", err)
		}
	}
	if indexDirty || m < len(loaded) || commitCount > 0 {
		buf := make([]byte, 0, 8*(len(s.offsets)-m))
		for _, o := range s.offsets[m:] {
			buf = binary.BigEndian.AppendUint64(buf, o)
		}
		if err := s.index.Truncate(int64(headerLen + 8*m)); err != nil {
			return fmt.Errorf("open audit storage: truncate index: %w", err)
		}
		if _, err := s.index.WriteAt(buf, int64(headerLen+8*m)); err != nil {
			return fmt.Errorf("open audit storage: write index: %w", err)
		}
		if err := s.index.Sync(); err != nil {
			return fmt.Errorf("open audit storage: %w", err)
		}
		s.logger.Info("audit log: index repaired", "dir", s.dir, "leaves", len(s.offsets))
	}
	return nil
}

func (s *FileStorage) recoverCheckpoints() error {
	fi, err := s.cps.Stat()
	if err != nil {
		return fmt.Errorf("open audit storage: %w", err)
	}
	size := uint64(fi.Size())
	pos := uint64(headerLen)
	var count uint64
	var latest []byte
	for pos < size {
		p, _, n, err := readFrameAt(s.cps, pos, size, count, MaxCheckpointSize)
		if err != nil {
			torn, terr := tornTail(s.cps, pos, size, err)
			if terr != nil {
				return fmt.Errorf("open audit storage: %w", terr)
			}
			if !torn {
				return fmt.Errorf("open audit storage: checkpoint %d at offset %d: %v, with more data after it: %w", count, pos, err, ErrDamaged)
			}
			s.logger.Warn("audit log: dropping a torn checkpoint after a crash", "dir", s.dir, "bytes", size-pos)
			if err := s.cps.Truncate(int64(pos)); err != nil {
				return fmt.Errorf("open audit storage: truncate checkpoints: %w", err)
			}
			if err := s.cps.Sync(); err != nil {
				return fmt.Errorf("open audit storage: %w", err)
			}
			break
		}
		latest = p
		count++
		pos += uint64(n)
	}
	s.cpEnd, s.cpCount, s.latest = pos, count, latest
	return nil
}

// AppendLeaves implements Storage. The leaves are written with one write and
// synced (fdatasync), then indexed. On an error both files are truncated
// back; if even that fails the storage refuses further writes.
func (s *FileStorage) AppendLeaves(ctx context.Context, start uint64, leaves [][]byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(leaves) == 0 {
		return nil
	}
	total := 0
	for i, l := range leaves {
		if len(l) > MaxEntrySize {
			return fmt.Errorf("append leaves: leaf %d has %d bytes, the limit is %d", start+uint64(i), len(l), MaxEntrySize)
		}
		total += frameOverhead + len(l)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	if size := uint64(len(s.offsets)); start != size {
		return fmt.Errorf("append leaves at %d, size %d: %w", start, size, ErrConflict)
	}
	buf := make([]byte, 0, total)
	offs := make([]uint64, len(leaves))
	idx := make([]byte, 0, 8*len(leaves))
	for i, l := range leaves {
		offs[i] = s.dataEnd + uint64(len(buf))
		idx = binary.BigEndian.AppendUint64(idx, offs[i])
		var flags byte
		if i == len(leaves)-1 {
			flags = flagCommit
		}
		buf = appendFrame(buf, start+uint64(i), flags, l)
	}
	indexEnd := int64(headerLen + 8*len(s.offsets))
	err := func() error {
		if _, err := s.leaves.WriteAt(buf, int64(s.dataEnd)); err != nil {
			return err
		}
		if err := syscall.Fdatasync(int(s.leaves.Fd())); err != nil {
			return err
		}
		// The index is not synced: after a power loss OpenFile rebuilds
		// its missing tail from the synced leaves.
		_, err := s.index.WriteAt(idx, indexEnd)
		return err
	}()
	if err != nil {
		terr := errors.Join(s.index.Truncate(indexEnd), s.leaves.Truncate(int64(s.dataEnd)), s.index.Sync(), s.leaves.Sync())
		if terr != nil {
			s.damaged = fmt.Errorf("%w: rollback after a failed append: %w", ErrDamaged, terr)
		}
		return fmt.Errorf("append leaves: %w", err)
	}
	s.offsets = append(s.offsets, offs...)
	s.dataEnd += uint64(len(buf))
	return nil
}

func (s *FileStorage) writable() error {
	if s.closed {
		return errors.New("audit storage is closed")
	}
	return s.damaged
}

// ReadLeaves implements Storage. Every frame is checked against its
// position and its neighbours' offsets.
func (s *FileStorage) ReadLeaves(ctx context.Context, start, n uint64) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, errors.New("audit storage is closed")
	}
	size := uint64(len(s.offsets))
	if start > size || n > size-start {
		return nil, fmt.Errorf("read leaves [%d, %d+%d): past the end of the log (size %d)", start, start, n, size)
	}
	end := start + n
	off := func(i uint64) uint64 {
		if i < size {
			return s.offsets[i]
		}
		return s.dataEnd
	}
	out := make([][]byte, 0, n)
	for i := start; i < end; {
		// Gather leaves [i, j) into one read of at most readSpan bytes.
		j := i + 1
		for j < end && off(j+1) > off(i) && off(j+1)-off(i) <= readSpan {
			j++
		}
		lo, hi := off(i), off(j)
		if hi <= lo || hi > s.dataEnd {
			return nil, &CorruptError{Index: i, End: j + 1, Err: fmt.Errorf("index offsets %d..%d out of order", lo, hi)}
		}
		buf := make([]byte, hi-lo)
		if _, err := s.leaves.ReadAt(buf, int64(lo)); err != nil {
			return nil, fmt.Errorf("read leaves: %w", err)
		}
		pos := uint64(0)
		for k := i; k < j; k++ {
			if off(k)-lo != pos {
				return nil, &CorruptError{Index: k, End: k + 1, Err: fmt.Errorf("frame does not start where the previous one ends (offset %d, expected %d)", off(k), lo+pos)}
			}
			p, flags, fn, err := parseFrame(buf[pos:], k, MaxEntrySize)
			if err != nil {
				return nil, &CorruptError{Index: k, End: k + 1, Err: fmt.Errorf("frame at offset %d: %w", off(k), err)}
			}
			if k == size-1 && flags&flagCommit == 0 {
				return nil, &CorruptError{Index: k, End: k + 1, Err: errors.New("last leaf is not marked as the end of a batch")}
			}
			pos += uint64(fn)
			out = append(out, p)
		}
		if pos != hi-lo {
			return nil, &CorruptError{Index: j - 1, End: j, Err: fmt.Errorf("%d unexpected bytes after the frame", hi-lo-pos)}
		}
		i = j
	}
	return out, nil
}

// Size implements Storage.
func (s *FileStorage) Size(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return uint64(len(s.offsets)), nil
}

// PutCheckpoint implements Storage: the checkpoint is appended to the
// checkpoint file. It is not synced (see FileStorage).
func (s *FileStorage) PutCheckpoint(ctx context.Context, signed []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(signed) == 0 || len(signed) > MaxCheckpointSize {
		return fmt.Errorf("put checkpoint: %d bytes, expected 1 to %d", len(signed), MaxCheckpointSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.writable(); err != nil {
		return err
	}
	buf := appendFrame(nil, s.cpCount, 0, signed)
	if _, err := s.cps.WriteAt(buf, int64(s.cpEnd)); err != nil {
		s.rollbackCheckpoint()
		return fmt.Errorf("put checkpoint: %w", err)
	}
	s.cpEnd += uint64(len(buf))
	s.cpCount++
	s.latest = append([]byte(nil), signed...)
	return nil
}

func (s *FileStorage) rollbackCheckpoint() {
	if err := errors.Join(s.cps.Truncate(int64(s.cpEnd)), s.cps.Sync()); err != nil {
		s.damaged = fmt.Errorf("%w: rollback after a failed checkpoint write: %w", ErrDamaged, err)
	}
}

// Checkpoint implements Storage.
func (s *FileStorage) Checkpoint(ctx context.Context) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.latest == nil {
		return nil, nil
	}
	return append([]byte(nil), s.latest...), nil
}

// Checkpoints implements CheckpointHistory by reading the checkpoint file.
func (s *FileStorage) Checkpoints(ctx context.Context) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	buf := make([]byte, s.cpEnd-headerLen)
	if _, err := s.cps.ReadAt(buf, headerLen); err != nil {
		return nil, fmt.Errorf("read checkpoints: %w", err)
	}
	var out [][]byte
	for pos, seq := 0, uint64(0); pos < len(buf); seq++ {
		p, _, n, err := parseFrame(buf[pos:], seq, MaxCheckpointSize)
		if err != nil {
			return nil, fmt.Errorf("read checkpoint %d: %w", seq, err)
		}
		out = append(out, p)
		pos += n
	}
	return out, nil
}

// Damaged returns the damage OpenFile found (wrapping ErrDamaged), or nil.
func (s *FileStorage) Damaged() error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.damaged
}

// Close releases the lock and closes the files.
func (s *FileStorage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return errors.Join(s.index.Sync(), s.cps.Sync(), s.closeFiles())
}

func (s *FileStorage) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{s.cps, s.index, s.leaves} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}
