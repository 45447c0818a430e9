package workload

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"connectrpc.com/connect"

	tvdv1 "github.com/tvd-dev/tvd/api/gen/tvd/v1"
)

// Store keeps named blobs in a directory, each encrypted with AES-256-GCM
// under the EE's protected storage key (per EE or per domain, as the
// domain's policy says). The key is asked for at every operation and never
// kept: once the controller withdraws it (a violation, quarantine or
// revocation), Get and Put fail.
//
// File format: "TVDS1\n", the key id (uint16 length, then the id), the
// 12-byte nonce, then the ciphertext with its tag. The additional data
// binds the blob's name and the key id, so a file renamed or copied to
// another name does not decrypt.
type Store struct {
	c   *Client
	dir string
}

var blobName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

const storeMagic = "TVDS1\n"

// ErrWrongKey is returned for a blob sealed under another storage key
// (another EE's, or another domain's).
var ErrWrongKey = errors.New("workload: the blob was sealed under another storage key")

// OpenStore returns the store in dir, creating the directory (0700).
func (c *Client) OpenStore(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("workload: store: %w", err)
	}
	return &Store{c: c, dir: dir}, nil
}

func (s *Store) key(ctx context.Context) (cipher.AEAD, string, error) {
	resp, err := s.c.api.GetStorageKey(ctx, connect.NewRequest(&tvdv1.GetStorageKeyRequest{}))
	if err != nil {
		return nil, "", fmt.Errorf("workload: storage key: %w", err)
	}
	k := resp.Msg.GetKey()
	defer clear(k)
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, "", fmt.Errorf("workload: storage key: %w", err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, "", err
	}
	return g, resp.Msg.GetKeyId(), nil
}

func (s *Store) path(name string) (string, error) {
	if !blobName.MatchString(name) {
		return "", fmt.Errorf("workload: store: blob name %q: want 1-128 of [A-Za-z0-9._-], not starting with . or -", name)
	}
	return filepath.Join(s.dir, name+".sealed"), nil
}

func aad(name, keyID string) []byte { return []byte("tvd store v1\x00" + keyID + "\x00" + name) }

// Put seals data under name.
func (s *Store) Put(ctx context.Context, name string, data []byte) error {
	p, err := s.path(name)
	if err != nil {
		return err
	}
	g, id, err := s.key(ctx)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	buf.WriteString(storeMagic)
	binary.Write(&buf, binary.BigEndian, uint16(len(id)))
	buf.WriteString(id)
	nonce := make([]byte, g.NonceSize())
	rand.Read(nonce)
	buf.Write(nonce)
	out := g.Seal(buf.Bytes(), nonce, data, aad(name, id))
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, out, 0o600); err != nil {
		return fmt.Errorf("workload: store: %w", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("workload: store: %w", err)
	}
	return nil
}

// Get opens the blob name.
func (s *Store) Get(ctx context.Context, name string) ([]byte, error) {
	p, err := s.path(name)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, fmt.Errorf("workload: store: %w", err)
	}
	id, nonceCT, err := parseSealed(b)
	if err != nil {
		return nil, fmt.Errorf("workload: store: blob %q: %w", name, err)
	}
	g, cur, err := s.key(ctx)
	if err != nil {
		return nil, err
	}
	if id != cur {
		return nil, fmt.Errorf("blob %q (key %s, this EE's is %s): %w", name, id, cur, ErrWrongKey)
	}
	if len(nonceCT) < g.NonceSize()+g.Overhead() {
		return nil, fmt.Errorf("workload: store: blob %q: truncated", name)
	}
	pt, err := g.Open(nil, nonceCT[:g.NonceSize()], nonceCT[g.NonceSize():], aad(name, id))
	if err != nil {
		return nil, fmt.Errorf("workload: store: blob %q does not open (tampered, or renamed): %w", name, err)
	}
	return pt, nil
}

// parseSealed splits a sealed blob into its key id and nonce+ciphertext.
func parseSealed(b []byte) (keyID string, rest []byte, err error) {
	if !bytes.HasPrefix(b, []byte(storeMagic)) {
		return "", nil, errors.New("not a sealed blob (bad magic)")
	}
	b = b[len(storeMagic):]
	if len(b) < 2 {
		return "", nil, errors.New("truncated header")
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if n == 0 || n > 256 || len(b) < n {
		return "", nil, errors.New("bad key id length")
	}
	return string(b[:n]), b[n:], nil
}
