package ca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"strings"
	"testing"
	"time"
)

// FuzzParseRole: a role that parses prints back to the same text, survives
// the SPIFFE ID round trip, and never grants write without read.
func FuzzParseRole(f *testing.F) {
	for _, s := range []string{"admin", "domain-admin:payroll", "auditor:tmart.com", "auditor:", "admin:x", "auditor:a:b", "domain-admin:..", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRole(s)
		if err != nil {
			return
		}
		if r.String() != s {
			t.Fatalf("ParseRole(%q).String() = %q", s, r.String())
		}
		if err := r.Validate(); err != nil {
			t.Fatalf("ParseRole(%q) does not validate: %v", s, err)
		}
		id, err := AdminID("example.org", "fuzz", r)
		if err != nil {
			t.Fatalf("AdminID with role %q: %v", s, err)
		}
		ident, err := ParseID(id.String())
		if err != nil || ident.Kind != KindAdmin || ident.Role != r || ident.Admin != "fuzz" {
			t.Fatalf("ParseID(%s) = %+v, %v; want admin fuzz with role %q", id, ident, err, s)
		}
		for _, d := range []string{r.Domain, "other", ""} {
			if r.CanWrite(d) && !r.CanRead(d) {
				t.Fatalf("role %q writes %q without reading it", s, d)
			}
		}
	})
}

// FuzzParseID: every accepted SPIFFE ID is rebuilt identically from its
// parsed fields.
func FuzzParseID(f *testing.F) {
	for _, s := range []string{
		"spiffe://example.org/domain/payroll/role/web/ee/web-1",
		"spiffe://example.org/node/n1",
		"spiffe://example.org/admin/alice/role/auditor/payroll",
		"spiffe://example.org/admin/alice/role/admin",
		"spiffe://example.org/controller",
		"spiffe://example.org/domain//role/r/ee/e",
		"spiffe://example.org/admin/a/role/domain-admin/x/y",
		"https://example.org/node/n1",
		"spiffe://Example.org/node/n1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ident, err := ParseID(s)
		if err != nil {
			return
		}
		var rebuilt string
		switch ident.Kind {
		case KindMember:
			id, err := MemberID(ident.TrustDomain, ident.Member)
			if err != nil {
				t.Fatalf("MemberID(%+v): %v", ident, err)
			}
			rebuilt = id.String()
			if rebuilt != ident.Member.SPIFFEID(ident.TrustDomain) {
				t.Fatalf("MemberID %s != tvd SPIFFEID %s", rebuilt, ident.Member.SPIFFEID(ident.TrustDomain))
			}
		case KindNode:
			id, err := NodeID(ident.TrustDomain, ident.Node)
			if err != nil {
				t.Fatalf("NodeID(%+v): %v", ident, err)
			}
			rebuilt = id.String()
		case KindAdmin:
			id, err := AdminID(ident.TrustDomain, ident.Admin, ident.Role)
			if err != nil {
				t.Fatalf("AdminID(%+v): %v", ident, err)
			}
			rebuilt = id.String()
		case KindServer:
			id, err := ServerID(ident.TrustDomain)
			if err != nil {
				t.Fatalf("ServerID(%+v): %v", ident, err)
			}
			rebuilt = id.String()
		default:
			t.Fatalf("ParseID(%q) returned kind %v without an error", s, ident.Kind)
		}
		if rebuilt != s || ident.ID != s {
			t.Fatalf("ParseID(%q) rebuilt as %q (ID %q)", s, rebuilt, ident.ID)
		}
	})
}

