package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/tvd-dev/tvd"
)

const testTD = "example.org"

var t0 = time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)

func newTestCA(t testing.TB, td string) *CA {
	t.Helper()
	c, err := New(td, t0, nil)
	if err != nil {
		t.Fatalf("New(%q): %v", td, err)
	}
	c.SetClock(func() time.Time { return t0 })
	return c
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

var payroll = tvd.Member{Domain: "payroll", Role: "web", EE: "web-1"}

func TestRootCertificate(t *testing.T) {
	c := newTestCA(t, testTD)
	r := c.Certificate()
	if !r.IsCA || !r.MaxPathLenZero || r.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("root: IsCA=%v MaxPathLenZero=%v KeyUsage=%v, want a path-length-0 signing CA", r.IsCA, r.MaxPathLenZero, r.KeyUsage)
	}
	if len(r.URIs) != 1 || r.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("root URIs = %v, want [spiffe://example.org]", r.URIs)
	}
	if pk, ok := r.PublicKey.(*ecdsa.PublicKey); !ok || pk.Curve != elliptic.P256() {
		t.Errorf("root key %T, want ECDSA P-256", r.PublicKey)
	}
	if !r.NotBefore.Equal(t0.Add(-Backdate)) || !r.NotAfter.Equal(t0.Add(RootLifetime)) {
		t.Errorf("root validity %v..%v, want %v..%v", r.NotBefore, r.NotAfter, t0.Add(-Backdate), t0.Add(RootLifetime))
	}
	if err := r.CheckSignatureFrom(r); err != nil {
		t.Errorf("root is not self-signed: %v", err)
	}
	for _, bad := range []string{"", "spiffe://example.org", "Example.org", "a/b", "x y"} {
		if _, err := New(bad, t0, nil); err == nil {
			t.Errorf("New(%q) succeeded, want an error", bad)
		}
	}
}

// TestGoSpiffeAcceptsEveryKind is the interoperability contract: every
// certificate the CA issues is an X.509-SVID that go-spiffe verifies against
// the deployment bundle, with the SPIFFE ID the vocabulary promises.
func TestGoSpiffeAcceptsEveryKind(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	issue := map[string]func() (*x509.Certificate, []byte, error){
		payroll.SPIFFEID(testTD): func() (*x509.Certificate, []byte, error) {
			return c.IssueMember(payroll, key.Public(), 5*time.Minute)
		},
		"spiffe://example.org/node/node-1.lab": func() (*x509.Certificate, []byte, error) {
			return c.IssueNode("node-1.lab", key.Public(), time.Hour)
		},
		"spiffe://example.org/admin/alice/role/auditor/payroll": func() (*x509.Certificate, []byte, error) {
			return c.IssueAdmin("alice", Role{Kind: RoleAuditor, Domain: "payroll"}, key.Public(), time.Hour)
		},
		"spiffe://example.org/controller": func() (*x509.Certificate, []byte, error) {
			return c.IssueServer([]string{"controller.example.org", "127.0.0.1"}, key.Public(), time.Hour)
		},
	}
	for want, f := range issue {
		cert, der, err := f()
		if err != nil {
			t.Fatalf("issue %s: %v", want, err)
		}
		if !bytes.Equal(cert.Raw, der) {
			t.Errorf("%s: returned certificate and DER differ", want)
		}
		id, chains, err := x509svid.Verify([]*x509.Certificate{cert}, c.Bundle().X509Bundle(), x509svid.WithTime(t0.Add(time.Minute)))
		if err != nil {
			t.Errorf("x509svid.Verify(%s): %v", want, err)
			continue
		}
		if id.String() != want {
			t.Errorf("x509svid.Verify: id %s, want %s", id, want)
		}
		if len(chains) != 1 || len(chains[0]) != 2 || !chains[0][1].Equal(c.Certificate()) {
			t.Errorf("%s: chains %v, want leaf→root", want, chains)
		}
		ident, err := c.Verify([]*x509.Certificate{cert}, t0.Add(time.Minute))
		if err != nil || ident.ID != want {
			t.Errorf("CA.Verify(%s) = %+v, %v", want, ident, err)
		}
	}
}

