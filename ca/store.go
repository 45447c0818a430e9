package ca

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// KEKSize is the size in bytes of a key-encryption key (AES-256).
const KEKSize = 32

const (
	keyBlockType   = "TVD ENCRYPTED PRIVATE KEY"
	keyAlgorithm   = "AES-256-GCM"
	formatVersion  = "1"
	aadLabel       = "tvd ca key v1\x00"
	kekFilePerm    = 0o600
	kekFileMaxSize = 4096
)

// Marshal encodes the CA for the store: a PEM CERTIFICATE block (the root,
// readable by any tool) followed by a PEM block of type
// "TVD ENCRYPTED PRIVATE KEY" whose body is a 12-byte nonce followed by the
// AES-256-GCM encryption, under kek, of the root key in PKCS#8 DER. The
// additional authenticated data is a label and the SHA-256 of the root
// certificate, which ties the key to its certificate. kek must be KEKSize
// bytes; see the package comment on where to keep it.
func (c *CA) Marshal(kek []byte) ([]byte, error) {
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, fmt.Errorf("marshal ca: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		return nil, fmt.Errorf("marshal ca: encode key: %w", err)
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rand.Reader, nonce); err != nil {
		return nil, fmt.Errorf("marshal ca: nonce: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, keyDER, keyAAD(c.cert.Raw))
	clear(keyDER)
	var buf bytes.Buffer
	if err := pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw}); err != nil {
		return nil, fmt.Errorf("marshal ca: %w", err)
	}
	if err := pem.Encode(&buf, &pem.Block{
		Type:    keyBlockType,
		Headers: map[string]string{"Version": formatVersion, "Algorithm": keyAlgorithm, "Trust-Domain": c.td.Name()},
		Bytes:   sealed,
	}); err != nil {
		return nil, fmt.Errorf("marshal ca: %w", err)
	}
	return buf.Bytes(), nil
}

// Unmarshal decodes a CA encoded by Marshal, decrypting its key with kek.
// It checks that the root is a CA certificate naming its trust domain as a
// SPIFFE ID, that the key is an ECDSA key matching the certificate, and that
// the ciphertext was made for this certificate under this kek. rnd is the
// source of serial numbers (nil: crypto/rand.Reader); the clock is
// time.Now (see SetClock).
//
// Unmarshal does NOT check the root's validity period: an expired root
// still loads, and issuance then fails with a clear error.
func Unmarshal(data, kek []byte, rnd io.Reader) (*CA, error) {
	aead, err := newAEAD(kek)
	if err != nil {
		return nil, fmt.Errorf("unmarshal ca: %w", err)
	}
	var certBlock, keyBlock *pem.Block
	rest := data
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		switch {
		case b.Type == "CERTIFICATE" && certBlock == nil:
			certBlock = b
		case b.Type == keyBlockType && keyBlock == nil:
			keyBlock = b
		default:
			return nil, fmt.Errorf("unmarshal ca: unexpected PEM block %q (want one CERTIFICATE and one %s)", b.Type, keyBlockType)
		}
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("unmarshal ca: trailing bytes after the PEM blocks")
	}
	if certBlock == nil || keyBlock == nil {
		return nil, fmt.Errorf("unmarshal ca: want one CERTIFICATE and one %s block", keyBlockType)
	}
	if v := keyBlock.Headers["Version"]; v != formatVersion {
		return nil, fmt.Errorf("unmarshal ca: key format version %q, want %s", v, formatVersion)
	}
	if a := keyBlock.Headers["Algorithm"]; a != keyAlgorithm {
		return nil, fmt.Errorf("unmarshal ca: key algorithm %q, want %s", a, keyAlgorithm)
	}
	cert, err := x509.ParseCertificate(certBlock.Bytes)
	if err != nil {
		return nil, fmt.Errorf("unmarshal ca: root certificate: %w", err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, errors.New("unmarshal ca: root certificate is not a CA")
	}
	if len(cert.URIs) != 1 {
		return nil, fmt.Errorf("unmarshal ca: root certificate: want one URI SAN naming the trust domain, got %d", len(cert.URIs))
	}
	td, err := spiffeid.TrustDomainFromURI(cert.URIs[0])
	if err != nil || cert.URIs[0].String() != td.IDString() {
		return nil, fmt.Errorf("unmarshal ca: root URI SAN %q: want spiffe://TRUST-DOMAIN", cert.URIs[0])
	}
	if h := keyBlock.Headers["Trust-Domain"]; h != td.Name() {
		return nil, fmt.Errorf("unmarshal ca: key block is for trust domain %q, root for %q", h, td.Name())
	}
	if len(keyBlock.Bytes) < aead.NonceSize()+aead.Overhead() {
		return nil, errors.New("unmarshal ca: encrypted key too short")
	}
	nonce, sealed := keyBlock.Bytes[:aead.NonceSize()], keyBlock.Bytes[aead.NonceSize():]
	keyDER, err := aead.Open(nil, nonce, sealed, keyAAD(cert.Raw))
	if err != nil {
		return nil, errors.New("unmarshal ca: decrypt key: wrong key-encryption key, or the key or certificate was altered")
	}
	defer clear(keyDER)
	k, err := x509.ParsePKCS8PrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("unmarshal ca: decrypted key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		return nil, fmt.Errorf("unmarshal ca: key is %T, want ECDSA P-256", k)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, errors.New("unmarshal ca: key does not match the root certificate")
	}
	return newCA(td, cert, key, rnd), nil
}

