package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"
)

// Entry kinds used by tvd. Kind is free-form (see [Entry.Validate]) so that new
// kinds need no change here, but these are the names the rest of tvd uses.
const (
	KindEnrol    = "enrol"    // a node enrolled (EK/AK checked, credential activated)
	KindAdmit    = "admit"    // a member was admitted to a domain
	KindRefuse   = "refuse"   // a join or renewal was refused
	KindVerdict  = "verdict"  // a member's verdict changed (verified/violated/unknown)
	KindReaction = "reaction" // a reaction ran (alert, quarantine, freeze, revoke, rollback)
	KindPolicy   = "policy"   // a policy version was stored or activated
	KindSecret   = "secret"   // a key or secret was released to a member
	KindSnapshot = "snapshot" // a trusted snapshot was taken or restored
	KindAdmin    = "admin"    // an administrative action, Actor is the acting identity
)

// MaxEntrySize is the largest encoded entry accepted by [DecodeEntry],
// [Entry.Encode] and the storages in this package.
const MaxEntrySize = 1 << 20

// entryVersion is the value of the "v" member of every encoded entry.
const entryVersion = 1

// Entry is one security-relevant act. Its canonical encoding (see
// [Entry.Encode]) is the leaf hashed into the Merkle log.
type Entry struct {
	// Time is when the act happened. It is encoded in UTC with nanosecond
	// precision; the location and monotonic reading are not kept.
	Time time.Time
	// Kind names the act, e.g. [KindAdmit]: 1 to 64 characters from
	// [a-z0-9.-], starting with a letter.
	Kind string
	// Actor is the identity that performed the act: an admin's identity for
	// admin actions, the controller's own identity for automatic acts. Required.
	Actor string
	// Subject is what the act was about (a node, a member's SPIFFE ID, a
	// policy version). Optional.
	Subject string
	// Domain is the TVD the act belongs to, empty for deployment-wide acts.
	Domain string
	// Detail holds further facts as string pairs. Optional; nil and an empty
	// map encode the same way.
	Detail map[string]string
}

// wireEntry is the JSON form of an Entry. The member order here is the
// canonical order; Detail keys are sorted by encoding/json.
type wireEntry struct {
	V       int               `json:"v"`
	Time    string            `json:"time"`
	Kind    string            `json:"kind"`
	Actor   string            `json:"actor"`
	Subject string            `json:"subject,omitempty"`
	Domain  string            `json:"domain,omitempty"`
	Detail  map[string]string `json:"detail,omitempty"`
}

// Validate reports whether e can be encoded: a non-zero Time within years
// 0000-9999, a well-formed Kind, a non-empty Actor and valid UTF-8 everywhere.
func (e Entry) Validate() error {
	if e.Time.IsZero() {
		return errors.New("entry: time is zero, expected the time of the act")
	}
	if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
		return fmt.Errorf("entry: time year %d out of range, expected 0000-9999", y)
	}
	if err := validKind(e.Kind); err != nil {
		return err
	}
	if e.Actor == "" {
		return errors.New("entry: actor is empty, expected the acting identity")
	}
	for _, f := range []struct{ name, v string }{
		{"actor", e.Actor}, {"subject", e.Subject}, {"domain", e.Domain},
	} {
		if !utf8.ValidString(f.v) {
			return fmt.Errorf("entry: %s is not valid UTF-8", f.name)
		}
	}
	for k, v := range e.Detail {
		if k == "" {
			return errors.New("entry: detail has an empty key")
		}
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("entry: detail %q is not valid UTF-8", k)
		}
	}
	return nil
}

func validKind(k string) error {
	if len(k) == 0 || len(k) > 64 {
		return fmt.Errorf("entry: kind %q has length %d, expected 1 to 64 characters", k, len(k))
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case c >= 'a' && c <= 'z':
		case i > 0 && (c >= '0' && c <= '9' || c == '-' || c == '.'):
		default:
			return fmt.Errorf("entry: kind %q: expected [a-z][a-z0-9.-]*", k)
		}
	}
	return nil
}

// Encode returns the canonical encoding of e: compact JSON with the members
// v, time, kind, actor, subject, domain, detail in that order (empty optional
// members left out), detail keys sorted bytewise, time in RFC 3339 UTC with
// trailing zero fractional digits removed. Strings are escaped as
// encoding/json does today (\" \\ \b \f \n \r \t, other control
// characters as \u00xx, < > & U+2028 U+2029 as \uXXXX, everything else as
// UTF-8), but by this package's own code so that the leaf bytes, and so the
// tree, never change with the Go toolchain. Equal entries (after normalising
// Time to UTC) always encode to equal bytes.
func (e Entry) Encode() ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, 0, 128+len(e.Actor)+len(e.Subject)+len(e.Domain))
	b = append(b, `{"v":1,"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendJSONString(b, e.Kind)
	b = append(b, `,"actor":`...)
	b = appendJSONString(b, e.Actor)
	if e.Subject != "" {
		b = append(b, `,"subject":`...)
		b = appendJSONString(b, e.Subject)
	}
	if e.Domain != "" {
		b = append(b, `,"domain":`...)
		b = appendJSONString(b, e.Domain)
	}
	if len(e.Detail) > 0 {
		keys := make([]string, 0, len(e.Detail))
		for k := range e.Detail {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, `,"detail":{`...)
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, k)
			b = append(b, ':')
			b = appendJSONString(b, e.Detail[k])
		}
		b = append(b, '}')
	}
	b = append(b, '}')
	if len(b) > MaxEntrySize {
		return nil, fmt.Errorf("entry: encoded size %d exceeds the limit of %d bytes", len(b), MaxEntrySize)
	}
	return b, nil
}

// appendJSONString appends s, valid UTF-8, as a canonical JSON string.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// DecodeEntry parses the canonical encoding produced by [Entry.Encode]. It is
// strict: unknown or duplicate members, another version, a non-canonical time,
// whitespace, different escaping or member order, or trailing data are all
// rejected, so that every accepted input is exactly the encoding of the
// returned entry (DecodeEntry(b).Encode() == b).
func DecodeEntry(b []byte) (Entry, error) {
	if len(b) > MaxEntrySize {
		return Entry{}, fmt.Errorf("decode entry: %d bytes exceeds the limit of %d", len(b), MaxEntrySize)
	}
	// Unknown and duplicate members, whitespace and other non-canonical
	// forms survive json.Unmarshal but are caught by the comparison with
	// the re-encoding below.
	var w wireEntry
	if err := json.Unmarshal(b, &w); err != nil {
		return Entry{}, fmt.Errorf("decode entry: expected a JSON object: %w", err)
	}
	if w.V != entryVersion {
		return Entry{}, fmt.Errorf("decode entry: version %d, expected %d", w.V, entryVersion)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return Entry{}, fmt.Errorf("decode entry: time: expected RFC 3339 UTC: %w", err)
	}
	e := Entry{
		Time:    t.UTC(),
		Kind:    w.Kind,
		Actor:   w.Actor,
		Subject: w.Subject,
		Domain:  w.Domain,
		Detail:  w.Detail,
	}
	if len(e.Detail) == 0 {
		e.Detail = nil
	}
	c, err := e.Encode()
	if err != nil {
		return Entry{}, fmt.Errorf("decode entry: %w", err)
	}
	if !bytes.Equal(c, b) {
		return Entry{}, errors.New("decode entry: not in canonical form (member order, whitespace, escaping, time format or duplicate members)")
	}
	return e, nil
}
