package fleet

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/tvd-dev/tvd/attest"
)

// EKCA is the fleet's TPM "manufacturer": it certifies the software EKs so
// that a controller trusting it (controller.Config.EKRoots, tvd controller
// --ek-ca) admits the simulated nodes at assurance tpm.
type EKCA struct {
	Cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// NewEKCA creates a fresh CA valid from now for ten years.
func NewEKCA(rand io.Reader, now time.Time) (*EKCA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, fmt.Errorf("ek ca key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "tvd fleet software TPM manufacturer"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ek ca certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("ek ca certificate: %w", err)
	}
	return &EKCA{Cert: cert, key: key}, nil
}

// LoadOrCreateEKCA reads dir/ek-ca.pem and dir/ek-ca-key.pem, creating
// them first if dir holds no CA. Start the controller under test with
// --ek-ca dir/ek-ca.pem.
func LoadOrCreateEKCA(dir string, rand io.Reader, now time.Time) (*EKCA, error) {
	certPath, keyPath := filepath.Join(dir, "ek-ca.pem"), filepath.Join(dir, "ek-ca-key.pem")
	cb, cerr := os.ReadFile(certPath)
	kb, kerr := os.ReadFile(keyPath)
	if cerr == nil && kerr == nil {
		cblk, _ := pem.Decode(cb)
		kblk, _ := pem.Decode(kb)
		if cblk == nil || kblk == nil {
			return nil, fmt.Errorf("ek ca %s: want PEM CERTIFICATE and PRIVATE KEY files", dir)
		}
		cert, err := x509.ParseCertificate(cblk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ek ca %s: %w", certPath, err)
		}
		k, err := x509.ParsePKCS8PrivateKey(kblk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("ek ca %s: %w", keyPath, err)
		}
		key, ok := k.(*ecdsa.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("ek ca %s: want an ECDSA key, got %T", keyPath, k)
		}
		return &EKCA{Cert: cert, key: key}, nil
	}
	if !errors.Is(cerr, os.ErrNotExist) && cerr != nil {
		return nil, fmt.Errorf("ek ca: %w", cerr)
	}
	ca, err := NewEKCA(rand, now)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("ek ca key: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ek ca: %w", err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return nil, fmt.Errorf("ek ca: %w", err)
	}
	if err := os.WriteFile(certPath, ca.PEM(), 0o644); err != nil {
		return nil, fmt.Errorf("ek ca: %w", err)
	}
	return ca, nil
}

// PEM returns the CA certificate in PEM.
func (c *EKCA) PEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// Pool returns a pool holding the CA certificate.
func (c *EKCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Cert)
	return p
}

var (
	oidSAN        = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidTPMManuf   = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel   = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
	oidEKCert     = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
)

// issue makes an EK certificate as the TCG EK Credential Profile has it:
// no subject, the TPM's manufacturer, model and version in a critical
// directoryName subjectAltName, and the EK certificate purpose.
func (c *EKCA) issue(rand io.Reader, pub *ecdsa.PublicKey, serial *big.Int, now time.Time) ([]byte, error) {
	rdn := pkix.RDNSequence{{
		{Type: oidTPMManuf, Value: "id:54564446"}, // "TVDF"
		{Type: oidTPMModel, Value: "tvd-fleet-soft"},
		{Type: oidTPMVersion, Value: "id:00010000"},
	}}
	name, err := asn1.Marshal(rdn)
	if err != nil {
		return nil, err
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: name}})
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidEKCert},
		ExtraExtensions: []pkix.Extension{{Id: oidSAN, Critical: true, Value: san}},
	}
	return x509.CreateCertificate(rand, tmpl, c.Cert, pub, c.key)
}

// AKTemplate is the software AK's public area: the same shape as
// attest/tpm's AK (ECC P-256, ECDSA-SHA256, restricted signing key,
// fixedTPM, fixedParent, sensitiveDataOrigin), with the key's point as
// unique.
var akTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme: tpm2.TPMTECCScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
		KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	}),
}

// withPoint returns tmpl with the ECC point of pub as its unique field.
func withPoint(tmpl tpm2.TPMTPublic, pub *ecdsa.PublicKey) tpm2.TPMTPublic {
	x, y := make([]byte, 32), make([]byte, 32)
	pub.X.FillBytes(x)
	pub.Y.FillBytes(y)
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y},
	})
	return tmpl
}

// TPM quote constants (TPM 2.0 Part 2).
const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE
	tpmAlgSHA256      = 0x000b
	tpmAlgECDSA       = 0x0018
	firmwareVersion   = 0x0001_0000_0000_0001
)

