package audit

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

func TestCheckpointSignOpen(t *testing.T) {
	signer, verifier, _ := testKeys(t, testOrigin, 1)
	h := sha256.Sum256([]byte("root"))
	cp := Checkpoint{Origin: testOrigin, Size: 42, Hash: h[:]}
	signed, err := SignCheckpoint(cp, signer)
	if err != nil {
		t.Fatal(err)
	}
	// C2SP layout: body lines, a blank line, then "— name sig" lines.
	lines := strings.Split(string(signed), "\n")
	if lines[0] != testOrigin || lines[1] != "42" || lines[3] != "" || !strings.HasPrefix(lines[4], "— "+testOrigin+" ") {
		t.Fatalf("unexpected checkpoint layout:\n%s", signed)
	}
	got, err := OpenCheckpoint(signed, verifier)
	if err != nil {
		t.Fatal(err)
	}
	if got.Origin != cp.Origin || got.Size != cp.Size || !bytes.Equal(got.Hash, cp.Hash) {
		t.Fatalf("opened %+v, want %+v", got, cp)
	}

	// Another key of the same name does not verify it.
	_, other, _ := testKeys(t, testOrigin, 2)
	if _, err := OpenCheckpoint(signed, other); err == nil {
		t.Fatal("checkpoint verified with the wrong key")
	}
	// A changed body does not verify.
	forged := bytes.Replace(signed, []byte("\n42\n"), []byte("\n43\n"), 1)
	if _, err := OpenCheckpoint(forged, verifier); err == nil {
		t.Fatal("altered checkpoint verified")
	}
	// Origin must match the signer's name.
	if _, err := SignCheckpoint(Checkpoint{Origin: "other", Size: 1, Hash: h[:]}, signer); err == nil {
		t.Fatal("signed a checkpoint for another origin")
	}
	if _, err := SignCheckpoint(Checkpoint{Origin: testOrigin, Size: 1, Hash: h[:5]}, signer); err == nil {
		t.Fatal("signed a checkpoint with a short hash")
	}
}

func TestCheckpointOriginMustBeKeyName(t *testing.T) {
	// A key named A signing a body whose origin is B is rejected on open.
	skey, vkey, err := GenerateKey(rand.Reader, "keyname")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := NewSigner(skey)
	v, _ := NewVerifier(vkey)
	h := sha256.Sum256(nil)
	body := Checkpoint{Origin: "other.origin", Size: 0, Hash: h[:]}.Marshal()
	signed, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCheckpoint(signed, v); err == nil || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("got %v, want an origin error", err)
	}
}

func TestParseCheckpointStrict(t *testing.T) {
	h := sha256.Sum256([]byte("x"))
	good := string(Checkpoint{Origin: "o", Size: 7, Hash: h[:]}.Marshal())
	if _, err := ParseCheckpoint([]byte(good)); err != nil {
		t.Fatal(err)
	}
	withExt := good + "ext line\n"
	c, err := ParseCheckpoint([]byte(withExt))
	if err != nil || len(c.Extensions) != 1 || string(c.Marshal()) != withExt {
		t.Fatalf("extension: %+v %v", c, err)
	}
	lines := strings.SplitAfter(good, "\n")
	bad := map[string]string{
		"no newline":    strings.TrimSuffix(good, "\n"),
		"two lines":     lines[0] + lines[1],
		"leading zero":  lines[0] + "07\n" + lines[2],
		"plus sign":     lines[0] + "+7\n" + lines[2],
		"negative":      lines[0] + "-7\n" + lines[2],
		"overflow":      lines[0] + "18446744073709551616\n" + lines[2],
		"short hash":    lines[0] + lines[1] + "AAAA\n",
		"unpadded hash": lines[0] + lines[1] + strings.TrimRight(lines[2], "=\n") + "\n",
		"url base64":    lines[0] + lines[1] + strings.NewReplacer("+", "-", "/", "_").Replace(lines[2]),
		"empty origin":  "\n" + lines[1] + lines[2],
		"empty ext":     good + "\n",
		"crlf":          strings.ReplaceAll(good, "\n", "\r\n"),
		"bad utf8":      "\xff\n" + lines[1] + lines[2],
		"tab in origin": "o\tx\n" + lines[1] + lines[2],
		"huge":          good + strings.Repeat("x", MaxCheckpointSize) + "\n",
		"space in size": lines[0] + " 7\n" + lines[2],
		"hex size":      lines[0] + "0x7\n" + lines[2],
		"blank":         "",
		"only newline":  "\n",
	}
	for name, in := range bad {
		if c, err := ParseCheckpoint([]byte(in)); err == nil {
			t.Errorf("%s: accepted %q as %+v", name, in, c)
		}
	}
}

