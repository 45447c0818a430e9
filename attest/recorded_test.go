package attest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tvd-dev/tvd"
)

// The files in testdata are real TPM output: the tpmsimulator tests in
// attest/tpm write them with -update (go test -tags tpmsimulator
// ./attest/tpm -run TestEnrollQuoteAppraise -update).

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func recordedState(t testing.TB, name string) *NodeState {
	t.Helper()
	var st NodeState
	if err := st.UnmarshalBinary(readTestdata(t, name)); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &st
}

func recordedEvidence(t testing.TB, pre string) *Evidence {
	t.Helper()
	ev := &Evidence{Attest: readTestdata(t, pre+".attest"), Signature: readTestdata(t, pre+".sig")}
	pcrs := readTestdata(t, pre+".pcrs")
	for len(pcrs) >= 33 {
		var p PCR
		p.Index = int(pcrs[0])
		copy(p.Value[:], pcrs[1:33])
		ev.PCRs = append(ev.PCRs, p)
		pcrs = pcrs[33:]
	}
	events, err := DecodeEvents(readTestdata(t, pre+".events"), 0)
	if err != nil {
		t.Fatal(err)
	}
	ev.Events = events
	return ev
}

func recordedTLSHash(t testing.TB) [32]byte {
	var h [32]byte
	copy(h[:], readTestdata(t, "tlshash"))
	return h
}

