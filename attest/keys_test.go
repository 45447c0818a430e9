package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// softEK returns a TPMT_PUBLIC in the default ECC EK template holding a
// software key, standing in for another TPM's EK.
func softEK(t testing.TB) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := tpm2.ECCEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, 32))},
		Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, 32))},
	})
	return tpm2.Marshal(tmpl), key
}

type ca struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newCA(t testing.TB) *ca {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ek ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &ca{cert: c, key: key}
}

func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

func tcgSAN(t testing.TB, rdn pkix.RDNSequence) []byte {
	name, err := asn1.Marshal(rdn)
	if err != nil {
		t.Fatal(err)
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		t.Fatal(err)
	}
	return san
}

var tpmRDN = pkix.RDNSequence{{
	{Type: oidTPMManuf, Value: "id:00001014"},
	{Type: oidTPMModel, Value: "swtpm"},
	{Type: oidTPMVersion, Value: "id:20191023"},
}}

func (c *ca) issue(t testing.TB, pub crypto.PublicKey, san []byte, notAfter time.Time) []byte {
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: notAfter,
		KeyUsage: x509.KeyUsageKeyEncipherment}
	if san != nil {
		tmpl.ExtraExtensions = []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestVerifyEK(t *testing.T) {
	pub, key := softEK(t)
	ek, err := ParseEK(pub)
	if err != nil {
		t.Fatal(err)
	}
	root := newCA(t)
	later := time.Now().Add(time.Hour)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	badSAN := tcgSAN(t, pkix.RDNSequence{{{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "not a tpm"}}})
	cases := []struct {
		name   string
		policy EKPolicy
		cert   []byte
		ok     bool
	}{
		{"critical tcg san", EKPolicy{Roots: root.pool()}, root.issue(t, &key.PublicKey, tcgSAN(t, tpmRDN), later), true},
		{"no san", EKPolicy{Roots: root.pool()}, root.issue(t, &key.PublicKey, nil, later), true},
		{"critical non-tcg directory name", EKPolicy{Roots: root.pool()}, root.issue(t, &key.PublicKey, badSAN, later), false},
		{"untrusted ca", EKPolicy{Roots: newCA(t).pool()}, root.issue(t, &key.PublicKey, nil, later), false},
		{"other key", EKPolicy{Roots: root.pool()}, root.issue(t, &otherKey.PublicKey, nil, later), false},
		{"expired", EKPolicy{Roots: root.pool()}, root.issue(t, &key.PublicKey, nil, time.Now().Add(-time.Minute)), false},
		{"garbage cert", EKPolicy{Roots: root.pool()}, []byte("not der"), false},
		{"no cert, no allowlist", EKPolicy{Roots: root.pool()}, nil, false},
		{"allowlisted", EKPolicy{Allow: map[[32]byte]bool{ek.Fingerprint(): true}}, nil, true},
		{"allowlist overrides untrusted cert", EKPolicy{Roots: newCA(t).pool(), Allow: map[[32]byte]bool{ek.Fingerprint(): true}}, root.issue(t, &key.PublicKey, nil, later), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, err := c.policy.VerifyEK(ek, c.cert, time.Now())
			if c.ok != (err == nil) {
				t.Fatalf("err %v, want ok=%v", err, c.ok)
			}
			if err != nil {
				var e *EKError
				if !errors.As(err, &e) {
					t.Fatalf("err %T, want *EKError", err)
				}
				return
			}
			if c.name == "critical tcg san" && (id.Manufacturer != "id:00001014" || id.Model != "swtpm" || id.Version != "id:20191023") {
				t.Fatalf("identity %+v", id)
			}
		})
	}
}

func TestParseAKRefusals(t *testing.T) {
	good := func() tpm2.TPMTPublic {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
				UserWithAuth: true, Restricted: true, SignEncrypt: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
				CurveID: tpm2.TPMECCNistP256, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, 32))},
				Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, 32))},
			}),
		}
	}
	if _, err := ParseAK(tpm2.Marshal(good())); err != nil {
		t.Fatalf("good ak refused: %v", err)
	}
	for name, c := range map[string]struct {
		mutate func(*tpm2.TPMTPublic)
		want   string
	}{
		"not restricted":   {func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }, "restricted"},
		"not fixedTPM":     {func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }, "fixedTPM"},
		"not fixedParent":  {func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }, "fixedParent"},
		"imported":         {func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }, "sensitiveDataOrigin"},
		"decrypt":          {func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }, "decrypt"},
		"sha1 name":        {func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }, "name algorithm"},
		"rsa":              {func(p *tpm2.TPMTPublic) { *p = tpm2.RSASRKTemplate }, "type"},
		"not on the curve": {func(p *tpm2.TPMTPublic) { pt, _ := p.Unique.ECC(); pt.X.Buffer[31] ^= 1 }, "P-256"},
	} {
		t.Run(name, func(t *testing.T) {
			p := good()
			c.mutate(&p)
			_, err := ParseAK(tpm2.Marshal(p))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err %v, want mention of %q", err, c.want)
			}
		})
	}
	if _, err := ParseAK([]byte{0, 1}); err == nil {
		t.Fatalf("garbage ak parsed")
	}
}

func TestMakeChallengeSoftEK(t *testing.T) {
	pub, _ := softEK(t)
	ek, err := ParseEK(pub)
	if err != nil {
		t.Fatal(err)
	}
	ak := recordedState(t, "state0.bin").AK()
	ch, err := MakeChallenge(rand.Reader, ek, ak)
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.CredentialBlob) == 0 || len(ch.EncryptedSecret) == 0 {
		t.Fatalf("empty challenge")
	}
	if err := ch.Check(make([]byte, 32)); !errors.Is(err, ErrActivation) {
		t.Fatalf("zero secret accepted: %v", err)
	}
	if err := ch.Check(ch.secret[:]); err != nil {
		t.Fatalf("right secret refused: %v", err)
	}
	if _, err := ParseEK(tpm2.Marshal(tpm2.ECCSRKTemplate)); err == nil {
		t.Fatalf("srk template (no policy) accepted as ek")
	}
}

func FuzzParsePublic(f *testing.F) {
	f.Add(recordedState(f, "state0.bin").AK().Public)
	pub, _ := softEK(f)
	f.Add(pub)
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseAK(b)
		ParseEK(b)
	})
}

func FuzzTCGSAN(f *testing.F) {
	f.Add(tcgSAN(f, tpmRDN))
	f.Fuzz(func(t *testing.T, b []byte) {
		var id EKIdentity
		parseTCGSAN(b, &id)
	})
}
