package audit

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fileState records the sizes of the three files after an append.
type fileState struct {
	leaves, index, cps int64
	size               uint64 // entries in the log
}

func statFiles(t *testing.T, dir string) fileState {
	t.Helper()
	var s fileState
	for _, f := range []struct {
		name string
		p    *int64
	}{{"leaves", &s.leaves}, {"index", &s.index}, {"checkpoints", &s.cps}} {
		fi, err := os.Stat(filepath.Join(dir, f.name))
		if err != nil {
			t.Fatal(err)
		}
		*f.p = fi.Size()
	}
	return s
}

func truncateFiles(t *testing.T, dir string, s fileState) {
	t.Helper()
	for name, n := range map[string]int64{"leaves": s.leaves, "index": s.index, "checkpoints": s.cps} {
		if err := os.Truncate(filepath.Join(dir, name), n); err != nil {
			t.Fatal(err)
		}
	}
}

// buildFileLog writes batches of 1..3 entries until n entries are stored and
// returns the file sizes after each batch.
func buildFileLog(t *testing.T, dir string, n int) []fileState {
	t.Helper()
	ctx := context.Background()
	st, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, _ := openTestLog(t, st)
	states := []fileState{statFiles(t, dir)}
	for i := 0; i < n; {
		k := min(1+i%3, n-i)
		if _, err := l.Append(ctx, testEntries(i, k)...); err != nil {
			t.Fatal(err)
		}
		i += k
		fs := statFiles(t, dir)
		fs.size = uint64(i)
		states = append(states, fs)
	}
	return states
}

// checkFileLog reopens dir and requires a healthy log of want entries that
// still accepts appends.
func checkFileLog(t *testing.T, dir string, want uint64) {
	t.Helper()
	ctx := context.Background()
	st, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Damaged(); err != nil {
		t.Fatal(err)
	}
	l, verifier := openTestLog(t, st)
	if l.Size() != want {
		t.Fatalf("recovered %d entries, want %d", l.Size(), want)
	}
	if _, err := Fsck(ctx, st, verifier); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, testEntry(int(want))); err != nil {
		t.Fatal(err)
	}
	rep, err := Fsck(ctx, st, verifier)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Size != want+1 || rep.Checkpoint.Size != want+1 {
		t.Fatalf("after append: %+v", rep)
	}
}

func TestFileStorageReopen(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	buildFileLog(t, dir, 25)
	st, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(dir, nil); err == nil {
		t.Fatal("a second OpenFile of a locked directory succeeded")
	}
	l, verifier := openTestLog(t, st)
	rep, err := Fsck(ctx, st, verifier)
	if err != nil {
		t.Fatal(err)
	}
	size, root := l.Root()
	if size != 25 || rep.Size != 25 || string(rep.Root) != string(root) || rep.Checkpoints < 13 {
		t.Fatalf("report %+v, log size %d", rep, size)
	}
	leaves, err := st.ReadLeaves(ctx, 0, 25)
	if err != nil {
		t.Fatal(err)
	}
	if string(refRoot(leaves)) != string(root) {
		t.Fatal("file storage root differs from the reference")
	}
	if err := st.AppendLeaves(ctx, 3, leaves[:1]); !errors.Is(err, ErrConflict) {
		t.Fatalf("append at a stale position: %v", err)
	}
	if _, err := st.ReadLeaves(ctx, 20, 6); err == nil {
		t.Fatal("read past the end")
	}
	st.Close()
	if err := st.AppendLeaves(ctx, 25, leaves[:1]); err == nil {
		t.Fatal("append to a closed storage")
	}
	// Not a log directory file.
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "leaves"), []byte("something else entirely"), 0o600)
	if _, err := OpenFile(bad, nil); err == nil || !strings.Contains(err.Error(), "not a tvd audit file") {
		t.Fatalf("foreign file: %v", err)
	}
}

