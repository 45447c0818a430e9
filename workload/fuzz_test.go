package workload

import "testing"

// FuzzParseSealed: a sealed blob from disk is untrusted input.
func FuzzParseSealed(f *testing.F) {
	f.Add([]byte(storeMagic + "\x00\x0bee:01020304" + "0123456789ab" + "ciphertext"))
	f.Add([]byte(storeMagic))
	f.Add([]byte("TVDS1\n\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		id, rest, err := parseSealed(b)
		if err == nil && (id == "" || len(id)+len(rest)+len(storeMagic)+2 != len(b)) {
			t.Fatalf("parsed %q into id %q and %d bytes", b, id, len(rest))
		}
	})
}
