package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/tvd-dev/tvd"
)

// Backdate is how far before the time of issuance a certificate's
// not-before lies, to absorb clock skew between controller and agents.
const Backdate = time.Minute

// RootLifetime is the validity period of a root created by New.
const RootLifetime = 10 * 365 * 24 * time.Hour

// MaxLifetime bounds the validity period of any certificate the CA issues;
// it is further bounded by the root's own not-after.
const MaxLifetime = 366 * 24 * time.Hour

// CA is a deployment's root certificate authority. Its methods are safe for
// concurrent use once SetClock (if used) has been called.
type CA struct {
	td     spiffeid.TrustDomain
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	bundle *Bundle
	rand   io.Reader
	now    func() time.Time
}

// New creates a CA for trustDomain with a fresh ECDSA P-256 root key and a
// self-signed root certificate valid from now (back-dated by Backdate) for
// RootLifetime. rand is the source of serial numbers; nil means
// crypto/rand.Reader. The CA's clock is time.Now; see SetClock.
func New(trustDomain string, now time.Time, rnd io.Reader) (*CA, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rnd)
	if err != nil {
		return nil, fmt.Errorf("new ca: generate root key: %w", err)
	}
	return newRoot(td, key, now, rnd)
}

// newRoot self-signs a root certificate for key.
func newRoot(td spiffeid.TrustDomain, key *ecdsa.PrivateKey, now time.Time, rnd io.Reader) (*CA, error) {
	serial, err := newSerial(rnd)
	if err != nil {
		return nil, fmt.Errorf("new ca: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"tvd"}, CommonName: "tvd root CA " + td.Name()},
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              now.Add(RootLifetime).UTC(),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	der, err := x509.CreateCertificate(rnd, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("new ca: self-sign root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("new ca: parse root: %w", err)
	}
	return newCA(td, cert, key, rnd), nil
}

func newCA(td spiffeid.TrustDomain, cert *x509.Certificate, key *ecdsa.PrivateKey, rnd io.Reader) *CA {
	if rnd == nil {
		rnd = rand.Reader
	}
	return &CA{
		td:     td,
		cert:   cert,
		key:    key,
		bundle: &Bundle{td: td, roots: []*x509.Certificate{cert}},
		rand:   rnd,
		now:    time.Now,
	}
}

// SetClock replaces the CA's clock (time.Now by default), which dates
// issued certificates. Call it before the CA is used concurrently.
func (c *CA) SetClock(now func() time.Time) { c.now = now }

// TrustDomain returns the deployment's SPIFFE trust domain name.
func (c *CA) TrustDomain() string { return c.td.Name() }

// Certificate returns the root certificate. The caller must not modify it.
func (c *CA) Certificate() *x509.Certificate { return c.cert }

// Bundle returns the trust bundle that verifies the CA's certificates.
func (c *CA) Bundle() *Bundle { return c.bundle }

// Verify verifies chain against the CA's bundle; see Bundle.Verify, whose
// limits apply.
func (c *CA) Verify(chain []*x509.Certificate, now time.Time) (Identity, error) {
	return c.bundle.Verify(chain, now)
}

// IssueMember issues member's X.509-SVID for the public key pub, valid for
// ttl from now (not-before back-dated by Backdate). It returns the parsed
// certificate and its DER encoding.
//
// IssueMember checks only that the names are valid SPIFFE path segments and
// that pub is an acceptable key: whether the member is admitted is the
// caller's decision.
func (c *CA) IssueMember(member tvd.Member, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, []byte, error) {
	id, err := MemberID(c.td.Name(), member)
	if err != nil {
		return nil, nil, fmt.Errorf("issue member: %w", err)
	}
	return c.issue(id, KindMember, pub, ttl, nil, member.EE)
}

// IssueMemberCSR is IssueMember for the key in a PKCS#10 certificate request
// (DER): it checks the request's signature (proof of possession of the key)
// and ignores every name the request asks for; the identity is member.
func (c *CA) IssueMemberCSR(member tvd.Member, csrDER []byte, ttl time.Duration) (*x509.Certificate, []byte, error) {
	pub, err := PublicKeyFromCSR(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("issue member: %w", err)
	}
	return c.IssueMember(member, pub, ttl)
}

// IssueNode issues the certificate of node for its agent's TLS key pub.
func (c *CA) IssueNode(node string, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, []byte, error) {
	id, err := NodeID(c.td.Name(), node)
	if err != nil {
		return nil, nil, fmt.Errorf("issue node: %w", err)
	}
	return c.issue(id, KindNode, pub, ttl, nil, node)
}

// IssueNodeCSR is IssueNode for the key in a PKCS#10 certificate request
// (DER), whose signature it checks; the names in the request are ignored.
func (c *CA) IssueNodeCSR(node string, csrDER []byte, ttl time.Duration) (*x509.Certificate, []byte, error) {
	pub, err := PublicKeyFromCSR(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("issue node: %w", err)
	}
	return c.IssueNode(node, pub, ttl)
}

// IssueAdmin issues an administrator's client certificate carrying role.
func (c *CA) IssueAdmin(name string, role Role, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, []byte, error) {
	id, err := AdminID(c.td.Name(), name, role)
	if err != nil {
		return nil, nil, fmt.Errorf("issue admin: %w", err)
	}
	return c.issue(id, KindAdmin, pub, ttl, nil, name)
}

// IssueAdminCSR is IssueAdmin for the key in a PKCS#10 certificate request
// (DER), whose signature it checks; the names in the request are ignored.
func (c *CA) IssueAdminCSR(name string, role Role, csrDER []byte, ttl time.Duration) (*x509.Certificate, []byte, error) {
	pub, err := PublicKeyFromCSR(csrDER)
	if err != nil {
		return nil, nil, fmt.Errorf("issue admin: %w", err)
	}
	return c.IssueAdmin(name, role, pub, ttl)
}

// IssueServer issues the controller's TLS server certificate for hosts, each
// a DNS name or an IP address (at least one).
func (c *CA) IssueServer(hosts []string, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, []byte, error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("issue server: want at least one host name or address")
	}
	id, err := ServerID(c.td.Name())
	if err != nil {
		return nil, nil, fmt.Errorf("issue server: %w", err)
	}
	return c.issue(id, KindServer, pub, ttl, hosts, "tvd controller")
}

func (c *CA) issue(id spiffeid.ID, kind Kind, pub crypto.PublicKey, ttl time.Duration, hosts []string, cn string) (*x509.Certificate, []byte, error) {
	if err := checkPublicKey(pub); err != nil {
		return nil, nil, fmt.Errorf("issue %s: %w", kind, err)
	}
	tmpl, err := c.template(id, kind, ttl, hosts, cn)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificate(c.rand, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: sign: %w", kind, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s: parse: %w", kind, err)
	}
	return cert, der, nil
}

// template builds the certificate template for id, dated by the CA's clock.
func (c *CA) template(id spiffeid.ID, kind Kind, ttl time.Duration, hosts []string, cn string) (*x509.Certificate, error) {
	if ttl <= 0 || ttl > MaxLifetime {
		return nil, fmt.Errorf("issue %s: lifetime %v: want between 0 and %v", kind, ttl, MaxLifetime)
	}
	now := c.now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		return nil, fmt.Errorf("issue %s: lifetime %v ends after the root expires (%v)", kind, ttl, c.cert.NotAfter)
	}
	if now.Before(c.cert.NotBefore) {
		return nil, fmt.Errorf("issue %s: clock %v is before the root's not-before %v", kind, now, c.cert.NotBefore)
	}
	serial, err := newSerial(c.rand)
	if err != nil {
		return nil, fmt.Errorf("issue %s: %w", kind, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"tvd"}, OrganizationalUnit: []string{kind.String()}, CommonName: cn},
		NotBefore:             now.Add(-Backdate).UTC(),
		NotAfter:              notAfter.UTC(),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           extKeyUsage(kind),
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
	}
	if tmpl.NotBefore.Before(c.cert.NotBefore) {
		tmpl.NotBefore = c.cert.NotBefore
	}
	for _, h := range hosts {
		ip, err := checkHost(h)
		if err != nil {
			return nil, fmt.Errorf("issue %s: %w", kind, err)
		}
		if ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	return tmpl, nil
}

