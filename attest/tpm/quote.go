package tpm

import (
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tvd-dev/tvd/attest"
)

// Quote is a TPM2_Quote over SHA-256 PCRs.
type Quote struct {
	Attest    []byte // TPMS_ATTEST as signed
	Signature []byte // TPMT_SIGNATURE
}

func sha256Selection(pcrs []int) (tpm2.TPMLPCRSelection, error) {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		if p < 0 || p >= attest.NumPCRs {
			return tpm2.TPMLPCRSelection{}, fmt.Errorf("pcr %d out of range (want 0..%d)", p, attest.NumPCRs-1)
		}
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}, nil
}

// Quote signs the SHA-256 values of pcrs with the AK over qualifyingData
// (at most 64 bytes; normally attest.QualifyingData(nonce, tlsKeyHash)).
func (ak *AK) Quote(qualifyingData []byte, pcrs []int) (*Quote, error) {
	var q *Quote
	err := ak.t.do(func(tp transport.TPM) error {
		var err error
		q, err = ak.quote(tp, qualifyingData, pcrs)
		return err
	})
	return q, err
}

func (ak *AK) quote(tp transport.TPM, qualifyingData []byte, pcrs []int) (*Quote, error) {
	sel, err := sha256Selection(pcrs)
	if err != nil {
		return nil, err
	}
	rsp, err := tpm2.Quote{
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		PCRSelect:      sel,
	}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	return &Quote{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature)}, nil
}

// ReadPCRs reads the SHA-256 values of pcrs, returned ascending by index.
func (t *TPM) ReadPCRs(pcrs []int) ([]attest.PCR, error) {
	var out []attest.PCR
	err := t.do(func(tp transport.TPM) error {
		var err error
		out, err = readPCRs(tp, pcrs)
		return err
	})
	return out, err
}

func readPCRs(tp transport.TPM, pcrs []int) ([]attest.PCR, error) {
	want := slices.Clone(pcrs)
	slices.Sort(want)
	want = slices.Compact(want)
	out := make([]attest.PCR, 0, len(want))
	for len(out) < len(want) {
		rest := want[len(out):]
		sel, err := sha256Selection(rest)
		if err != nil {
			return nil, err
		}
		rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(tp)
		if err != nil {
			return nil, fmt.Errorf("pcr read: %w", err)
		}
		// The TPM returns a prefix of the selection (at most 8 digests);
		// values come in ascending PCR order.
		if len(rsp.PCRValues.Digests) == 0 {
			return nil, fmt.Errorf("pcr read returned no values for %v (is the SHA-256 bank allocated?)", rest)
		}
		for i, d := range rsp.PCRValues.Digests {
			if i >= len(rest) || len(d.Buffer) != 32 {
				return nil, fmt.Errorf("pcr read returned %d values of %d bytes for %v", len(rsp.PCRValues.Digests), len(d.Buffer), rest)
			}
			var p attest.PCR
			p.Index = rest[i]
			copy(p.Value[:], d.Buffer)
			out = append(out, p)
		}
	}
	return out, nil
}

// ReadClock returns the TPM's clock and counters (TPM2_ReadClock).
func (t *TPM) ReadClock() (attest.ClockInfo, error) {
	var c attest.ClockInfo
	err := t.do(func(tp transport.TPM) error {
		var err error
		c, err = readClock(tp)
		return err
	})
	return c, err
}

func readClock(tp transport.TPM) (attest.ClockInfo, error) {
	rsp, err := tpm2.ReadClock{}.Execute(tp)
	if err != nil {
		return attest.ClockInfo{}, fmt.Errorf("read clock: %w", err)
	}
	ci := rsp.CurrentTime.ClockInfo
	return attest.ClockInfo{Clock: ci.Clock, ResetCount: ci.ResetCount, RestartCount: ci.RestartCount, Safe: bool(ci.Safe)}, nil
}

// Extend extends digest into the SHA-256 bank of pcr. Other banks are not
// extended. Most callers want Measurer.Measure, which also logs.
func (t *TPM) Extend(pcr int, digest [32]byte) error {
	return t.do(func(tp transport.TPM) error { return extend(tp, pcr, digest) })
}

func extend(tp transport.TPM, pcr int, digest [32]byte) error {
	if pcr < 0 || pcr >= attest.NumPCRs {
		return fmt.Errorf("pcr %d out of range (want 0..%d)", pcr, attest.NumPCRs-1)
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:]}}},
	}.Execute(tp)
	if err != nil {
		return fmt.Errorf("extend pcr %d: %w", pcr, err)
	}
	return nil
}
