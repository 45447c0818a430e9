package tpm

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// EKKind selects an endorsement key and its certificate's NV index (TCG
// EK Credential Profile, low range).
type EKKind int

const (
	// EKRSA2048 is the RSA 2048 EK (default template), certificate at NV
	// 0x01c00002.
	EKRSA2048 EKKind = iota
	// EKECCP256 is the ECC NIST P-256 EK (default template), certificate at
	// NV 0x01c0000a.
	EKECCP256
)

// NV indexes of EK certificates.
const (
	NVIndexRSAEKCert tpm2.TPMHandle = 0x01c00002
	NVIndexECCEKCert tpm2.TPMHandle = 0x01c0000a
)

func (k EKKind) String() string {
	switch k {
	case EKRSA2048:
		return "rsa2048"
	case EKECCP256:
		return "ecc-p256"
	}
	return fmt.Sprintf("EKKind(%d)", int(k))
}

func (k EKKind) template() (tpm2.TPMTPublic, tpm2.TPMHandle, error) {
	switch k {
	case EKRSA2048:
		return tpm2.RSAEKTemplate, NVIndexRSAEKCert, nil
	case EKECCP256:
		return tpm2.ECCEKTemplate, NVIndexECCEKCert, nil
	}
	return tpm2.TPMTPublic{}, 0, fmt.Errorf("unknown ek kind %d (want EKRSA2048 or EKECCP256)", int(k))
}

// EK is an endorsement key's public part and certificate.
type EK struct {
	Kind   EKKind
	Public []byte // TPMT_PUBLIC, for attest.ParseEK
	Cert   []byte // DER certificate from NV, nil if the TPM has none
}

// ErrNoEKCert means the TPM has no EK certificate at the kind's NV index.
var ErrNoEKCert = errors.New("no ek certificate in nv")

// EK creates the EK primary from the kind's default template, returns its
// public area and reads its certificate from NV. A missing certificate is
// not an error (Cert is nil); the verifier may allowlist the EK instead.
func (t *TPM) EK(kind EKKind) (*EK, error) {
	tmpl, nvIndex, err := kind.template()
	if err != nil {
		return nil, err
	}
	ek := &EK{Kind: kind}
	defer func() { t.log.Debug("read ek", "kind", kind.String(), "cert_bytes", len(ek.Cert)) }()
	err = t.do(func(tp transport.TPM) error {
		rsp, err := createEK(tp, tmpl)
		if err != nil {
			return err
		}
		flush(tp, rsp.ObjectHandle)
		ek.Public = rsp.OutPublic.Bytes()
		cert, err := readNV(tp, nvIndex)
		switch {
		case errors.Is(err, ErrNoEKCert):
		case err != nil:
			return fmt.Errorf("read ek certificate: %w", err)
		default:
			ek.Cert = cert
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ek, nil
}

// ReadEKCert reads the DER EK certificate for kind from NV. It returns
// ErrNoEKCert if the index is not defined.
func (t *TPM) ReadEKCert(kind EKKind) ([]byte, error) {
	_, idx, err := kind.template()
	if err != nil {
		return nil, err
	}
	var cert []byte
	err = t.do(func(tp transport.TPM) error {
		cert, err = readNV(tp, idx)
		return err
	})
	return cert, err
}

// nvChunk is a read size every TPM accepts (TPM_PT_NV_BUFFER_MAX >= 512
// on PC-client TPMs).
const nvChunk = 512

func readNV(tp transport.TPM, idx tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(tp)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, ErrNoEKCert
		}
		return nil, fmt.Errorf("nv read public 0x%08x: %w", uint32(idx), err)
	}
	contents, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, fmt.Errorf("nv public 0x%08x: %w", uint32(idx), err)
	}
	size := int(contents.DataSize)
	out := make([]byte, 0, size)
	for len(out) < size {
		n := min(nvChunk, size-len(out))
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: pub.NVName},
			Size:       uint16(n),
			Offset:     uint16(len(out)),
		}.Execute(tp)
		if err != nil {
			return nil, fmt.Errorf("nv read 0x%08x at %d: %w", uint32(idx), len(out), err)
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// AKTemplate is the AK: ECC NIST P-256, restricted signing key with
// ECDSA-SHA256, fixedTPM, fixedParent, sensitiveDataOrigin, empty auth.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		NoDA:                true,
		Restricted:          true,
		SignEncrypt:         true,
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
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// AK is an attestation key loaded in the TPM. It is a child of the EK
// (endorsement hierarchy): the TPM obfuscates resetCount, restartCount and
// firmwareVersion in quotes signed by keys outside the endorsement and
// platform hierarchies (TPM 2.0 Part 1, clause 36.5), which would defeat
// the verifier's counter and firmware checks, so the AK is not put under
// the SRK.
type AK struct {
	Kind    EKKind // the EK the AK lives under
	Public  []byte // TPMT_PUBLIC, for attest.ParseAK
	Private []byte // TPM2B_PRIVATE contents: the wrapped key, usable only in this TPM
	handle  tpm2.TPMHandle
	name    tpm2.TPM2BName
	t       *TPM
}

// CreateAK creates a new AK under the kind's EK and loads it. Persist
// Kind, Public and Private to reload it with LoadAK after a restart.
func (t *TPM) CreateAK(kind EKKind) (*AK, error) {
	tmpl, _, err := kind.template()
	if err != nil {
		return nil, err
	}
	ak := &AK{t: t, Kind: kind}
	err = t.do(func(tp transport.TPM) error {
		ek, err := createEK(tp, tmpl)
		if err != nil {
			return err
		}
		defer flush(tp, ek.ObjectHandle)
		rsp, err := tpm2.Create{
			ParentHandle: ekAuth(ek),
			InPublic:     tpm2.New2B(AKTemplate),
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("create ak: %w", err)
		}
		ak.Public, ak.Private = rsp.OutPublic.Bytes(), rsp.OutPrivate.Buffer
		if err := ak.load(tp, ek); err != nil {
			return err
		}
		t.log.Debug("created ak", "ek", kind.String(), "handle", uint32(ak.handle))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ak, nil
}

// LoadAK loads an AK created earlier by CreateAK(kind) in this TPM.
func (t *TPM) LoadAK(kind EKKind, public, private []byte) (*AK, error) {
	tmpl, _, err := kind.template()
	if err != nil {
		return nil, err
	}
	ak := &AK{t: t, Kind: kind, Public: public, Private: private}
	err = t.do(func(tp transport.TPM) error {
		ek, err := createEK(tp, tmpl)
		if err != nil {
			return err
		}
		defer flush(tp, ek.ObjectHandle)
		return ak.load(tp, ek)
	})
	if err != nil {
		return nil, err
	}
	return ak, nil
}

func (ak *AK) load(tp transport.TPM, ek *tpm2.CreatePrimaryResponse) error {
	rsp, err := tpm2.Load{
		ParentHandle: ekAuth(ek),
		InPrivate:    tpm2.TPM2BPrivate{Buffer: ak.Private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](ak.Public),
	}.Execute(tp)
	if err != nil {
		return fmt.Errorf("load ak: %w", err)
	}
	ak.handle, ak.name = rsp.ObjectHandle, rsp.Name
	return nil
}

func createEK(tp transport.TPM, tmpl tpm2.TPMTPublic) (*tpm2.CreatePrimaryResponse, error) {
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("create ek: %w", err)
	}
	return ek, nil
}

// ekAuth authorises use of the EK through its policy.
func ekAuth(ek *tpm2.CreatePrimaryResponse) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name, Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, ekPolicy)}
}