func fileDigest(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// recordedRefs lists the files the simulator test measured.
func recordedRefs() *RefSet {
	return NewRefSet(map[[32]byte]string{
		fileDigest("alpine-3.20 rootfs manifest"): "image/alpine-3.20",
		fileDigest("busybox 1.36 /bin/sh"):        "busybox-1.36/bin/sh",
		fileDigest("tmart web server v1"):         "tmart/web-1",
		fileDigest("paychecks db v2"):             "paychecks/db-2",
	})
}

func newTestVerifier(t testing.TB) *Verifier {
	t.Helper()
	v, err := NewVerifier(Config{Refs: recordedRefs()})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestRecordedQuote(t *testing.T) {
	st := recordedState(t, "state0.bin")
	q, err := ParseQuote(readTestdata(t, "ev1.attest"))
	if err != nil {
		t.Fatal(err)
	}
	if q.Magic != tpmGeneratedValue || q.Type != tpmSTAttestQuote {
		t.Fatalf("magic %x type %x", q.Magic, q.Type)
	}
	want := QualifyingData(st.Nonce(), recordedTLSHash(t))
	if !bytes.Equal(q.ExtraData, want[:]) {
		t.Fatalf("extraData %x, want %x", q.ExtraData, want)
	}
	sel, err := q.sha256Selection()
	if err != nil || len(sel) != 1 || sel[0] != EEPCR {
		t.Fatalf("selection %v %v", sel, err)
	}
	if _, err := ParseSignature(readTestdata(t, "ev1.sig")); err != nil {
		t.Fatal(err)
	}
}

func TestRecordedAppraisal(t *testing.T) {
	v := newTestVerifier(t)
	tls := recordedTLSHash(t)

	st := recordedState(t, "state0.bin")
	res, err := v.Appraise(st, recordedEvidence(t, "ev1"), tls)
	if err != nil {
		t.Fatalf("appraise ev1: %v", err)
	}
	if res.Status != tvd.StatusVerified || len(res.Entries) != 3 || st.NextSeq() != 3 {
		t.Fatalf("result %+v next %d", res, st.NextSeq())
	}
	for _, e := range res.Entries {
		if !e.Listed || e.Reference == "" {
			t.Fatalf("entry %+v not listed", e)
		}
	}

	// The second round continues from the state the first left (as
	// recorded, with the nonce the recording verifier issued).
	st1 := recordedState(t, "state1.bin")
	if st1.NextSeq() != 3 || st1.PCRValues()[0].Value != st.PCRValues()[0].Value {
		t.Fatalf("recorded state1 does not match replayed state")
	}
	ev2 := recordedEvidence(t, "ev2")
	ev2.FirstSeq = 3 // the simulator test sent entries 3 and 4
	res, err = v.Appraise(st1, ev2, tls)
	if err != nil {
		t.Fatalf("appraise ev2: %v", err)
	}
	if len(res.Entries) != 2 || res.Entries[0].Seq != 3 || st1.NextSeq() != 5 {
		t.Fatalf("incremental entries %+v", res.Entries)
	}

	// ev2 alone, against the enrolment state, does not start at 0.
	_, err = v.Appraise(recordedState(t, "state0.bin"), recordedEvidence(t, "ev2"), tls)
	var nerr *NonceError
	if !errors.As(err, &nerr) {
		t.Fatalf("ev2 on state0: %v, want NonceError", err)
	}
}

func TestRecordedRefusals(t *testing.T) {
	v := newTestVerifier(t)
	tls := recordedTLSHash(t)
	cases := []struct {
		name   string
		mutate func(ev *Evidence)
		target any
	}{
		{"flipped attest byte", func(ev *Evidence) { ev.Attest[len(ev.Attest)-1] ^= 1 }, new(*SignatureError)},
		{"truncated attest", func(ev *Evidence) { ev.Attest = ev.Attest[:40] }, new(*QuoteFormatError)},
		{"bad signature", func(ev *Evidence) { ev.Signature[len(ev.Signature)-1] ^= 1 }, new(*SignatureError)},
		{"claimed pcr value", func(ev *Evidence) { ev.PCRs[0].Value[5] ^= 1 }, new(*PCRDigestError)},
		{"claimed pcr index", func(ev *Evidence) { ev.PCRs[0].Index = 14 }, new(*SelectionError)},
		{"extra claimed pcr", func(ev *Evidence) { ev.PCRs = append(ev.PCRs, PCR{Index: 14}) }, new(*SelectionError)},
		{"dropped entry", func(ev *Evidence) { ev.Events = ev.Events[1:] }, new(*ReplayError)},
		{"swapped entries", func(ev *Evidence) { ev.Events[0], ev.Events[1] = ev.Events[1], ev.Events[0] }, new(*ReplayError)},
		{"renamed ee", func(ev *Evidence) { ev.Events[0].EE = "other" }, new(*EventDigestError)},
		{"foreign pcr", func(ev *Evidence) { ev.Events[0].PCR = 10 }, new(*EventError)},
		{"sequence", func(ev *Evidence) { ev.FirstSeq = 1 }, new(*SequenceError)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := recordedState(t, "state0.bin")
			ev := recordedEvidence(t, "ev1")
			c.mutate(ev)
			res, err := v.Appraise(st, ev, tls)
			if err == nil || !errors.As(err, c.target) {
				t.Fatalf("err %v, want %T", err, c.target)
			}
			if res.Status != tvd.StatusViolated || st.NextSeq() != 0 {
				t.Fatalf("status %v next %d", res.Status, st.NextSeq())
			}
		})
	}
	t.Run("unlisted", func(t *testing.T) {
		vr, err := NewVerifier(Config{Refs: NewRefSet(map[[32]byte]string{fileDigest("busybox 1.36 /bin/sh"): "sh"})})
		if err != nil {
			t.Fatal(err)
		}
		st := recordedState(t, "state0.bin")
		res, err := vr.Appraise(st, recordedEvidence(t, "ev1"), tls)
		var u *UnlistedError
		if !errors.As(err, &u) || len(u.Entries) != 2 || res.Status != tvd.StatusViolated {
			t.Fatalf("err %v", err)
		}
		if st.NextSeq() != 3 {
			t.Fatalf("authentic evidence must advance the state, next %d", st.NextSeq())
		}
	})
	t.Run("firmware minimum", func(t *testing.T) {
		vf, err := NewVerifier(Config{Refs: recordedRefs(), MinFirmwareVersion: ^uint64(0)})
		if err != nil {
			t.Fatal(err)
		}
		_, err = vf.Appraise(recordedState(t, "state0.bin"), recordedEvidence(t, "ev1"), tls)
		var f *FirmwareError
		if !errors.As(err, &f) {
			t.Fatalf("err %v, want FirmwareError", err)
		}
	})
	t.Run("ak not under the enrolled ek", func(t *testing.T) {
		st := recordedState(t, "state0.bin")
		st.signerQN = bytes.Clone(st.signerQN)
		st.signerQN[5] ^= 1
		_, err := v.Appraise(st, recordedEvidence(t, "ev1"), tls)
		var s *SignatureError
		if !errors.As(err, &s) || !strings.Contains(s.Reason, "qualifiedSigner") {
			t.Fatalf("err %v, want SignatureError on qualifiedSigner", err)
		}
	})
	t.Run("state for other pcrs", func(t *testing.T) {
		v14, err := NewVerifier(Config{Refs: recordedRefs(), LogPCRs: []int{14}})
		if err != nil {
			t.Fatal(err)
		}
		st := recordedState(t, "state0.bin")
		res, err := v14.Appraise(st, recordedEvidence(t, "ev1"), tls)
		if err == nil || res.Status != tvd.StatusUnknown || !bytes.Equal(st.Nonce(), recordedState(t, "state0.bin").Nonce()) {
			t.Fatalf("err %v status %v", err, res.Status)
		}
	})
	t.Run("no nonce outstanding", func(t *testing.T) {
		st := recordedState(t, "state0.bin")
		st.hasNonce = false
		_, err := v.Appraise(st, recordedEvidence(t, "ev1"), tls)
		var n *NonceError
		if !errors.As(err, &n) || n.Reason == "" {
			t.Fatalf("err %v, want NonceError with reason", err)
		}
	})
}

// TestNodeStateSize measures per-node state: the persistent form and the
// in-memory footprint, with a log of many entries appraised. Reference
// values are shared and not counted.
func TestNodeStateSize(t *testing.T) {
	v := newTestVerifier(t)
	st := recordedState(t, "state0.bin")
	if _, err := v.Appraise(st, recordedEvidence(t, "ev1"), recordedTLSHash(t)); err != nil {
		t.Fatal(err)
	}
	b, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	mem := st.memSize()
	t.Logf("node state: %d bytes persisted, ~%d bytes in memory", len(b), mem)
	const goal = 64 << 10
	if len(b) > goal || mem > goal {
		t.Fatalf("node state %d/%d bytes, goal at most %d", len(b), mem, goal)
	}
	var back NodeState
	if err := back.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	b2, _ := back.MarshalBinary()
	if !bytes.Equal(b, b2) {
		t.Fatalf("state round trip differs")
	}
}
