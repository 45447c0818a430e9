package audit

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

const testOrigin = "tvd.test/audit"

// testKeys returns a deterministic key pair for origin derived from seed.
func testKeys(t testing.TB, origin string, seed byte) (note.Signer, note.Verifier, string) {
	t.Helper()
	s := make([]byte, 32)
	for i := range s {
		s[i] = seed + byte(i)
	}
	skey, vkey, err := KeyFromSeed(origin, s)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	verifier, err := NewVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return signer, verifier, vkey
}

// testClock is a deterministic clock.
type testClock struct{ t time.Time }

func (c *testClock) Now() time.Time {
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func testEntry(i int) Entry {
	kinds := []string{KindEnrol, KindAdmit, KindRefuse, KindVerdict, KindReaction, KindPolicy, KindSecret, KindSnapshot, KindAdmin}
	e := Entry{
		Time:    time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC).Add(time.Duration(i) * time.Microsecond),
		Kind:    kinds[i%len(kinds)],
		Actor:   "spiffe://tvd.test/controller",
		Subject: fmt.Sprintf("spiffe://tvd.test/domain/red/role/web/ee/ee-%d", i),
		Domain:  "red",
		Detail:  map[string]string{"seq": fmt.Sprint(i), "reason": "measurement listed"},
	}
	if i%5 == 0 {
		e.Domain = ""
		e.Detail = nil
	}
	return e
}

func testEntries(from, n int) []Entry {
	out := make([]Entry, n)
	for i := range out {
		out[i] = testEntry(from + i)
	}
	return out
}

func openTestLog(t testing.TB, st Storage) (*Log, note.Verifier) {
	t.Helper()
	signer, verifier, _ := testKeys(t, testOrigin, 1)
	l, err := Open(context.Background(), st, Config{Signer: signer, Verifier: verifier,
		Now: (&testClock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}).Now})
	if err != nil {
		t.Fatal(err)
	}
	return l, verifier
}

// refRoot is an independent implementation of the RFC 6962 Merkle tree hash
// (section 2.1), used to check the log.
func refRoot(leaves [][]byte) []byte {
	switch n := len(leaves); n {
	case 0:
		h := sha256.Sum256(nil)
		return h[:]
	case 1:
		h := sha256.Sum256(append([]byte{0}, leaves[0]...))
		return h[:]
	default:
		k := 1
		for k*2 < n {
			k *= 2
		}
		b := append([]byte{1}, refRoot(leaves[:k])...)
		b = append(b, refRoot(leaves[k:])...)
		h := sha256.Sum256(b)
		return h[:]
	}
}
