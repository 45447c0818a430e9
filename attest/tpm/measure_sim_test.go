//go:build tpmsimulator

package tpm_test

import (
	"fmt"
	"sync"
	"testing"

	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

// TestMeasurerConcurrent measures from several goroutines while others
// take evidence: every piece of evidence must replay, whatever the
// interleaving.
func TestMeasurerConcurrent(t *testing.T) {
	sim := openSim(t)
	ca := newTestCA(t, "tvd test EK CA")
	ek := provisionEK(t, sim, ca, tpm.EKECCP256)
	v := newVerifier(t, ca, nil)
	ak, err := sim.CreateAK(tpm.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	base, err := enroll(t, v, ek, ak).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	restore := func() *attest.NodeState {
		var st attest.NodeState
		if err := st.UnmarshalBinary(base); err != nil {
			t.Fatal(err)
		}
		return &st
	}
	m, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
	if err != nil {
		t.Fatal(err)
	}
	nonce := restore().Nonce()
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		evidences []*attest.Evidence
		errs      = make(chan error, 64)
	)
	for g := range 4 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for i := range 10 {
				if _, _, err := m.Measure(attest.EventExec, fmt.Sprintf("ee%d", g), fmt.Sprintf("/bin/%d", i), shDigest); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			for range 3 {
				ev, err := m.Evidence(ak, nonce, tlsHash, attest.Cursor{})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				evidences = append(evidences, ev)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if m.Len() != 40 {
		t.Fatalf("log has %d entries, want 40", m.Len())
	}
	for i, ev := range evidences {
		st := restore()
		if _, err := v.Appraise(st, ev, tlsHash); err != nil {
			t.Fatalf("evidence %d (%d entries): %v", i, len(ev.Events), err)
		}
	}
}

func TestMeasurerRestoreAndPCRs(t *testing.T) {
	sim := openSim(t)
	m, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, seq, err := m.Measure(attest.EventExec, "web", fmt.Sprintf("/bin/%d", i), appDigest); err != nil || seq != uint64(i) {
			t.Fatalf("measure: seq %d err %v", seq, err)
		}
	}
	// An agent restarting within the same boot continues its saved log.
	prior := m.Events(0)
	if _, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, prior); err != nil {
		t.Fatalf("restore full log: %v", err)
	}
	if _, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, prior[:2]); err == nil {
		t.Fatalf("restored a truncated log")
	}
	tampered := m.Events(0)
	tampered[1].Path = "/bin/evil"
	if _, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, tampered); err == nil {
		t.Fatalf("restored a tampered log")
	}
	if _, _, err := m.Measure(attest.EventType(99), "web", "/x", appDigest); err == nil {
		t.Fatalf("measured an unknown event type")
	}

	// All 24 PCRs, read in several TPM2_PCR_Read rounds.
	all := make([]int, attest.NumPCRs)
	for i := range all {
		all[i] = i
	}
	vals, err := sim.ReadPCRs(all)
	if err != nil {
		t.Fatal(err)
	}
	if len(vals) != attest.NumPCRs {
		t.Fatalf("read %d pcrs, want %d", len(vals), attest.NumPCRs)
	}
	var want [32]byte
	for _, e := range prior {
		want = attest.ExtendSHA256(want, e.Digest)
	}
	for i, p := range vals {
		if p.Index != i {
			t.Fatalf("pcr %d at position %d", p.Index, i)
		}
	}
	if vals[attest.EEPCR].Value != want {
		t.Fatalf("pcr %d is %x, replay gives %x", attest.EEPCR, vals[attest.EEPCR].Value, want)
	}
	if err := sim.Extend(24, want); err == nil {
		t.Fatalf("extended pcr 24")
	}
}
