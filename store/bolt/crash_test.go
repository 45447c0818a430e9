package bolt_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/store"
	"github.com/tvd-dev/tvd/store/bolt"
)

// crashEnv, when set in the environment, turns the test binary into the
// writer child of TestCrashSafety; its value is the store file.
const crashEnv = "TVD_STORE_BOLT_CRASH_CHILD"

// crashWindow is how many batches stay in the store: batch i deletes the
// keys of batch i-crashWindow, so the freelist and page reuse are exercised.
const crashWindow = 10

func TestMain(m *testing.M) {
	if path := os.Getenv(crashEnv); path != "" {
		if err := crashChild(path); err != nil {
			fmt.Fprintln(os.Stderr, "crash child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func crashKeyA(i int) string { return fmt.Sprintf("crash/a/%08d", i) }
func crashKeyB(i int) string { return fmt.Sprintf("crash/b/%08d", i) }

const crashLast = "crash/last"

// crashValue is batch i's value: its length varies from 1 byte to a few
// pages so that commits split and merge pages.
func crashValue(i int) []byte {
	v := make([]byte, 1+(i*7919)%9000)
	for j := range v {
		v[j] = byte(i*31 + j)
	}
	return v
}

// crashChild commits batches in a loop and prints "ack N" after Commit of
// batch N returned. Each batch writes a/N and b/N with the same value,
// moves crash/last to N (guarded by its revision) and deletes the pair
// crashWindow batches back. It stops by itself after a while in case the
// parent never kills it.
func crashChild(path string) error {
	ctx := context.Background()
	s, err := bolt.Open(path, bolt.WithLockTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer s.Close()
	last, cond := 0, store.Absent(crashLast)
	if kv, err := s.Get(ctx, crashLast); err == nil {
		if last, err = strconv.Atoi(string(kv.Value)); err != nil {
			return fmt.Errorf("crash/last %q: %w", kv.Value, err)
		}
		cond = store.RevIs(crashLast, kv.Rev)
	} else if !errors.Is(err, store.ErrNotFound) {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := last + 1; time.Now().Before(deadline); i++ {
		v := crashValue(i)
		ops := []store.Op{
			store.Put(crashKeyA(i), v),
			store.Put(crashKeyB(i), v),
			store.Put(crashLast, []byte(strconv.Itoa(i))),
		}
		if old := i - crashWindow; old >= 1 {
			ops = append(ops, store.Delete(crashKeyA(old)), store.Delete(crashKeyB(old)))
		}
		rev, err := s.Commit(ctx, store.Batch{Conds: []store.Cond{cond}, Ops: ops})
		if err != nil {
			return fmt.Errorf("batch %d: %w", i, err)
		}
		cond = store.RevIs(crashLast, rev)
		if _, err := fmt.Fprintf(os.Stdout, "ack %d\n", i); err != nil {
			return err
		}
	}
	return nil
}

// TestCrashSafety runs the writer child, kills it with SIGKILL at a random
// moment, and checks that the file is consistent, that every acknowledged
// batch is there, and that no batch is half applied. It repeats on the same
// file, so each child also starts from the state a crash left.
func TestCrashSafety(t *testing.T) {
	path := filepath.Join(t.TempDir(), "crash.db")
	const rounds = 10
	prev := 0
	for round := range rounds {
		acked := runAndKill(t, path, round == 0)
		if len(acked) == 0 {
			t.Fatalf("round %d: the child acknowledged nothing before it was killed", round)
		}
		if acked[0] != prev+1 {
			t.Fatalf("round %d: child resumed at batch %d, want %d", round, acked[0], prev+1)
		}
		maxAck := acked[len(acked)-1]
		prev = verifyCrashState(t, path, maxAck)
		t.Logf("round %d: %d batches acknowledged, last acked %d, found %d", round, len(acked), maxAck, prev)
	}
}

// runAndKill starts the child, lets it acknowledge some batches, kills it
// at a random moment and returns the batches it acknowledged, in order.
// With checkLock it also checks, while the child runs, that this process
// cannot open the store the child holds.
func runAndKill(t *testing.T, path string, checkLock bool) []int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashEnv+"="+path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}()
	lines := make(chan string)
	readErr := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		readErr <- sc.Err()
	}()
	var acked []int
	record := func(line string) {
		n, err := strconv.Atoi(strings.TrimPrefix(line, "ack "))
		if err != nil || !strings.HasPrefix(line, "ack ") {
			t.Fatalf("child printed %q, want \"ack N\"", line)
		}
		if len(acked) > 0 && n != acked[len(acked)-1]+1 {
			t.Fatalf("child acknowledged %d after %d", n, acked[len(acked)-1])
		}
		acked = append(acked, n)
	}
	// Wait for the first acknowledgement, then kill at a random moment.
	select {
	case line, ok := <-lines:
		if !ok {
			_ = cmd.Wait()
			t.Fatalf("child exited before acknowledging anything: %s", stderr.String())
		}
		record(line)
	case <-time.After(20 * time.Second):
		t.Fatalf("child acknowledged nothing in 20s: %s", stderr.String())
	}
	if checkLock {
		s, err := bolt.Open(path, bolt.WithLockTimeout(100*time.Millisecond))
		if err == nil {
			s.Close()
			t.Fatal("opened the store while the child process held it")
		}
		if !errors.Is(err, bolt.ErrLocked) || !strings.Contains(err.Error(), "store "+path+" is in use by another process") {
			t.Fatalf("open while the child holds the store: %v, want ErrLocked naming the file", err)
		}
	}
	kill := time.After(time.Duration(rand.Int64N(int64(80 * time.Millisecond))))
wait:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("child stopped before it was killed: %s", stderr.String())
			}
			record(line)
		case <-kill:
			break wait
		}
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Everything the child wrote before it died is still in the pipe.
	for line := range lines {
		record(line)
	}
	if err := <-readErr; err != nil && !errors.Is(err, io.EOF) {
		t.Fatalf("read child output: %v", err)
	}
	err = cmd.Wait()
	killed = true
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("child ended with %v, want killed by SIGKILL; stderr: %s", err, stderr.String())
	}
	return acked
}

