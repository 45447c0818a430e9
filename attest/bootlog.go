package attest

import (
	"crypto"
	"errors"
	"fmt"
	"slices"

	attestation "github.com/google/go-attestation/attest"
)

// BootEvent is one event of a verified TCG boot event log.
type BootEvent struct {
	PCR    int
	Type   string // e.g. "EV_EFI_BOOT_SERVICES_APPLICATION"
	Digest []byte // SHA-256 digest extended into PCR
	Data   []byte // event data as logged (not covered by Digest for all event types)
}

// BootLogError means the boot log does not replay to the quoted values.
type BootLogError struct{ Reason string }

func (e *BootLogError) Error() string { return "boot log: " + e.Reason }

// MaxBootLog bounds the size of a boot event log VerifyBootLog accepts.
const MaxBootLog = 8 << 20

// VerifyBootLog parses a TCG PC Client crypto-agile boot event log (the
// kernel's binary_bios_measurements) with go-attestation and replays its
// SHA-256 digests against quoted, which must come from an accepted quote
// (Result.PCRs): values that are not quoted are not evidence. Every PCR in
// require must be quoted, have events in the log, and replay exactly. It
// returns the replayed events of the required PCRs, in log order.
//
// It does not check what the events mean (which boot loader, whether
// Secure Boot is on): that is a policy decision over the returned events.
// go-attestation's known firmware workarounds (for example a missing
// ExitBootServices event) are applied when a plain replay fails.
func VerifyBootLog(raw []byte, quoted []PCR, require []int) ([]BootEvent, error) {
	if len(raw) > MaxBootLog {
		return nil, &BootLogError{Reason: fmt.Sprintf("%d bytes (want at most %d)", len(raw), MaxBootLog)}
	}
	if len(require) == 0 {
		return nil, errors.New("verify boot log: no PCRs required")
	}
	el, err := parseBootLog(raw)
	if err != nil {
		return nil, &BootLogError{Reason: err.Error()}
	}
	if !slices.Contains(el.Algs, attestation.HashSHA256) {
		return nil, &BootLogError{Reason: "log has no SHA-256 digests"}
	}
	inLog := map[int]bool{}
	for _, e := range el.Events(attestation.HashSHA256) {
		inLog[e.Index] = true
	}
	var pcrs []attestation.PCR
	for _, idx := range require {
		q := findPCR(quoted, idx)
		switch {
		case q == nil:
			return nil, &BootLogError{Reason: fmt.Sprintf("pcr %d is required but not quoted", idx)}
		case !inLog[idx]:
			return nil, &BootLogError{Reason: fmt.Sprintf("pcr %d is required but the log has no events for it", idx)}
		}
		pcrs = append(pcrs, attestation.PCR{Index: idx, Digest: q.Value[:], DigestAlg: crypto.SHA256})
	}
	events, err := el.Verify(pcrs)
	if err != nil {
		return nil, &BootLogError{Reason: err.Error()}
	}
	out := make([]BootEvent, 0, len(events))
	for _, e := range events {
		if !slices.Contains(require, e.Index) {
			continue
		}
		out = append(out, BootEvent{PCR: e.Index, Type: e.Type.String(), Digest: e.Digest, Data: e.Data})
	}
	return out, nil
}

// parseBootLog shields the verifier from a panic in the third-party
// parser on hostile input.
func parseBootLog(raw []byte) (el *attestation.EventLog, err error) {
	defer func() {
		if r := recover(); r != nil {
			el, err = nil, fmt.Errorf("malformed boot log: %v", r)
		}
	}()
	return attestation.ParseEventLog(raw)
}
