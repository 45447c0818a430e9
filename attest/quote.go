package attest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
)

// TPM constants used by the quote parser (TPM 2.0 Part 2).
const (
	tpmGeneratedValue = 0xff544347 // TPM_GENERATED_VALUE
	tpmSTAttestQuote  = 0x8018     // TPM_ST_ATTEST_QUOTE
	tpmAlgSHA256      = 0x000b
	tpmAlgECDSA       = 0x0018
	maxNameLen        = 2 + 64 // TPM2B_NAME: hash alg + largest digest
	maxDataLen        = 64     // TPM2B_DATA: sizeof(TPMT_HA) bound used by real TPMs
	maxPCRSelections  = 16
	maxSizeofSelect   = 4 // PCR_SELECT_MAX for 24..32 PCRs
)

// ClockInfo is TPMS_CLOCK_INFO.
type ClockInfo struct {
	Clock        uint64 // milliseconds the TPM has been powered
	ResetCount   uint32 // TPM Resets since the last TPM2_Clear
	RestartCount uint32 // TPM Restarts/Resumes since the last TPM Reset
	Safe         bool   // no larger Clock value was ever reported
}

// PCRSelection is one TPMS_PCR_SELECTION.
type PCRSelection struct {
	Hash uint16 // TPM_ALG_ID of the bank
	PCRs []int  // selected PCR indexes, ascending
}

// Quote is a parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
type Quote struct {
	Magic           uint32
	Type            uint16
	QualifiedSigner []byte
	ExtraData       []byte
	ClockInfo       ClockInfo
	FirmwareVersion uint64
	Selections      []PCRSelection
	PCRDigest       []byte
}

// QuoteFormatError means the TPMS_ATTEST or TPMT_SIGNATURE bytes are not
// what a TPM produces for a quote.
type QuoteFormatError struct {
	Field string
	Msg   string
}

func (e *QuoteFormatError) Error() string {
	return fmt.Sprintf("quote %s: %s", e.Field, e.Msg)
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) fail(field, format string, args ...any) {
	if r.err == nil {
		r.err = &QuoteFormatError{Field: field, Msg: fmt.Sprintf(format, args...)}
	}
}

func (r *reader) need(field string, n int) bool {
	if r.err != nil {
		return false
	}
	if len(r.b) < n {
		r.fail(field, "truncated (have %d bytes, want %d)", len(r.b), n)
		return false
	}
	return true
}

