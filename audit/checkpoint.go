package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// MaxCheckpointSize bounds a signed checkpoint accepted by the parsers.
const MaxCheckpointSize = 16 << 10

// Checkpoint is the body of a C2SP tlog-checkpoint: the log's origin, its
// size and the RFC 6962 root hash of the tree of that size.
type Checkpoint struct {
	Origin string
	Size   uint64
	Hash   []byte // 32 bytes; the hash of the empty tree for Size 0
	// Extensions are optional further lines after the hash, kept as they are.
	Extensions []string
}

// Marshal returns the checkpoint body: origin, decimal size, base64 root
// hash and extension lines, each ending in a newline.
func (c Checkpoint) Marshal() []byte {
	var b bytes.Buffer
	b.WriteString(c.Origin)
	b.WriteByte('\n')
	b.WriteString(strconv.FormatUint(c.Size, 10))
	b.WriteByte('\n')
	b.WriteString(base64.StdEncoding.EncodeToString(c.Hash))
	b.WriteByte('\n')
	for _, e := range c.Extensions {
		b.WriteString(e)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ParseCheckpoint parses an (unsigned) checkpoint body as produced by
// [Checkpoint.Marshal]. It accepts only canonical forms: a non-empty origin,
// a decimal size without sign or leading zeros, and a standard padded base64
// hash of exactly 32 bytes. It checks no signature: use [OpenCheckpoint] for
// a signed checkpoint.
func ParseCheckpoint(body []byte) (Checkpoint, error) {
	if len(body) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("parse checkpoint: %d bytes exceeds the limit of %d", len(body), MaxCheckpointSize)
	}
	if !utf8.Valid(body) {
		return Checkpoint{}, errors.New("parse checkpoint: not valid UTF-8")
	}
	s := string(body)
	if !strings.HasSuffix(s, "\n") {
		return Checkpoint{}, errors.New("parse checkpoint: expected a final newline")
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) < 3 {
		return Checkpoint{}, fmt.Errorf("parse checkpoint: %d lines, expected origin, size and root hash", len(lines))
	}
	for i, l := range lines {
		if l == "" {
			return Checkpoint{}, fmt.Errorf("parse checkpoint: line %d is empty", i+1)
		}
		if strings.ContainsAny(l, "\r\t\x00") {
			return Checkpoint{}, fmt.Errorf("parse checkpoint: line %d contains a control character", i+1)
		}
	}
	c := Checkpoint{Origin: lines[0]}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != lines[1] {
		return Checkpoint{}, fmt.Errorf("parse checkpoint: size %q: expected a decimal number without leading zeros", lines[1])
	}
	c.Size = size
	h, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(h) != sha256.Size {
		return Checkpoint{}, fmt.Errorf("parse checkpoint: root hash %q: expected %d bytes in padded standard base64", lines[2], sha256.Size)
	}
	c.Hash = h
	if len(lines) > 3 {
		c.Extensions = lines[3:]
	}
	return c, nil
}

// SignCheckpoint returns c signed by s as a signed note. c.Origin must be
// s.Name().
func SignCheckpoint(c Checkpoint, s note.Signer) ([]byte, error) {
	if c.Origin != s.Name() {
		return nil, fmt.Errorf("sign checkpoint: origin %q differs from the signer's name %q", c.Origin, s.Name())
	}
	if len(c.Hash) != sha256.Size {
		return nil, fmt.Errorf("sign checkpoint: root hash has %d bytes, expected %d", len(c.Hash), sha256.Size)
	}
	body := c.Marshal()
	if _, err := ParseCheckpoint(body); err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	b, err := note.Sign(&note.Note{Text: string(body)}, s)
	if err != nil {
		return nil, fmt.Errorf("sign checkpoint: %w", err)
	}
	return b, nil
}

// OpenCheckpoint verifies a signed checkpoint against v and parses its body.
// The origin line must equal v.Name(). Signatures by other keys on the note
// are ignored.
//
// It does NOT check that the root hash matches any entries, that the
// checkpoint is fresh (there is no time in it), that the log has not shown a
// different checkpoint to someone else (split view: compare checkpoints with
// other verifiers or witnesses), nor that v is the right key: the caller
// must obtain v from a trusted source.
func OpenCheckpoint(signed []byte, v note.Verifier) (Checkpoint, error) {
	if len(signed) > MaxCheckpointSize {
		return Checkpoint{}, fmt.Errorf("open checkpoint: %d bytes exceeds the limit of %d", len(signed), MaxCheckpointSize)
	}
	n, err := note.Open(signed, note.VerifierList(v))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("open checkpoint: %w", err)
	}
	c, err := ParseCheckpoint([]byte(n.Text))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("open checkpoint: %w", err)
	}
	if c.Origin != v.Name() {
		return Checkpoint{}, fmt.Errorf("open checkpoint: origin %q, expected the key name %q", c.Origin, v.Name())
	}
	return c, nil
}

