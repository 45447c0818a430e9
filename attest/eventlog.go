package attest

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// EventType says what an event-log entry measured.
type EventType uint16

const (
	// EventEEStart records an EE being started: Path is the EE's image or
	// root, FileDigest the digest of its manifest.
	EventEEStart EventType = 1
	// EventExec records a file executed inside an EE: Path is the path as
	// seen inside the EE, FileDigest the SHA-256 of the file's contents.
	EventExec EventType = 2
	// EventEEStop records an EE being stopped; FileDigest is zero unless
	// the attester records a final state digest.
	EventEEStop EventType = 3
)

func (t EventType) String() string {
	switch t {
	case EventEEStart:
		return "ee-start"
	case EventExec:
		return "exec"
	case EventEEStop:
		return "ee-stop"
	}
	return fmt.Sprintf("EventType(%d)", uint16(t))
}

func (t EventType) valid() bool { return t >= EventEEStart && t <= EventEEStop }

// Limits of an encoded event.
const (
	// MaxEENameLen is the longest EE name an event may carry.
	MaxEENameLen = 255
	// MaxPathLen is the longest path an event may carry (Linux PATH_MAX).
	MaxPathLen = 4096
	// NumPCRs is the number of PCRs of a PC-client TPM; PCR indexes are
	// 0..NumPCRs-1.
	NumPCRs = 24

	eventVersion   = 1
	eventFixedBody = 1 + 1 + 2 + 32 + 32 + 2 + 2 // version pcr type digest file eeLen pathLen
	maxEventBody   = eventFixedBody + MaxEENameLen + MaxPathLen
)

// Event is one entry of the tvd measurement log. The attester extends
// Digest into SHA-256 bank PCR PCR; Digest must equal ComputeDigest(), so
// the PCR commits to the EE name, path, type and file digest, not only to
// the file digest.
type Event struct {
	PCR        int
	Type       EventType
	Digest     [32]byte
	EE         string
	Path       string
	FileDigest [32]byte
}

// digestDomain separates event digests from every other SHA-256 use.
const digestDomain = "tvd.event.v1\x00"

// ComputeDigest returns the digest the attester extends for e:
//
//	SHA-256("tvd.event.v1\x00" || u16 type || file digest ||
//	        u16 len(EE) || EE || u16 len(Path) || Path)
//
// with big-endian lengths.
func (e *Event) ComputeDigest() [32]byte {
	var stack [len(digestDomain) + 2 + 32 + 2 + 256 + 2 + 256]byte
	b := stack[:0]
	b = append(b, digestDomain...)
	b = binary.BigEndian.AppendUint16(b, uint16(e.Type))
	b = append(b, e.FileDigest[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.EE)))
	b = append(b, e.EE...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Path)))
	b = append(b, e.Path...)
	return sha256.Sum256(b)
}

// Validate checks that e can be encoded: PCR in range, known type, name and
// path within limits. It does not check Digest.
func (e *Event) Validate() error {
	if e.PCR < 0 || e.PCR >= NumPCRs {
		return fmt.Errorf("event pcr %d out of range (want 0..%d)", e.PCR, NumPCRs-1)
	}
	if !e.Type.valid() {
		return fmt.Errorf("event type %d unknown (want 1..3)", uint16(e.Type))
	}
	if len(e.EE) > MaxEENameLen {
		return fmt.Errorf("event ee name is %d bytes (want at most %d)", len(e.EE), MaxEENameLen)
	}
	if len(e.Path) > MaxPathLen {
		return fmt.Errorf("event path is %d bytes (want at most %d)", len(e.Path), MaxPathLen)
	}
	return nil
}