// SoftTPM is a software attester with the cryptography of a TPM 2.0 and
// none of its protection: an ECC P-256 endorsement key certified by an
// EKCA, an ECC P-256 attestation key "created under" it (the qualified
// name of quotes says so), TPM2_ActivateCredential for an ECC EK, the
// SHA-256 bank of the EE PCR with its measurement log, and TPM2_Quote
// producing genuine TPMS_ATTEST and TPMT_SIGNATURE bytes.
//
// It exists to load a controller with thousands of realistic nodes in one
// process. Its keys live in ordinary memory: it proves nothing about a
// machine and must never be trusted outside a benchmark deployment (the
// controller only admits it because it trusts the fleet's EKCA).
type SoftTPM struct {
	rand  io.Reader
	now   func() time.Time
	start time.Time

	ekKey    *ecdh.PrivateKey
	ekPublic []byte // TPMT_PUBLIC
	ekCert   []byte
	ekX      []byte
	akKey    *ecdsa.PrivateKey
	akPublic []byte // TPMT_PUBLIC
	akName   []byte
	akQN     []byte // qualified name under the EK

	mu        sync.Mutex
	pcr       [32]byte
	events    []attest.Event // entries base, base+1, ...
	base      uint64
	lastClock uint64
	reset     uint32
	restart   uint32
}

// NewSoftTPM creates a software TPM with fresh keys and an EK certificate
// from ca (which may be nil: no certificate, for allowlisting). rand and
// now default to crypto/rand and time.Now when nil.
func NewSoftTPM(rand io.Reader, now func() time.Time, ca *EKCA) (*SoftTPM, error) {
	if rand == nil {
		rand = cryptoRand
	}
	if now == nil {
		now = time.Now
	}
	t := &SoftTPM{rand: rand, now: now, start: now(), reset: 1}
	ekECDSA, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, fmt.Errorf("soft tpm: ek: %w", err)
	}
	if t.ekKey, err = ekECDSA.ECDH(); err != nil {
		return nil, fmt.Errorf("soft tpm: ek: %w", err)
	}
	ekPub := withPoint(tpm2.ECCEKTemplate, &ekECDSA.PublicKey)
	t.ekPublic = tpm2.Marshal(ekPub)
	t.ekX = make([]byte, 32)
	ekECDSA.X.FillBytes(t.ekX)
	if ca != nil {
		var sn [16]byte
		if _, err := io.ReadFull(rand, sn[:]); err != nil {
			return nil, fmt.Errorf("soft tpm: ek certificate serial: %w", err)
		}
		if t.ekCert, err = ca.issue(rand, &ekECDSA.PublicKey, new(big.Int).SetBytes(sn[:]), t.start); err != nil {
			return nil, fmt.Errorf("soft tpm: ek certificate: %w", err)
		}
	}
	if t.akKey, err = ecdsa.GenerateKey(elliptic.P256(), rand); err != nil {
		return nil, fmt.Errorf("soft tpm: ak: %w", err)
	}
	akPub := withPoint(akTemplate, &t.akKey.PublicKey)
	t.akPublic = tpm2.Marshal(akPub)
	akName, err := tpm2.ObjectName(&akPub)
	if err != nil {
		return nil, fmt.Errorf("soft tpm: ak name: %w", err)
	}
	ekName, err := tpm2.ObjectName(&ekPub)
	if err != nil {
		return nil, fmt.Errorf("soft tpm: ek name: %w", err)
	}
	t.akName = akName.Buffer
	// QN(EK) = nameAlg || H(QN(TPM_RH_ENDORSEMENT) || Name(EK)); QN(AK)
	// likewise under QN(EK) (TPM 2.0 Part 1, 16.6).
	ekQN := qualifiedName([]byte{0x40, 0x00, 0x00, 0x0b}, ekName.Buffer)
	t.akQN = qualifiedName(ekQN, t.akName)
	return t, nil
}

func qualifiedName(parentQN, childName []byte) []byte {
	h := sha256.New()
	h.Write(parentQN)
	h.Write(childName)
	return h.Sum(bytes.Clone(childName[:2]))
}

// EKPublic returns the EK's TPMT_PUBLIC.
func (t *SoftTPM) EKPublic() []byte { return t.ekPublic }

// EKCert returns the EK certificate (DER), or nil.
func (t *SoftTPM) EKCert() []byte { return t.ekCert }