func keyAAD(certDER []byte) []byte {
	h := sha256.Sum256(certDER)
	return append([]byte(aadLabel), h[:]...)
}

func newAEAD(kek []byte) (cipher.AEAD, error) {
	if len(kek) != KEKSize {
		return nil, fmt.Errorf("key-encryption key: %d bytes, want %d", len(kek), KEKSize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("key-encryption key: %w", err)
	}
	return aead, nil
}

// NewKEK returns a fresh random key-encryption key of KEKSize bytes from rnd
// (nil: crypto/rand.Reader).
func NewKEK(rnd io.Reader) ([]byte, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	kek := make([]byte, KEKSize)
	if _, err := io.ReadFull(rnd, kek); err != nil {
		return nil, fmt.Errorf("new key-encryption key: %w", err)
	}
	return kek, nil
}

// LoadOrCreateKEK returns the key-encryption key kept in the file at path,
// creating the file (mode 0600, exclusively, synced) with a fresh key from
// rnd if it does not exist. The file holds the key as hexadecimal text on
// one line. An existing file must be a regular file that neither group nor
// others may read or write, else LoadOrCreateKEK refuses it.
//
// It does NOT protect the key beyond file permissions: whoever reads the
// file and the stored CA can issue identities for the deployment.
func LoadOrCreateKEK(path string, rnd io.Reader) ([]byte, error) {
	kek, err := loadKEK(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return kek, err
	}
	kek, err = NewKEK(rnd)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, kekFilePerm)
	if errors.Is(err, fs.ErrExist) {
		return loadKEK(path) // somebody else created it first
	}
	if err != nil {
		return nil, fmt.Errorf("create key-encryption key file: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(kek) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("write key-encryption key file %s: %w", path, err)
	}
	return kek, nil
}

func loadKEK(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open key-encryption key file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("key-encryption key file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("key-encryption key file %s: not a regular file", path)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("key-encryption key file %s: mode %v, want 0600 (no access for group or others)", path, st.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, kekFileMaxSize))
	if err != nil {
		return nil, fmt.Errorf("read key-encryption key file %s: %w", path, err)
	}
	kek, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(kek) != KEKSize {
		return nil, fmt.Errorf("key-encryption key file %s: want %d hexadecimal digits", path, 2*KEKSize)
	}
	return kek, nil
}
