package audit

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func FuzzParseFrame(f *testing.F) {
	f.Add(appendFrame(nil, 0, flagCommit, []byte(`{"v":1}`)), uint64(0))
	f.Add(appendFrame(nil, 7, 0, nil), uint64(7))
	f.Add(appendFrame(nil, 7, 0, []byte("x")), uint64(8))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0}, uint64(0))
	f.Fuzz(func(t *testing.T, b []byte, seq uint64) {
		p, flags, n, err := parseFrame(b, seq, MaxEntrySize)
		if err != nil {
			return
		}
		// An accepted frame is exactly what appendFrame writes.
		again := appendFrame(nil, seq, flags, p)
		if n != len(again) || string(again) != string(b[:n]) {
			t.Fatalf("accepted frame %x re-encodes as %x", b[:n], again)
		}
	})
}

// FuzzOpenFile writes arbitrary leaf and index contents behind valid headers
// and requires OpenFile and a full read to fail cleanly, never panic, and to
// return only leaves that pass their frame checks.
func FuzzOpenFile(f *testing.F) {
	var leaves, index []byte
	for i := range 4 {
		index = binary.BigEndian.AppendUint64(index, uint64(headerLen+len(leaves)))
		b, _ := testEntry(i).Encode()
		leaves = appendFrame(leaves, uint64(i), byte(i%2), b)
	}
	f.Add(leaves, index)
	f.Add(leaves[:len(leaves)-3], index)
	f.Add(leaves, index[:12])
	f.Add(leaves, []byte{})
	f.Add([]byte{}, index)
	f.Add(append(leaves, make([]byte, 40)...), append(index, make([]byte, 16)...))
	f.Fuzz(func(t *testing.T, leafBytes, indexBytes []byte) {
		dir := t.TempDir()
		write := func(name string, header, body []byte) {
			if err := os.WriteFile(filepath.Join(dir, name), append(append([]byte{}, header...), body...), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		write("leaves", leavesHeader, leafBytes)
		write("index", indexHeader, indexBytes)
		st, err := OpenFile(dir, nil)
		if err != nil {
			return
		}
		defer st.Close()
		ctx := context.Background()
		size, _ := st.Size(ctx)
		got, err := st.ReadLeaves(ctx, 0, size)
		if err != nil {
			var ce *CorruptError
			if !errors.As(err, &ce) {
				t.Fatalf("read error is not a CorruptError: %v", err)
			}
			if ce.Index >= size {
				t.Fatalf("corruption reported at %d, outside the log of %d", ce.Index, size)
			}
			return // damage inside the indexed part: OpenFile leaves it for Fsck
		}
		if uint64(len(got)) != size {
			t.Fatalf("read %d leaves of %d", len(got), size)
		}
		if st.Damaged() == nil {
			// A healthy storage accepts the next append.
			if err := st.AppendLeaves(ctx, size, [][]byte{[]byte("next")}); err != nil {
				t.Fatalf("append to a recovered storage: %v", err)
			}
			again, err := st.ReadLeaves(ctx, 0, size+1)
			if err != nil || string(again[size]) != "next" {
				t.Fatalf("read after append: %v", err)
			}
		}
	})
}