// TestFileStorageTornWrites cuts the files at every byte of the last batch,
// as a crash in the middle of an append would, and requires a log that
// verifies and holds every batch that had completed.
func TestFileStorageTornWrites(t *testing.T) {
	dir := t.TempDir()
	states := buildFileLog(t, dir, 12) // batches of 1 and 2 entries
	saved := t.TempDir()
	copyDir(t, dir, saved)
	prev, last := states[len(states)-2], states[len(states)-1]
	prevSize, lastSize := prev.size, last.size
	if lastSize-prevSize < 2 {
		t.Fatalf("the last batch has %d entries, want several", lastSize-prevSize)
	}
	restore := func() { copyDir(t, saved, dir) }

	// Leaves torn inside the last batch (every byte around frame boundaries,
	// a stride elsewhere): index and checkpoint not yet written.
	var marks []int64
	for _, sp := range frameSpans(t, dir) {
		marks = append(marks, sp[0], sp[1])
	}
	for _, cut := range cutPoints(prev.leaves, last.leaves, marks) {
		restore()
		truncateFiles(t, dir, fileState{leaves: cut, index: prev.index, cps: prev.cps})
		t.Run(fmt.Sprintf("leaves-%d", cut), func(t *testing.T) { checkFileLog(t, dir, prevSize) })
	}
	// Leaves complete, index torn at every byte.
	for _, cut := range cutPoints(prev.index, last.index, nil) {
		restore()
		truncateFiles(t, dir, fileState{leaves: last.leaves, index: cut, cps: prev.cps})
		t.Run(fmt.Sprintf("index-%d", cut), func(t *testing.T) { checkFileLog(t, dir, lastSize) })
	}
	// Leaves and index complete, checkpoint torn.
	for _, cut := range cutPoints(prev.cps, last.cps, nil) {
		restore()
		truncateFiles(t, dir, fileState{leaves: last.leaves, index: last.index, cps: cut})
		t.Run(fmt.Sprintf("checkpoint-%d", cut), func(t *testing.T) { checkFileLog(t, dir, lastSize) })
	}
	// Zero-filled tails, as a power loss can leave after the size was extended.
	restore()
	for name, n := range map[string]int{"leaves": 4096, "index": 24, "checkpoints": 100} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(make([]byte, n))
		f.Close()
	}
	t.Run("zero-tails", func(t *testing.T) { checkFileLog(t, dir, lastSize) })
}