// AKPublic returns the AK's TPMT_PUBLIC.
func (t *SoftTPM) AKPublic() []byte { return t.akPublic }

// ActivateCredential is TPM2_ActivateCredential for the ECC EK and the AK
// (TPM 2.0 Part 1, 24 "Credential Protection"; the maker's side is
// tpm2.CreateCredential): encryptedSecret is the ephemeral point of a
// one-pass ECDH with the EK; seed = KDFe(SHA-256, Z, "IDENTITY", ephX,
// ekX); the credential blob is TPM2B_DIGEST(HMAC(KDFa(seed, "INTEGRITY"),
// encIdentity || Name(AK))) || encIdentity, and encIdentity is
// AES-128-CFB(KDFa(seed, "STORAGE", Name(AK)), IV 0) of a TPM2B_DIGEST
// holding the secret. The HMAC binds the credential to the AK's name: a
// challenge made for another key fails the integrity check here, as it
// would in a TPM.
func (t *SoftTPM) ActivateCredential(credentialBlob, encryptedSecret []byte) ([]byte, error) {
	point, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](encryptedSecret)
	if err != nil {
		return nil, fmt.Errorf("activate credential: encrypted secret: %w", err)
	}
	if len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
		return nil, errors.New("activate credential: encrypted secret: coordinates longer than 32 bytes")
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[1+32-len(point.X.Buffer):33], point.X.Buffer)
	copy(raw[33+32-len(point.Y.Buffer):], point.Y.Buffer)
	eph, err := ecdh.P256().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("activate credential: ephemeral point: %w", err)
	}
	z, err := t.ekKey.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("activate credential: ecdh: %w", err)
	}
	seed := tpm2.KDFe(cryptoSHA256, z, "IDENTITY", raw[1:33], t.ekX, 256)

	if len(credentialBlob) < 2 {
		return nil, errors.New("activate credential: credential blob shorter than its integrity size")
	}
	n := int(binary.BigEndian.Uint16(credentialBlob))
	if n != sha256.Size || len(credentialBlob) < 2+n+2 {
		return nil, fmt.Errorf("activate credential: integrity HMAC of %d bytes in a blob of %d (want %d)", n, len(credentialBlob), sha256.Size)
	}
	integrity, encIdentity := credentialBlob[2:2+n], credentialBlob[2+n:]
	mac := hmac.New(sha256.New, tpm2.KDFa(cryptoSHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(encIdentity)
	mac.Write(t.akName)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, errors.New("activate credential: integrity check failed (TPM_RC_INTEGRITY): the credential is not for this EK and AK")
	}
	block, err := aes.NewCipher(tpm2.KDFa(cryptoSHA256, seed, "STORAGE", t.akName, nil, 128))
	if err != nil {
		return nil, fmt.Errorf("activate credential: %w", err)
	}
	plain := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, encIdentity) //nolint:staticcheck // TPM 2.0 mandates CFB here
	size := int(binary.BigEndian.Uint16(plain))
	if size != len(plain)-2 {
		return nil, fmt.Errorf("activate credential: credential of %d bytes in %d (TPM_RC_SIZE)", size, len(plain)-2)
	}
	return plain[2:], nil
}

// Measure extends the EE PCR with one measurement and appends it to the
// log.
func (t *SoftTPM) Measure(typ attest.EventType, ee, path string, fileDigest [32]byte) (attest.Event, error) {
	e := attest.Event{PCR: attest.EEPCR, Type: typ, EE: ee, Path: path, FileDigest: fileDigest}
	if err := e.Validate(); err != nil {
		return e, fmt.Errorf("measure: %w", err)
	}
	e.Digest = e.ComputeDigest()
	t.mu.Lock()
	t.pcr = attest.ExtendSHA256(t.pcr, e.Digest)
	t.events = append(t.events, e)
	t.mu.Unlock()
	return e, nil
}

// Events returns the number of log entries of this boot.
func (t *SoftTPM) Events() uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.base + uint64(len(t.events))
}

// Discard forgets the log entries before seq, which the verifier has
// replayed (its cursor), so a long run does not keep every entry.
func (t *SoftTPM) Discard(seq uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if seq <= t.base {
		return
	}
	n := min(seq-t.base, uint64(len(t.events)))
	t.events = slices.Delete(t.events, 0, int(n))
	t.base += n
}

// clockLocked returns TPMS_CLOCK_INFO: milliseconds since the TPM was
// made, never going back.
func (t *SoftTPM) clockLocked() attest.ClockInfo {
	c := uint64(t.now().Sub(t.start).Milliseconds())
	if c < t.lastClock {
		c = t.lastClock
	}
	t.lastClock = c
	return attest.ClockInfo{Clock: c, ResetCount: t.reset, RestartCount: t.restart, Safe: true}
}

