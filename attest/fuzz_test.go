package attest

import (
	"bytes"
	"testing"
)

// Seeds are real simulator output from testdata.

func FuzzParseQuote(f *testing.F) {
	f.Add(readTestdata(f, "ev1.attest"))
	f.Add(readTestdata(f, "ev2.attest"))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			if q != nil {
				t.Fatalf("quote and error")
			}
			return
		}
		if q.Type != tpmSTAttestQuote || len(q.ExtraData) > maxDataLen || len(q.PCRDigest) > 64 {
			t.Fatalf("parser accepted out-of-bounds quote %+v", q)
		}
	})
}

func FuzzParseSignature(f *testing.F) {
	f.Add(readTestdata(f, "ev1.sig"))
	f.Add(readTestdata(f, "ev2.sig"))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSignature(b)
		if err == nil && (s.R.BitLen() > 256 || s.S.BitLen() > 256) {
			t.Fatalf("scalar too large")
		}
	})
}

func FuzzDecodeEvents(f *testing.F) {
	f.Add(readTestdata(f, "ev1.events"))
	f.Add(readTestdata(f, "ev2.events"))
	f.Fuzz(func(t *testing.T, b []byte) {
		events, err := DecodeEvents(b, 1024)
		if err != nil {
			return
		}
		// Whatever decodes re-encodes to the same bytes.
		again, err := EncodeEvents(events)
		if err != nil {
			t.Fatalf("decoded events do not encode: %v", err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("re-encoding differs")
		}
	})
}

func FuzzNodeState(f *testing.F) {
	f.Add(readTestdata(f, "state0.bin"))
	f.Add(readTestdata(f, "state1.bin"))
	f.Fuzz(func(t *testing.T, b []byte) {
		var st NodeState
		if err := st.UnmarshalBinary(b); err != nil {
			return
		}
		if _, err := st.MarshalBinary(); err != nil {
			t.Fatalf("restored state does not marshal: %v", err)
		}
	})
}

// FuzzAppraise feeds mutated evidence to a real enrolled state: nothing
// but the recorded evidence may pass, and nothing may panic.
func FuzzAppraise(f *testing.F) {
	f.Add(readTestdata(f, "ev1.attest"), readTestdata(f, "ev1.sig"), readTestdata(f, "ev1.pcrs"), readTestdata(f, "ev1.events"))
	v := newTestVerifier(f)
	tls := recordedTLSHash(f)
	state0 := readTestdata(f, "state0.bin")
	orig := recordedEvidence(f, "ev1")
	f.Fuzz(func(t *testing.T, attest, sig, pcrs, events []byte) {
		var st NodeState
		if err := st.UnmarshalBinary(state0); err != nil {
			t.Fatal(err)
		}
		ev := &Evidence{Attest: attest, Signature: sig}
		for len(pcrs) >= 33 {
			var p PCR
			p.Index = int(pcrs[0])
			copy(p.Value[:], pcrs[1:33])
			ev.PCRs = append(ev.PCRs, p)
			pcrs = pcrs[33:]
		}
		ev.Events, _ = DecodeEvents(events, 1024)
		_, err := v.Appraise(&st, ev, tls)
		if err == nil && !bytes.Equal(attest, orig.Attest) {
			t.Fatalf("accepted evidence that is not the recorded quote")
		}
	})
}
