package attest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"unsafe"
)

// NodeState is the verifier's memory of one enrolled node: its AK, the
// outstanding nonce, the clock and counters of the last accepted quote,
// and where the event-log replay stands (PCR values and next sequence
// number). It is small (a few hundred bytes; MarshalBinary gives its
// persistent form) and holds nothing shared: reference values live in the
// Verifier's RefSet.
type NodeState struct {
	ak            *AK
	ekFingerprint [32]byte
	signerQN      []byte // the AK's qualified name as a child of the EK
	nonce         [NonceSize]byte
	hasNonce      bool
	quoted        bool
	clock         ClockInfo
	firmware      uint64
	logStarted    bool
	logReset      uint32
	nextSeq       uint64
	pcrs          []int
	values        [][32]byte
}

// Clone returns a deep copy of st, to appraise on while others read st.
func (st *NodeState) Clone() *NodeState {
	c := *st
	c.pcrs = slices.Clone(st.pcrs)
	c.values = slices.Clone(st.values)
	return &c
}

// AK returns the node's enrolled attestation key.
func (st *NodeState) AK() *AK { return st.ak }

// EKFingerprint returns the SHA-256 of the node's EK public key (SPKI DER).
func (st *NodeState) EKFingerprint() [32]byte { return st.ekFingerprint }

// Nonce returns the outstanding nonce, or nil if none is outstanding.
func (st *NodeState) Nonce() []byte {
	if !st.hasNonce {
		return nil
	}
	n := st.nonce
	return n[:]
}

// Cursor says where a node's next report must start: the TPM boot the
// verifier's log position belongs to (resetCount) and the sequence number
// of the first entry the verifier has not seen. Valid is false before the
// first accepted quote. The verifier sends it to the attester with the
// nonce; an attester whose TPM's resetCount differs (it rebooted) sends
// its log from 0.
type Cursor struct {
	ResetCount uint32
	Seq        uint64
	Valid      bool
}

// Cursor returns where the node's next report must start.
func (st *NodeState) Cursor() Cursor {
	return Cursor{ResetCount: st.logReset, Seq: st.nextSeq, Valid: st.logStarted}
}

// NextSeq returns the sequence number the next new event must carry.
func (st *NodeState) NextSeq() uint64 { return st.nextSeq }

// LastClock returns the clock info of the last accepted quote and whether
// there was one.
func (st *NodeState) LastClock() (ClockInfo, bool) { return st.clock, st.quoted }

// PCRValues returns the replayed values of the log PCRs.
func (st *NodeState) PCRValues() []PCR {
	out := make([]PCR, len(st.pcrs))
	for i, p := range st.pcrs {
		out[i] = PCR{Index: p, Value: st.values[i]}
	}
	return out
}

// replay extends values (ordered as st.pcrs) with events, checking each
// event's PCR and digest. It does not touch st.
func (st *NodeState) replay(events []Event, first uint64, values [][32]byte) error {
	for i := range events {
		e := &events[i]
		slot := -1
		for j, p := range st.pcrs {
			if p == e.PCR {
				slot = j
				break
			}
		}
		if slot < 0 {
			return &EventError{Seq: first + uint64(i), Reason: fmt.Sprintf("pcr %d is not a log pcr %v", e.PCR, st.pcrs)}
		}
		if !e.Type.valid() {
			return &EventError{Seq: first + uint64(i), Reason: fmt.Sprintf("unknown event type %d", uint16(e.Type))}
		}
		if want := e.ComputeDigest(); want != e.Digest {
			return &EventDigestError{Seq: first + uint64(i), Want: want, Got: e.Digest}
		}
		values[slot] = ExtendSHA256(values[slot], e.Digest)
	}
	return nil
}

const stateVersion = 1