func TestOtherCARefused(t *testing.T) {
	c := newTestCA(t, testTD)
	impostor := newTestCA(t, testTD) // same trust domain, different key
	foreign := newTestCA(t, "other.example")
	key := newKey(t)
	for name, issuer := range map[string]*CA{"same trust domain": impostor, "other trust domain": foreign} {
		cert, _, err := issuer.IssueMember(payroll, key.Public(), 5*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := x509svid.Verify([]*x509.Certificate{cert}, c.Bundle().X509Bundle(), x509svid.WithTime(t0)); err == nil {
			t.Errorf("%s: x509svid.Verify accepted a certificate from another CA", name)
		}
		if _, err := c.Verify([]*x509.Certificate{cert}, t0); err == nil {
			t.Errorf("%s: CA.Verify accepted a certificate from another CA", name)
		}
		// Presenting the impostor's root as an "intermediate" changes nothing.
		if _, err := c.Verify([]*x509.Certificate{cert, issuer.Certificate()}, t0); err == nil {
			t.Errorf("%s: CA.Verify accepted a chain through another root", name)
		}
	}
}

func TestValidityPeriod(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	cert, _, err := c.IssueMember(payroll, key.Public(), 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.NotBefore.Equal(t0.Add(-Backdate)) || !cert.NotAfter.Equal(t0.Add(5*time.Minute)) {
		t.Errorf("validity %v..%v, want %v..%v", cert.NotBefore, cert.NotAfter, t0.Add(-Backdate), t0.Add(5*time.Minute))
	}
	xb := c.Bundle().X509Bundle()
	for _, tc := range []struct {
		at time.Time
		ok bool
	}{
		{t0.Add(-30 * time.Second), true}, // clock skew absorbed by the backdate
		{t0.Add(4 * time.Minute), true},
		{t0.Add(-2 * time.Minute), false}, // not yet valid
		{t0.Add(6 * time.Minute), false},  // expired
	} {
		_, _, svidErr := x509svid.Verify([]*x509.Certificate{cert}, xb, x509svid.WithTime(tc.at))
		_, caErr := c.Verify([]*x509.Certificate{cert}, tc.at)
		if (svidErr == nil) != tc.ok || (caErr == nil) != tc.ok {
			t.Errorf("at %v: x509svid err %v, CA.Verify err %v; want ok=%v", tc.at.Sub(t0), svidErr, caErr, tc.ok)
		}
	}
}

func TestIssueRefusesBadInput(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	rsaSmall, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		f    func() error
	}{
		{"slash in domain", func() error {
			_, _, err := c.IssueMember(tvd.Member{Domain: "a/b", Role: "r", EE: "e"}, key.Public(), time.Minute)
			return err
		}},
		{"dot-dot role", func() error {
			_, _, err := c.IssueMember(tvd.Member{Domain: "d", Role: "..", EE: "e"}, key.Public(), time.Minute)
			return err
		}},
		{"empty ee", func() error {
			_, _, err := c.IssueMember(tvd.Member{Domain: "d", Role: "r"}, key.Public(), time.Minute)
			return err
		}},
		{"space in node", func() error { _, _, err := c.IssueNode("node 1", key.Public(), time.Minute); return err }},
		{"colon in admin", func() error {
			_, _, err := c.IssueAdmin("a:b", Role{Kind: RoleAdmin}, key.Public(), time.Minute)
			return err
		}},
		{"unknown role", func() error { _, _, err := c.IssueAdmin("alice", Role{}, key.Public(), time.Minute); return err }},
		{"auditor without domain", func() error {
			_, _, err := c.IssueAdmin("alice", Role{Kind: RoleAuditor}, key.Public(), time.Minute)
			return err
		}},
		{"no hosts", func() error { _, _, err := c.IssueServer(nil, key.Public(), time.Minute); return err }},
		{"bad host", func() error {
			_, _, err := c.IssueServer([]string{"-bad-.example"}, key.Public(), time.Minute)
			return err
		}},
		{"wildcard host", func() error { _, _, err := c.IssueServer([]string{"*.example"}, key.Public(), time.Minute); return err }},
		{"zero ttl", func() error { _, _, err := c.IssueMember(payroll, key.Public(), 0); return err }},
		{"negative ttl", func() error { _, _, err := c.IssueMember(payroll, key.Public(), -time.Minute); return err }},
		{"ttl past root", func() error { _, _, err := c.IssueNode("n", key.Public(), MaxLifetime+time.Hour); return err }},
		{"nil key", func() error { _, _, err := c.IssueMember(payroll, nil, time.Minute); return err }},
		{"private key", func() error { _, _, err := c.IssueMember(payroll, key, time.Minute); return err }},
		{"rsa 1024", func() error { _, _, err := c.IssueMember(payroll, rsaSmall.Public(), time.Minute); return err }},
		{"p224", func() error { _, _, err := c.IssueMember(payroll, p224.Public(), time.Minute); return err }},
	} {
		if err := tc.f(); err == nil {
			t.Errorf("%s: issued, want an error", tc.name)
		}
	}
	// A clock before the root's not-before is refused too.
	c.SetClock(func() time.Time { return t0.Add(-time.Hour) })
	if _, _, err := c.IssueMember(payroll, key.Public(), time.Minute); err == nil {
		t.Error("issued with a clock before the root's not-before")
	}
}

func TestAcceptedKeyTypes(t *testing.T) {
	c := newTestCA(t, testTD)
	_, edPub, err := ed25519.GenerateKey(rand.Reader)
	_ = edPub
	if err != nil {
		t.Fatal(err)
	}
	edKey, _, _ := ed25519.GenerateKey(rand.Reader)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	for name, pub := range map[string]crypto.PublicKey{"ed25519": edKey, "rsa2048": rsaKey.Public(), "p384": p384.Public()} {
		cert, _, err := c.IssueMember(payroll, pub, time.Minute)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if _, err := c.Verify([]*x509.Certificate{cert}, t0); err != nil {
			t.Errorf("%s: verify: %v", name, err)
		}
	}
}

func TestSerialNumbers(t *testing.T) {
	// A deterministic reader makes serials predictable: this shows they come
	// from the injected source, at full 128-bit width and positive.
	seed := bytes.Repeat([]byte{0xff}, 4096)
	c, err := New(testTD, t0, bytes.NewReader(seed))
	if err != nil {
		t.Fatal(err)
	}
	c.SetClock(func() time.Time { return t0 })
	cert, _, err := c.IssueNode("n1", newKey(t).Public(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	want := new(big.Int).SetBytes(append([]byte{0x7f}, bytes.Repeat([]byte{0xff}, 15)...))
	if cert.SerialNumber.Cmp(want) != 0 {
		t.Errorf("serial %x, want %x", cert.SerialNumber, want)
	}

	c = newTestCA(t, testTD)
	seen := map[string]bool{}
	key := newKey(t)
	for range 50 {
		cert, _, err := c.IssueMember(payroll, key.Public(), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		s := cert.SerialNumber.Text(16)
		if seen[s] || cert.SerialNumber.BitLen() != 127 || cert.SerialNumber.Sign() <= 0 {
			t.Errorf("serial %s: repeated or not 127 significant bits (%d)", s, cert.SerialNumber.BitLen())
		}
		seen[s] = true
	}

	if _, err := New(testTD, t0, bytes.NewReader(nil)); err == nil {
		t.Error("New with an empty random source succeeded")
	}
}

func TestKeyUsage(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	member, _, _ := c.IssueMember(payroll, key.Public(), time.Minute)
	node, _, _ := c.IssueNode("n1", key.Public(), time.Minute)
	admin, _, _ := c.IssueAdmin("root", Role{Kind: RoleAdmin}, key.Public(), time.Minute)
	server, _, _ := c.IssueServer([]string{"localhost"}, key.Public(), time.Minute)
	for _, tc := range []struct {
		cert *x509.Certificate
		eku  []x509.ExtKeyUsage
	}{
		{member, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{node, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{admin, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{server, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}},
	} {
		if tc.cert.IsCA || tc.cert.KeyUsage != x509.KeyUsageDigitalSignature || !sameUsages(tc.cert.ExtKeyUsage, tc.eku) {
			t.Errorf("%v: IsCA=%v KeyUsage=%v EKU=%v, want leaf, digitalSignature, %v",
				tc.cert.URIs, tc.cert.IsCA, tc.cert.KeyUsage, tc.cert.ExtKeyUsage, tc.eku)
		}
		if !bytes.Equal(tc.cert.AuthorityKeyId, c.Certificate().SubjectKeyId) {
			t.Errorf("%v: authority key id does not name the root", tc.cert.URIs)
		}
	}
}

func TestParseIdentityRoundTrip(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	member, _, _ := c.IssueMember(payroll, key.Public(), 5*time.Minute)
	node, _, _ := c.IssueNode("node-1", key.Public(), time.Hour)
	server, _, _ := c.IssueServer([]string{"ctl.example.org", "::1", "10.0.0.1"}, key.Public(), time.Hour)
	for _, tc := range []struct {
		cert *x509.Certificate
		want Identity
	}{
		{member, Identity{Kind: KindMember, ID: payroll.SPIFFEID(testTD), TrustDomain: testTD, Member: payroll}},
		{node, Identity{Kind: KindNode, ID: "spiffe://example.org/node/node-1", TrustDomain: testTD, Node: "node-1"}},
		{server, Identity{Kind: KindServer, ID: "spiffe://example.org/controller", TrustDomain: testTD,
			Hosts: []string{"ctl.example.org", "::1", "10.0.0.1"}}},
	} {
		got, err := ParseIdentity(tc.cert)
		if err != nil {
			t.Fatalf("ParseIdentity: %v", err)
		}
		if got.Serial != tc.cert.SerialNumber.Text(16) || !got.NotAfter.Equal(tc.cert.NotAfter) || !got.NotBefore.Equal(tc.cert.NotBefore) {
			t.Errorf("%s: serial/validity not carried over: %+v", tc.want.ID, got)
		}
		got.Serial, got.NotBefore, got.NotAfter = "", time.Time{}, time.Time{}
		if got.Kind != tc.want.Kind || got.ID != tc.want.ID || got.TrustDomain != tc.want.TrustDomain ||
			got.Member != tc.want.Member || got.Node != tc.want.Node || strings.Join(got.Hosts, ",") != strings.Join(tc.want.Hosts, ",") {
			t.Errorf("ParseIdentity = %+v, want %+v", got, tc.want)
		}
		fromID, err := ParseID(got.ID)
		if err != nil || fromID.Kind != got.Kind || fromID.Member != got.Member || fromID.Node != got.Node {
			t.Errorf("ParseID(%s) = %+v, %v", got.ID, fromID, err)
		}
	}
	for _, s := range []string{"admin", "domain-admin:payroll", "auditor:tmart.com"} {
		role, err := ParseRole(s)
		if err != nil {
			t.Fatal(err)
		}
		cert, _, err := c.IssueAdmin("cio", role, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParseIdentity(cert)
		if err != nil || got.Kind != KindAdmin || got.Admin != "cio" || got.Role != role || got.Role.String() != s {
			t.Errorf("admin %s: ParseIdentity = %+v, %v", s, got, err)
		}
	}
	// The vocabulary's own parser agrees with the certificate.
	if td, m, err := tvd.ParseSPIFFEID(member.URIs[0].String()); err != nil || td != testTD || m != payroll {
		t.Errorf("tvd.ParseSPIFFEID(%s) = %q, %v, %v", member.URIs[0], td, m, err)
	}
}

// signLeaf signs an arbitrary leaf template with the CA key, to build the
// malformed certificates that the CA itself would never issue.
func signLeaf(t *testing.T, c *CA, tmpl *x509.Certificate) *x509.Certificate {
	t.Helper()
	if tmpl.SerialNumber == nil {
		tmpl.SerialNumber = big.NewInt(1)
	}
	tmpl.NotBefore, tmpl.NotAfter = t0.Add(-time.Minute), t0.Add(time.Hour)
	tmpl.BasicConstraintsValid = true
	if tmpl.KeyUsage == 0 {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, newKey(t).Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestMalformedSANsRefused(t *testing.T) {
	c := newTestCA(t, testTD)
	both := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	memberURI := mustURL(payroll.SPIFFEID(testTD))
	for _, tc := range []struct {
		name string
		tmpl *x509.Certificate
	}{
		{"no URI SAN", &x509.Certificate{ExtKeyUsage: both}},
		{"two URI SANs", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI, mustURL("spiffe://example.org/role/admin")}}},
		{"https URI", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("https://example.org/domain/d/role/r/ee/e")}}},
		{"trust domain only", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org")}}},
		{"unknown path", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org/workload/x")}}},
		{"short member path", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org/domain/d/role/r")}}},
		{"long member path", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org/domain/d/role/r/ee/e/x")}}},
		{"empty segment", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org/domain//role/r/ee/e")}}},
		{"percent-encoded", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL("spiffe://example.org/domain/a%2Fb/role/r/ee/e")}}},
		{"query", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL(payroll.SPIFFEID(testTD) + "?x=1")}}},
		{"admin bad role", &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{mustURL("spiffe://example.org/admin/a/role/superuser")}}},
		{"admin role missing domain", &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{mustURL("spiffe://example.org/admin/a/role/auditor")}}},
		{"member without serverAuth", &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, URIs: []*url.URL{memberURI}}},
		{"server cert as admin", &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, URIs: []*url.URL{mustURL("spiffe://example.org/admin/a/role/admin")}}},
		{"member with DNS SAN", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}, DNSNames: []string{"evil.example"}}},
		{"member with email", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}, EmailAddresses: []string{"a@b.c"}}},
		{"member with keyCertSign", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}, KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}},
		{"member without digitalSignature", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}, KeyUsage: x509.KeyUsageKeyEncipherment}},
		{"member that is a CA", &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}, IsCA: true}},
		{"unknown EKU", &x509.Certificate{ExtKeyUsage: both, UnknownExtKeyUsage: []asn1.ObjectIdentifier{{1, 2, 3}}, URIs: []*url.URL{memberURI}}},
	} {
		cert := signLeaf(t, c, tc.tmpl)
		if id, err := ParseIdentity(cert); err == nil {
			t.Errorf("%s: ParseIdentity accepted %+v", tc.name, id)
		}
		if id, err := c.Verify([]*x509.Certificate{cert}, t0); err == nil {
			t.Errorf("%s: Verify accepted %+v", tc.name, id)
		}
	}
	// The well-formed control passes, so the cases above fail for their
	// stated reason and not because signLeaf is broken.
	if _, err := c.Verify([]*x509.Certificate{signLeaf(t, c, &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{memberURI}})}, t0); err != nil {
		t.Errorf("control: %v", err)
	}
	// A member of another trust domain signed by our key is refused by Verify.
	other := signLeaf(t, c, &x509.Certificate{ExtKeyUsage: both, URIs: []*url.URL{mustURL(payroll.SPIFFEID("other.example"))}})
	if _, err := c.Verify([]*x509.Certificate{other}, t0); err == nil {
		t.Error("Verify accepted a member of another trust domain")
	}
	if _, err := ParseIdentity(nil); err == nil {
		t.Error("ParseIdentity(nil) succeeded")
	}
	if _, err := c.Verify(nil, t0); err == nil {
		t.Error("Verify(nil) succeeded")
	}
}