func (r *reader) u8(field string) uint8 {
	if !r.need(field, 1) {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) u16(field string) uint16 {
	if !r.need(field, 2) {
		return 0
	}
	v := binary.BigEndian.Uint16(r.b)
	r.b = r.b[2:]
	return v
}

func (r *reader) u32(field string) uint32 {
	if !r.need(field, 4) {
		return 0
	}
	v := binary.BigEndian.Uint32(r.b)
	r.b = r.b[4:]
	return v
}

func (r *reader) u64(field string) uint64 {
	if !r.need(field, 8) {
		return 0
	}
	v := binary.BigEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) bytes(field string, n int) []byte {
	if !r.need(field, n) {
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

// tpm2b reads a TPM2B with a size of at most max.
func (r *reader) tpm2b(field string, max int) []byte {
	n := int(r.u16(field + " size"))
	if r.err != nil {
		return nil
	}
	if n > max {
		r.fail(field, "size %d too large (want at most %d)", n, max)
		return nil
	}
	return r.bytes(field, n)
}

// ParseQuote parses a TPMS_ATTEST that must be a quote. It checks the
// structure only (lengths, bounds, no trailing bytes) and returns the
// fields; magic and type are returned as found so the caller can report
// them (Verifier.Appraise refuses any other value).
func ParseQuote(b []byte) (*Quote, error) {
	r := &reader{b: b}
	q := &Quote{}
	q.Magic = r.u32("magic")
	q.Type = r.u16("type")
	if r.err == nil && q.Type != tpmSTAttestQuote {
		// The attested union depends on the type; only quotes are parsed.
		return nil, &QuoteFormatError{Field: "type", Msg: fmt.Sprintf("0x%04x is not TPM_ST_ATTEST_QUOTE (0x%04x)", q.Type, tpmSTAttestQuote)}
	}
	q.QualifiedSigner = r.tpm2b("qualifiedSigner", maxNameLen)
	q.ExtraData = r.tpm2b("extraData", maxDataLen)
	q.ClockInfo.Clock = r.u64("clock")
	q.ClockInfo.ResetCount = r.u32("resetCount")
	q.ClockInfo.RestartCount = r.u32("restartCount")
	switch safe := r.u8("safe"); {
	case r.err != nil:
	case safe > 1:
		r.fail("safe", "value %d is not a TPMI_YES_NO", safe)
	default:
		q.ClockInfo.Safe = safe == 1
	}
	q.FirmwareVersion = r.u64("firmwareVersion")
	count := r.u32("pcrSelect count")
	if r.err == nil && count > maxPCRSelections {
		r.fail("pcrSelect count", "%d selections (want at most %d)", count, maxPCRSelections)
	}
	for i := 0; r.err == nil && i < int(count); i++ {
		var s PCRSelection
		s.Hash = r.u16("pcrSelect hash")
		size := int(r.u8("pcrSelect sizeofSelect"))
		if r.err == nil && size > maxSizeofSelect {
			r.fail("pcrSelect sizeofSelect", "%d bytes (want at most %d)", size, maxSizeofSelect)
		}
		bits := r.bytes("pcrSelect bitmap", size)
		for byteIdx, v := range bits {
			for bit := 0; bit < 8; bit++ {
				if v&(1<<bit) != 0 {
					s.PCRs = append(s.PCRs, byteIdx*8+bit)
				}
			}
		}
		q.Selections = append(q.Selections, s)
	}
	q.PCRDigest = r.tpm2b("pcrDigest", 64)
	if r.err == nil && len(r.b) != 0 {
		r.fail("attest", "%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	return q, nil
}

// Signature is a parsed ECDSA TPMT_SIGNATURE.
type Signature struct {
	Hash uint16
	R, S *big.Int
}

// ParseSignature parses a TPMT_SIGNATURE that must be ECDSA with SHA-256
// and scalars of at most 32 bytes (P-256).
func ParseSignature(b []byte) (*Signature, error) {
	r := &reader{b: b}
	alg := r.u16("sigAlg")
	if r.err == nil && alg != tpmAlgECDSA {
		return nil, &QuoteFormatError{Field: "sigAlg", Msg: fmt.Sprintf("0x%04x is not TPM_ALG_ECDSA", alg)}
	}
	h := r.u16("signature hash")
	if r.err == nil && h != tpmAlgSHA256 {
		return nil, &QuoteFormatError{Field: "signature hash", Msg: fmt.Sprintf("0x%04x is not TPM_ALG_SHA256", h)}
	}
	rb := r.tpm2b("signatureR", 32)
	sb := r.tpm2b("signatureS", 32)
	if r.err == nil && len(r.b) != 0 {
		r.fail("signature", "%d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return nil, r.err
	}
	return &Signature{Hash: h, R: new(big.Int).SetBytes(rb), S: new(big.Int).SetBytes(sb)}, nil
}

// PCR is the claimed SHA-256 value of one PCR.
type PCR struct {
	Index int
	Value [32]byte
}

// PCRDigest returns the TPM's pcrDigest for SHA-256 values in selection
// order: SHA-256 of their concatenation.
func PCRDigest(pcrs []PCR) [32]byte {
	h := sha256.New()
	for i := range pcrs {
		h.Write(pcrs[i].Value[:])
	}
	var d [32]byte
	h.Sum(d[:0])
	return d
}

var errNoSHA256Selection = errors.New("quote selects no SHA-256 PCRs")

// sha256Selection returns the PCRs the quote selects in the SHA-256 bank
// and refuses any other bank (so pcrDigest covers exactly those values).
func (q *Quote) sha256Selection() ([]int, error) {
	var out []int
	for _, s := range q.Selections {
		if len(s.PCRs) == 0 {
			continue
		}
		if s.Hash != tpmAlgSHA256 {
			return nil, fmt.Errorf("quote selects PCRs in bank 0x%04x (want only SHA-256, 0x%04x)", s.Hash, tpmAlgSHA256)
		}
		if out != nil {
			return nil, errors.New("quote selects the SHA-256 bank twice")
		}
		out = s.PCRs
	}
	if len(out) == 0 {
		return nil, errNoSHA256Selection
	}
	return out, nil
}