// GenerateKey returns a new Ed25519 signed-note key pair named name (the
// log's origin): the private signer key "PRIVATE+KEY+name+hash+key" for
// [NewSigner] and the public verifier key "name+hash+key" for [NewVerifier].
// rand is the randomness source (crypto/rand.Reader in production).
func GenerateKey(rand io.Reader, name string) (signerKey, verifierKey string, err error) {
	if err := validOrigin(name); err != nil {
		return "", "", err
	}
	skey, vkey, err := note.GenerateKey(rand, name)
	if err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	return skey, vkey, nil
}

// KeyFromSeed derives the signed-note key pair named name from a 32-byte
// Ed25519 seed, e.g. one kept encrypted in the controller's store.
func KeyFromSeed(name string, seed []byte) (signerKey, verifierKey string, err error) {
	if len(seed) != ed25519.SeedSize {
		return "", "", fmt.Errorf("key from seed: seed has %d bytes, expected %d", len(seed), ed25519.SeedSize)
	}
	return GenerateKey(bytes.NewReader(seed), name)
}

// NewSigner parses a signer key from [GenerateKey] or [KeyFromSeed].
func NewSigner(signerKey string) (note.Signer, error) {
	s, err := note.NewSigner(signerKey)
	if err != nil {
		return nil, fmt.Errorf("new signer: %w", err)
	}
	return s, nil
}

// NewVerifier parses a verifier key from [GenerateKey] or [KeyFromSeed].
func NewVerifier(verifierKey string) (note.Verifier, error) {
	v, err := note.NewVerifier(verifierKey)
	if err != nil {
		return nil, fmt.Errorf("new verifier: %w", err)
	}
	return v, nil
}

// VerifierKeyFor derives the public verifier key of an Ed25519 signer key,
// so a log given only its signer key can check its own stored checkpoints.
func VerifierKeyFor(signerKey string) (string, error) {
	// PRIVATE+KEY+<name>+<hash>+<base64(alg || seed)>
	rest, ok := strings.CutPrefix(signerKey, "PRIVATE+KEY+")
	if !ok {
		return "", errors.New("verifier key: expected a signer key starting PRIVATE+KEY+")
	}
	// The name holds no '+' (see validOrigin) and the hash is hex, but the
	// base64 key may contain '+': split from the left.
	parts := strings.SplitN(rest, "+", 3)
	if len(parts) != 3 {
		return "", errors.New("verifier key: malformed signer key")
	}
	name := parts[0]
	key, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(key) != 1+ed25519.SeedSize || key[0] != 1 {
		return "", errors.New("verifier key: expected an Ed25519 signer key")
	}
	if _, err := note.NewSigner(signerKey); err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	pub := ed25519.NewKeyFromSeed(key[1:]).Public().(ed25519.PublicKey)
	vkey, err := note.NewEd25519VerifierKey(name, pub)
	if err != nil {
		return "", fmt.Errorf("verifier key: %w", err)
	}
	return vkey, nil
}

func validOrigin(name string) error {
	if name == "" || !utf8.ValidString(name) || strings.ContainsAny(name, "+ \n\r\t") {
		return fmt.Errorf("origin %q: expected a non-empty name without spaces, '+' or newlines", name)
	}
	return nil
}
