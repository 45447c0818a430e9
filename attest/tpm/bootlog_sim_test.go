//go:build tpmsimulator

package tpm_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

const evNoAction = 3

// TestBootLogQuote plays a real firmware boot log's SHA-256 digests into
// the simulator's PCRs 0-7 (as firmware would), quotes them, and checks
// the verifier replays the log onto the quoted values: the TPM's extend
// and go-attestation's replay are independent implementations.
func TestBootLogQuote(t *testing.T) {
	sim := openSim(t)
	ca := newTestCA(t, "tvd test EK CA")
	ek := provisionEK(t, sim, ca, tpm.EKECCP256)
	v := newVerifier(t, ca, nil)
	ak, err := sim.CreateAK(tpm.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	st := enroll(t, v, ek, ak)
	state0, err := st.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(filepath.Join("testdata", "crypto_agile_eventlog"))
	if err != nil {
		t.Fatal(err)
	}
	events, err := tpm.ParseBootLog(raw)
	if err != nil {
		t.Fatal(err)
	}
	extended := 0
	for _, e := range events {
		if e.Type == evNoAction {
			continue
		}
		var d [32]byte
		if copy(d[:], e.Digest) != 32 {
			t.Fatalf("event digest is %d bytes", len(e.Digest))
		}
		if err := sim.Extend(e.Index, d); err != nil {
			t.Fatal(err)
		}
		extended++
	}
	boot := []int{0, 1, 2, 3, 4, 5, 6, 7}
	m, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := m.Evidence(ak, st.Nonce(), tlsHash, st.Cursor(), boot...)
	if err != nil {
		t.Fatal(err)
	}
	res := mustAppraise(t, v, st, ev)
	bevs, err := attest.VerifyBootLog(raw, res.PCRs, boot)
	if err != nil {
		t.Fatalf("verify boot log: %v", err)
	}
	if len(bevs) != extended {
		t.Fatalf("%d boot events verified, %d extended", len(bevs), extended)
	}

	// An unlogged boot component: PCR 4 no longer replays.
	if err := sim.Extend(4, fileDigest("unlogged bootloader")); err != nil {
		t.Fatal(err)
	}
	ev2, err := m.Evidence(ak, st.Nonce(), tlsHash, st.Cursor(), boot...)
	if err != nil {
		t.Fatal(err)
	}
	res = mustAppraise(t, v, st, ev2)
	var be *attest.BootLogError
	if _, err := attest.VerifyBootLog(raw, res.PCRs, boot); !errors.As(err, &be) {
		t.Fatalf("unlogged extend: %v, want BootLogError", err)
	}

	if *update {
		dir := filepath.Join("..", "testdata")
		var pcrs []byte
		for _, p := range ev.PCRs {
			pcrs = append(pcrs, byte(p.Index))
			pcrs = append(pcrs, p.Value[:]...)
		}
		for name, b := range map[string][]byte{
			"boot-state0.bin": state0, "boot.attest": ev.Attest, "boot.sig": ev.Signature, "boot.pcrs": pcrs,
		} {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// The boot evidence carries no log entries: write an empty file.
		if err := os.WriteFile(filepath.Join(dir, "boot.events"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