// PublicKeyFromCSR parses a PKCS#10 certificate request (DER), checks its
// self-signature (the requester holds the private key) and that the key is
// acceptable (ECDSA P-256/P-384/P-521, Ed25519 or RSA of at least 2048
// bits), and returns the key.
//
// It does NOT look at the names or extensions the request asks for: the
// CA decides the identity, never the requester.
func PublicKeyFromCSR(der []byte) (crypto.PublicKey, error) {
	if len(der) == 0 {
		return nil, errors.New("certificate request: empty (want PKCS#10 DER)")
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("certificate request: want PKCS#10 DER: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return csr.PublicKey, nil
}

// NewCSR returns a PKCS#10 certificate request (DER) for key, with no names:
// the CA decides them. It is what an agent sends to enrol.
func NewCSR(key crypto.Signer) ([]byte, error) {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create certificate request: %w", err)
	}
	return der, nil
}

func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		return errors.New("public key: want ECDSA on P-256, P-384 or P-521")
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return errors.New("public key: malformed Ed25519 key")
		}
		return nil
	case *rsa.PublicKey:
		if k.N == nil || k.N.BitLen() < 2048 {
			return errors.New("public key: want RSA of at least 2048 bits")
		}
		return nil
	case nil:
		return errors.New("public key: missing")
	}
	return fmt.Errorf("public key: type %T: want ECDSA, Ed25519 or RSA", pub)
}

// newSerial returns a random positive serial number of exactly 128 bits in
// DER (127 significant bits, 126 of them random: well above the 64 bits of
// entropy the CA/Browser Forum asks for).
func newSerial(rnd io.Reader) (*big.Int, error) {
	var b [16]byte
	if _, err := io.ReadFull(rnd, b[:]); err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	b[0] &= 0x7f // positive in DER without a leading zero byte
	b[0] |= 0x40 // full length: never a short, guessable serial
	return new(big.Int).SetBytes(b[:]), nil
}