// Quote is TPM2_Quote of the EE PCR (SHA-256 bank) by the AK over
// qualifyingData: it returns the TPMS_ATTEST and its TPMT_SIGNATURE
// (ECDSA over SHA-256 of the TPMS_ATTEST) and the quoted PCR value.
func (t *SoftTPM) Quote(qualifyingData []byte) (attestBytes, signature []byte, pcr attest.PCR, err error) {
	t.mu.Lock()
	clock := t.clockLocked()
	pcr = attest.PCR{Index: attest.EEPCR, Value: t.pcr}
	t.mu.Unlock()
	return t.quote(qualifyingData, clock, pcr)
}

func (t *SoftTPM) quote(qualifyingData []byte, clock attest.ClockInfo, pcr attest.PCR) ([]byte, []byte, attest.PCR, error) {
	if len(qualifyingData) > 64 {
		return nil, nil, pcr, fmt.Errorf("quote: qualifying data of %d bytes (want at most 64)", len(qualifyingData))
	}
	b := make([]byte, 0, 160)
	b = binary.BigEndian.AppendUint32(b, tpmGeneratedValue)
	b = binary.BigEndian.AppendUint16(b, tpmSTAttestQuote)
	b = appendTPM2B(b, t.akQN)
	b = appendTPM2B(b, qualifyingData)
	b = binary.BigEndian.AppendUint64(b, clock.Clock)
	b = binary.BigEndian.AppendUint32(b, clock.ResetCount)
	b = binary.BigEndian.AppendUint32(b, clock.RestartCount)
	safe := byte(0)
	if clock.Safe {
		safe = 1
	}
	b = append(b, safe)
	b = binary.BigEndian.AppendUint64(b, firmwareVersion)
	// TPML_PCR_SELECTION: one SHA-256 selection of 3 bytes.
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint16(b, tpmAlgSHA256)
	sel := [3]byte{}
	sel[pcr.Index/8] |= 1 << (pcr.Index % 8)
	b = append(b, 3)
	b = append(b, sel[:]...)
	digest := attest.PCRDigest([]attest.PCR{pcr})
	b = appendTPM2B(b, digest[:])

	h := sha256.Sum256(b)
	r, s, err := ecdsa.Sign(t.rand, t.akKey, h[:])
	if err != nil {
		return nil, nil, pcr, fmt.Errorf("quote: sign: %w", err)
	}
	sig := make([]byte, 0, 72)
	sig = binary.BigEndian.AppendUint16(sig, tpmAlgECDSA)
	sig = binary.BigEndian.AppendUint16(sig, tpmAlgSHA256)
	var rb, sb [32]byte
	r.FillBytes(rb[:])
	s.FillBytes(sb[:])
	sig = appendTPM2B(sig, rb[:])
	sig = appendTPM2B(sig, sb[:])
	return b, sig, pcr, nil
}

func appendTPM2B(b, v []byte) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

// Evidence quotes over attest.QualifyingData(nonce, tlsKeyHash) and
// attaches the log entries after cur (all of them if cur is not for this
// TPM's boot), as a real attester does (attest/tpm Measurer.Evidence).
func (t *SoftTPM) Evidence(nonce []byte, tlsKeyHash [32]byte, cur attest.Cursor) (*attest.Evidence, error) {
	qd := attest.QualifyingData(nonce, tlsKeyHash)
	t.mu.Lock()
	clock := t.clockLocked()
	ev := &attest.Evidence{}
	if cur.Valid && cur.ResetCount == clock.ResetCount {
		ev.FirstSeq = cur.Seq
	}
	if ev.FirstSeq < t.base || ev.FirstSeq > t.base+uint64(len(t.events)) {
		base, n := t.base, len(t.events)
		t.mu.Unlock()
		return nil, fmt.Errorf("evidence: verifier asks for entries from %d, log holds %d..%d", ev.FirstSeq, base, base+uint64(n))
	}
	ev.Events = slices.Clone(t.events[ev.FirstSeq-t.base:])
	pcr := attest.PCR{Index: attest.EEPCR, Value: t.pcr}
	t.mu.Unlock()
	a, sig, pcr, err := t.quote(qd[:], clock, pcr)
	if err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	ev.Attest, ev.Signature, ev.PCRs = a, sig, []attest.PCR{pcr}
	return ev, nil
}
