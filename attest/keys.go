package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// AK is an attestation key the verifier checked: an ECC P-256 restricted
// signing key with ECDSA-SHA256, fixedTPM, fixedParent and
// sensitiveDataOrigin.
type AK struct {
	Public []byte           // TPMT_PUBLIC as produced by the TPM
	Key    *ecdsa.PublicKey // the key the quotes are checked against
	Name   []byte           // TPM Name: nameAlg || H(TPMT_PUBLIC)
}

// ParseAK parses an AK's TPMT_PUBLIC and checks it is fit to sign quotes:
// ECC P-256, ECDSA with SHA-256, restricted, sign, not decrypt, fixedTPM,
// fixedParent, sensitiveDataOrigin, nameAlg SHA-256.
//
// It does not prove the key lives in any particular TPM: only credential
// activation against a trusted EK does (BeginEnrollment/FinishEnrollment).
func ParseAK(public []byte) (*AK, error) {
	pub, err := unmarshalPublic(public)
	if err != nil {
		return nil, fmt.Errorf("parse ak public: %w", err)
	}
	if pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("ak type 0x%04x (want ECC)", uint16(pub.Type))
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fmt.Errorf("ak name algorithm 0x%04x (want SHA-256)", uint16(pub.NameAlg))
	}
	a := pub.ObjectAttributes
	for _, c := range []struct {
		ok   bool
		what string
	}{
		{a.Restricted, "restricted"}, {a.SignEncrypt, "sign"}, {!a.Decrypt, "not decrypt"},
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"}, {a.SensitiveDataOrigin, "sensitiveDataOrigin"},
	} {
		if !c.ok {
			return nil, fmt.Errorf("ak attributes lack %s", c.what)
		}
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("ak ecc parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("ak curve 0x%04x (want NIST P-256)", uint16(parms.CurveID))
	}
	if parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, fmt.Errorf("ak scheme 0x%04x (want ECDSA)", uint16(parms.Scheme.Scheme))
	}
	ecdsaScheme, err := parms.Scheme.Details.ECDSA()
	if err != nil || ecdsaScheme.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, errors.New("ak scheme hash is not SHA-256")
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("ak ecc point: %w", err)
	}
	key, err := tpm2.ECDSAPub(parms, point)
	if err != nil {
		return nil, fmt.Errorf("ak ecc point: %w", err)
	}
	if !key.Curve.IsOnCurve(key.X, key.Y) {
		return nil, errors.New("ak point is not on P-256")
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, fmt.Errorf("ak name: %w", err)
	}
	return &AK{Public: bytes.Clone(public), Key: key, Name: name.Buffer}, nil
}

// unmarshalPublic parses an untrusted TPMT_PUBLIC with go-tpm's
// reflection-based decoder, turning a decoder panic into an error and
// refusing trailing bytes.
func unmarshalPublic(b []byte) (pub *tpm2.TPMTPublic, err error) {
	defer func() {
		if r := recover(); r != nil {
			pub, err = nil, fmt.Errorf("malformed TPMT_PUBLIC: %v", r)
		}
	}()
	if len(b) == 0 || len(b) > 1024 {
		return nil, fmt.Errorf("TPMT_PUBLIC is %d bytes (want 1..1024)", len(b))
	}
	pub, err = tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, err
	}
	if again := tpm2.Marshal(*pub); !bytes.Equal(again, b) {
		return nil, errors.New("TPMT_PUBLIC has trailing or non-canonical bytes")
	}
	return pub, nil
}

// EK is an endorsement key as the TPM reported it.
type EK struct {
	Public []byte           // TPMT_PUBLIC
	Key    crypto.PublicKey // *rsa.PublicKey or *ecdsa.PublicKey
	pub    *tpm2.TPMTPublic
}

// ParseEK parses an EK's TPMT_PUBLIC and checks it has the shape of an
// endorsement key that can receive a credential: restricted decryption
// key, fixedTPM, fixedParent, sensitiveDataOrigin, RSA 2048 or ECC P-256
// or P-384 (swtpm's ECC EK), and an auth policy.
func ParseEK(public []byte) (*EK, error) {
	pub, err := unmarshalPublic(public)
	if err != nil {
		return nil, fmt.Errorf("parse ek public: %w", err)
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt || !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin {
		return nil, errors.New("ek attributes are not those of a restricted decryption key (restricted, decrypt, fixedTPM, fixedParent, sensitiveDataOrigin)")
	}
	if len(pub.AuthPolicy.Buffer) == 0 {
		return nil, errors.New("ek has no auth policy")
	}
	key, err := tpm2.Pub(*pub)
	if err != nil {
		return nil, fmt.Errorf("ek public key: %w", err)
	}
	switch k := key.(type) {
	case *rsa.PublicKey:
		if k.N.BitLen() != 2048 {
			return nil, fmt.Errorf("ek rsa key is %d bits (want 2048)", k.N.BitLen())
		}
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return nil, fmt.Errorf("ek curve %s (want P-256 or P-384)", k.Curve.Params().Name)
		}
	default:
		return nil, fmt.Errorf("ek key type %T (want RSA or ECC)", key)
	}
	if _, err := tpm2.ImportEncapsulationKey(pub); err != nil {
		return nil, fmt.Errorf("ek cannot receive credentials: %w", err)
	}
	return &EK{Public: bytes.Clone(public), Key: key, pub: pub}, nil
}

