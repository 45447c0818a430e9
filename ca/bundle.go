package ca

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bundle is the set of root certificates that a deployment's parties trust:
// what agents and administrators receive instead of the CA. It is
// immutable.
type Bundle struct {
	td    spiffeid.TrustDomain
	roots []*x509.Certificate
}

// TrustDomain returns the bundle's SPIFFE trust domain name.
func (b *Bundle) TrustDomain() string { return b.td.Name() }

// Roots returns the root certificates. The caller must not modify them.
func (b *Bundle) Roots() []*x509.Certificate { return append([]*x509.Certificate(nil), b.roots...) }

// CertPool returns a new pool of the roots, for tls.Config.RootCAs and
// ClientCAs.
func (b *Bundle) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range b.roots {
		p.AddCert(r)
	}
	return p
}

// X509Bundle returns the bundle in go-spiffe's form, for x509svid.Verify
// and the go-spiffe tlsconfig helpers.
func (b *Bundle) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(b.td, b.roots)
}

// PEM returns the roots as concatenated PEM CERTIFICATE blocks.
func (b *Bundle) PEM() []byte {
	var buf bytes.Buffer
	for _, r := range b.roots {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})
	}
	return buf.Bytes()
}

// ParseBundle parses the PEM form of a bundle for trustDomain (as produced
// by Bundle.PEM). Every block must be a CERTIFICATE that is a CA; a root
// that names a SPIFFE ID must name trustDomain's.
//
// ParseBundle does NOT establish that the roots deserve trust: the bundle
// must come from a trusted channel (the enrolment response over TLS, a file
// an operator placed).
func ParseBundle(trustDomain string, pemData []byte) (*Bundle, error) {
	td, err := parseTrustDomain(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("parse bundle: %w", err)
	}
	certs, err := ParseCertificatesPEM(pemData)
	if err != nil {
		return nil, fmt.Errorf("parse bundle: %w", err)
	}
	for i, c := range certs {
		if !c.IsCA || !c.BasicConstraintsValid {
			return nil, fmt.Errorf("parse bundle: certificate %d (%s) is not a CA", i, c.Subject)
		}
		for _, u := range c.URIs {
			if u.Scheme == "spiffe" && u.Host != td.Name() {
				return nil, fmt.Errorf("parse bundle: certificate %d names trust domain %q, want %q", i, u.Host, td.Name())
			}
		}
	}
	return &Bundle{td: td, roots: certs}, nil
}

// ParseCertificatesPEM parses one or more PEM CERTIFICATE blocks. Anything
// else in the input (another block type, trailing non-PEM bytes) is an
// error.
func ParseCertificatesPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := data
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("pem block %d: type %q, want CERTIFICATE", len(certs), block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("pem block %d: %w", len(certs), err)
		}
		certs = append(certs, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, fmt.Errorf("pem: %d bytes after the last CERTIFICATE block are not PEM", len(rest))
	}
	if len(certs) == 0 {
		return nil, errors.New("pem: want at least one CERTIFICATE block")
	}
	return certs, nil
}

// EncodeCertificatesPEM encodes DER certificates as concatenated PEM
// CERTIFICATE blocks, leaf first.
func EncodeCertificatesPEM(ders ...[]byte) []byte {
	var buf bytes.Buffer
	for _, d := range ders {
		_ = pem.Encode(&buf, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	return buf.Bytes()
}

// Verify checks that chain (leaf first, then any intermediates) was issued
// by a root of the bundle and is valid at now, then returns the leaf's
// identity: its SPIFFE ID must be in the bundle's trust domain, and
// ParseIdentity's checks apply (one URI SAN of a known kind, not a CA, key
// usage matching the kind).
//
// Verify does NOT check:
//   - revocation, or whether the member is still admitted by its domain's
//     policy: the controller checks both against its store, and everybody
//     else relies on short lifetimes;
//   - that the identity's kind or role fits what the caller is about to do:
//     the caller must look at Identity.Kind and Identity.Role;
//   - possession of the private key: the TLS handshake proves that;
//   - host names of server certificates: crypto/tls checks them against the
//     name dialled.
func (b *Bundle) Verify(chain []*x509.Certificate, now time.Time) (Identity, error) {
	if len(chain) == 0 || chain[0] == nil {
		return Identity{}, errors.New("verify: empty certificate chain")
	}
	leaf := chain[0]
	ident, err := ParseIdentity(leaf)
	if err != nil {
		return Identity{}, fmt.Errorf("verify: %w", err)
	}
	if ident.TrustDomain != b.td.Name() {
		return Identity{}, fmt.Errorf("verify %s: trust domain %q, want %q", ident.ID, ident.TrustDomain, b.td.Name())
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c == nil {
			return Identity{}, errors.New("verify: nil certificate in chain")
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         b.CertPool(),
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return Identity{}, fmt.Errorf("verify %s: %w", ident.ID, err)
	}
	return ident, nil
}

// VerifyDER is Verify for a chain of DER certificates, such as
// tls.Config.VerifyPeerCertificate receives.
func (b *Bundle) VerifyDER(rawChain [][]byte, now time.Time) (Identity, error) {
	chain := make([]*x509.Certificate, 0, len(rawChain))
	for i, raw := range rawChain {
		c, err := x509.ParseCertificate(raw)
		if err != nil {
			return Identity{}, fmt.Errorf("verify: certificate %d: %w", i, err)
		}
		chain = append(chain, c)
	}
	return b.Verify(chain, now)
}
