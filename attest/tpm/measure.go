package tpm

import (
	"fmt"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tvd-dev/tvd/attest"
)

// Measurer extends one PCR with EE measurements and keeps the matching
// event log. Measure and Evidence are safe for concurrent use: an extend
// and its log entry happen under one lock, and Evidence quotes and reads
// the PCRs under the same lock, so the evidence always replays.
type Measurer struct {
	t      *TPM
	pcr    int
	mu     sync.Mutex
	events []attest.Event
}

// NewMeasurer returns a Measurer for pcr (normally attest.EEPCR) that
// continues prior, the log of earlier measurements in this TPM boot
// (nil after a reboot). It checks that prior replays from zero to the
// PCR's current value, so a lost or foreign log is noticed here rather
// than at the verifier.
func NewMeasurer(t *TPM, pcr int, prior []attest.Event) (*Measurer, error) {
	vals, err := t.ReadPCRs([]int{pcr})
	if err != nil {
		return nil, fmt.Errorf("new measurer: %w", err)
	}
	var v [32]byte
	for i := range prior {
		e := &prior[i]
		if e.PCR != pcr || e.ComputeDigest() != e.Digest {
			return nil, fmt.Errorf("new measurer: prior event %d is not a valid pcr %d entry", i, pcr)
		}
		v = attest.ExtendSHA256(v, e.Digest)
	}
	if v != vals[0].Value {
		return nil, fmt.Errorf("new measurer: prior log (%d events) replays to %x, pcr %d is %x", len(prior), v, pcr, vals[0].Value)
	}
	return &Measurer{t: t, pcr: pcr, events: slices.Clone(prior)}, nil
}

// PCR returns the PCR this Measurer extends.
func (m *Measurer) PCR() int { return m.pcr }

// Measure records one measurement: it builds the event, extends its digest
// into the PCR and appends it to the log. It returns the event and its
// sequence number.
func (m *Measurer) Measure(typ attest.EventType, ee, path string, fileDigest [32]byte) (attest.Event, uint64, error) {
	e := attest.Event{PCR: m.pcr, Type: typ, EE: ee, Path: path, FileDigest: fileDigest}
	if err := e.Validate(); err != nil {
		return e, 0, fmt.Errorf("measure: %w", err)
	}
	e.Digest = e.ComputeDigest()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.t.Extend(m.pcr, e.Digest); err != nil {
		return e, 0, fmt.Errorf("measure: %w", err)
	}
	m.events = append(m.events, e)
	return e, uint64(len(m.events) - 1), nil
}

// Len returns the number of logged events.
func (m *Measurer) Len() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return uint64(len(m.events))
}

// Events returns a copy of the log from sequence number from.
func (m *Measurer) Events(from uint64) []attest.Event {
	m.mu.Lock()
	defer m.mu.Unlock()
	if from >= uint64(len(m.events)) {
		return nil
	}
	return slices.Clone(m.events[from:])
}

// Evidence quotes the measurement PCR and extraPCRs with ak over
// attest.QualifyingData(nonce, tlsKeyHash), reads the quoted values, and
// attaches the log entries the verifier has not seen: from cur.Seq if cur
// is for the TPM's current boot (resetCount), else the whole log.
func (m *Measurer) Evidence(ak *AK, nonce []byte, tlsKeyHash [32]byte, cur attest.Cursor, extraPCRs ...int) (*attest.Evidence, error) {
	pcrs := append([]int{m.pcr}, extraPCRs...)
	slices.Sort(pcrs)
	pcrs = slices.Compact(pcrs)
	qd := attest.QualifyingData(nonce, tlsKeyHash)
	m.mu.Lock()
	defer m.mu.Unlock()
	ev := &attest.Evidence{}
	err := m.t.do(func(tp transport.TPM) error {
		clock, err := readClock(tp)
		if err != nil {
			return err
		}
		if cur.Valid && cur.ResetCount == clock.ResetCount {
			ev.FirstSeq = cur.Seq
		}
		if ev.FirstSeq > uint64(len(m.events)) {
			return fmt.Errorf("verifier has seen %d entries of this boot, log has %d (log lost?)", ev.FirstSeq, len(m.events))
		}
		ev.Events = slices.Clone(m.events[ev.FirstSeq:])
		q, err := ak.quote(tp, qd[:], pcrs)
		if err != nil {
			return err
		}
		ev.Attest, ev.Signature = q.Attest, q.Signature
		ev.PCRs, err = readPCRs(tp, pcrs)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("evidence: %w", err)
	}
	return ev, nil
}