// endorsementQN is the qualified name of TPM_RH_ENDORSEMENT: its handle.
var endorsementQN = []byte{0x40, 0x00, 0x00, 0x0b}

// qualifiedName returns QN(child) = nameAlg || H(QN(parent) || Name(child))
// (TPM 2.0 Part 1, 16.6), with H the child's name algorithm.
func qualifiedName(parentQN, childName []byte) ([]byte, error) {
	if len(childName) < 2 {
		return nil, errors.New("name too short")
	}
	alg := tpm2.TPMAlgID(uint16(childName[0])<<8 | uint16(childName[1]))
	h, err := alg.Hash()
	if err != nil {
		return nil, fmt.Errorf("name algorithm 0x%04x: %w", uint16(alg), err)
	}
	w := h.New()
	w.Write(parentQN)
	w.Write(childName)
	return w.Sum(bytes.Clone(childName[:2])), nil
}

// AKQualifiedName returns the qualified name an AK created as a child of
// ek has: the value a quote by that AK carries as qualifiedSigner.
func AKQualifiedName(ek *EK, ak *AK) ([]byte, error) {
	ekName, err := tpm2.ObjectName(ek.pub)
	if err != nil {
		return nil, fmt.Errorf("ek name: %w", err)
	}
	ekQN, err := qualifiedName(endorsementQN, ekName.Buffer)
	if err != nil {
		return nil, fmt.Errorf("ek qualified name: %w", err)
	}
	qn, err := qualifiedName(ekQN, ak.Name)
	if err != nil {
		return nil, fmt.Errorf("ak qualified name: %w", err)
	}
	return qn, nil
}

// Fingerprint returns the SHA-256 of the EK's SubjectPublicKeyInfo DER, the
// value an EK allowlist holds.
func (ek *EK) Fingerprint() [32]byte {
	der, err := x509.MarshalPKIXPublicKey(ek.Key)
	if err != nil {
		// ParseEK only admits RSA and ECDSA keys, which always marshal.
		panic(fmt.Sprintf("attest: marshal ek key: %v", err))
	}
	return sha256.Sum256(der)
}

// EKIdentity is what an EK certificate says about the TPM.
type EKIdentity struct {
	Manufacturer string // TPM manufacturer (e.g. "id:00001014")
	Model        string
	Version      string
	Subject      string // certificate subject, often empty for EK certs
	Issuer       string
	Allowlisted  bool // accepted by fingerprint, not by certificate
}

// EKPolicy says which EKs are trusted: a certificate chain to Roots
// (through Intermediates), or an allowlist of EK fingerprints
// (EK.Fingerprint). Either suffices.
type EKPolicy struct {
	Roots         *x509.CertPool
	Intermediates *x509.CertPool
	Allow         map[[32]byte]bool
}

// EKError means the EK is not trusted.
type EKError struct{ Reason string }

func (e *EKError) Error() string { return "ek not trusted: " + e.Reason }

var (
	oidSAN          = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManuf     = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel     = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion   = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	errSANNotTCG    = errors.New("subjectAltName is not a TCG TPM directory name")
	directoryNameTg = 4
)

// parseTCGSAN reads the TPM manufacturer/model/version from a SAN holding
// one directoryName (TCG EK Credential Profile, 3.2.9).
func parseTCGSAN(value []byte, id *EKIdentity) error {
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(value, &names); err != nil || len(rest) != 0 {
		return errSANNotTCG
	}
	found := false
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != directoryNameTg {
			return errSANNotTCG
		}
		var rdns pkix.RDNSequence
		if rest, err := asn1.Unmarshal(n.Bytes, &rdns); err != nil || len(rest) != 0 {
			return errSANNotTCG
		}
		for _, rdn := range rdns {
			for _, atv := range rdn {
				s, ok := atv.Value.(string)
				if !ok {
					continue
				}
				switch {
				case atv.Type.Equal(oidTPMManuf):
					id.Manufacturer, found = s, true
				case atv.Type.Equal(oidTPMModel):
					id.Model = s
				case atv.Type.Equal(oidTPMVersion):
					id.Version = s
				}
			}
		}
	}
	if !found {
		return errSANNotTCG
	}
	return nil
}