func TestRoles(t *testing.T) {
	for _, tc := range []struct {
		in                   string
		want                 Role
		readP, writeP, readO bool
	}{
		{"admin", Role{Kind: RoleAdmin}, true, true, true},
		{"domain-admin:payroll", Role{Kind: RoleDomainAdmin, Domain: "payroll"}, true, true, false},
		{"auditor:payroll", Role{Kind: RoleAuditor, Domain: "payroll"}, true, false, false},
	} {
		r, err := ParseRole(tc.in)
		if err != nil || r != tc.want || r.String() != tc.in {
			t.Errorf("ParseRole(%q) = %+v, %v", tc.in, r, err)
		}
		if r.CanRead("payroll") != tc.readP || r.CanWrite("payroll") != tc.writeP || r.CanRead("other") != tc.readO || r.CanWrite("other") != tc.readO {
			t.Errorf("%s: read/write payroll %v/%v other %v/%v", tc.in, r.CanRead("payroll"), r.CanWrite("payroll"), r.CanRead("other"), r.CanWrite("other"))
		}
		if r.CanRead("") != (r.Kind == RoleAdmin) || r.CanWriteDeployment() != (r.Kind == RoleAdmin) {
			t.Errorf("%s: deployment-wide rights wrong", tc.in)
		}
	}
	for _, bad := range []string{"", "Admin", "admin:x", "auditor", "auditor:", "domain-admin", "auditor:a/b", "auditor:..", "root", "auditor:a:b"} {
		if r, err := ParseRole(bad); err == nil {
			t.Errorf("ParseRole(%q) = %+v, want an error", bad, r)
		}
	}
	admin, dp, ap := Role{Kind: RoleAdmin}, Role{Kind: RoleDomainAdmin, Domain: "payroll"}, Role{Kind: RoleAuditor, Domain: "payroll"}
	do, ao := Role{Kind: RoleDomainAdmin, Domain: "other"}, Role{Kind: RoleAuditor, Domain: "other"}
	for _, tc := range []struct {
		granter, target Role
		ok              bool
	}{
		{admin, admin, true}, {admin, do, true}, {admin, ao, true},
		{dp, dp, true}, {dp, ap, true}, {dp, admin, false}, {dp, do, false}, {dp, ao, false},
		{ap, ap, false}, {ap, dp, false},
		{admin, Role{Kind: RoleAuditor}, false}, {Role{}, ap, false},
	} {
		if got := tc.granter.CanGrant(tc.target); got != tc.ok {
			t.Errorf("%s.CanGrant(%s) = %v, want %v", tc.granter, tc.target, got, tc.ok)
		}
	}
	var zero Role
	if zero.CanRead("payroll") || zero.CanWrite("payroll") || zero.Validate() == nil {
		t.Error("the zero Role allows something or validates")
	}
}