// cutPoints returns offsets in [lo, hi): every offset within frameOverhead
// bytes of a mark, and about 24 more spread evenly. (Each cut costs a few
// fsyncs, so not every byte of a long frame is tried.)
func cutPoints(lo, hi int64, marks []int64) []int64 {
	seen := map[int64]bool{}
	var out []int64
	add := func(c int64) {
		if c >= lo && c < hi && !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	add(lo)
	for _, m := range marks {
		for d := int64(-frameOverhead); d <= frameOverhead; d++ {
			add(m + d)
		}
	}
	step := max(1, (hi-lo)/24)
	for c := lo; c < hi; c += step {
		add(c)
	}
	add(hi - 1)
	return out
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	for _, name := range []string{"leaves", "index", "checkpoints"} {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// frameSpans returns the [start, end) byte range of every leaf frame.
func frameSpans(t *testing.T, dir string) [][2]int64 {
	t.Helper()
	idx, err := os.ReadFile(filepath.Join(dir, "index"))
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, "leaves"))
	if err != nil {
		t.Fatal(err)
	}
	var spans [][2]int64
	for i := headerLen; i+8 <= len(idx); i += 8 {
		spans = append(spans, [2]int64{int64(binary.BigEndian.Uint64(idx[i:])), 0})
	}
	for i := range spans {
		if i+1 < len(spans) {
			spans[i][1] = spans[i+1][0]
		} else {
			spans[i][1] = fi.Size()
		}
	}
	return spans
}

// fsckDir opens dir and runs Fsck, returning its error.
func fsckDir(t *testing.T, dir string) error {
	t.Helper()
	st, err := OpenFile(dir, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	_, verifier, _ := testKeys(t, testOrigin, 1)
	_, err = Fsck(context.Background(), st, verifier)
	if err == nil {
		// Fsck found nothing, so the log must open and be what was built.
		signer, _, _ := testKeys(t, testOrigin, 1)
		if _, oerr := Open(context.Background(), st, Config{Signer: signer, Verifier: verifier}); oerr != nil {
			t.Fatalf("fsck passed but Open failed: %v", oerr)
		}
	}
	return err
}

// TestFileStorageTamper edits the leaf file's bytes: an entry altered,
// removed or reordered at the first, a middle and the last position, each
// found by Fsck at that position.
func TestFileStorageTamper(t *testing.T) {
	dir := t.TempDir()
	const n = 12
	buildFileLog(t, dir, n)
	saved := t.TempDir()
	copyDir(t, dir, saved)
	spans := frameSpans(t, dir)
	if len(spans) != n {
		t.Fatalf("%d frames", len(spans))
	}
	leavesPath := filepath.Join(dir, "leaves")
	edit := func(f func(b []byte) []byte) {
		copyDir(t, saved, dir)
		b, err := os.ReadFile(leavesPath)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(leavesPath, f(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsckDir(t, dir); err != nil {
		t.Fatalf("untouched log: %v", err)
	}
	for _, pos := range []int{0, 5, n - 1} {
		sp := spans[pos]
		t.Run(fmt.Sprintf("altered-%d", pos), func(t *testing.T) {
			edit(func(b []byte) []byte { b[sp[0]+5+10] ^= 0x20; return b })
			if err := fsckDir(t, dir); !isCorruptAt(err, uint64(pos)) {
				t.Fatalf("got %v", err)
			}
		})
		t.Run(fmt.Sprintf("removed-%d", pos), func(t *testing.T) {
			edit(func(b []byte) []byte { return append(b[:sp[0]:sp[0]], b[sp[1]:]...) })
			if err := fsckDir(t, dir); !isCorruptAt(err, uint64(pos)) {
				t.Fatalf("got %v", err)
			}
		})
		t.Run(fmt.Sprintf("reordered-%d", pos), func(t *testing.T) {
			a, b2 := pos, pos+1
			if pos == n-1 {
				a, b2 = pos-1, pos
			}
			sa, sb := spans[a], spans[b2]
			edit(func(b []byte) []byte {
				out := append([]byte{}, b[:sa[0]]...)
				out = append(out, b[sb[0]:sb[1]]...)
				out = append(out, b[sa[0]:sa[1]]...)
				return append(out, b[sb[1]:]...)
			})
			if err := fsckDir(t, dir); !isCorruptAt(err, uint64(a)) {
				t.Fatalf("got %v", err)
			}
		})
		// An editor who knows the format and recomputes the checksum: only
		// the signed checkpoints catch it.
		t.Run(fmt.Sprintf("forged-%d", pos), func(t *testing.T) {
			edit(func(b []byte) []byte {
				frame := b[sp[0]:sp[1]]
				payload := frame[5 : len(frame)-4]
				i := strings.Index(string(payload), `"actor":"`) + len(`"actor":"`)
				payload[i] = 'X' // still a valid entry
				var sb [8]byte
				binary.BigEndian.PutUint64(sb[:], uint64(pos))
				crc := crc32.Update(crc32.Update(0, castagnoli, sb[:]), castagnoli, frame[:len(frame)-4])
				binary.BigEndian.PutUint32(frame[len(frame)-4:], crc)
				return b
			})
			err := fsckDir(t, dir)
			if !isCorruptAt(err, uint64(pos)) || !errors.Is(err, ErrRootMismatch) {
				t.Fatalf("got %v", err)
			}
		})
	}
	// An index entry in the middle zeroed: flagged at open, found by Fsck.
	t.Run("index-hole", func(t *testing.T) {
		copyDir(t, saved, dir)
		idxPath := filepath.Join(dir, "index")
		b, err := os.ReadFile(idxPath)
		if err != nil {
			t.Fatal(err)
		}
		copy(b[headerLen+8*5:], make([]byte, 8))
		os.WriteFile(idxPath, b, 0o600)
		st, err := OpenFile(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		if !errors.Is(st.Damaged(), ErrDamaged) {
			t.Fatalf("damage not flagged: %v", st.Damaged())
		}
		_, verifier, _ := testKeys(t, testOrigin, 1)
		if _, err := Fsck(context.Background(), st, verifier); !isCorruptAt(err, 5) && !isCorruptAt(err, 4) {
			t.Fatalf("got %v", err)
		}
	})
	// Damage that a crash cannot explain stops appends.
	edit(func(b []byte) []byte { b[spans[n-1][0]+7] ^= 1; return b })
	st, err := OpenFile(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if !errors.Is(st.Damaged(), ErrDamaged) {
		t.Fatalf("damage not flagged: %v", st.Damaged())
	}
	if err := st.AppendLeaves(context.Background(), n, [][]byte{[]byte("x")}); !errors.Is(err, ErrDamaged) {
		t.Fatalf("append to a damaged log: %v", err)
	}
	if fi, _ := os.Stat(leavesPath); fi.Size() != spans[n-1][1] {
		t.Fatal("OpenFile changed a damaged file")
	}
}

const crashEnv = "TVD_AUDIT_CRASH_CHILD_DIR"

// TestFileCrashChild is the child process of TestFileStorageKill: it appends
// from several goroutines until it is killed, printing each acknowledged end.
func TestFileCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnv)
	if dir == "" {
		t.Skip("runs only as the child of TestFileStorageKill")
	}
	ctx := context.Background()
	st, err := OpenFile(dir, nil)
	if err != nil {
		fmt.Println("error", err)
		os.Exit(2)
	}
	l, _ := openTestLog(t, st)
	b := NewBatcher(l, BatcherConfig{MaxBatch: 64, MaxDelay: 200 * time.Microsecond})
	go b.Run(ctx)
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				k := 1 + (g+i)%3
				first, err := b.Append(ctx, testEntries(g*1_000_000+i, k)...)
				mu.Lock()
				if err != nil {
					fmt.Fprintln(out, "error", err)
				} else {
					fmt.Fprintln(out, "acked", first+uint64(k))
				}
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestFileStorageKill re-executes the test binary as a child that appends in
// a loop, kills it with SIGKILL at varying moments, and requires after each
// kill a log that passes Fsck and holds every acknowledged entry.
func TestFileStorageKill(t *testing.T) {
	if os.Getenv(crashEnv) != "" {
		t.Skip("already the child")
	}
	dir := t.TempDir()
	var acked uint64
	for round := range 6 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFileCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), crashEnv+"="+dir)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		roundAcks := 0
		deadline := time.Now().Add(20 * time.Second)
		want := 50 + 37*round // kill after a varying number of acknowledgements
		for roundAcks < want && time.Now().Before(deadline) && sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "acked" {
				n, _ := strconv.ParseUint(f[1], 10, 64)
				acked = max(acked, n)
				roundAcks++
			} else {
				t.Errorf("child: %s", sc.Text())
			}
		}
		time.Sleep(time.Duration(round*700) * time.Microsecond)
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		for sc.Scan() { // acknowledgements printed before the kill
			f := strings.Fields(sc.Text())
			if len(f) == 2 && f[0] == "acked" {
				n, _ := strconv.ParseUint(f[1], 10, 64)
				acked = max(acked, n)
			}
		}
		cmd.Wait()
		if roundAcks < want {
			t.Fatalf("round %d: child acknowledged only %d appends", round, roundAcks)
		}

		var recovery strings.Builder
		st, err := OpenFile(dir, slog.New(slog.NewTextHandler(&recovery, nil)))
		if err != nil {
			t.Fatalf("round %d: reopen: %v", round, err)
		}
		if err := st.Damaged(); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		_, verifier, _ := testKeys(t, testOrigin, 1)
		rep, err := Fsck(context.Background(), st, verifier)
		if err != nil {
			t.Fatalf("round %d: fsck: %v", round, err)
		}
		if rep.Size < acked {
			t.Fatalf("round %d: log has %d entries but %d were acknowledged", round, rep.Size, acked)
		}
		t.Logf("round %d: %d entries, %d acknowledged, checkpoint at %d; recovery: %s",
			round, rep.Size, acked, rep.Checkpoint.Size, strings.TrimSpace(recovery.String()))
		st.Close()
	}
	checkFileLog(t, dir, func() uint64 {
		st, _ := OpenFile(dir, nil)
		defer st.Close()
		l, _ := openTestLog(t, st)
		return l.Size()
	}())
}