// VerifyEK decides whether ek is trusted under p: if certDER is given, the
// certificate must carry ek's key and chain to p.Roots at time now; if
// not (or if the chain fails), ek's fingerprint must be in p.Allow.
//
// EK certificates put the TPM's manufacturer, model and version into a
// subjectAltName directoryName, which swtpm (and some vendors) mark
// critical; Go's x509 does not handle that form, so VerifyEK parses it
// itself and removes it from the unhandled critical extensions before
// chain verification. Any other unhandled critical extension fails.
//
// It does not check revocation (CRL/OCSP) nor the certificate's TPM
// specification or security assertions attributes.
func (p *EKPolicy) VerifyEK(ek *EK, certDER []byte, now time.Time) (*EKIdentity, error) {
	id := &EKIdentity{}
	var certErr error
	if len(certDER) > 0 {
		certErr = p.verifyCert(ek, certDER, now, id)
		if certErr == nil {
			return id, nil
		}
	} else {
		certErr = errors.New("no ek certificate")
	}
	if p.Allow[ek.Fingerprint()] {
		id.Allowlisted = true
		return id, nil
	}
	return nil, &EKError{Reason: fmt.Sprintf("%v, and ek fingerprint %x not in allowlist", certErr, ek.Fingerprint())}
}

func (p *EKPolicy) verifyCert(ek *EK, certDER []byte, now time.Time, id *EKIdentity) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("parse ek certificate: %w", err)
	}
	id.Subject, id.Issuer = cert.Subject.String(), cert.Issuer.String()
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if k, ok := cert.PublicKey.(equaler); !ok || !k.Equal(ek.Key) {
		return errors.New("ek certificate is for a different key")
	}
	// Handle the TCG directoryName SAN ourselves.
	unhandled := cert.UnhandledCriticalExtensions[:0:0]
	for _, oid := range cert.UnhandledCriticalExtensions {
		if oid.Equal(oidSAN) {
			continue
		}
		unhandled = append(unhandled, oid)
	}
	for _, ext := range cert.Extensions {
		if ext.Id.Equal(oidSAN) {
			if err := parseTCGSAN(ext.Value, id); err != nil && ext.Critical && len(cert.DNSNames)+len(cert.URIs)+len(cert.IPAddresses)+len(cert.EmailAddresses) == 0 {
				return fmt.Errorf("ek certificate: critical %w", err)
			}
		}
	}
	c := *cert
	c.UnhandledCriticalExtensions = unhandled
	if p.Roots == nil {
		return errors.New("no ek roots configured")
	}
	_, err = c.Verify(x509.VerifyOptions{
		Roots:         p.Roots,
		Intermediates: p.Intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return fmt.Errorf("ek certificate chain: %w", err)
	}
	return nil
}

// Challenge is a credential-activation challenge for one (EK, AK) pair.
// CredentialBlob and EncryptedSecret go to the attester; the secret stays
// with the verifier.
type Challenge struct {
	CredentialBlob  []byte // TPMS_ID_OBJECT (TPM2B_ID_OBJECT contents)
	EncryptedSecret []byte // TPM2B_ENCRYPTED_SECRET contents
	secret          [32]byte
}

// MakeChallenge runs MakeCredential in software: it encrypts a fresh
// 32-byte secret so that only the TPM holding ek can recover it, and only
// for an object named ak.Name loaded in that same TPM.
func MakeChallenge(rand io.Reader, ek *EK, ak *AK) (*Challenge, error) {
	key, err := tpm2.ImportEncapsulationKey(ek.pub)
	if err != nil {
		return nil, fmt.Errorf("import ek: %w", err)
	}
	c := &Challenge{}
	if _, err := io.ReadFull(rand, c.secret[:]); err != nil {
		return nil, fmt.Errorf("read challenge secret: %w", err)
	}
	blob, enc, err := tpm2.CreateCredential(rand, key, ak.Name, c.secret[:])
	if err != nil {
		return nil, fmt.Errorf("create credential: %w", err)
	}
	c.CredentialBlob, c.EncryptedSecret = blob, enc
	return c, nil
}

// ErrActivation means the attester did not return the challenge's secret:
// the AK is not in the EK's TPM, or the attester does not hold the EK.
var ErrActivation = errors.New("credential activation: returned secret does not match")

// Check compares the secret returned by the attester in constant time.
func (c *Challenge) Check(secret []byte) error {
	if subtle.ConstantTimeCompare(secret, c.secret[:]) != 1 {
		return ErrActivation
	}
	return nil
}
