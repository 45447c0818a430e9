//go:build tpmsimulator

package tpm_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"flag"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/tvd-dev/tvd"
	"github.com/tvd-dev/tvd/attest"
	"github.com/tvd-dev/tvd/attest/tpm"
)

var update = flag.Bool("update", false, "rewrite ../testdata with fresh simulator output")

func openSim(t *testing.T) *tpm.Simulator {
	t.Helper()
	sim, err := tpm.OpenSimulator(nil)
	if err != nil {
		t.Fatalf("open simulator: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	return sim
}

// provisionEK creates the EK, has ca certify it and stores the certificate
// in NV, as a TPM manufacturer would; it returns the EK as read back.
func provisionEK(t *testing.T, sim *tpm.Simulator, ca *testCA, kind tpm.EKKind) *tpm.EK {
	t.Helper()
	ek, err := sim.EK(kind)
	if err != nil {
		t.Fatalf("ek: %v", err)
	}
	if ek.Cert != nil {
		t.Fatalf("fresh simulator already has an ek certificate")
	}
	pek, err := attest.ParseEK(ek.Public)
	if err != nil {
		t.Fatalf("parse ek: %v", err)
	}
	if err := sim.ProvisionEKCert(kind, ca.issueEK(t, pek.Key)); err != nil {
		t.Fatalf("provision ek cert: %v", err)
	}
	ek, err = sim.EK(kind)
	if err != nil {
		t.Fatalf("ek: %v", err)
	}
	if ek.Cert == nil {
		t.Fatalf("ek certificate not read back")
	}
	return ek
}

func newVerifier(t *testing.T, ca *testCA, r io.Reader) *attest.Verifier {
	t.Helper()
	v, err := attest.NewVerifier(attest.Config{Refs: testRefs(), EK: attest.EKPolicy{Roots: ca.pool}, Rand: r})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestEnrollQuoteAppraise(t *testing.T) {
	sim := openSim(t)
	ca := newTestCA(t, "tvd test EK CA")
	for _, kind := range []tpm.EKKind{tpm.EKECCP256, tpm.EKRSA2048} {
		t.Run(kind.String(), func(t *testing.T) {
			ek := provisionEK(t, sim, ca, kind)
			v := newVerifier(t, ca, nil)
			ak, err := sim.CreateAK(kind)
			if err != nil {
				t.Fatal(err)
			}
			defer ak.Close()
			st := enroll(t, v, ek, ak)
			if len(st.Nonce()) != attest.NonceSize {
				t.Fatalf("no first nonce after enrolment")
			}
			if err := sim.Reset(); err != nil { // start each kind from a fresh boot
				t.Fatal(err)
			}
			ak, err = sim.LoadAK(kind, ak.Public, ak.Private)
			if err != nil {
				t.Fatal(err)
			}
			state0, _ := st.MarshalBinary()

			m, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
			if err != nil {
				t.Fatal(err)
			}
			measure(t, m, attest.EventEEStart, "web", "/var/lib/tvd/images/alpine", imgDigest)
			measure(t, m, attest.EventExec, "web", "/bin/sh", shDigest)
			measure(t, m, attest.EventExec, "web", "/srv/web", appDigest)
			ev1 := evidence(t, m, ak, st)
			res := mustAppraise(t, v, st, ev1)
			if len(res.Entries) != 3 || !res.Entries[2].Listed || res.Entries[2].Reference != "tmart/web-1" || res.Entries[2].Seq != 2 {
				t.Fatalf("entries %+v", res.Entries)
			}
			if !bytes.Equal(res.NextNonce, st.Nonce()) || len(res.NextNonce) != attest.NonceSize {
				t.Fatalf("next nonce not chained")
			}
			state1, _ := st.MarshalBinary()

			// Incremental: only the new entries travel.
			measure(t, m, attest.EventEEStart, "db", "/var/lib/tvd/images/alpine", imgDigest)
			measure(t, m, attest.EventExec, "db", "/srv/db", dbDigest)
			ev2 := evidence(t, m, ak, st)
			if ev2.FirstSeq != 3 || len(ev2.Events) != 2 {
				t.Fatalf("evidence carries %d events from %d, want 2 from 3", len(ev2.Events), ev2.FirstSeq)
			}
			res = mustAppraise(t, v, st, ev2)
			if res.Entries[1].Seq != 4 || res.Entries[1].Reference != "paychecks/db-2" {
				t.Fatalf("entries %+v", res.Entries)
			}
			if st.NextSeq() != 5 {
				t.Fatalf("next seq %d, want 5", st.NextSeq())
			}
			// A round with nothing new.
			time.Sleep(2 * time.Millisecond)
			mustAppraise(t, v, st, evidence(t, m, ak, st))

			// The state survives a round trip through its persistent form.
			b, err := st.MarshalBinary()
			if err != nil {
				t.Fatal(err)
			}
			var st2 attest.NodeState
			if err := st2.UnmarshalBinary(b); err != nil {
				t.Fatal(err)
			}
			measure(t, m, attest.EventExec, "db", "/bin/sh", shDigest)
			mustAppraise(t, v, &st2, evidence(t, m, ak, &st2))

			if *update && kind == tpm.EKECCP256 {
				writeTestdata(t, state0, ev1, state1, ev2)
			}
		})
	}
}

func writeTestdata(t *testing.T, state0 []byte, ev1 *attest.Evidence, state1 []byte, ev2 *attest.Evidence) {
	t.Helper()
	dir := filepath.Join("..", "testdata")
	write := func(name string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pcrs := func(ps []attest.PCR) []byte {
		var b []byte
		for _, p := range ps {
			b = append(b, byte(p.Index))
			b = append(b, p.Value[:]...)
		}
		return b
	}
	for i, ev := range []*attest.Evidence{ev1, ev2} {
		pre := []string{"ev1", "ev2"}[i]
		events, err := attest.EncodeEvents(ev.Events)
		if err != nil {
			t.Fatal(err)
		}
		write(pre+".attest", ev.Attest)
		write(pre+".sig", ev.Signature)
		write(pre+".pcrs", pcrs(ev.PCRs))
		write(pre+".events", events)
	}
	write("state0.bin", state0)
	write("state1.bin", state1)
	write("tlshash", tlsHash[:])
	t.Logf("wrote simulator output to %s", dir)
}

// fixedReader returns the same bytes forever: a verifier using it issues
// the same nonce every round, so the nonce check passes for an old quote
// and only the counter checks can refuse it.
type fixedReader struct{}

func (fixedReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 0x5a
	}
	return len(p), nil
}

func TestAdversarial(t *testing.T) {
	sim := openSim(t)
	ca := newTestCA(t, "tvd test EK CA")
	ek := provisionEK(t, sim, ca, tpm.EKECCP256)
	v := newVerifier(t, ca, nil)
	ak0, err := sim.CreateAK(tpm.EKECCP256)
	if err != nil {
		t.Fatal(err)
	}
	base, err := enroll(t, v, ek, ak0).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	akPub, akPriv := ak0.Public, ak0.Private

	// fresh reboots the TPM and returns the AK, a copy of the enrolled
	// state and an empty measurer.
	fresh := func(t *testing.T) (*tpm.AK, *attest.NodeState, *tpm.Measurer) {
		t.Helper()
		if err := sim.Reset(); err != nil {
			t.Fatal(err)
		}
		ak, err := sim.LoadAK(tpm.EKECCP256, akPub, akPriv)
		if err != nil {
			t.Fatal(err)
		}
		var st attest.NodeState
		if err := st.UnmarshalBinary(base); err != nil {
			t.Fatal(err)
		}
		m, err := tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
		if err != nil {
			t.Fatal(err)
		}
		return ak, &st, m
	}
	// refuse appraises ev and wants an error of type E; st must not advance.
	refuse := func(t *testing.T, v *attest.Verifier, st *attest.NodeState, ev *attest.Evidence, target any) *attest.Result {
		t.Helper()
		seq := st.NextSeq()
		res, err := v.Appraise(st, ev, tlsHash)
		if err == nil {
			t.Fatalf("appraisal accepted, want refusal")
		}
		if !errors.As(err, target) {
			t.Fatalf("error %T %v, want %T", err, err, target)
		}
		if res.Status != tvd.StatusViolated {
			t.Fatalf("status %v, want violated", res.Status)
		}
		if last := res.Checks[len(res.Checks)-1]; last.Status != tvd.StatusViolated || last.Detail == "" {
			t.Fatalf("last check %+v, want a violated check with detail", last)
		}
		if len(res.NextNonce) != attest.NonceSize || !bytes.Equal(res.NextNonce, st.Nonce()) {
			t.Fatalf("no next nonce after refusal")
		}
		var unlisted *attest.UnlistedError
		if !errors.As(err, &unlisted) && st.NextSeq() != seq {
			t.Fatalf("state advanced on refused evidence")
		}
		t.Logf("refused: %v", err)
		return res
	}
	threeEvents := func(t *testing.T, m *tpm.Measurer) {
		measure(t, m, attest.EventEEStart, "web", "/images/alpine", imgDigest)
		measure(t, m, attest.EventExec, "web", "/bin/sh", shDigest)
		measure(t, m, attest.EventExec, "web", "/srv/web", appDigest)
	}

	t.Run("replayed quote", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		mustAppraise(t, v, st, ev)
		var target *attest.NonceError
		refuse(t, v, st, ev, &target)
	})
	t.Run("wrong nonce", func(t *testing.T) {
		ak, st, m := fresh(t)
		ev, err := m.Evidence(ak, []byte("not the verifier's nonce........"), tlsHash, st.Cursor())
		if err != nil {
			t.Fatal(err)
		}
		var target *attest.NonceError
		refuse(t, v, st, ev, &target)
	})
	t.Run("other tls key", func(t *testing.T) {
		ak, st, m := fresh(t)
		ev, err := m.Evidence(ak, st.Nonce(), sha256.Sum256([]byte("attacker tls key")), st.Cursor())
		if err != nil {
			t.Fatal(err)
		}
		var target *attest.NonceError
		refuse(t, v, st, ev, &target)
	})
	t.Run("quote by a different AK", func(t *testing.T) {
		_, st, m := fresh(t)
		other, err := sim.CreateAK(tpm.EKECCP256)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		ev := evidence(t, m, other, st)
		var target *attest.SignatureError
		refuse(t, v, st, ev, &target)
	})
	t.Run("activation with a different EK", func(t *testing.T) {
		ak, _, _ := fresh(t)
		// Another TPM's EK, trusted by the same CA.
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := tpm2.ECCEKTemplate
		tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, 32))},
			Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, 32))},
		})
		otherPub := tpm2.Marshal(tmpl)
		e, ch, err := v.BeginEnrollment(otherPub, ca.issueEK(t, &key.PublicKey), ak.Public)
		if err != nil {
			t.Fatalf("begin enrollment with other trusted ek: %v", err)
		}
		secret, err := ak.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret)
		if err == nil {
			t.Fatalf("tpm activated a credential made for another ek")
		}
		t.Logf("tpm refused: %v", err)
		if _, err := v.FinishEnrollment(e, secret); !errors.Is(err, attest.ErrActivation) {
			t.Fatalf("finish enrollment: %v, want ErrActivation", err)
		}
	})
	t.Run("credential for an AK not in this TPM", func(t *testing.T) {
		ak, _, _ := fresh(t)
		other, err := sim.CreateAK(tpm.EKECCP256)
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		// The verifier makes the credential for other's name; ak cannot
		// release it.
		_, ch, err := v.BeginEnrollment(ek.Public, ek.Cert, other.Public)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ak.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret); err == nil {
			t.Fatalf("activated a credential made for another ak")
		}
	})
	t.Run("EK cert from an untrusted CA", func(t *testing.T) {
		fresh(t)
		rogue := newTestCA(t, "rogue EK CA")
		pek, err := attest.ParseEK(ek.Public)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = v.BeginEnrollment(ek.Public, rogue.issueEK(t, pek.Key), akPub)
		var target *attest.EKError
		if !errors.As(err, &target) {
			t.Fatalf("begin enrollment: %v, want EKError", err)
		}
		t.Logf("refused: %v", err)
		// The same EK is accepted by an allowlist.
		va, err := attest.NewVerifier(attest.Config{Refs: testRefs(), EK: attest.EKPolicy{Allow: map[[32]byte]bool{pek.Fingerprint(): true}}})
		if err != nil {
			t.Fatal(err)
		}
		e, _, err := va.BeginEnrollment(ek.Public, nil, akPub)
		if err != nil || !e.EKIdentity().Allowlisted {
			t.Fatalf("allowlisted ek refused: %v", err)
		}
	})
	t.Run("PCR digest mismatch", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		ev.PCRs[0].Value[0] ^= 1
		var target *attest.PCRDigestError
		refuse(t, v, st, ev, &target)
	})
	t.Run("event altered", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		ev.Events[2].Path = "/srv/other"
		var target *attest.EventDigestError
		refuse(t, v, st, ev, &target)
	})
	t.Run("log does not replay", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		// A self-consistent entry that was never extended.
		ev.Events[1].FileDigest = appDigest
		ev.Events[1].Digest = ev.Events[1].ComputeDigest()
		var target *attest.ReplayError
		res := refuse(t, v, st, ev, &target)
		if target.PCR != attest.EEPCR || target.Want != ev.PCRs[0].Value {
			t.Fatalf("replay error %+v", target)
		}
		_ = res
	})
	t.Run("truncated log", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		ev.Events = ev.Events[:2]
		var target *attest.ReplayError
		refuse(t, v, st, ev, &target)
	})
	t.Run("reordered log", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		ev := evidence(t, m, ak, st)
		ev.Events[1], ev.Events[2] = ev.Events[2], ev.Events[1]
		var target *attest.ReplayError
		refuse(t, v, st, ev, &target)
	})
	t.Run("entries skipped", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		mustAppraise(t, v, st, evidence(t, m, ak, st))
		measure(t, m, attest.EventExec, "web", "/bin/sh", shDigest)
		ev := evidence(t, m, ak, st)
		ev.FirstSeq, ev.Events = 4, nil
		var target *attest.SequenceError
		refuse(t, v, st, ev, &target)
	})
	t.Run("reset counter going backwards", func(t *testing.T) {
		vf := newVerifier(t, ca, fixedReader{})
		ak, _, m := fresh(t)
		st := enroll(t, vf, ek, ak)
		old := evidence(t, m, ak, st) // resetCount r
		if err := sim.Reset(); err != nil {
			t.Fatal(err)
		}
		ak, err := sim.LoadAK(tpm.EKECCP256, akPub, akPriv)
		if err != nil {
			t.Fatal(err)
		}
		m, err = tpm.NewMeasurer(sim.TPM, attest.EEPCR, nil)
		if err != nil {
			t.Fatal(err)
		}
		mustAppraise(t, vf, st, evidence(t, m, ak, st)) // resetCount r+1
		var target *attest.CounterError
		refuse(t, vf, st, old, &target)
		if target.Field != "resetCount" {
			t.Fatalf("counter error on %s, want resetCount", target.Field)
		}
	})
	t.Run("clock going backwards", func(t *testing.T) {
		vf := newVerifier(t, ca, fixedReader{})
		ak, _, m := fresh(t)
		st := enroll(t, vf, ek, ak)
		older := evidence(t, m, ak, st)
		time.Sleep(5 * time.Millisecond)
		newer := evidence(t, m, ak, st)
		mustAppraise(t, vf, st, newer)
		var target *attest.CounterError
		refuse(t, vf, st, older, &target)
		if target.Field != "clock" {
			t.Fatalf("counter error on %s, want clock", target.Field)
		}
	})
	t.Run("measurement not in reference values", func(t *testing.T) {
		ak, st, m := fresh(t)
		threeEvents(t, m)
		measure(t, m, attest.EventExec, "web", "/tmp/xmrig", badDigest)
		var target *attest.UnlistedError
		res := refuse(t, v, st, evidence(t, m, ak, st), &target)
		if len(target.Entries) != 1 || target.Entries[0].Path != "/tmp/xmrig" || target.Entries[0].Seq != 3 || target.Entries[0].Listed {
			t.Fatalf("unlisted %+v", target.Entries)
		}
		if !res.Entries[0].Listed || res.Entries[3].Listed {
			t.Fatalf("entry results %+v", res.Entries)
		}
		// The evidence was authentic: the state advanced, the next round
		// appraises only what is new.
		if st.NextSeq() != 4 {
			t.Fatalf("next seq %d, want 4", st.NextSeq())
		}
		measure(t, m, attest.EventExec, "web", "/bin/sh", shDigest)
		mustAppraise(t, v, st, evidence(t, m, ak, st))
	})
}
