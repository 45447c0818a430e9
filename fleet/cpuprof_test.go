package fleet

import (
	"bytes"
	"context"
	"crypto/sha256"
	"runtime/pprof"
	"sync"
	"testing"
	"time"
)

// TestCPUByLabel profiles two labelled busy goroutines and checks that the
// parser attributes CPU to both labels.
func TestCPUByLabel(t *testing.T) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err != nil {
		t.Skipf("cannot profile here (another CPU profile is running?): %v", err)
	}
	var wg sync.WaitGroup
	for _, side := range []string{"a", "b"} {
		wg.Add(1)
		pprof.Do(context.Background(), pprof.Labels("side", side), func(context.Context) {
			go func() {
				defer wg.Done()
				h := sha256.Sum256([]byte(side))
				for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); {
					h = sha256.Sum256(h[:])
				}
			}()
		})
	}
	wg.Wait()
	pprof.StopCPUProfile()
	got, err := CPUByLabel(buf.Bytes(), "side")
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] < 10*time.Millisecond || got["b"] < 10*time.Millisecond {
		t.Fatalf("cpu by label %v: want some for a and for b", got)
	}
}

func FuzzCPUByLabel(f *testing.F) {
	var buf bytes.Buffer
	if err := pprof.StartCPUProfile(&buf); err == nil {
		h := sha256.Sum256(nil)
		for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
			h = sha256.Sum256(h[:])
		}
		pprof.StopCPUProfile()
		f.Add(buf.Bytes())
	}
	f.Add([]byte{0x1f, 0x8b})
	f.Fuzz(func(t *testing.T, b []byte) {
		CPUByLabel(b, "side")
	})
}
