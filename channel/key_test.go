package channel

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestGenerateKeyClampedAndDerivesPublic(t *testing.T) {
	// Deterministic randomness: all 0xff bytes must come out clamped.
	k, err := GenerateKeyFrom(bytes.NewReader(bytes.Repeat([]byte{0xff}, 32)))
	if err != nil {
		t.Fatal(err)
	}
	if k[0]&7 != 0 || k[31]&0x80 != 0 || k[31]&0x40 == 0 {
		t.Fatalf("key not clamped: first %#x last %#x", k[0], k[31])
	}
	// RFC 7748 §6.1 test vector (Alice).
	priv, err := ParsePrivateKey("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=")
	if err == nil {
		t.Fatalf("unclamped RFC 7748 scalar accepted: %v", priv)
	}
	var alice PrivateKey
	copy(alice[:], mustHex(t, "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
	alice.clamp()
	pub := alice.PublicKey()
	if got, want := fmt.Sprintf("%x", pub[:]), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"; got != want {
		t.Fatalf("public key = %s, want %s", got, want)
	}
	if _, err := GenerateKeyFrom(bytes.NewReader(make([]byte, 5))); err == nil {
		t.Fatal("short randomness accepted")
	}
}

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	var b []byte
	if _, err := fmt.Sscanf(s, "%x", &b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestPrivateKeyNeverFormats(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	text := k.SecretBase64()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	log.Info("x", "key", k, "cfg", Config{PrivateKey: k})
	for _, s := range []string{fmt.Sprint(k), fmt.Sprintf("%v %+v %#v %s %d %x %q", k, k, k, k, k, k, k), fmt.Sprintf("%v %+v", Config{PrivateKey: k}, &Config{PrivateKey: k}), logs.String()} {
		if strings.Contains(s, string(text)) {
			t.Fatalf("private key leaked in %q", s)
		}
	}
	js, err := json.Marshal(Config{Name: "tvd0", PrivateKey: k})
	if err == nil || strings.Contains(string(js), string(text)) {
		t.Fatalf("json.Marshal of a Config with a private key: %s, %v; want an error", js, err)
	}
	var jlogs bytes.Buffer
	slog.New(slog.NewJSONHandler(&jlogs, nil)).Info("x", "cfg", Config{PrivateKey: k}, "key", k)
	asArray := fmt.Sprintf("[%d,%d,%d,%d,", k[0], k[1], k[2], k[3])
	if strings.Contains(jlogs.String(), string(text)) || strings.Contains(jlogs.String(), asArray) {
		t.Fatalf("private key leaked in JSON log: %s", jlogs.String())
	}
	if !strings.Contains(logs.String(), "redacted") {
		t.Fatalf("log does not show the redaction: %s", logs.String())
	}
}

func TestParsePublicKey(t *testing.T) {
	k, _ := GenerateKey()
	pub := k.PublicKey()
	got, err := ParsePublicKey(pub.String())
	if err != nil || got != pub {
		t.Fatalf("round trip: %v %v", got, err)
	}
	for _, bad := range []string{"", "abc", strings.Repeat("A", 43) + "=", "!" + pub.String()[1:], pub.String() + "="} {
		if _, err := ParsePublicKey(bad); err == nil {
			t.Errorf("ParsePublicKey(%q) accepted", bad)
		}
	}
	var u PublicKey
	if err := u.UnmarshalText([]byte(pub.String())); err != nil || u != pub {
		t.Fatalf("UnmarshalText: %v", err)
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys", "d1.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	if dst, _ := os.Stat(filepath.Dir(path)); dst.Mode().Perm() != 0o700 {
		t.Fatalf("key dir mode %v, want 0700", dst.Mode().Perm())
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if k1 != k2 {
		t.Fatal("second load returned a different key")
	}
	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Fatalf("temporary files left behind: %v", ents)
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Fatalf("world-readable key accepted: %v", err)
	}

	bad := filepath.Join(dir, "bad.key")
	if err := os.WriteFile(bad, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(bad); err == nil {
		t.Fatal("garbage key file accepted")
	}
	if b, _ := os.ReadFile(bad); string(b) != "not a key\n" {
		t.Fatal("bad key file was modified")
	}

	link := filepath.Join(dir, "link.key")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(link); err == nil {
		t.Fatal("symlinked key file accepted")
	}

	// Compatible with wg genkey output.
	wg := filepath.Join(dir, "wg.key")
	text := k1.SecretBase64()
	if err := os.WriteFile(wg, append(text, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if k3, err := LoadOrCreateKey(wg); err != nil || k3 != k1 {
		t.Fatalf("load wg-format key: %v", err)
	}
}

func FuzzParseKeys(f *testing.F) {
	k, _ := GenerateKeyFrom(bytes.NewReader(bytes.Repeat([]byte{7}, 32)))
	text := k.SecretBase64()
	f.Add(string(text))
	f.Add(k.PublicKey().String())
	f.Add("")
	f.Add(strings.Repeat("A", 44))
	f.Fuzz(func(t *testing.T, s string) {
		if p, err := ParsePublicKey(s); err == nil {
			if q, err := ParsePublicKey(p.String()); err != nil || q != p {
				t.Fatalf("public key round trip: %v", err)
			}
		}
		if k, err := ParsePrivateKey(s); err == nil {
			text := k.SecretBase64()
			if q, err := ParsePrivateKey(string(text)); err != nil || q != k {
				t.Fatalf("private key round trip: %v", err)
			}
		}
	})
}