func TestKeys(t *testing.T) {
	seed := bytes.Repeat([]byte{7}, 32)
	s1, v1, err := KeyFromSeed("tvd.example/log", seed)
	if err != nil {
		t.Fatal(err)
	}
	s2, v2, err := KeyFromSeed("tvd.example/log", seed)
	if err != nil {
		t.Fatal(err)
	}
	if s1 != s2 || v1 != v2 {
		t.Fatal("KeyFromSeed is not deterministic")
	}
	derived, err := VerifierKeyFor(s1)
	if err != nil {
		t.Fatal(err)
	}
	if derived != v1 {
		t.Fatalf("VerifierKeyFor = %q, want %q", derived, v1)
	}
	// Many keys, so that some base64 encodings contain '+' and '/'.
	for range 200 {
		skey, vkey, err := GenerateKey(rand.Reader, "tvd.example/log")
		if err != nil {
			t.Fatal(err)
		}
		if got, err := VerifierKeyFor(skey); err != nil || got != vkey {
			t.Fatalf("VerifierKeyFor(%q) = %q, %v; want %q", skey, got, err, vkey)
		}
	}
	if _, _, err := KeyFromSeed("x", seed[:31]); err == nil {
		t.Fatal("accepted a short seed")
	}
	for _, name := range []string{"", "a b", "a+b", "a\nb"} {
		if _, _, err := GenerateKey(rand.Reader, name); err == nil {
			t.Errorf("GenerateKey accepted origin %q", name)
		}
	}
	for _, bad := range []string{"", "PRIVATE+KEY+x", v1, "PRIVATE+KEY+n+00000000+AAAA"} {
		if _, err := VerifierKeyFor(bad); err == nil {
			t.Errorf("VerifierKeyFor accepted %q", bad)
		}
	}
}

func FuzzParseCheckpoint(f *testing.F) {
	h := sha256.Sum256([]byte("x"))
	f.Add(Checkpoint{Origin: "o", Size: 7, Hash: h[:]}.Marshal())
	f.Add(Checkpoint{Origin: testOrigin, Size: 0, Hash: h[:], Extensions: []string{"e1", "e2"}}.Marshal())
	f.Add([]byte("o\n007\nAAAA\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCheckpoint(b)
		if err != nil {
			return
		}
		if !bytes.Equal(c.Marshal(), b) {
			t.Fatalf("accepted non-canonical checkpoint %q (re-marshals to %q)", b, c.Marshal())
		}
	})
}

func FuzzOpenCheckpoint(f *testing.F) {
	signer, verifier, _ := testKeys(f, testOrigin, 1)
	h := sha256.Sum256([]byte("x"))
	for _, size := range []uint64{0, 1, 1 << 40} {
		s, err := SignCheckpoint(Checkpoint{Origin: testOrigin, Size: size, Hash: h[:]}, signer)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(s)
	}
	f.Add([]byte("tvd.test/audit\n1\nAAAA\n\n— tvd.test/audit AAAA\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := OpenCheckpoint(b, verifier)
		if err != nil {
			return
		}
		// What was parsed is exactly the text our key signed.
		n, err := note.Open(b, note.VerifierList(verifier))
		if err != nil {
			t.Fatalf("OpenCheckpoint accepted a note that note.Open rejects: %v", err)
		}
		if n.Text != string(c.Marshal()) || len(n.Sigs) == 0 || n.Sigs[0].Name != testOrigin {
			t.Fatalf("opened checkpoint %+v does not match the signed text %q", c, n.Text)
		}
	})
}