// MarshalBinary returns the persistent form of st.
func (st *NodeState) MarshalBinary() ([]byte, error) {
	if st.ak == nil {
		return nil, errors.New("marshal node state: no ak")
	}
	b := make([]byte, 0, 128+len(st.ak.Public)+33*len(st.pcrs))
	b = append(b, stateVersion)
	b = append(b, st.ekFingerprint[:]...)
	b = append(b, st.nonce[:]...)
	var flags byte
	for i, f := range []bool{st.hasNonce, st.quoted, st.logStarted, st.clock.Safe} {
		if f {
			flags |= 1 << i
		}
	}
	b = append(b, flags)
	b = binary.BigEndian.AppendUint64(b, st.clock.Clock)
	b = binary.BigEndian.AppendUint32(b, st.clock.ResetCount)
	b = binary.BigEndian.AppendUint32(b, st.clock.RestartCount)
	b = binary.BigEndian.AppendUint64(b, st.firmware)
	b = binary.BigEndian.AppendUint32(b, st.logReset)
	b = binary.BigEndian.AppendUint64(b, st.nextSeq)
	b = append(b, byte(len(st.pcrs)))
	for i, p := range st.pcrs {
		b = append(b, byte(p))
		b = append(b, st.values[i][:]...)
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(st.ak.Public)))
	b = append(b, st.ak.Public...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(st.signerQN)))
	b = append(b, st.signerQN...)
	return b, nil
}

// UnmarshalBinary restores st from MarshalBinary's output. The AK is
// re-checked with ParseAK.
func (st *NodeState) UnmarshalBinary(data []byte) error {
	r := &reader{b: data}
	if v := r.u8("version"); r.err == nil && v != stateVersion {
		return fmt.Errorf("node state version %d (want %d)", v, stateVersion)
	}
	var n NodeState
	copy(n.ekFingerprint[:], r.bytes("ek fingerprint", 32))
	copy(n.nonce[:], r.bytes("nonce", NonceSize))
	flags := r.u8("flags")
	n.hasNonce, n.quoted, n.logStarted, n.clock.Safe = flags&1 != 0, flags&2 != 0, flags&4 != 0, flags&8 != 0
	n.clock.Clock = r.u64("clock")
	n.clock.ResetCount = r.u32("resetCount")
	n.clock.RestartCount = r.u32("restartCount")
	n.firmware = r.u64("firmware")
	n.logReset = r.u32("log resetCount")
	n.nextSeq = r.u64("next sequence")
	count := int(r.u8("pcr count"))
	if r.err == nil && count > NumPCRs {
		return fmt.Errorf("node state: %d pcrs (want at most %d)", count, NumPCRs)
	}
	for i := 0; i < count && r.err == nil; i++ {
		p := int(r.u8("pcr"))
		var v [32]byte
		copy(v[:], r.bytes("pcr value", 32))
		if p >= NumPCRs || slices.Contains(n.pcrs, p) {
			return fmt.Errorf("node state: bad pcr %d", p)
		}
		n.pcrs = append(n.pcrs, p)
		n.values = append(n.values, v)
	}
	akPub := r.tpm2b("ak public", 1024)
	n.signerQN = bytes.Clone(r.tpm2b("ak qualified name", maxNameLen))
	if r.err == nil && len(r.b) != 0 {
		return fmt.Errorf("node state: %d trailing bytes", len(r.b))
	}
	if r.err != nil {
		return fmt.Errorf("node state: %w", r.err)
	}
	ak, err := ParseAK(akPub)
	if err != nil {
		return fmt.Errorf("node state: %w", err)
	}
	if len(n.signerQN) != len(ak.Name) {
		return fmt.Errorf("node state: ak qualified name is %d bytes (want %d)", len(n.signerQN), len(ak.Name))
	}
	n.ak = ak
	*st = n
	return nil
}

// memSize estimates the bytes st occupies in memory, including its AK.
func (st *NodeState) memSize() int {
	n := int(unsafe.Sizeof(*st))
	n += 8*cap(st.pcrs) + 32*cap(st.values)
	if st.ak != nil {
		n += int(unsafe.Sizeof(*st.ak)) + cap(st.ak.Public) + cap(st.ak.Name) + cap(st.signerQN)
		n += int(unsafe.Sizeof(*st.ak.Key)) + 2*(32+24) // X, Y big.Int words and headers
	}
	return n
}