// verifyCrashState opens the store after a crash and checks it against the
// last acknowledged batch; it returns the last batch found.
func verifyCrashState(t *testing.T, path string, maxAck int) int {
	t.Helper()
	ctx := context.Background()
	s, err := bolt.Open(path, bolt.WithLockTimeout(5*time.Second))
	if err != nil {
		t.Fatalf("reopen after crash: %v", err)
	}
	defer s.Close()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("integrity check after crash: %v", err)
	}
	kv, err := s.Get(ctx, crashLast)
	if err != nil {
		t.Fatalf("after crash: %v", err)
	}
	last, err := strconv.Atoi(string(kv.Value))
	if err != nil {
		t.Fatalf("crash/last = %q", kv.Value)
	}
	// The batch in flight at the kill may or may not have landed, but
	// every acknowledged one must have.
	if last < maxAck || last > maxAck+1 {
		t.Fatalf("store holds batches up to %d, child acknowledged up to %d", last, maxAck)
	}
	var wantA, wantB []string
	for i := max(1, last-crashWindow+1); i <= last; i++ {
		wantA = append(wantA, crashKeyA(i))
		wantB = append(wantB, crashKeyB(i))
	}
	for _, side := range []struct {
		prefix string
		want   []string
	}{{"crash/a/", wantA}, {"crash/b/", wantB}} {
		kvs, err := s.List(ctx, side.prefix, store.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, kv := range kvs {
			got = append(got, kv.Key)
			i, _ := strconv.Atoi(strings.TrimPrefix(kv.Key, side.prefix))
			if !bytes.Equal(kv.Value, crashValue(i)) {
				t.Fatalf("%q holds %d bytes that are not batch %d's value", kv.Key, len(kv.Value), i)
			}
		}
		if strings.Join(got, ",") != strings.Join(side.want, ",") {
			t.Fatalf("after crash at batch %d, %s holds %q, want %q (a half-applied batch)", last, side.prefix, got, side.want)
		}
	}
	// Both keys of a batch, and crash/last, were written at one revision.
	a, errA := s.Get(ctx, crashKeyA(last))
	b, errB := s.Get(ctx, crashKeyB(last))
	if errA != nil || errB != nil || a.Rev != kv.Rev || b.Rev != kv.Rev {
		t.Fatalf("batch %d: revisions a=%d b=%d last=%d (%v, %v), want equal", last, a.Rev, b.Rev, kv.Rev, errA, errB)
	}
	return last
}