// AppendEvent appends the wire encoding of e to b. The encoding is
//
//	u32 body length || body
//	body = u8 version (1) || u8 pcr || u16 type || digest[32] ||
//	       file digest[32] || u16 len(EE) || EE || u16 len(Path) || Path
//
// all integers big-endian. It returns an error if e does not validate.
func AppendEvent(b []byte, e *Event) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return b, err
	}
	body := eventFixedBody + len(e.EE) + len(e.Path)
	b = binary.BigEndian.AppendUint32(b, uint32(body))
	b = append(b, eventVersion, byte(e.PCR))
	b = binary.BigEndian.AppendUint16(b, uint16(e.Type))
	b = append(b, e.Digest[:]...)
	b = append(b, e.FileDigest[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.EE)))
	b = append(b, e.EE...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(e.Path)))
	b = append(b, e.Path...)
	return b, nil
}

// EncodeEvents returns the wire encoding of events, concatenated.
func EncodeEvents(events []Event) ([]byte, error) {
	var b []byte
	for i := range events {
		var err error
		if b, err = AppendEvent(b, &events[i]); err != nil {
			return nil, fmt.Errorf("encode event %d: %w", i, err)
		}
	}
	return b, nil
}

// ErrTruncatedEvent means the input ended inside an event.
var ErrTruncatedEvent = errors.New("truncated event")

// DecodeEvent decodes one event from the front of b and returns it with
// the number of bytes consumed. Input is untrusted: every length is
// checked and an error names what was expected.
func DecodeEvent(b []byte) (Event, int, error) {
	var e Event
	if len(b) < 4 {
		return e, 0, fmt.Errorf("event length: %w (have %d bytes, want 4)", ErrTruncatedEvent, len(b))
	}
	body := binary.BigEndian.Uint32(b)
	if body < eventFixedBody || body > maxEventBody {
		return e, 0, fmt.Errorf("event body length %d out of range (want %d..%d)", body, eventFixedBody, maxEventBody)
	}
	if uint32(len(b)-4) < body {
		return e, 0, fmt.Errorf("event body: %w (have %d bytes, want %d)", ErrTruncatedEvent, len(b)-4, body)
	}
	p := b[4 : 4+body]
	if p[0] != eventVersion {
		return e, 0, fmt.Errorf("event version %d unknown (want %d)", p[0], eventVersion)
	}
	e.PCR = int(p[1])
	e.Type = EventType(binary.BigEndian.Uint16(p[2:]))
	copy(e.Digest[:], p[4:36])
	copy(e.FileDigest[:], p[36:68])
	p = p[68:]
	eeLen := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if eeLen > MaxEENameLen || eeLen+2 > len(p) {
		return e, 0, fmt.Errorf("event ee name length %d does not fit body (want at most %d)", eeLen, min(MaxEENameLen, len(p)-2))
	}
	e.EE = string(p[:eeLen])
	p = p[eeLen:]
	pathLen := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if pathLen > MaxPathLen || pathLen != len(p) {
		return e, 0, fmt.Errorf("event path length %d does not match body (want %d, at most %d)", pathLen, len(p), MaxPathLen)
	}
	e.Path = string(p)
	if err := e.Validate(); err != nil {
		return Event{}, 0, err
	}
	return e, int(4 + body), nil
}

// DecodeEvents decodes a concatenation of encoded events. It refuses more
// than max events (max <= 0 means no limit) so a peer cannot make the
// verifier allocate without bound.
func DecodeEvents(b []byte, max int) ([]Event, error) {
	var out []Event
	for off := 0; off < len(b); {
		if max > 0 && len(out) == max {
			return nil, fmt.Errorf("event log has more than %d events", max)
		}
		e, n, err := DecodeEvent(b[off:])
		if err != nil {
			return nil, fmt.Errorf("decode event %d at offset %d: %w", len(out), off, err)
		}
		out = append(out, e)
		off += n
	}
	return out, nil
}

// ExtendSHA256 returns SHA-256(pcr || digest), the TPM's PCR extend.
func ExtendSHA256(pcr, digest [32]byte) [32]byte {
	var buf [64]byte
	copy(buf[:32], pcr[:])
	copy(buf[32:], digest[:])
	return sha256.Sum256(buf[:])
}