// FuzzParseIdentityDER: arbitrary DER never panics the certificate parsers,
// and an accepted certificate has a consistent identity.
func FuzzParseIdentityDER(f *testing.F) {
	c := newTestCA(f, testTD)
	key := newKey(f)
	for _, issue := range []func() ([]byte, error){
		func() ([]byte, error) { _, d, err := c.IssueMember(payroll, key.Public(), time.Minute); return d, err },
		func() ([]byte, error) { _, d, err := c.IssueNode("n1", key.Public(), time.Minute); return d, err },
		func() ([]byte, error) {
			_, d, err := c.IssueAdmin("a", Role{Kind: RoleDomainAdmin, Domain: "d"}, key.Public(), time.Minute)
			return d, err
		},
		func() ([]byte, error) {
			_, d, err := c.IssueServer([]string{"h.example", "::1"}, key.Public(), time.Minute)
			return d, err
		},
	} {
		der, err := issue()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Add(c.Certificate().Raw)
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x01})
	b := c.Bundle()
	f.Fuzz(func(t *testing.T, der []byte) {
		ident, verr := b.VerifyDER([][]byte{der}, t0)
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			if verr == nil {
				t.Fatal("VerifyDER accepted what x509 cannot parse")
			}
			return
		}
		pid, perr := ParseIdentity(cert)
		if verr == nil && (perr != nil || pid.ID != ident.ID) {
			t.Fatalf("VerifyDER accepted %s but ParseIdentity says %+v, %v", ident.ID, pid, perr)
		}
		if perr == nil {
			if pid.Kind == KindUnknown || !strings.HasPrefix(pid.ID, "spiffe://") {
				t.Fatalf("ParseIdentity returned %+v", pid)
			}
			back, err := ParseID(pid.ID)
			if err != nil || back.Kind != pid.Kind || back.Member != pid.Member || back.Node != pid.Node || back.Admin != pid.Admin || back.Role != pid.Role {
				t.Fatalf("ParseID(%s) = %+v, %v; ParseIdentity said %+v", pid.ID, back, err, pid)
			}
		}
	})
}

// FuzzPublicKeyFromCSR: untrusted certificate requests never panic, and an
// accepted one carries a key the CA can certify.
func FuzzPublicKeyFromCSR(f *testing.F) {
	csr, err := NewCSR(newKey(f))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csr)
	f.Add(csr[:len(csr)-1])
	f.Add([]byte{})
	c := newTestCA(f, testTD)
	f.Fuzz(func(t *testing.T, der []byte) {
		pub, err := PublicKeyFromCSR(der)
		if err != nil {
			return
		}
		if _, _, err := c.IssueNode("n1", pub, time.Minute); err != nil {
			t.Fatalf("accepted CSR key cannot be certified: %v", err)
		}
	})
}

// FuzzUnmarshal: a corrupted store record never panics Unmarshal, and
// whatever it accepts is the original CA (the AEAD admits nothing else).
func FuzzUnmarshal(f *testing.F) {
	// The fuzzing workers are separate processes: the CA must have the same
	// key in each, so it is built from a fixed scalar.
	key, err := ecdsa.ParseRawPrivateKey(elliptic.P256(), bytes.Repeat([]byte{0x42}, 32))
	if err != nil {
		f.Fatal(err)
	}
	td, _ := parseTrustDomain(testTD)
	c, err := newRoot(td, key, t0, rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	kek := bytes.Repeat([]byte{7}, KEKSize)
	data, err := c.Marshal(kek)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data)
	f.Add(c.Bundle().PEM())
	f.Add([]byte("-----BEGIN TVD ENCRYPTED PRIVATE KEY-----\nVersion: 1\n\nAAAA\n-----END TVD ENCRYPTED PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Unmarshal(data, kek, nil)
		if err != nil {
			return
		}
		if !got.key.Equal(c.key) {
			t.Fatal("Unmarshal accepted a key that is not the CA's")
		}
	})
}

// FuzzParseBundle: bundle PEM from the network never panics and accepted
// roots are CAs.
func FuzzParseBundle(f *testing.F) {
	c := newTestCA(f, testTD)
	f.Add(c.Bundle().PEM())
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := ParseBundle(testTD, data)
		if err != nil {
			return
		}
		for _, r := range b.Roots() {
			if !r.IsCA {
				t.Fatal("ParseBundle accepted a non-CA root")
			}
		}
	})
}
