package channel

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/crypto/curve25519"
)

// KeyLen is the length in bytes of WireGuard (Curve25519) keys.
const KeyLen = 32

// PrivateKey is a clamped Curve25519 private key. It never formats or logs
// its value: String, GoString and LogValue return a redacted placeholder.
// Encoders cannot serialise it either: MarshalText fails, so a Config cannot
// end up in JSON or YAML by accident. Use [PrivateKey.SecretBase64] only to
// persist the key on the node that owns it.
type PrivateKey [KeyLen]byte

// PublicKey is a Curve25519 public key; its text form is standard base64, as
// printed by wg(8).
type PublicKey [KeyLen]byte

// GenerateKey returns a new private key read from crypto/rand.
func GenerateKey() (PrivateKey, error) {
	return GenerateKeyFrom(rand.Reader)
}

// GenerateKeyFrom returns a new private key read from r (injectable
// randomness for tests). The key is clamped as Curve25519 requires.
func GenerateKeyFrom(r io.Reader) (PrivateKey, error) {
	var k PrivateKey
	if _, err := io.ReadFull(r, k[:]); err != nil {
		return PrivateKey{}, fmt.Errorf("generate key: %w", err)
	}
	k.clamp()
	return k, nil
}

func (k *PrivateKey) clamp() {
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
}

// IsZero reports whether k is the all-zero (unset) key.
func (k PrivateKey) IsZero() bool { return k == PrivateKey{} }

// PublicKey derives the public key of k.
func (k PrivateKey) PublicKey() PublicKey {
	var pub PublicKey
	curve25519.ScalarBaseMult((*[KeyLen]byte)(&pub), (*[KeyLen]byte)(&k))
	return pub
}

// String returns a redacted placeholder, never the key.
func (k PrivateKey) String() string { return "[private key redacted]" }

// GoString returns a redacted placeholder, never the key.
func (k PrivateKey) GoString() string { return "channel.PrivateKey{redacted}" }

// Format prints a redacted placeholder for every verb (%d or %x included),
// never the key.
func (k PrivateKey) Format(f fmt.State, verb rune) { io.WriteString(f, k.String()) }

// LogValue makes slog print a redacted placeholder, never the key.
func (k PrivateKey) LogValue() slog.Value { return slog.StringValue(k.String()) }

// SecretBase64 returns the standard base64 form of the key (the format of
// wg genkey), for persisting it on the owning node only. Callers should
// clear the slice after use.
func (k PrivateKey) SecretBase64() []byte {
	out := make([]byte, base64.StdEncoding.EncodedLen(KeyLen))
	base64.StdEncoding.Encode(out, k[:])
	return out
}

// ErrPrivateKeyMarshal is returned when an encoder tries to serialise a
// private key.
var ErrPrivateKeyMarshal = errors.New("channel: private keys are never serialised; use SecretBase64 to persist one")

// MarshalText always fails with ErrPrivateKeyMarshal, so that encoders
// (JSON, YAML, slog's JSON handler) never write a private key.
func (k PrivateKey) MarshalText() ([]byte, error) { return nil, ErrPrivateKeyMarshal }

// ParsePrivateKey parses a base64 private key (the format of wg genkey). It
// rejects keys that are not 32 bytes, the zero key, and unclamped keys.
func ParsePrivateKey(s string) (PrivateKey, error) {
	b, err := decodeKey(s)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("parse private key: %w", err)
	}
	k := PrivateKey(b)
	if k.IsZero() {
		return PrivateKey{}, errors.New("parse private key: key is all zero")
	}
	c := k
	c.clamp()
	if c != k {
		return PrivateKey{}, errors.New("parse private key: key is not a clamped Curve25519 scalar")
	}
	return k, nil
}

// String returns the standard base64 form of the key.
func (p PublicKey) String() string { return base64.StdEncoding.EncodeToString(p[:]) }

