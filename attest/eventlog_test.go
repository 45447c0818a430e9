package attest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
)

func sampleEvent(i int) Event {
	e := Event{PCR: EEPCR, Type: EventExec, EE: "web", Path: "/usr/bin/tool" + strings.Repeat("x", i%7), FileDigest: fileDigest(string(rune('a' + i%26)))}
	e.Digest = e.ComputeDigest()
	return e
}

func TestEventRoundTrip(t *testing.T) {
	var in []Event
	for i := range 20 {
		in = append(in, sampleEvent(i))
	}
	in = append(in, Event{PCR: 0, Type: EventEEStop}, Event{PCR: 23, Type: EventEEStart, EE: strings.Repeat("e", MaxEENameLen), Path: strings.Repeat("p", MaxPathLen)})
	b, err := EncodeEvents(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeEvents(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(out) != len(in) {
		t.Fatalf("decoded %d events, want %d", len(out), len(in))
	}
	for i := range in {
		if in[i] != out[i] {
			t.Fatalf("event %d: %+v != %+v", i, out[i], in[i])
		}
	}
	if _, err := DecodeEvents(b, 3); err == nil {
		t.Fatalf("event limit not enforced")
	}
}

func TestEventDigestBindsContent(t *testing.T) {
	base := sampleEvent(1)
	d := base.ComputeDigest()
	for name, mutate := range map[string]func(*Event){
		"ee":   func(e *Event) { e.EE = "wec" },
		"path": func(e *Event) { e.Path += "/" },
		"type": func(e *Event) { e.Type = EventEEStart },
		"file": func(e *Event) { e.FileDigest[0] ^= 1 },
		// Moving a byte between EE and Path must change the digest.
		"boundary": func(e *Event) { e.EE, e.Path = e.EE+"/", e.Path[1:] },
	} {
		e := base
		mutate(&e)
		if e.ComputeDigest() == d {
			t.Errorf("%s: digest unchanged", name)
		}
	}
}

func TestDecodeEventErrors(t *testing.T) {
	good, err := AppendEvent(nil, &Event{PCR: EEPCR, Type: EventExec, EE: "a", Path: "/b"})
	if err != nil {
		t.Fatal(err)
	}
	set := func(off int, v ...byte) []byte {
		b := bytes.Clone(good)
		copy(b[off:], v)
		return b
	}
	bodyLen := func(n uint32) []byte {
		b := bytes.Clone(good)
		binary.BigEndian.PutUint32(b, n)
		return b
	}
	cases := map[string][]byte{
		"empty length":   good[:2],
		"short body":     good[:len(good)-1],
		"body too long":  bodyLen(1 << 20),
		"body too short": bodyLen(3),
		"version":        set(4, 9),
		"pcr":            set(5, 24),
		"type":           set(6, 0, 9),
		"ee length":      set(4+1+1+2+64, 0xff, 0xff),
		"path length":    set(4+1+1+2+64+2+1, 0, 9),
		"trailing":       append(bytes.Clone(good), 0, 0),
	}
	for name, b := range cases {
		if _, err := DecodeEvents(b, 0); err == nil {
			t.Errorf("%s: decoded", name)
		} else if name == "short body" && !errors.Is(err, ErrTruncatedEvent) {
			t.Errorf("%s: %v, want ErrTruncatedEvent", name, err)
		}
	}
	if _, err := AppendEvent(nil, &Event{PCR: 30, Type: EventExec}); err == nil {
		t.Errorf("encoded pcr 30")
	}
}
