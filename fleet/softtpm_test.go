package fleet

import (
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/tvd-dev/tvd/attest"
)

// enrolled returns a verifier trusting ca, listing digest, and a soft TPM
// enrolled with it through credential activation.
func enrolled(t testing.TB, listed [32]byte) (*attest.Verifier, *attest.NodeState, *SoftTPM) {
	t.Helper()
	ca, err := NewEKCA(cryptoRand, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v, err := attest.NewVerifier(attest.Config{Refs: attest.NewRefSet(map[[32]byte]string{listed: "fleet/bin"}), EK: attest.EKPolicy{Roots: ca.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := NewSoftTPM(nil, nil, ca)
	if err != nil {
		t.Fatal(err)
	}
	e, ch, err := v.BeginEnrollment(tp.EKPublic(), tp.EKCert(), tp.AKPublic())
	if err != nil {
		t.Fatalf("begin enrollment: %v", err)
	}
	secret, err := tp.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatalf("activate credential: %v", err)
	}
	st, err := v.FinishEnrollment(e, secret)
	if err != nil {
		t.Fatalf("finish enrollment: %v", err)
	}
	return v, st, tp
}

func TestSoftTPMQuotesVerify(t *testing.T) {
	listed := sha256.Sum256([]byte("listed"))
	v, st, tp := enrolled(t, listed)
	tls := sha256.Sum256([]byte("tls key"))
	for round := range 3 {
		for i := range round + 1 {
			if _, err := tp.Measure(attest.EventExec, "ee1", "/bin/x", listed); err != nil {
				t.Fatal(err)
			}
			_ = i
		}
		ev, err := tp.Evidence(st.Nonce(), tls, st.Cursor())
		if err != nil {
			t.Fatal(err)
		}
		res, err := v.Appraise(st, ev, tls)
		if err != nil {
			t.Fatalf("round %d: appraise: %v (checks %+v)", round, err, res.Checks)
		}
		if len(res.Entries) != round+1 {
			t.Fatalf("round %d: %d new entries appraised, want %d", round, len(res.Entries), round+1)
		}
	}
	if got := st.Cursor().Seq; got != 6 {
		t.Fatalf("cursor at %d, want 6", got)
	}
	// An unlisted measurement is appraised as such.
	if _, err := tp.Measure(attest.EventExec, "ee1", "/tmp/evil", sha256.Sum256([]byte("evil"))); err != nil {
		t.Fatal(err)
	}
	ev, err := tp.Evidence(st.Nonce(), tls, st.Cursor())
	if err != nil {
		t.Fatal(err)
	}
	var unlisted *attest.UnlistedError
	if _, err := v.Appraise(st, ev, tls); !errors.As(err, &unlisted) {
		t.Fatalf("unlisted measurement: got %v, want *attest.UnlistedError", err)
	}
}

func TestSoftTPMTamperedQuoteRefused(t *testing.T) {
	listed := sha256.Sum256([]byte("listed"))
	tls := sha256.Sum256([]byte("tls key"))
	for _, tc := range []struct {
		name   string
		tamper func(ev *attest.Evidence)
		want   any
	}{
		{"flipped attest byte", func(ev *attest.Evidence) { ev.Attest[len(ev.Attest)-1] ^= 1 }, new(*attest.SignatureError)},
		{"flipped signature", func(ev *attest.Evidence) { ev.Signature[len(ev.Signature)-1] ^= 1 }, new(*attest.SignatureError)},
		{"claimed pcr value", func(ev *attest.Evidence) { ev.PCRs[0].Value[0] ^= 1 }, new(*attest.PCRDigestError)},
		{"dropped event", func(ev *attest.Evidence) { ev.Events = ev.Events[:len(ev.Events)-1] }, new(*attest.ReplayError)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, st, tp := enrolled(t, listed)
			tp.Measure(attest.EventExec, "ee1", "/bin/a", listed)
			tp.Measure(attest.EventExec, "ee1", "/bin/b", listed)
			ev, err := tp.Evidence(st.Nonce(), tls, st.Cursor())
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(ev)
			_, err = v.Appraise(st, ev, tls)
			if err == nil {
				t.Fatal("tampered evidence was accepted")
			}
			switch w := tc.want.(type) {
			case **attest.SignatureError:
				if !errors.As(err, w) {
					t.Fatalf("got %v, want a signature error", err)
				}
			case **attest.PCRDigestError:
				if !errors.As(err, w) {
					t.Fatalf("got %v, want a pcr digest error", err)
				}
			case **attest.ReplayError:
				if !errors.As(err, w) {
					t.Fatalf("got %v, want a replay error", err)
				}
			}
		})
	}
	// A quote over another TLS key's hash (a relayed quote) is refused.
	v, st, tp := enrolled(t, listed)
	ev, err := tp.Evidence(st.Nonce(), sha256.Sum256([]byte("other key")), st.Cursor())
	if err != nil {
		t.Fatal(err)
	}
	var ne *attest.NonceError
	if _, err := v.Appraise(st, ev, tls); !errors.As(err, &ne) {
		t.Fatalf("quote bound to another TLS key: got %v, want a nonce error", err)
	}
}

func TestActivateCredentialRefusesOtherAK(t *testing.T) {
	ca, err := NewEKCA(cryptoRand, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	v, err := attest.NewVerifier(attest.Config{Refs: attest.NewRefSet(nil), EK: attest.EKPolicy{Roots: ca.Pool()}})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := NewSoftTPM(nil, nil, ca)
	b, _ := NewSoftTPM(nil, nil, ca)
	// A challenge for a's EK naming b's AK: a cannot answer it for its own
	// AK (the integrity HMAC covers the AK's name).
	_, ch, err := v.BeginEnrollment(a.EKPublic(), a.EKCert(), b.AKPublic())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret); err == nil {
		t.Fatal("activation of a credential made for another AK succeeded")
	}
	// b does not hold a's EK.
	if _, err := b.ActivateCredential(ch.CredentialBlob, ch.EncryptedSecret); err == nil {
		t.Fatal("activation with another TPM's EK succeeded")
	}
	if _, err := a.ActivateCredential(ch.CredentialBlob[:10], ch.EncryptedSecret); err == nil {
		t.Fatal("truncated credential blob accepted")
	}
}