// Close flushes the AK from the TPM.
func (ak *AK) Close() error {
	return ak.t.do(func(tp transport.TPM) error {
		if _, err := (tpm2.FlushContext{FlushHandle: ak.handle}).Execute(tp); err != nil {
			return fmt.Errorf("flush ak: %w", err)
		}
		return nil
	})
}

// ekPolicy satisfies the default EK policy: PolicySecret(TPM_RH_ENDORSEMENT)
// with the (empty) endorsement hierarchy password.
func ekPolicy(tp transport.TPM, handle tpm2.TPMISHPolicy, nonceTPM tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: handle,
		NonceTPM:      nonceTPM,
	}.Execute(tp)
	return err
}

// ActivateCredential recovers the secret of a credential made (by the
// verifier's attest.MakeChallenge) for this AK and its EK. The EK
// is recreated from its template and authorised with a policy session
// (PolicySecret with the endorsement hierarchy). It fails unless the
// credential was made for this TPM's EK and this AK's name.
func (ak *AK) ActivateCredential(credentialBlob, encryptedSecret []byte) ([]byte, error) {
	tmpl, _, err := ak.Kind.template()
	if err != nil {
		return nil, err
	}
	var secret []byte
	err = ak.t.do(func(tp transport.TPM) error {
		ek, err := createEK(tp, tmpl)
		if err != nil {
			return err
		}
		defer flush(tp, ek.ObjectHandle)
		rsp, err := tpm2.ActivateCredential{
			ActivateHandle: tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
			KeyHandle:      ekAuth(ek),
			CredentialBlob: tpm2.TPM2BIDObject{Buffer: credentialBlob},
			Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encryptedSecret},
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("activate credential: %w", err)
		}
		secret = rsp.CertInfo.Buffer
		return nil
	})
	if err != nil {
		return nil, err
	}
	return secret, nil
}
