package attest

import (
	"fmt"
	"strings"
)

// NonceError means the quote's extraData is not the qualifying data the
// verifier expected (wrong or reused nonce, or a different TLS key), or no
// nonce was outstanding.
type NonceError struct {
	Want, Got []byte
	Reason    string
}

func (e *NonceError) Error() string {
	if e.Reason != "" {
		return "nonce: " + e.Reason
	}
	return fmt.Sprintf("nonce: quote extraData %x, want %x (nonce not issued, already used, or other TLS key)", e.Got, e.Want)
}

// SignatureError means the quote is not signed by the node's enrolled AK.
type SignatureError struct{ Reason string }

func (e *SignatureError) Error() string { return "quote signature: " + e.Reason }

// CounterError means the TPM's clock or counters went backwards compared
// to the previous accepted quote: a replay, a TPM2_Clear, or a rolled-back
// TPM state.
type CounterError struct {
	Field     string // "resetCount", "restartCount" or "clock"
	Prev, Got uint64
}

func (e *CounterError) Error() string {
	return fmt.Sprintf("quote %s went from %d to %d (must not go backwards)", e.Field, e.Prev, e.Got)
}

// FirmwareError means the TPM firmware version is below the configured
// minimum, or changed without a TPM reset.
type FirmwareError struct {
	Prev, Got uint64
	Reason    string
}

func (e *FirmwareError) Error() string {
	return fmt.Sprintf("tpm firmware 0x%x (previous 0x%x): %s", e.Got, e.Prev, e.Reason)
}

// SelectionError means the quote's PCR selection or the claimed PCR values
// do not cover what the verifier needs.
type SelectionError struct{ Reason string }

func (e *SelectionError) Error() string { return "pcr selection: " + e.Reason }

// PCRDigestError means the claimed PCR values do not hash to the quote's
// pcrDigest.
type PCRDigestError struct{ Want, Got []byte }

func (e *PCRDigestError) Error() string {
	return fmt.Sprintf("pcr digest: quote has %x, claimed values hash to %x", e.Want, e.Got)
}

// SequenceError means the new event-log entries do not start where the
// previous report ended (entries missing or repeated).
type SequenceError struct{ Want, Got uint64 }

func (e *SequenceError) Error() string {
	return fmt.Sprintf("event log: new entries start at %d, want %d", e.Got, e.Want)
}

// EventError means an event-log entry is malformed or names a PCR the
// verifier does not replay.
type EventError struct {
	Seq    uint64
	Reason string
}

func (e *EventError) Error() string { return fmt.Sprintf("event %d: %s", e.Seq, e.Reason) }

// EventDigestError means an entry's extended digest does not match its
// content (the entry was altered after it was measured).
type EventDigestError struct {
	Seq       uint64
	Want, Got [32]byte
}

func (e *EventDigestError) Error() string {
	return fmt.Sprintf("event %d: digest %x does not match its content (want %x)", e.Seq, e.Got, e.Want)
}

// ReplayError means replaying the event log does not give the quoted PCR
// value: entries were dropped, added, altered or reordered.
type ReplayError struct {
	PCR       int
	Want, Got [32]byte // Want: quoted value; Got: replayed value
}

func (e *ReplayError) Error() string {
	return fmt.Sprintf("event log replay: pcr %d is %x in the quote, replay gives %x", e.PCR, e.Want, e.Got)
}

// UnlistedError means the evidence is authentic but some entries measure
// files that are not in the reference values.
type UnlistedError struct{ Entries []EntryResult }

func (e *UnlistedError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d measurement(s) not in reference values:", len(e.Entries))
	for i, en := range e.Entries {
		if i == 3 {
			fmt.Fprintf(&b, " ... (%d more)", len(e.Entries)-3)
			break
		}
		fmt.Fprintf(&b, " [%d ee=%q path=%q sha256=%x]", en.Seq, en.EE, en.Path, en.FileDigest)
	}
	return b.String()
}