func TestCSR(t *testing.T) {
	c := newTestCA(t, testTD)
	key := newKey(t)
	// The request asks for another identity; the CA ignores it.
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "evil"},
		URIs:    []*url.URL{mustURL("spiffe://example.org/admin/evil/role/admin")},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := c.IssueMemberCSR(payroll, der, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != payroll.SPIFFEID(testTD) || !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("IssueMemberCSR: URIs %v, key matches %v", cert.URIs, key.PublicKey.Equal(cert.PublicKey))
	}
	plain, err := NewCSR(key)
	if err != nil {
		t.Fatal(err)
	}
	if cert, _, err := c.IssueNodeCSR("n1", plain, time.Minute); err != nil || !key.PublicKey.Equal(cert.PublicKey) {
		t.Errorf("IssueNodeCSR: %v", err)
	}
	if _, _, err := c.IssueAdminCSR("alice", Role{Kind: RoleAdmin}, plain, time.Minute); err != nil {
		t.Errorf("IssueAdminCSR: %v", err)
	}
	// Flip a bit of the signature: proof of possession fails.
	tampered := bytes.Clone(plain)
	tampered[len(tampered)-3] ^= 1
	if _, _, err := c.IssueNodeCSR("n1", tampered, time.Minute); err == nil {
		t.Error("IssueNodeCSR accepted a request with a bad signature")
	}
	for _, bad := range [][]byte{nil, []byte("not der"), plain[:len(plain)/2]} {
		if _, err := PublicKeyFromCSR(bad); err == nil {
			t.Errorf("PublicKeyFromCSR(%x) succeeded", bad)
		}
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	c := newTestCA(t, testTD)
	kek, err := NewKEK(nil)
	if err != nil {
		t.Fatal(err)
	}
	data, err := c.Marshal(kek)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(c.key)
	if bytes.Contains(data, keyDER) || bytes.Contains(data, []byte("PRIVATE KEY-----\n")) && !bytes.Contains(data, []byte(keyBlockType)) {
		t.Fatal("marshalled CA contains the plaintext key")
	}
	c2, err := Unmarshal(data, kek, nil)
	if err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if !c2.Certificate().Equal(c.Certificate()) || c2.TrustDomain() != testTD || !c2.key.Equal(c.key) {
		t.Fatal("Unmarshal returned a different CA")
	}
	// A certificate issued after reloading verifies against the old bundle.
	c2.SetClock(func() time.Time { return t0 })
	cert, _, err := c2.IssueMember(payroll, newKey(t).Public(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Bundle().Verify([]*x509.Certificate{cert}, t0); err != nil {
		t.Errorf("reloaded CA's certificate does not verify: %v", err)
	}

	wrongKEK, _ := NewKEK(nil)
	if _, err := Unmarshal(data, wrongKEK, nil); err == nil {
		t.Error("Unmarshal with the wrong KEK succeeded")
	}
	if _, err := Unmarshal(data, kek[:16], nil); err == nil {
		t.Error("Unmarshal with a 16-byte KEK succeeded")
	}
	// Swap in another CA's certificate, keep our encrypted key: the AAD
	// binding refuses it.
	other := newTestCA(t, testTD)
	otherData, _ := other.Marshal(kek)
	certOther, _ := pem.Decode(otherData)
	_, keyRest := pem.Decode(data)
	swapped := append(pem.EncodeToMemory(certOther), keyRest...)
	if _, err := Unmarshal(swapped, kek, nil); err == nil {
		t.Error("Unmarshal accepted a key under another CA's certificate")
	}
	// Flip one ciphertext byte.
	blockCert, rest := pem.Decode(data)
	blockKey, _ := pem.Decode(rest)
	blockKey.Bytes[len(blockKey.Bytes)-1] ^= 1
	flipped := append(pem.EncodeToMemory(blockCert), pem.EncodeToMemory(blockKey)...)
	if _, err := Unmarshal(flipped, kek, nil); err == nil {
		t.Error("Unmarshal accepted a tampered ciphertext")
	}
	for name, bad := range map[string][]byte{
		"empty":      nil,
		"cert only":  pem.EncodeToMemory(blockCert),
		"garbage":    []byte("hello"),
		"extra":      append(bytes.Clone(data), []byte("-----BEGIN X-----\nAA==\n-----END X-----\n")...),
		"trailing":   append(bytes.Clone(data), "junk"...),
		"bundle pem": c.Bundle().PEM(),
	} {
		if _, err := Unmarshal(bad, kek, nil); err == nil {
			t.Errorf("%s: Unmarshal succeeded", name)
		}
	}
}

func TestLoadOrCreateKEK(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ca.kek")
	kek, err := LoadOrCreateKEK(path, nil)
	if err != nil || len(kek) != KEKSize {
		t.Fatalf("LoadOrCreateKEK = %x, %v", kek, err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode %v, %v; want 0600", st.Mode().Perm(), err)
	}
	again, err := LoadOrCreateKEK(path, nil)
	if err != nil || !bytes.Equal(again, kek) {
		t.Errorf("second LoadOrCreateKEK = %x, %v; want the same key", again, err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKEK(path, nil); err == nil || !strings.Contains(err.Error(), "0600") {
		t.Errorf("world-readable KEK file: err %v, want a refusal naming 0600", err)
	}
	bad := filepath.Join(dir, "bad.kek")
	if err := os.WriteFile(bad, []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKEK(bad, nil); err == nil {
		t.Error("LoadOrCreateKEK accepted a malformed file")
	}
	if _, err := LoadOrCreateKEK(dir, nil); err == nil {
		t.Error("LoadOrCreateKEK accepted a directory")
	}
	if _, err := LoadOrCreateKEK(filepath.Join(dir, "missing", "x.kek"), nil); err == nil {
		t.Error("LoadOrCreateKEK created a file in a missing directory")
	}
	if _, err := LoadOrCreateKEK(filepath.Join(dir, "short.kek"), io.LimitReader(rand.Reader, 3)); err == nil {
		t.Error("LoadOrCreateKEK succeeded with a short random source")
	}
}

func TestBundlePEM(t *testing.T) {
	c := newTestCA(t, testTD)
	b, err := ParseBundle(testTD, c.Bundle().PEM())
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Roots()) != 1 || !b.Roots()[0].Equal(c.Certificate()) || b.TrustDomain() != testTD {
		t.Fatalf("ParseBundle round trip: %v", b.Roots())
	}
	if _, err := ParseBundle("other.example", c.Bundle().PEM()); err == nil {
		t.Error("ParseBundle accepted a root of another trust domain")
	}
	cert, der, _ := c.IssueNode("n1", newKey(t).Public(), time.Minute)
	if _, err := ParseBundle(testTD, EncodeCertificatesPEM(der)); err == nil {
		t.Error("ParseBundle accepted a leaf as a root")
	}
	if id, err := b.VerifyDER([][]byte{der}, t0); err != nil || id.Node != "n1" {
		t.Errorf("VerifyDER = %+v, %v", id, err)
	}
	if _, err := b.VerifyDER([][]byte{der[:10]}, t0); err == nil {
		t.Error("VerifyDER accepted truncated DER")
	}
	certs, err := ParseCertificatesPEM(EncodeCertificatesPEM(der, c.Certificate().Raw))
	if err != nil || len(certs) != 2 || !certs[0].Equal(cert) {
		t.Errorf("ParseCertificatesPEM round trip: %v", err)
	}
	for _, bad := range []string{"", "junk", "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"} {
		if _, err := ParseCertificatesPEM([]byte(bad)); err == nil {
			t.Errorf("ParseCertificatesPEM(%q) succeeded", bad)
		}
	}
	// The go-spiffe form names the same trust domain and authority.
	xb := b.X509Bundle()
	if xb.TrustDomain() != spiffeid.RequireTrustDomainFromString(testTD) || !xb.HasX509Authority(c.Certificate()) {
		t.Error("X509Bundle does not carry the root")
	}
	var _ x509bundle.Source = xb
}

// handshake runs a TLS handshake over loopback TCP (kernel-buffered, so a
// side that fails mid-flight cannot deadlock the other as with net.Pipe) and
// returns the client's and server's errors and the server's connection
// state.
func handshake(t *testing.T, server, client *tls.Config) (clientErr, serverErr error, state tls.ConnectionState) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		err   error
		state tls.ConnectionState
	}
	done := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(conn, server)
		err = s.Handshake()
		if err == nil {
			// Write one byte: the client reads it, or the alert of a
			// refused client certificate, after its handshake.
			_, _ = s.Write([]byte{1})
		}
		done <- result{err, s.ConnectionState()}
	}()
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	c := tls.Client(conn, client)
	clientErr = c.Handshake()
	if clientErr == nil {
		// The server's verdict on our certificate arrives after our
		// handshake completes: read the server's byte or its alert.
		_, clientErr = c.Read(make([]byte, 1))
	}
	conn.Close()
	r := <-done
	return clientErr, r.err, r.state
}

// TestMutualTLS runs real TLS 1.3 handshakes (over an in-memory pipe)
// between the controller's server certificate and clients, with the
// configurations of ServerTLSConfig and ClientTLSConfig. crypto/tls uses the
// real clock, so the CA here does too.
func TestMutualTLS(t *testing.T) {
	now := time.Now()
	c, err := New(testTD, now.Add(-3*time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	other, err := New(testTD, now.Add(-3*time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	tlsCert := func(issuer *CA, at time.Time, issue func(*CA, *ecdsa.PrivateKey) ([]byte, error)) *tls.Certificate {
		t.Helper()
		issuer.SetClock(func() time.Time { return at })
		k := newKey(t)
		der, err := issue(issuer, k)
		if err != nil {
			t.Fatal(err)
		}
		return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
	}
	node := func(name string) func(*CA, *ecdsa.PrivateKey) ([]byte, error) {
		return func(c *CA, k *ecdsa.PrivateKey) ([]byte, error) {
			_, d, err := c.IssueNode(name, k.Public(), time.Hour)
			return d, err
		}
	}
	server := tlsCert(c, now, func(c *CA, k *ecdsa.PrivateKey) ([]byte, error) {
		_, d, err := c.IssueServer([]string{"controller.tvd.test", "127.0.0.1"}, k.Public(), time.Hour)
		return d, err
	})
	impostorServer := tlsCert(other, now, func(c *CA, k *ecdsa.PrivateKey) ([]byte, error) {
		_, d, err := c.IssueServer([]string{"controller.tvd.test"}, k.Public(), time.Hour)
		return d, err
	})
	nodeCert := tlsCert(c, now, node("node-7"))
	foreignNode := tlsCert(other, now, node("node-7"))
	expiredNode := tlsCert(c, now.Add(-2*time.Hour), node("node-old"))
	// A client certificate that chains to the root but is no identity (no
	// URI SAN): only the SPIFFE check of ServerTLSConfig refuses it.
	noIDKey := newKey(t)
	noIDDER, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
		SerialNumber: big.NewInt(7), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		Subject: pkix.Name{CommonName: "node-7"},
	}, c.cert, noIDKey.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	noID := &tls.Certificate{Certificate: [][]byte{noIDDER}, PrivateKey: noIDKey}
	b := c.Bundle()

	for _, tc := range []struct {
		name       string
		serverCert *tls.Certificate
		clientAuth tls.ClientAuthType
		clientCert *tls.Certificate
		serverName string
		ok         bool
		wantPeer   string // the client's SPIFFE ID as the server sees it
	}{
		{"node client", server, tls.RequireAndVerifyClientCert, nodeCert, "controller.tvd.test", true, "spiffe://example.org/node/node-7"},
		{"by IP", server, tls.RequireAndVerifyClientCert, nodeCert, "127.0.0.1", true, "spiffe://example.org/node/node-7"},
		{"anonymous enrolment", server, tls.VerifyClientCertIfGiven, nil, "controller.tvd.test", true, ""},
		{"anonymous refused", server, tls.RequireAndVerifyClientCert, nil, "controller.tvd.test", false, ""},
		{"client of another CA", server, tls.VerifyClientCertIfGiven, foreignNode, "controller.tvd.test", false, ""},
		{"client without SPIFFE ID", server, tls.VerifyClientCertIfGiven, noID, "controller.tvd.test", false, ""},
		{"expired client", server, tls.VerifyClientCertIfGiven, expiredNode, "controller.tvd.test", false, ""},
		{"wrong server name", server, tls.VerifyClientCertIfGiven, nil, "other.tvd.test", false, ""},
		{"impostor server", impostorServer, tls.VerifyClientCertIfGiven, nil, "controller.tvd.test", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cerr, serr, state := handshake(t, b.ServerTLSConfig(*tc.serverCert, tc.clientAuth), b.ClientTLSConfig(tc.clientCert, tc.serverName))
			t.Logf("client err: %v; server err: %v", cerr, serr)
			if (cerr == nil && serr == nil) != tc.ok {
				t.Fatalf("client err %v, server err %v; want ok=%v", cerr, serr, tc.ok)
			}
			if !tc.ok {
				return
			}
			id, err := b.PeerIdentity(&state, time.Now())
			if tc.wantPeer == "" {
				if err == nil {
					t.Errorf("PeerIdentity of an anonymous client = %+v", id)
				}
				return
			}
			if err != nil || id.ID != tc.wantPeer || id.Kind != KindNode {
				t.Errorf("PeerIdentity = %+v, %v; want %s", id, err, tc.wantPeer)
			}
		})
	}
}