// IsZero reports whether p is the all-zero (unset) key.
func (p PublicKey) IsZero() bool { return p == PublicKey{} }

// MarshalText returns the standard base64 form of the key.
func (p PublicKey) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText parses the standard base64 form of a key.
func (p *PublicKey) UnmarshalText(b []byte) error {
	k, err := ParsePublicKey(string(b))
	if err != nil {
		return err
	}
	*p = k
	return nil
}

func (p PublicKey) hex() string { return hex.EncodeToString(p[:]) }

// ParsePublicKey parses a standard base64 public key (the format of wg
// pubkey). It rejects keys that are not 32 bytes and the zero key.
func ParsePublicKey(s string) (PublicKey, error) {
	b, err := decodeKey(s)
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse public key: %w", err)
	}
	if b == [KeyLen]byte{} {
		return PublicKey{}, errors.New("parse public key: key is all zero")
	}
	return PublicKey(b), nil
}

func decodeKey(s string) ([KeyLen]byte, error) {
	var k [KeyLen]byte
	if len(s) != base64.StdEncoding.EncodedLen(KeyLen) {
		return k, fmt.Errorf("expected %d base64 characters, got %d", base64.StdEncoding.EncodedLen(KeyLen), len(s))
	}
	buf := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	defer clear(buf)
	n, err := base64.StdEncoding.Strict().Decode(buf, []byte(s))
	if err != nil {
		return k, errors.New("expected standard base64 encoding of 32 bytes")
	}
	if n != KeyLen {
		return k, fmt.Errorf("expected %d bytes, got %d", KeyLen, n)
	}
	copy(k[:], buf)
	return k, nil
}

// LoadOrCreateKey returns the private key stored at path, creating it (and
// its directory, mode 0700) with a fresh key and mode 0600 if it does not
// exist. An existing key file must be a regular file readable by its owner
// only (no group or other permission bits) and hold one base64 key, as
// written by wg genkey; anything else is an error, and the file is left
// untouched.
func LoadOrCreateKey(path string) (PrivateKey, error) {
	k, err := loadKey(path)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return PrivateKey{}, err
	}
	k, err = GenerateKey()
	if err != nil {
		return PrivateKey{}, err
	}
	if err := writeKey(path, k); err != nil {
		if errors.Is(err, fs.ErrExist) {
			// Lost a race with another creator: use its key.
			return loadKey(path)
		}
		return PrivateKey{}, err
	}
	return k, nil
}

func loadKey(path string) (PrivateKey, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|noFollow, 0)
	if err != nil {
		return PrivateKey{}, fmt.Errorf("open key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return PrivateKey{}, fmt.Errorf("stat key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return PrivateKey{}, fmt.Errorf("key file %s: expected a regular file, got mode %v", path, st.Mode())
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return PrivateKey{}, fmt.Errorf("key file %s: expected permissions 0600 or stricter, got %#o", path, perm)
	}
	buf := make([]byte, 256)
	defer clear(buf)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return PrivateKey{}, fmt.Errorf("read key file %s: %w", path, err)
	}
	if n == len(buf) {
		return PrivateKey{}, fmt.Errorf("key file %s: expected one base64 key, file is too long", path)
	}
	k, err := ParsePrivateKey(string(bytes.TrimSpace(buf[:n])))
	if err != nil {
		return PrivateKey{}, fmt.Errorf("key file %s: %w", path, err)
	}
	return k, nil
}

func writeKey(path string, k PrivateKey) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".key-*")
	if err != nil {
		return fmt.Errorf("create key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("chmod key file: %w", err)
	}
	text := k.SecretBase64()
	_, err = tmp.Write(append(text, '\n'))
	clear(text)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write key file: %w", err)
	}
	// Link, not rename: never replace a key that appeared meanwhile.
	if err := os.Link(tmp.Name(), path); err != nil {
		return fmt.Errorf("install key file: %w", err)
	}
	return nil
}
