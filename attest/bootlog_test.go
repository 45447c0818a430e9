package attest

import (
	"errors"
	"testing"
)

var bootPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// TestRecordedBootLog appraises a real simulator quote over PCRs 0-7 into
// which a real firmware log (testdata/bootlog.bin, from go-attestation)
// was extended, then replays the log onto the quoted values.
func TestRecordedBootLog(t *testing.T) {
	v := newTestVerifier(t)
	st := recordedState(t, "boot-state0.bin")
	res, err := v.Appraise(st, recordedEvidence(t, "boot"), recordedTLSHash(t))
	if err != nil {
		t.Fatalf("appraise: %v", err)
	}
	raw := readTestdata(t, "bootlog.bin")
	events, err := VerifyBootLog(raw, res.PCRs, bootPCRs)
	if err != nil {
		t.Fatalf("verify boot log: %v", err)
	}
	for _, e := range events {
		if e.PCR < 0 || e.PCR > 7 || len(e.Digest) != 32 || e.Type == "" {
			t.Fatalf("event %+v", e)
		}
	}
	t.Logf("%d boot events replayed, first %s", len(events), events[0].Type)

	var be *BootLogError
	bad := append([]PCR(nil), res.PCRs...)
	bad[3].Value[0] ^= 1
	if _, err := VerifyBootLog(raw, bad, bootPCRs); !errors.As(err, &be) {
		t.Fatalf("wrong pcr 3: %v, want BootLogError", err)
	}
	if _, err := VerifyBootLog(raw, res.PCRs[:4], bootPCRs); !errors.As(err, &be) {
		t.Fatalf("required pcr not quoted: %v", err)
	}
	if _, err := VerifyBootLog(raw, res.PCRs, []int{EEPCR}); !errors.As(err, &be) {
		t.Fatalf("pcr without events: %v", err)
	}
	if _, err := VerifyBootLog(raw[:len(raw)/2], res.PCRs, bootPCRs); err == nil {
		t.Fatalf("truncated log verified")
	}
	if _, err := VerifyBootLog(raw, res.PCRs, nil); err == nil {
		t.Fatalf("verified with nothing required")
	}
}

func FuzzVerifyBootLog(f *testing.F) {
	f.Add(readTestdata(f, "bootlog.bin"))
	var quoted []PCR
	pcrs := readTestdata(f, "boot.pcrs")
	for len(pcrs) >= 33 {
		var p PCR
		p.Index = int(pcrs[0])
		copy(p.Value[:], pcrs[1:33])
		quoted = append(quoted, p)
		pcrs = pcrs[33:]
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		VerifyBootLog(raw, quoted, bootPCRs)
	})
}
